//! Rotary position embeddings (RoPE) with the context-extension methods of HuggingFace
//! `transformers` (`modeling_rope_utils`, v5 `rope_parameters`).
//!
//! - [`RopeConfig`]: `head_dim`, `rope_theta`, `partial_rotary_factor`, `max_position_embeddings`
//!   and the scaling method ([`RopeScaling`]), read from the same keys HuggingFace uses, so one
//!   entry of a HuggingFace `config.json` (or of `shared/golden/rope_hf.json`) loads unchanged.
//! - [`RopeConfig::frequencies`]: the inverse frequencies and the attention factor, computed in
//!   f64 (HuggingFace computes them in f32; the formulas are the same).
//! - [`RopeFrequencies::table`] / [`RotaryTable::apply`]: the rotation of burn tensors
//!   `[batch, heads, seq, head_dim]` in the HuggingFace `rotate_half` (NeoX) layout at arbitrary
//!   per-token positions; [`RopeFrequencies::shift_table`] re-rotates already-rotated keys by a
//!   position delta (llama.cpp's K-shift).
//!
//! burn's own `RotaryEncoding` uses the interleaved (GPT-J) layout, contiguous positions and f32
//! frequencies, so none of it is reused here: the scaling formulas, the table and the
//! `rotate_half` application are written in this module. Angles are computed in f64 on the
//! host (position × inv_freq loses precision in f32 beyond ~10⁵ tokens) and only cos/sin are
//! cast to the backend's float type.

use std::f64::consts::PI;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::host::float_tensor;

/// HuggingFace's default for `beta_fast` (YaRN).
pub const DEFAULT_BETA_FAST: f64 = 32.0;
/// HuggingFace's default for `beta_slow` (YaRN).
pub const DEFAULT_BETA_SLOW: f64 = 1.0;
/// HuggingFace's default `rope_theta` (Llama).
pub const DEFAULT_ROPE_THETA: f64 = 10_000.0;

/// The RoPE scaling method and its parameters, as HuggingFace's `rope_parameters.rope_type`.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// `default`: no scaling.
    Default,
    /// `linear`: position interpolation (PI), every frequency divided by `factor`.
    Linear {
        /// Scale factor, ≥ 1.
        factor: f64,
    },
    /// `dynamic`: NTK-aware base change, recomputed from the current sequence length.
    Dynamic {
        /// Scale factor, ≥ 1.
        factor: f64,
    },
    /// `yarn`: NTK-by-parts interpolation plus an attention temperature.
    Yarn(YarnScaling),
    /// `llama3`: Llama 3.1's smooth blend between original and divided frequencies.
    Llama3(Llama3Scaling),
    /// `longrope`: per-frequency rescale factors, short or long by sequence length.
    LongRope(LongRopeScaling),
}

/// Parameters of [`RopeScaling::Yarn`].
#[derive(Clone, Debug, PartialEq)]
pub struct YarnScaling {
    /// Scale factor, ≥ 1.
    pub factor: f64,
    /// Context length the model was trained at.
    pub original_max_position_embeddings: usize,
    /// Rotations at which frequencies stop being extrapolated (default 32).
    pub beta_fast: f64,
    /// Rotations below which frequencies are fully interpolated (default 1).
    pub beta_slow: f64,
    /// DeepSeek-style attention-factor numerator coefficient.
    pub mscale: Option<f64>,
    /// DeepSeek-style attention-factor denominator coefficient.
    pub mscale_all_dim: Option<f64>,
    /// Round the correction range to whole dimensions (default true).
    pub truncate: bool,
    /// Explicit attention factor, overriding the computed one.
    pub attention_factor: Option<f64>,
}

/// Parameters of [`RopeScaling::Llama3`].
#[derive(Clone, Debug, PartialEq)]
pub struct Llama3Scaling {
    /// Scale factor, ≥ 1 (8 for Llama 3.1).
    pub factor: f64,
    /// Context length the model was trained at (8192 for Llama 3.1).
    pub original_max_position_embeddings: usize,
    /// Wavelengths above `original / low_freq_factor` are divided by `factor` (1 for Llama 3.1).
    pub low_freq_factor: f64,
    /// Wavelengths below `original / high_freq_factor` are kept (4 for Llama 3.1).
    pub high_freq_factor: f64,
}

/// Parameters of [`RopeScaling::LongRope`].
#[derive(Clone, Debug, PartialEq)]
pub struct LongRopeScaling {
    /// Per-frequency factors used while the sequence fits the original context.
    pub short_factor: Vec<f64>,
    /// Per-frequency factors used beyond the original context.
    pub long_factor: Vec<f64>,
    /// Context length the model was trained at.
    pub original_max_position_embeddings: usize,
    /// Overall factor for the attention factor; `max_position_embeddings / original` if absent.
    pub factor: Option<f64>,
    /// Explicit attention factor, overriding the computed one.
    pub attention_factor: Option<f64>,
}

