//! Checkpoints and HuggingFace export.
//!
//! - [`save`] / [`load`]: a checkpoint folder holds `config.toml` (the [`VlaConfig`]) beside
//!   `weights.mpk` (burn's named MessagePack recorder, full precision). Loading checks the
//!   stored architecture against the one expected, so weights never meet a model of another
//!   shape; the run-time settings (`rope`, `kv_cache`, `context_length`) may differ and are
//!   taken from the expected config.
//! - [`export_hf`]: the backbone as `model.safetensors` with HuggingFace Llama names
//!   (`model.layers.N.self_attn.q_proj.weight`, …, `[out, in]` layout) plus a `config.json`
//!   that `transformers.LlamaConfig` reads, RoPE scaling included. The instruction byte
//!   embedding is `model.embed_tokens.weight` (vocabulary 257).
//! - [`write_parity_sample`]: inputs and this model's backbone output for `tools/hf_parity.py`.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use safetensors::{Dtype, tensor::TensorView};
use serde_json::json;

use crate::error::{Error, Result};
use crate::model::{INSTRUCTION_VOCAB, Vla, VlaConfig};
use crate::rope::RopeConfigFile;

const CONFIG_FILE: &str = "config.toml";
const WEIGHTS_STEM: &str = "weights"; // the recorder adds `.mpk`

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::<FullPrecisionSettings>::new()
}

/// Writes `model` to the folder `dir` (created if needed).
///
/// # Errors
/// [`Error::Io`] or [`Error::Checkpoint`] if a file cannot be written.
pub fn save<B: Backend>(model: &Vla<B>, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let text = toml::to_string(model.config())
        .map_err(|e| Error::checkpoint(dir, format!("config: {e}")))?;
    let config_path = dir.join(CONFIG_FILE);
    std::fs::write(&config_path, text).map_err(|e| Error::io(&config_path, e))?;
    model
        .clone()
        .save_file(dir.join(WEIGHTS_STEM), &recorder())
        .map_err(|e| Error::checkpoint(dir, format!("weights: {e}")))
}

/// Reads the model stored in `dir`. With `expected`, the stored architecture (every key but
/// `rope`, `kv_cache`, `context_length` and the memory bank's run-time settings:
/// [`VlaConfig::same_architecture`]) must equal it, and the model runs with
/// `expected`'s run-time settings.
///
/// # Errors
/// [`Error::Checkpoint`] for a missing or malformed folder, weights that do not load, or an
/// architecture other than `expected`'s (the first differing key is named).
pub fn load<B: Backend>(
    dir: &Path,
    expected: Option<&VlaConfig>,
    device: &B::Device,
) -> Result<Vla<B>> {
    let config_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path)
        .map_err(|e| Error::checkpoint(dir, format!("{CONFIG_FILE}: {e}")))?;
    let stored = VlaConfig::from_toml(&text)
        .map_err(|e| Error::checkpoint(dir, format!("{CONFIG_FILE}: {e}")))?;
    if let Some(expected) = expected
        && let Some((key, have, want)) = stored.architecture_difference(expected)
    {
        return Err(Error::checkpoint(
            dir,
            format!(
                "was trained with another model architecture (`{key}`: checkpoint has {have}, expected {want})"
            ),
        ));
    }
    let weights = dir.join(format!("{WEIGHTS_STEM}.mpk"));
    if !weights.exists() {
        return Err(Error::checkpoint(
            dir,
            format!("{} is missing", weights.display()),
        ));
    }
    expected
        .unwrap_or(&stored)
        .init::<B>(device)
        .load_file(dir.join(WEIGHTS_STEM), &recorder(), device)
        .map_err(|e| Error::checkpoint(dir, format!("weights: {e}")))
}

