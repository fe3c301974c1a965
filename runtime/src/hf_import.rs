//! Imports a HuggingFace Llama backbone (`config.json` + `model.safetensors`, as
//! `transformers.LlamaModel.save_pretrained` or [`crate::checkpoint::export_hf`] writes them)
//! into an edgevla model: the backbone's sizes, RMSNorm epsilon and RoPE come from
//! `config.json`, its weights from `model.safetensors`; everything edgevla adds around the
//! backbone (patch, camera, proprio and readout embeddings, the heads, a memory token) comes
//! from a base model the caller gives (a checkpoint's weights or a fresh initialization).
//!
//! Strict: a config key that changes the architecture in a way edgevla does not implement (biases,
//! another activation, a sliding window…), a tensor of another name, shape or dtype than
//! expected, or a missing tensor is an error naming it. `model.embed_tokens.weight` is used only
//! when it is edgevla's byte vocabulary (`[257, d_model]`); `lm_head.weight` is never used.

use std::path::Path;

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::{INSTRUCTION_VOCAB, Vla, VlaConfig};
use crate::rope::{RopeConfig, RopeConfigFile, RopeParameters};

/// Keys of a Llama `config.json` that are read into the model config.
const MAPPED: [&str; 12] = [
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "max_position_embeddings",
    "rope_theta",
    "rope_parameters",
    "rope_scaling",
    "partial_rotary_factor",
];

/// Keys that must hold these values (anything else is an architecture edgevla lacks).
fn required(key: &str) -> Option<Value> {
    Some(match key {
        "model_type" => Value::from("llama"),
        "hidden_act" => Value::from("silu"),
        "attention_bias" | "mlp_bias" => Value::from(false),
        "pretraining_tp" => Value::from(1),
        _ => return None,
    })
}

/// Keys that do not change the backbone's computation (training, generation and bookkeeping
/// settings `transformers` writes into every config).
const IGNORED: [&str; 33] = [
    "_name_or_path",
    "architectures",
    "attention_dropout",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "chunk_size_feed_forward",
    "dtype",
    "torch_dtype",
    "id2label",
    "label2id",
    "initializer_range",
    "is_encoder_decoder",
    "output_attentions",
    "output_hidden_states",
    "problem_type",
    "return_dict",
    "tie_word_embeddings",
    "transformers_version",
    "use_cache",
    "vocab_size",
    "add_cross_attention",
    "tokenizer_class",
    "prefix",
    "task_specific_params",
    "finetuning_task",
    "cross_attention_hidden_size",
    "decoder_start_token_id",
    "sep_token_id",
    "is_decoder",
    "tf_legacy_loss",
    "use_bfloat16",
    "torchscript",
];

/// What an import took from where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportReport {
    /// Backbone tensors loaded from the file.
    pub loaded: Vec<String>,
    /// Tensors in the file that were not used, and why.
    pub unused: Vec<(String, String)>,
    /// Whether the instruction embedding came from the file (`embed_tokens`).
    pub instruction_embedding_from_file: bool,
}

fn cfg_err(key: &str, reason: impl Into<String>) -> Error {
    Error::config(format!("config.json: {key}"), reason)
}

fn usize_key(config: &serde_json::Map<String, Value>, key: &str) -> Result<Option<usize>> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| cfg_err(key, format!("{v} is not a non-negative integer"))),
    }
}