impl RopeScaling {
    /// HuggingFace's name for this method (`rope_type`).
    pub fn rope_type(&self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Linear { .. } => "linear",
            Self::Dynamic { .. } => "dynamic",
            Self::Yarn(_) => "yarn",
            Self::Llama3(_) => "llama3",
            Self::LongRope(_) => "longrope",
        }
    }
}

/// The `rope_parameters` dictionary exactly as HuggingFace writes it: every key optional, unknown
/// keys rejected. [`RopeConfig`] validates it into a [`RopeScaling`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RopeParameters {
    /// `default`, `linear`, `dynamic`, `yarn`, `llama3` or `longrope` (legacy key `type`).
    #[serde(alias = "type", skip_serializing_if = "Option::is_none")]
    pub rope_type: Option<String>,
    /// HuggingFace v5 keeps `rope_theta` here too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// HuggingFace v5 keeps `partial_rotary_factor` here too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partial_rotary_factor: Option<f64>,
    #[allow(missing_docs)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    #[allow(missing_docs)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<usize>,
    #[allow(missing_docs)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention_factor: Option<f64>,
    #[allow(missing_docs)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta_fast: Option<f64>,
    #[allow(missing_docs)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta_slow: Option<f64>,
    #[allow(missing_docs)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mscale: Option<f64>,
    #[allow(missing_docs)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mscale_all_dim: Option<f64>,
    #[allow(missing_docs)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncate: Option<bool>,
    #[allow(missing_docs)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub low_freq_factor: Option<f64>,
    #[allow(missing_docs)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub high_freq_factor: Option<f64>,
    #[allow(missing_docs)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub short_factor: Option<Vec<f64>>,
    #[allow(missing_docs)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub long_factor: Option<Vec<f64>>,
}

impl RopeParameters {
    /// Names of the scaling keys that are set (not `rope_type`, `rope_theta`,
    /// `partial_rotary_factor`, which apply to every method).
    fn present_scaling_keys(&self) -> Vec<&'static str> {
        let flags = [
            ("factor", self.factor.is_some()),
            (
                "original_max_position_embeddings",
                self.original_max_position_embeddings.is_some(),
            ),
            ("attention_factor", self.attention_factor.is_some()),
            ("beta_fast", self.beta_fast.is_some()),
            ("beta_slow", self.beta_slow.is_some()),
            ("mscale", self.mscale.is_some()),
            ("mscale_all_dim", self.mscale_all_dim.is_some()),
            ("truncate", self.truncate.is_some()),
            ("low_freq_factor", self.low_freq_factor.is_some()),
            ("high_freq_factor", self.high_freq_factor.is_some()),
            ("short_factor", self.short_factor.is_some()),
            ("long_factor", self.long_factor.is_some()),
        ];
        flags
            .into_iter()
            .filter_map(|(name, set)| set.then_some(name))
            .collect()
    }
}

/// The on-disk shape of [`RopeConfig`] (HuggingFace's keys), before validation.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RopeConfigFile {
    /// Attention head dimension.
    pub head_dim: Option<usize>,
    /// RoPE base (default 10000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// Fraction of `head_dim` that is rotated (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partial_rotary_factor: Option<f64>,
    /// The (extended) context length the model is run at.
    pub max_position_embeddings: Option<usize>,
    /// Scaling method and parameters.
    #[serde(default)]
    pub rope_parameters: RopeParameters,
}

/// A validated RoPE configuration. Deserializes from HuggingFace's keys (see [`RopeConfigFile`]);
/// every invalid value is an [`Error::Config`] naming its key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RopeConfigFile", into = "RopeConfigFile")]
pub struct RopeConfig {
    /// Attention head dimension.
    pub head_dim: usize,
    /// RoPE base θ.
    pub rope_theta: f64,
    /// Fraction of `head_dim` that is rotated.
    pub partial_rotary_factor: f64,
    /// The (extended) context length the model is run at.
    pub max_position_embeddings: usize,
    /// Scaling method and parameters.
    pub scaling: RopeScaling,
}

/// Inverse frequencies and attention factor for one sequence length.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeFrequencies {
    /// `rotary_dim / 2` inverse frequencies (radians per position).
    pub inv_freq: Vec<f64>,
    /// Factor HuggingFace multiplies cos and sin by (YaRN's mscale, LongRoPE's scaling).
    pub attention_factor: f64,
    /// Full head dimension; the trailing `head_dim - rotary_dim` channels pass through.
    pub head_dim: usize,
}

fn positive_finite(key: &str, value: f64) -> Result<f64> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(Error::config(
            key,
            format!("must be a positive finite number, got {value}"),
        ))
    }
}