/// Loads a checkpoint as the start of a training run of a model of `expected`'s
/// architecture: as [`load`], and a checkpoint of the same backbone also loads into a model
/// that adds a memory (its memory token drawn fresh, [`Vla::with_memory`]) or has another kind
/// of action head (`action_bins`; the head drawn fresh, [`Vla::with_action_head`]). Returns
/// the model and the parts that start fresh (`"memory token"`, `"action head"`).
///
/// # Errors
/// As [`load`].
pub fn load_init<B: Backend>(
    dir: &Path,
    expected: &VlaConfig,
    device: &B::Device,
) -> Result<(Vla<B>, Vec<&'static str>)> {
    let text = std::fs::read_to_string(dir.join(CONFIG_FILE))
        .map_err(|e| Error::checkpoint(dir, format!("{CONFIG_FILE}: {e}")))?;
    let stored = VlaConfig::from_toml(&text)
        .map_err(|e| Error::checkpoint(dir, format!("{CONFIG_FILE}: {e}")))?;
    let mut base = expected.clone();
    let mut fresh = Vec::new();
    if stored.memory.is_none() && expected.memory.is_some() {
        base.memory = None;
        fresh.push("memory token");
    }
    if stored.action_bins != expected.action_bins {
        base.action_bins = stored.action_bins;
        fresh.push("action head");
    }
    let mut model = load(dir, Some(&base), device)?;
    if let (None, Some(memory)) = (&base.memory, &expected.memory) {
        model = model.with_memory(memory.clone(), device)?;
    }
    if base.action_bins != expected.action_bins {
        model = model.with_action_head(expected.action_bins.clone(), device)?;
    }
    Ok((model, fresh))
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    crate::host::host_values(t, "export")
}

/// One tensor as it goes into a safetensors file.
struct Exported {
    name: String,
    shape: Vec<usize>,
    bytes: Vec<u8>,
    dtype: Dtype,
}

impl Exported {
    fn f32(name: impl Into<String>, shape: Vec<usize>, values: &[f32]) -> Self {
        Self {
            name: name.into(),
            shape,
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            dtype: Dtype::F32,
        }
    }
}

/// Every backbone tensor, HuggingFace names and `[out, in]` layout.
fn hf_tensors<B: Backend>(model: &Vla<B>) -> Result<Vec<Exported>> {
    let mut tensors = Vec::new();
    let mut push = |name: String, t: Tensor<B, 2>| -> Result<()> {
        let mut shape = t.dims().to_vec();
        if name.ends_with("norm.weight") {
            shape = vec![shape[1]]; // norm weights are 1-D in HuggingFace
        }
        tensors.push(Exported::f32(name, shape, &host(t)?));
        Ok(())
    };
    push(
        "model.embed_tokens.weight".into(),
        model.instruction_embed.val(),
    )?;
    for (i, block) in model.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        let linear = |l: &burn::nn::Linear<B>| l.weight.val().transpose(); // burn stores [in, out]
        let attn = &block.self_attn;
        push(format!("{p}.self_attn.q_proj.weight"), linear(&attn.q_proj))?;
        push(format!("{p}.self_attn.k_proj.weight"), linear(&attn.k_proj))?;
        push(format!("{p}.self_attn.v_proj.weight"), linear(&attn.v_proj))?;
        push(format!("{p}.self_attn.o_proj.weight"), linear(&attn.o_proj))?;
        push(
            format!("{p}.mlp.gate_proj.weight"),
            linear(&block.mlp.gate_proj),
        )?;
        push(
            format!("{p}.mlp.up_proj.weight"),
            linear(&block.mlp.up_proj),
        )?;
        push(
            format!("{p}.mlp.down_proj.weight"),
            linear(&block.mlp.down_proj),
        )?;
        push(
            format!("{p}.input_layernorm.weight"),
            block.input_layernorm.gamma.val().unsqueeze(),
        )?;
        push(
            format!("{p}.post_attention_layernorm.weight"),
            block.post_attention_layernorm.gamma.val().unsqueeze(),
        )?;
    }
    push(
        "model.norm.weight".into(),
        model.norm.gamma.val().unsqueeze(),
    )?;
    Ok(tensors)
}