/// The model config of a HuggingFace Llama `config.json` (text): the backbone keys replace
/// those of `base`; every other setting (cameras, patches, readouts, heads, KV cache, memory)
/// stays `base`'s.
///
/// # Errors
/// [`Error::Config`] naming the first unsupported, missing or invalid key.
pub fn config_from_hf(text: &str, base: &VlaConfig) -> Result<VlaConfig> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| cfg_err(".", format!("not JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(cfg_err(".", "not a JSON object"));
    };
    for (key, v) in &map {
        if let Some(want) = required(key) {
            if *v != want && !(key == "pretraining_tp" && v.is_null()) {
                return Err(cfg_err(
                    key,
                    format!("{v}: edgevla's backbone needs {want}"),
                ));
            }
        } else if !MAPPED.contains(&key.as_str()) && !IGNORED.contains(&key.as_str()) {
            return Err(cfg_err(key, "not a key edgevla's Llama import supports"));
        }
    }
    let need = |key: &str| usize_key(&map, key)?.ok_or_else(|| cfg_err(key, "missing"));
    let mut c = base.clone();
    c.d_model = need("hidden_size")?;
    c.ffn_dim = need("intermediate_size")?;
    c.n_layers = need("num_hidden_layers")?;
    c.n_heads = need("num_attention_heads")?;
    c.n_kv_heads = usize_key(&map, "num_key_value_heads")?.unwrap_or(c.n_heads);
    if c.n_heads == 0 || !c.d_model.is_multiple_of(c.n_heads) {
        return Err(cfg_err(
            "num_attention_heads",
            format!("{} does not divide hidden_size {}", c.n_heads, c.d_model),
        ));
    }
    let head_dim = c.d_model / c.n_heads;
    if let Some(h) = usize_key(&map, "head_dim")?
        && h != head_dim
    {
        return Err(cfg_err(
            "head_dim",
            format!("{h}: edgevla needs hidden_size / num_attention_heads = {head_dim}"),
        ));
    }
    if let Some(eps) = map.get("rms_norm_eps") {
        c.rms_norm_eps = eps
            .as_f64()
            .ok_or_else(|| cfg_err("rms_norm_eps", format!("{eps} is not a number")))?;
    }
    let parameters = match (map.get("rope_parameters"), map.get("rope_scaling")) {
        (Some(p), _) if !p.is_null() => p.clone(),
        (_, Some(p)) if !p.is_null() => p.clone(),
        _ => Value::Object(serde_json::Map::new()),
    };
    let parameters: RopeParameters = serde_json::from_value(parameters)
        .map_err(|e| cfg_err("rope_parameters", e.to_string()))?;
    let float = |key: &str| -> Result<Option<f64>> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| cfg_err(key, format!("{v} is not a number"))),
        }
    };
    let file = RopeConfigFile {
        head_dim: Some(head_dim),
        rope_theta: float("rope_theta")?,
        partial_rotary_factor: float("partial_rotary_factor")?,
        max_position_embeddings: Some(need("max_position_embeddings")?),
        rope_parameters: parameters,
    };
    c.rope = RopeConfig::try_from(file).map_err(|e| cfg_err("rope_parameters", e.to_string()))?;
    c.context_length = None;
    c.validate()?;
    Ok(c)
}