fn scale_factor(key: &str, value: Option<f64>, rope_type: &str) -> Result<f64> {
    let factor = value
        .ok_or_else(|| Error::config(key, format!("required for rope_type \"{rope_type}\"")))?;
    if !factor.is_finite() || factor < 1.0 {
        return Err(Error::config(key, format!("must be ≥ 1, got {factor}")));
    }
    Ok(factor)
}

fn original_context(value: Option<usize>, rope_type: &str) -> Result<usize> {
    const KEY: &str = "rope_parameters.original_max_position_embeddings";
    match value {
        None => Err(Error::config(
            KEY,
            format!(
                "required for rope_type \"{rope_type}\" (the context length the model was trained at)"
            ),
        )),
        Some(0) => Err(Error::config(KEY, "must be ≥ 1")),
        Some(n) => Ok(n),
    }
}

fn optional_finite(key: &str, value: Option<f64>) -> Result<Option<f64>> {
    match value {
        Some(v) if !v.is_finite() => Err(Error::config(key, format!("must be finite, got {v}"))),
        other => Ok(other),
    }
}

fn factor_list(key: &str, value: Option<Vec<f64>>, pairs: usize) -> Result<Vec<f64>> {
    let list = value.ok_or_else(|| Error::config(key, "required for rope_type \"longrope\""))?;
    if list.len() != pairs {
        return Err(Error::config(
            key,
            format!(
                "must have rotary_dim / 2 = {pairs} entries, got {}",
                list.len()
            ),
        ));
    }
    if let Some(bad) = list.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
        return Err(Error::config(
            key,
            format!("entries must be positive finite numbers, got {bad}"),
        ));
    }
    Ok(list)
}

/// A key may be given at the top level and inside `rope_parameters` (HuggingFace v5); both must agree.
fn merged(key: &str, top: Option<f64>, inner: Option<f64>) -> Result<Option<f64>> {
    match (top, inner) {
        (Some(a), Some(b)) if a != b => Err(Error::config(
            key,
            format!("given as {a} and as rope_parameters.{key} = {b}; they must agree"),
        )),
        (a, b) => Ok(a.or(b)),
    }
}