fn write_safetensors(path: &Path, tensors: &[Exported]) -> Result<()> {
    let views = tensors
        .iter()
        .map(|t| {
            TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
                .map(|view| (t.name.clone(), view))
                .map_err(|e| Error::checkpoint(path, format!("{}: {e}", t.name)))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize_to_file(views, None, path)
        .map_err(|e| Error::checkpoint(path, e.to_string()))
}

/// HuggingFace `config.json` for the backbone.
fn hf_config(c: &VlaConfig) -> serde_json::Value {
    let rope = RopeConfigFile::from(c.rope.clone());
    let mut rope_parameters = serde_json::to_value(&rope.rope_parameters).unwrap_or_default();
    if let Some(map) = rope_parameters.as_object_mut() {
        map.insert("rope_theta".into(), json!(c.rope.rope_theta));
        if c.rope.partial_rotary_factor != 1.0 {
            map.insert(
                "partial_rotary_factor".into(),
                json!(c.rope.partial_rotary_factor),
            );
        }
    }
    json!({
        "architectures": ["LlamaModel"],
        "model_type": "llama",
        "hidden_size": c.d_model,
        "intermediate_size": c.ffn_dim,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim(),
        "hidden_act": "silu",
        "rms_norm_eps": c.rms_norm_eps,
        "max_position_embeddings": c.rope.max_position_embeddings,
        "vocab_size": INSTRUCTION_VOCAB,
        "rope_theta": c.rope.rope_theta,
        "rope_parameters": rope_parameters,
        "attention_bias": false,
        "mlp_bias": false,
        "tie_word_embeddings": false,
        "torch_dtype": "float32",
    })
}

/// Writes `model.safetensors` and `config.json` into `dir`; returns the paths written.
///
/// # Errors
/// [`Error::Io`] / [`Error::Checkpoint`] if a file cannot be written.
pub fn export_hf<B: Backend>(model: &Vla<B>, dir: &Path) -> Result<Vec<PathBuf>> {
    let weights = dir.join("model.safetensors");
    write_safetensors(&weights, &hf_tensors(model)?)?;
    let config = dir.join("config.json");
    let text = serde_json::to_string_pretty(&hf_config(model.config()))
        .map_err(|e| Error::checkpoint(&config, e.to_string()))?;
    std::fs::write(&config, text).map_err(|e| Error::io(&config, e))?;
    Ok(vec![weights, config])
}

/// Writes `parity.safetensors`: `inputs_embeds` `[1, tokens, d_model]` (standard normal,
/// seeded), `position_ids` `[1, tokens]` (0..tokens, i64) and `hidden_states`, this model's
/// causal backbone output (after the final norm) for them.
///
/// # Errors
/// [`Error::Shape`] for zero tokens; IO errors as [`export_hf`].
pub fn write_parity_sample<B: Backend>(
    model: &Vla<B>,
    tokens: usize,
    seed: u64,
    dir: &Path,
    device: &B::Device,
) -> Result<PathBuf> {
    if tokens == 0 {
        return Err(Error::shape("parity sample", "zero tokens"));
    }
    let d = model.config().d_model;
    B::seed(device, seed.wrapping_add(1));
    let x = Tensor::<B, 3>::random([1, tokens, d], Distribution::Normal(0.0, 1.0), device);
    let positions: Vec<i64> = (0..tokens as i64).collect();
    let table = model
        .config()
        .rope
        .frequencies(Some(tokens))
        .table::<B>(&positions, device)?;
    let hidden = model.backbone(
        x.clone(),
        &table,
        crate::model::causal_bias(0, tokens, device),
    )?;
    let position_bytes: Vec<u8> = positions.iter().flat_map(|p| p.to_le_bytes()).collect();
    let path = dir.join("parity.safetensors");
    write_safetensors(
        &path,
        &[
            Exported::f32("inputs_embeds", vec![1, tokens, d], &host(x)?),
            Exported {
                name: "position_ids".into(),
                shape: vec![1, tokens],
                bytes: position_bytes,
                dtype: Dtype::I64,
            },
            Exported::f32("hidden_states", vec![1, tokens, d], &host(hidden)?),
        ],
    )?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;

    use super::*;

    type B = NdArray<f32>;

    fn config(text_patch: Option<(&str, &str)>) -> VlaConfig {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/model/edge.toml");
        let mut text = std::fs::read_to_string(path).expect("edge config");
        text = text.replace("n_layers = 6", "n_layers = 2");
        if let Some((from, to)) = text_patch {
            text = text.replace(from, to);
        }
        VlaConfig::from_toml(&text).expect("config")
    }

    /// `load_init` grafts what a checkpoint lacks: a memory token and another kind of action
    /// head start fresh (and are named), every other weight is the checkpoint's; a backbone
    /// of another size is still refused.
    #[test]
    fn load_init_grafts_a_memory_and_an_action_head() {
        let device = Default::default();
        let c = config(None);
        let model = c.init::<B>(&device);
        let dir = tempfile::tempdir().expect("tempdir");
        save(&model, dir.path()).expect("save");
        let (same, fresh) = load_init::<B>(dir.path(), &c, &device).expect("same");
        assert!(fresh.is_empty());
        assert!(
            host(same.action_head.weight.val()).expect("a")
                == host(model.action_head.weight.val()).expect("b")
        );

        let mut grown = c.clone();
        grown.memory = Some(crate::model::MemoryConfig {
            bank_steps: 8,
            window_steps: 4,
            bank_log_scale: None,
            bank_top_k: None,
            bank_eviction: Default::default(),
            bank_recent_steps: None,
        });
        grown.action_bins = Some(crate::model::ActionBins {
            bins: 8,
            low: -1.0,
            high: 1.0,
        });
        let (loaded, fresh) = load_init::<B>(dir.path(), &grown, &device).expect("graft");
        assert_eq!(fresh, ["memory token", "action head"]);
        assert_eq!(loaded.config(), &grown);
        assert!(
            host(loaded.clone().action_head.weight.val()).expect("a")
                == host(loaded.action_head.weight.val()).expect("b"),
            "the fresh head's weights are drawn once: a clone has the same"
        );
        assert!(loaded.memory_token.is_some());
        assert_eq!(
            loaded.action_head.weight.val().dims(),
            [c.n_readout * c.d_model, grown.action_head_outputs()]
        );
        assert!(
            host(loaded.layers[1].mlp.down_proj.weight.val()).expect("a")
                == host(model.layers[1].mlp.down_proj.weight.val()).expect("b"),
            "the backbone is the checkpoint's"
        );
        // And back: a binned checkpoint into a regression head.
        let binned = dir.path().join("binned");
        save(&loaded, &binned).expect("save binned");
        let (back, fresh) = load_init::<B>(
            &binned,
            &VlaConfig {
                action_bins: None,
                ..grown.clone()
            },
            &device,
        )
        .expect("back");
        assert_eq!(fresh, ["action head"]);
        assert_eq!(back.config().action_head_outputs(), c.action_values());

        let other = config(Some(("ffn_dim = 704", "ffn_dim = 512")));
        assert!(load_init::<B>(dir.path(), &other, &device).is_err());
    }

    #[test]
    fn save_load_round_trip_and_wrong_config_is_refused() {
        let device = Default::default();
        let c = config(None);
        let model = c.init::<B>(&device);
        let dir = tempfile::tempdir().expect("tempdir");
        save(&model, dir.path()).expect("save");
        let loaded = load::<B>(dir.path(), Some(&c), &device).expect("load");
        let (a, b) = (
            host(model.readout.val()).expect("a"),
            host(loaded.readout.val()).expect("b"),
        );
        assert!(a == b, "readout differs after a round trip");
        let (a, b) = (
            host(model.layers[1].mlp.down_proj.weight.val()).expect("a"),
            host(loaded.layers[1].mlp.down_proj.weight.val()).expect("b"),
        );
        assert!(a == b, "layer 1 down_proj differs after a round trip");

        let other = config(Some(("ffn_dim = 704", "ffn_dim = 512")));
        let err = load::<B>(dir.path(), Some(&other), &device)
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|m| m.contains("ffn_dim")),
            "{err:?}"
        );

        // Run-time settings (RoPE, cache) may differ from the checkpoint's; the model takes them.
        let other_rope = config(Some((
            "rope_parameters = { rope_type = \"default\" }",
            "rope_parameters = { rope_type = \"linear\", factor = 2.0 }",
        )));
        let relaxed = load::<B>(dir.path(), Some(&other_rope), &device).expect("other rope");
        assert_eq!(relaxed.config().rope, other_rope.rope);

        // Loading the folder fails with a message that names `what`.
        let fails_naming = |what: &str| {
            let err = load::<B>(dir.path(), None, &device)
                .err()
                .map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|m| m.contains(what)),
                "{what}: {err:?}"
            );
        };
        // Truncated weights (a copy cut at several lengths): an error naming the weights, not
        // a panic.
        let weights = std::fs::read(dir.path().join("weights.mpk")).expect("weights");
        for cut in [weights.len() / 2, weights.len() - 1, 16] {
            std::fs::write(dir.path().join("weights.mpk"), &weights[..cut]).expect("write");
            fails_naming("weights");
        }
        // A corrupt or unknown-key config.toml: an error naming the file (and the key).
        let config_path = dir.path().join("config.toml");
        let good = std::fs::read_to_string(&config_path).expect("config");
        for (bad, names) in [
            ("d_model = [oops".to_string(), "config.toml"),
            (format!("{good}\nd_modle = 3\n"), "d_modle"),
        ] {
            std::fs::write(&config_path, bad).expect("write");
            fails_naming(names);
        }
        std::fs::write(&config_path, good).expect("write");
        // A folder without weights.
        std::fs::remove_file(dir.path().join("weights.mpk")).expect("remove");
        fails_naming("missing");
        // Corrupt weights: an error, not a panic.
        std::fs::write(dir.path().join("weights.mpk"), b"not a checkpoint").expect("write");
        assert!(matches!(
            load::<B>(dir.path(), None, &device),
            Err(Error::Checkpoint { .. })
        ));
        // Missing folder.
        assert!(load::<B>(&dir.path().join("nope"), None, &device).is_err());
    }

    #[test]
    fn export_names_shapes_and_config() {
        let device = Default::default();
        let c = config(Some((
            "rope_parameters = { rope_type = \"default\" }",
            "rope_parameters = { rope_type = \"yarn\", factor = 4.0, original_max_position_embeddings = 512 }",
        )));
        let model = c.init::<B>(&device);
        let dir = tempfile::tempdir().expect("tempdir");
        export_hf(&model, dir.path()).expect("export");
        let bytes = std::fs::read(dir.path().join("model.safetensors")).expect("read");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("parse");
        let q = st
            .tensor("model.layers.1.self_attn.q_proj.weight")
            .expect("q");
        assert_eq!(q.shape(), &[256, 256]);
        let k = st
            .tensor("model.layers.0.self_attn.k_proj.weight")
            .expect("k");
        assert_eq!(k.shape(), &[64, 256], "[n_kv_heads · head_dim, d_model]");
        assert_eq!(
            st.tensor("model.layers.0.mlp.down_proj.weight")
                .expect("down")
                .shape(),
            &[256, 704]
        );
        assert_eq!(
            st.tensor("model.norm.weight").expect("norm").shape(),
            &[256]
        );
        assert_eq!(
            st.tensor("model.embed_tokens.weight").expect("emb").shape(),
            &[257, 256]
        );
        assert_eq!(st.len(), 2 + 2 * 9);
        // Values are the transposed burn weight.
        let burn_k = host(model.layers[0].self_attn.k_proj.weight.val()).expect("k"); // [256, 64]
        let hf_k: Vec<f32> = k
            .data()
            .chunks(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(hf_k[3 * 256 + 5], burn_k[5 * 64 + 3]);
        let config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("config.json")).expect("read"),
        )
        .expect("json");
        assert_eq!(config["num_key_value_heads"], 2);
        assert_eq!(config["rope_parameters"]["rope_type"], "yarn");
        assert_eq!(
            config["rope_parameters"]["original_max_position_embeddings"],
            512
        );
    }
}