/// One tensor of the file as f32 values, checked against the expected HuggingFace shape.
fn tensor_f32(
    file: &SafeTensors<'_>,
    name: &str,
    shape: &[usize],
    path: &Path,
) -> Result<Vec<f32>> {
    let view = file
        .tensor(name)
        .map_err(|_| Error::checkpoint(path, format!("tensor {name} is missing")))?;
    if view.dtype() != Dtype::F32 {
        return Err(Error::checkpoint(
            path,
            format!("tensor {name} is {:?}; the import reads F32", view.dtype()),
        ));
    }
    if view.shape() != shape {
        return Err(Error::checkpoint(
            path,
            format!(
                "tensor {name} has shape {:?}, expected {shape:?}",
                view.shape()
            ),
        ));
    }
    Ok(view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Loads the backbone of the HuggingFace folder `dir` into `base` (a model whose config came
/// from [`config_from_hf`] for that folder): every block's projections and norms, the final
/// norm, and `embed_tokens` when it has edgevla's vocabulary.
///
/// # Errors
/// [`Error::Io`] / [`Error::Checkpoint`] for unreadable files or a tensor of another name,
/// shape or dtype than the config implies.
pub fn load_hf_weights<B: Backend>(
    dir: &Path,
    mut model: Vla<B>,
    device: &B::Device,
) -> Result<(Vla<B>, ImportReport)> {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::checkpoint(&path, format!("not a safetensors file: {e}")))?;
    let c = model.config().clone();
    let (d, hd) = (c.d_model, c.head_dim());
    let mut report = ImportReport {
        loaded: Vec::new(),
        unused: Vec::new(),
        instruction_embedding_from_file: false,
    };
    // `[out, in]` in the file → burn's `[in, out]`.
    let mut linear = |name: String, out: usize, inp: usize| -> Result<Param<Tensor<B, 2>>> {
        let values = tensor_f32(&file, &name, &[out, inp], &path)?;
        report.loaded.push(name);
        let t = Tensor::<B, 2>::from_data(TensorData::new(values, [out, inp]), device);
        Ok(Param::from_tensor(t.transpose()))
    };
    let mut norms = Vec::new();
    for (i, block) in model.layers.iter_mut().enumerate() {
        let p = format!("model.layers.{i}");
        let a = &mut block.self_attn;
        a.q_proj.weight = linear(format!("{p}.self_attn.q_proj.weight"), c.n_heads * hd, d)?;
        a.k_proj.weight = linear(format!("{p}.self_attn.k_proj.weight"), c.n_kv_heads * hd, d)?;
        a.v_proj.weight = linear(format!("{p}.self_attn.v_proj.weight"), c.n_kv_heads * hd, d)?;
        a.o_proj.weight = linear(format!("{p}.self_attn.o_proj.weight"), d, c.n_heads * hd)?;
        let m = &mut block.mlp;
        m.gate_proj.weight = linear(format!("{p}.mlp.gate_proj.weight"), c.ffn_dim, d)?;
        m.up_proj.weight = linear(format!("{p}.mlp.up_proj.weight"), c.ffn_dim, d)?;
        m.down_proj.weight = linear(format!("{p}.mlp.down_proj.weight"), d, c.ffn_dim)?;
        norms.push(format!("{p}.input_layernorm.weight"));
        norms.push(format!("{p}.post_attention_layernorm.weight"));
    }
    norms.push("model.norm.weight".into());
    let mut gammas = Vec::with_capacity(norms.len());
    for name in &norms {
        let values = tensor_f32(&file, name, &[d], &path)?;
        gammas.push(Param::from_tensor(Tensor::<B, 1>::from_data(
            TensorData::new(values, [d]),
            device,
        )));
        report.loaded.push(name.clone());
    }
    let mut gammas = gammas.into_iter();
    for block in &mut model.layers {
        if let (Some(a), Some(b)) = (gammas.next(), gammas.next()) {
            block.input_layernorm.gamma = a;
            block.post_attention_layernorm.gamma = b;
        }
    }
    if let Some(g) = gammas.next() {
        model.norm.gamma = g;
    }
    let embed = "model.embed_tokens.weight";
    for name in file.names() {
        if report.loaded.iter().any(|l| l == name) {
            continue;
        }
        let shape = file
            .tensor(name)
            .map(|v| v.shape().to_vec())
            .unwrap_or_default();
        if name == embed && shape == [INSTRUCTION_VOCAB, d] {
            let values = tensor_f32(&file, name, &[INSTRUCTION_VOCAB, d], &path)?;
            model.instruction_embed = Param::from_tensor(Tensor::from_data(
                TensorData::new(values, [INSTRUCTION_VOCAB, d]),
                device,
            ));
            report.loaded.push(name.to_string());
            report.instruction_embedding_from_file = true;
        } else if name == embed {
            report.unused.push((
                name.to_string(),
                format!(
                    "shape {shape:?}: edgevla's instruction vocabulary is {INSTRUCTION_VOCAB} byte tokens"
                ),
            ));
        } else if name == "lm_head.weight" {
            report.unused.push((
                name.to_string(),
                "edgevla has no language-model head".into(),
            ));
        } else {
            return Err(Error::checkpoint(
                &path,
                format!("tensor {name} is not part of a Llama backbone edgevla imports"),
            ));
        }
    }
    report.loaded.sort();
    Ok((model, report))
}

/// Reads `dir/config.json` into a model config over `base` ([`config_from_hf`]).
///
/// # Errors
/// As [`config_from_hf`]; [`Error::Io`] if the file cannot be read.
pub fn read_hf_config(dir: &Path, base: &VlaConfig) -> Result<VlaConfig> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    config_from_hf(&text, base)
}

#[cfg(test)]
mod tests;