impl RopeScaling {
    fn from_parameters(p: &RopeParameters, rotary_dim: usize) -> Result<Self> {
        let rope_type = p.rope_type.as_deref().unwrap_or("default");
        let allowed: &[&str] = match rope_type {
            "default" => &[],
            "linear" | "dynamic" => &["factor"],
            "yarn" => &[
                "factor",
                "original_max_position_embeddings",
                "attention_factor",
                "beta_fast",
                "beta_slow",
                "mscale",
                "mscale_all_dim",
                "truncate",
            ],
            "llama3" => &[
                "factor",
                "original_max_position_embeddings",
                "low_freq_factor",
                "high_freq_factor",
            ],
            "longrope" => &[
                "factor",
                "original_max_position_embeddings",
                "attention_factor",
                "short_factor",
                "long_factor",
            ],
            other => {
                return Err(Error::config(
                    "rope_parameters.rope_type",
                    format!(
                        "unknown rope_type \"{other}\"; expected one of default, linear, dynamic, yarn, llama3, longrope"
                    ),
                ));
            }
        };
        if let Some(key) = p
            .present_scaling_keys()
            .into_iter()
            .find(|k| !allowed.contains(k))
        {
            return Err(Error::config(
                format!("rope_parameters.{key}"),
                format!("does not apply to rope_type \"{rope_type}\""),
            ));
        }
        let factor_key = "rope_parameters.factor";
        Ok(match rope_type {
            "default" => Self::Default,
            "linear" => Self::Linear {
                factor: scale_factor(factor_key, p.factor, rope_type)?,
            },
            "dynamic" => {
                if rotary_dim < 4 {
                    return Err(Error::config(
                        "head_dim",
                        "dynamic NTK needs a rotary dimension of at least 4",
                    ));
                }
                Self::Dynamic {
                    factor: scale_factor(factor_key, p.factor, rope_type)?,
                }
            }
            "yarn" => {
                let beta_fast = positive_finite(
                    "rope_parameters.beta_fast",
                    p.beta_fast.unwrap_or(DEFAULT_BETA_FAST),
                )?;
                let beta_slow = positive_finite(
                    "rope_parameters.beta_slow",
                    p.beta_slow.unwrap_or(DEFAULT_BETA_SLOW),
                )?;
                if beta_fast <= beta_slow {
                    return Err(Error::config(
                        "rope_parameters.beta_fast",
                        format!("must be greater than beta_slow ({beta_slow}), got {beta_fast}"),
                    ));
                }
                Self::Yarn(YarnScaling {
                    factor: scale_factor(factor_key, p.factor, rope_type)?,
                    original_max_position_embeddings: original_context(
                        p.original_max_position_embeddings,
                        rope_type,
                    )?,
                    beta_fast,
                    beta_slow,
                    mscale: optional_finite("rope_parameters.mscale", p.mscale)?,
                    mscale_all_dim: optional_finite(
                        "rope_parameters.mscale_all_dim",
                        p.mscale_all_dim,
                    )?,
                    truncate: p.truncate.unwrap_or(true),
                    attention_factor: p
                        .attention_factor
                        .map(|v| positive_finite("rope_parameters.attention_factor", v))
                        .transpose()?,
                })
            }
            "llama3" => {
                let low = p.low_freq_factor.ok_or_else(|| {
                    Error::config(
                        "rope_parameters.low_freq_factor",
                        "required for rope_type \"llama3\"",
                    )
                })?;
                let high = p.high_freq_factor.ok_or_else(|| {
                    Error::config(
                        "rope_parameters.high_freq_factor",
                        "required for rope_type \"llama3\"",
                    )
                })?;
                let low = positive_finite("rope_parameters.low_freq_factor", low)?;
                let high = positive_finite("rope_parameters.high_freq_factor", high)?;
                if high <= low {
                    return Err(Error::config(
                        "rope_parameters.high_freq_factor",
                        format!("must be greater than low_freq_factor ({low}), got {high}"),
                    ));
                }
                Self::Llama3(Llama3Scaling {
                    factor: scale_factor(factor_key, p.factor, rope_type)?,
                    original_max_position_embeddings: original_context(
                        p.original_max_position_embeddings,
                        rope_type,
                    )?,
                    low_freq_factor: low,
                    high_freq_factor: high,
                })
            }
            _ => {
                let pairs = rotary_dim / 2;
                Self::LongRope(LongRopeScaling {
                    short_factor: factor_list(
                        "rope_parameters.short_factor",
                        p.short_factor.clone(),
                        pairs,
                    )?,
                    long_factor: factor_list(
                        "rope_parameters.long_factor",
                        p.long_factor.clone(),
                        pairs,
                    )?,
                    original_max_position_embeddings: original_context(
                        p.original_max_position_embeddings,
                        rope_type,
                    )?,
                    factor: p
                        .factor
                        .map(|f| scale_factor(factor_key, Some(f), rope_type))
                        .transpose()?,
                    attention_factor: p
                        .attention_factor
                        .map(|v| positive_finite("rope_parameters.attention_factor", v))
                        .transpose()?,
                })
            }
        })
    }

    fn to_parameters(&self) -> RopeParameters {
        let mut p = RopeParameters {
            rope_type: Some(self.rope_type().to_string()),
            ..RopeParameters::default()
        };
        match self {
            Self::Default => {}
            Self::Linear { factor } | Self::Dynamic { factor } => p.factor = Some(*factor),
            Self::Yarn(y) => {
                p.factor = Some(y.factor);
                p.original_max_position_embeddings = Some(y.original_max_position_embeddings);
                p.beta_fast = Some(y.beta_fast);
                p.beta_slow = Some(y.beta_slow);
                p.mscale = y.mscale;
                p.mscale_all_dim = y.mscale_all_dim;
                p.truncate = Some(y.truncate);
                p.attention_factor = y.attention_factor;
            }
            Self::Llama3(l) => {
                p.factor = Some(l.factor);
                p.original_max_position_embeddings = Some(l.original_max_position_embeddings);
                p.low_freq_factor = Some(l.low_freq_factor);
                p.high_freq_factor = Some(l.high_freq_factor);
            }
            Self::LongRope(l) => {
                p.short_factor = Some(l.short_factor.clone());
                p.long_factor = Some(l.long_factor.clone());
                p.original_max_position_embeddings = Some(l.original_max_position_embeddings);
                p.factor = l.factor;
                p.attention_factor = l.attention_factor;
            }
        }
        p
    }
}

impl TryFrom<RopeConfigFile> for RopeConfig {
    type Error = Error;

    fn try_from(file: RopeConfigFile) -> Result<Self> {
        let p = &file.rope_parameters;
        let head_dim = file
            .head_dim
            .ok_or_else(|| Error::config("head_dim", "required"))?;
        let rope_theta =
            merged("rope_theta", file.rope_theta, p.rope_theta)?.unwrap_or(DEFAULT_ROPE_THETA);
        let rope_theta = positive_finite("rope_theta", rope_theta)?;
        let partial_rotary_factor = merged(
            "partial_rotary_factor",
            file.partial_rotary_factor,
            p.partial_rotary_factor,
        )?
        .unwrap_or(1.0);
        if !(partial_rotary_factor > 0.0 && partial_rotary_factor <= 1.0) {
            return Err(Error::config(
                "partial_rotary_factor",
                format!("must be in (0, 1], got {partial_rotary_factor}"),
            ));
        }
        let max_position_embeddings = match file.max_position_embeddings {
            None => return Err(Error::config("max_position_embeddings", "required")),
            Some(0) => return Err(Error::config("max_position_embeddings", "must be ≥ 1")),
            Some(n) => n,
        };
        // HuggingFace: dim = int(head_dim * partial_rotary_factor).
        let rotary_dim = (head_dim as f64 * partial_rotary_factor) as usize;
        if rotary_dim < 2 || !rotary_dim.is_multiple_of(2) {
            return Err(Error::config(
                "head_dim",
                format!(
                    "the rotated dimension (head_dim {head_dim} × partial_rotary_factor {partial_rotary_factor} = {rotary_dim}) must be even and ≥ 2"
                ),
            ));
        }
        let scaling = RopeScaling::from_parameters(p, rotary_dim)?;
        if let RopeScaling::Yarn(_) = scaling
            && rope_theta <= 1.0
        {
            return Err(Error::config(
                "rope_theta",
                "must be > 1 for rope_type \"yarn\"",
            ));
        }
        Ok(Self {
            head_dim,
            rope_theta,
            partial_rotary_factor,
            max_position_embeddings,
            scaling,
        })
    }
}

impl From<RopeConfig> for RopeConfigFile {
    fn from(config: RopeConfig) -> Self {
        Self {
            head_dim: Some(config.head_dim),
            rope_theta: Some(config.rope_theta),
            partial_rotary_factor: (config.partial_rotary_factor != 1.0)
                .then_some(config.partial_rotary_factor),
            max_position_embeddings: Some(config.max_position_embeddings),
            rope_parameters: config.scaling.to_parameters(),
        }
    }
}

/// YaRN's attention temperature term (`get_mscale` in HuggingFace).
fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

/// θ^(−2i/dim) for i in 0..dim/2.
fn plain_inv_freq(base: f64, dim: usize) -> Vec<f64> {
    (0..dim / 2)
        .map(|i| 1.0 / base.powf((2 * i) as f64 / dim as f64))
        .collect()
}

impl RopeConfig {
    /// Number of rotated channels, `int(head_dim * partial_rotary_factor)`.
    pub fn rotary_dim(&self) -> usize {
        (self.head_dim as f64 * self.partial_rotary_factor) as usize
    }

    /// The method's scale factor (1 for `default`; LongRoPE's effective factor).
    pub fn factor(&self) -> f64 {
        match &self.scaling {
            RopeScaling::Default => 1.0,
            RopeScaling::Linear { factor } | RopeScaling::Dynamic { factor } => *factor,
            RopeScaling::Yarn(y) => y.factor,
            RopeScaling::Llama3(l) => l.factor,
            RopeScaling::LongRope(l) => l.factor.unwrap_or(
                self.max_position_embeddings as f64 / l.original_max_position_embeddings as f64,
            ),
        }
    }

    /// Unscaled inverse frequencies θ^(−2i/rotary_dim).
    pub fn base_inv_freq(&self) -> Vec<f64> {
        plain_inv_freq(self.rope_theta, self.rotary_dim())
    }

    /// Inverse frequencies and attention factor, as HuggingFace's `ROPE_INIT_FUNCTIONS[rope_type]`
    /// with `seq_len`. Only `dynamic` and `longrope` depend on `seq_len`; `None` means "at
    /// initialization" (dynamic then uses `max_position_embeddings`, longrope its short factors).
    pub fn frequencies(&self, seq_len: Option<usize>) -> RopeFrequencies {
        let dim = self.rotary_dim();
        let base = self.rope_theta;
        let (inv_freq, attention_factor) = match &self.scaling {
            RopeScaling::Default => (plain_inv_freq(base, dim), 1.0),
            RopeScaling::Linear { factor } => (
                plain_inv_freq(base, dim)
                    .into_iter()
                    .map(|f| f / factor)
                    .collect(),
                1.0,
            ),
            RopeScaling::Dynamic { factor } => {
                let max_pos = self.max_position_embeddings as f64;
                let seq = seq_len.map_or(max_pos, |s| (s as f64).max(max_pos));
                let d = dim as f64;
                let scaled_base =
                    base * ((factor * seq / max_pos) - (factor - 1.0)).powf(d / (d - 2.0));
                (plain_inv_freq(scaled_base, dim), 1.0)
            }
            RopeScaling::Yarn(y) => (yarn_inv_freq(base, dim, y), yarn_attention_factor(y)),
            RopeScaling::Llama3(l) => (llama3_inv_freq(base, dim, l), 1.0),
            RopeScaling::LongRope(l) => {
                let ext = match seq_len {
                    Some(s) if s > l.original_max_position_embeddings => &l.long_factor,
                    _ => &l.short_factor,
                };
                let inv = plain_inv_freq(base, dim)
                    .into_iter()
                    .zip(ext)
                    .map(|(f, e)| f / e)
                    .collect();
                let factor = self.factor();
                let af = l.attention_factor.unwrap_or_else(|| {
                    if factor <= 1.0 {
                        1.0
                    } else {
                        (1.0 + factor.ln() / (l.original_max_position_embeddings as f64).ln())
                            .sqrt()
                    }
                });
                (inv, af)
            }
        };
        RopeFrequencies {
            inv_freq,
            attention_factor,
            head_dim: self.head_dim,
        }
    }

    /// Per frequency pair, how far it was moved toward full interpolation: 0 = unchanged
    /// (extrapolated), 1 = divided by the whole [`factor`](Self::factor). Computed from the
    /// frequencies themselves, `(1 − inv/inv_base) / (1 − 1/factor)`, so it is defined for every
    /// method (dynamic NTK and LongRoPE may leave [0, 1]).
    pub fn interpolation_weights(&self, freqs: &RopeFrequencies) -> Vec<f64> {
        let factor = self.factor();
        self.base_inv_freq()
            .iter()
            .zip(&freqs.inv_freq)
            .map(|(b, f)| {
                if factor <= 1.0 {
                    0.0
                } else {
                    (1.0 - f / b) / (1.0 - 1.0 / factor)
                }
            })
            .collect()
    }
}

fn yarn_attention_factor(y: &YarnScaling) -> f64 {
    if let Some(af) = y.attention_factor {
        return af;
    }
    // HuggingFace: `if mscale and mscale_all_dim` (Python truthiness: both set and non-zero).
    match (y.mscale, y.mscale_all_dim) {
        (Some(m), Some(m_all)) if m != 0.0 && m_all != 0.0 => {
            yarn_mscale(y.factor, m) / yarn_mscale(y.factor, m_all)
        }
        _ => yarn_mscale(y.factor, 1.0),
    }
}

fn yarn_inv_freq(base: f64, dim: usize, y: &YarnScaling) -> Vec<f64> {
    let d = dim as f64;
    let original = y.original_max_position_embeddings as f64;
    // Dimension index at which a frequency completes `rotations` turns over the original context.
    let correction_dim =
        |rotations: f64| (d * (original / (rotations * 2.0 * PI)).ln()) / (2.0 * base.ln());
    let (mut low, mut high) = (correction_dim(y.beta_fast), correction_dim(y.beta_slow));
    if y.truncate {
        low = low.floor();
        high = high.ceil();
    }
    let low = low.max(0.0);
    let mut high = high.min(d - 1.0);
    if low == high {
        high += 0.001; // HuggingFace: prevent a zero-width ramp
    }
    plain_inv_freq(base, dim)
        .into_iter()
        .enumerate()
        .map(|(i, extrapolated)| {
            let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
            let extrapolation_weight = 1.0 - ramp;
            let interpolated = extrapolated / y.factor;
            interpolated * (1.0 - extrapolation_weight) + extrapolated * extrapolation_weight
        })
        .collect()
}

fn llama3_inv_freq(base: f64, dim: usize, l: &Llama3Scaling) -> Vec<f64> {
    let old_context = l.original_max_position_embeddings as f64;
    let low_freq_wavelen = old_context / l.low_freq_factor;
    let high_freq_wavelen = old_context / l.high_freq_factor;
    plain_inv_freq(base, dim)
        .into_iter()
        .map(|f| {
            let wavelen = 2.0 * PI / f;
            if wavelen < high_freq_wavelen {
                f
            } else if wavelen > low_freq_wavelen {
                f / l.factor
            } else {
                let smooth = (old_context / wavelen - l.low_freq_factor)
                    / (l.high_freq_factor - l.low_freq_factor);
                (1.0 - smooth) * f / l.factor + smooth * f
            }
        })
        .collect()
}

/// A RoPE request as `edgevla rope --spec` reads it: one entry of `shared/golden/rope_hf.json`
/// (`head_dim`, `rope_theta`, `max_position_embeddings`, `rope_parameters`, `seq_len`; every other
/// top-level key is ignored, so golden entries with their expected values pipe in unchanged).
#[derive(Clone, Debug, PartialEq)]
pub struct RopeSpec {
    /// The validated configuration.
    pub config: RopeConfig,
    /// Sequence length for `dynamic` and `longrope` (`null`/absent: at initialization).
    pub seq_len: Option<usize>,
}

/// The keys [`RopeSpec`] reads; the rest of a spec document is ignored.
const SPEC_KEYS: [&str; 5] = [
    "head_dim",
    "rope_theta",
    "partial_rotary_factor",
    "max_position_embeddings",
    "rope_parameters",
];

impl RopeSpec {
    /// Parses a spec from a JSON value (TOML documents convert to one losslessly).
    ///
    /// # Errors
    /// [`Error::Config`] naming the first bad key.
    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        let object = value
            .as_object()
            .ok_or_else(|| Error::config("<spec>", "must be a JSON object / TOML table"))?;
        let kept: serde_json::Map<String, serde_json::Value> = object
            .iter()
            .filter(|(k, _)| SPEC_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let file: RopeConfigFile =
            serde_path_to_error::deserialize(serde_json::Value::Object(kept)).map_err(|e| {
                let path = e.path().to_string();
                Error::config(
                    if path == "." { "<spec>".into() } else { path },
                    e.inner().to_string(),
                )
            })?;
        let config = RopeConfig::try_from(file)?;
        let seq_len = match object.get("seq_len") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| {
                        Error::config(
                            "seq_len",
                            format!("must be a non-negative integer or null, got {v}"),
                        )
                    })?,
            ),
        };
        Ok(Self { config, seq_len })
    }

    /// Parses a spec from text: JSON if it parses as JSON, otherwise TOML.
    ///
    /// # Errors
    /// [`Error::Config`] for text that is neither, or for a bad key.
    pub fn parse(text: &str) -> Result<Self> {
        let value = match serde_json::from_str::<serde_json::Value>(text) {
            Ok(v) => v,
            Err(json_err) => {
                let table: toml::Table = toml::from_str(text).map_err(|toml_err| {
                    Error::config(
                        "<spec>",
                        format!(
                            "neither JSON ({json_err}) nor TOML ({})",
                            toml_err.message()
                        ),
                    )
                })?;
                serde_json::to_value(table).map_err(|e| {
                    Error::config("<spec>", format!("TOML value not representable: {e}"))
                })?
            }
        };
        Self::from_json(&value)
    }

    /// The frequencies this spec asks for.
    pub fn frequencies(&self) -> RopeFrequencies {
        self.config.frequencies(self.seq_len)
    }
}

/// cos/sin of `position × inv_freq` for a block of tokens, laid out for [`RotaryTable::apply`].
///
/// `cos` is `[c, c]` and `sin` is `[−s, s]` over the rotated channels (both halves), so the
/// rotation is `x·cos + swap_halves(x)·sin`, which equals HuggingFace's
/// `x·cos + rotate_half(x)·sin`.
#[derive(Clone, Debug)]
pub struct RotaryTable<B: Backend> {
    cos: Tensor<B, 4>, // [rows, 1, seq, rotary_dim]
    sin: Tensor<B, 4>, // [rows, 1, seq, rotary_dim]
    rows: usize,
    seq: usize,
    head_dim: usize,
}

impl RopeFrequencies {
    /// Number of rotated channels.
    pub fn rotary_dim(&self) -> usize {
        self.inv_freq.len() * 2
    }

    /// Table rotating tokens to `positions` (one per token, shared by every batch row), with
    /// cos and sin multiplied by the attention factor as HuggingFace does.
    ///
    /// # Errors
    /// [`Error::Shape`] if `positions` is empty.
    pub fn table<B: Backend>(
        &self,
        positions: &[i64],
        device: &B::Device,
    ) -> Result<RotaryTable<B>> {
        self.build(positions, 1, self.attention_factor, false, device)
    }

    /// Like [`table`](Self::table) with different positions per batch row: `positions` is
    /// `[rows, seq]` flattened row-major.
    ///
    /// # Errors
    /// [`Error::Shape`] if `positions.len()` is not a positive multiple of `rows`.
    pub fn batched_table<B: Backend>(
        &self,
        positions: &[i64],
        rows: usize,
        device: &B::Device,
    ) -> Result<RotaryTable<B>> {
        self.build(positions, rows, self.attention_factor, false, device)
    }

    /// Table that re-rotates already-rotated keys by `deltas` positions (pure rotation, no
    /// attention factor): applying `shift_table(Δ)` to a key rotated at `p` gives the key
    /// rotated at `p + Δ`.
    ///
    /// # Errors
    /// [`Error::Shape`] if `deltas` is empty.
    pub fn shift_table<B: Backend>(
        &self,
        deltas: &[i64],
        device: &B::Device,
    ) -> Result<RotaryTable<B>> {
        self.build(deltas, 1, 1.0, false, device)
    }

    /// [`table`](Self::table) with the angles computed as HuggingFace's `LlamaRotaryEmbedding`
    /// computes them, in float32 (`inv_freq.float() @ position_ids.float()`, then `cos`/`sin`),
    /// even in a float64 model: at position 6000 that is ~4e-4 rad off the exact angle. For
    /// parity checks against HuggingFace's outputs; the runtime uses exact angles.
    ///
    /// # Errors
    /// As [`table`](Self::table).
    pub fn table_hf_f32<B: Backend>(
        &self,
        positions: &[i64],
        device: &B::Device,
    ) -> Result<RotaryTable<B>> {
        self.build(positions, 1, self.attention_factor, true, device)
    }

    fn build<B: Backend>(
        &self,
        positions: &[i64],
        rows: usize,
        scale: f64,
        f32_angles: bool,
        device: &B::Device,
    ) -> Result<RotaryTable<B>> {
        if rows == 0 || positions.is_empty() || !positions.len().is_multiple_of(rows) {
            return Err(Error::shape(
                "rope table",
                format!(
                    "{} positions do not split into {rows} non-empty rows",
                    positions.len()
                ),
            ));
        }
        let seq = positions.len() / rows;
        let half = self.inv_freq.len();
        let rot = 2 * half;
        let mut cos = Vec::with_capacity(positions.len() * rot);
        let mut sin = Vec::with_capacity(positions.len() * rot);
        for &p in positions {
            let (c, s): (Vec<f64>, Vec<f64>) = self
                .inv_freq
                .iter()
                .map(|f| {
                    if f32_angles {
                        let angle = p as f32 * *f as f32;
                        (
                            f64::from(angle.cos() * scale as f32),
                            f64::from(angle.sin() * scale as f32),
                        )
                    } else {
                        let angle = p as f64 * f;
                        (angle.cos() * scale, angle.sin() * scale)
                    }
                })
                .unzip();
            cos.extend_from_slice(&c);
            cos.extend_from_slice(&c);
            sin.extend(s.iter().map(|v| -v));
            sin.extend_from_slice(&s);
        }
        let shape = [rows, 1, seq, rot];
        let to_tensor = |values: Vec<f64>| float_tensor::<B, f64, 4>(values, shape, device);
        Ok(RotaryTable {
            cos: to_tensor(cos),
            sin: to_tensor(sin),
            rows,
            seq,
            head_dim: self.head_dim,
        })
    }
}

impl<B: Backend> RotaryTable<B> {
    /// Number of tokens per row.
    pub fn seq_len(&self) -> usize {
        self.seq
    }

    /// The sub-table for tokens `start..start + len` (a view for contiguous positions, so a
    /// table built once for `0..context` serves every step).
    ///
    /// # Errors
    /// [`Error::Shape`] if the range leaves the table or is empty.
    pub fn narrow(&self, start: usize, len: usize) -> Result<Self> {
        if len == 0 || start + len > self.seq {
            return Err(Error::shape(
                "rope narrow",
                format!(
                    "tokens {start}..{} of a {}-token table",
                    start + len,
                    self.seq
                ),
            ));
        }
        Ok(Self {
            cos: self.cos.clone().narrow(2, start, len),
            sin: self.sin.clone().narrow(2, start, len),
            rows: self.rows,
            seq: len,
            head_dim: self.head_dim,
        })
    }

    /// Rotates `x` in the HuggingFace `rotate_half` layout; channels past `rotary_dim` pass
    /// through unchanged.
    ///
    /// # Shapes
    /// - `x`: `[batch, heads, seq, head_dim]`, with `batch` equal to the table's rows or the table
    ///   built for one shared row.
    /// - output: same as `x`.
    ///
    /// # Errors
    /// [`Error::Shape`] if `seq`, `head_dim` or `batch` do not match the table.
    pub fn apply(&self, x: Tensor<B, 4>) -> Result<Tensor<B, 4>> {
        let [batch, _heads, seq, head_dim] = x.dims();
        if seq != self.seq || head_dim != self.head_dim || (self.rows != 1 && self.rows != batch) {
            return Err(Error::shape(
                "rope apply",
                format!(
                    "input [batch {batch}, seq {seq}, head_dim {head_dim}] vs table [rows {}, seq {}, head_dim {}]",
                    self.rows, self.seq, self.head_dim
                ),
            ));
        }
        let rot = self.cos.dims()[3];
        let half = rot / 2;
        let (x_rot, x_pass) = if rot < head_dim {
            (
                x.clone().narrow(3, 0, rot),
                Some(x.narrow(3, rot, head_dim - rot)),
            )
        } else {
            (x, None)
        };
        let swapped = Tensor::cat(
            vec![
                x_rot.clone().narrow(3, half, half),
                x_rot.clone().narrow(3, 0, half),
            ],
            3,
        );
        let rotated = x_rot * self.cos.clone() + swapped * self.sin.clone();
        Ok(match x_pass {
            Some(pass) => Tensor::cat(vec![rotated, pass], 3),
            None => rotated,
        })
    }
}

#[cfg(test)]
mod tests;
