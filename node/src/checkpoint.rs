//! What runs a checkpoint needs to know about it, beside its weights: where a checkpoint named
//! by a relative path is found, the task it was trained on (`task.toml`: what its actions mean
//! and how its inputs were made) and its image preprocessing (`preprocess.toml`), each checked
//! against the model before anything runs; and the shipped configs by name or path.

use std::path::{Path, PathBuf};

use runtime::model::VlaConfig;

use crate::error::{Context, Error, Result};

/// The text of a config given by shipped name (`shipped` is its lookup) or by path.
///
/// # Errors
/// [`Error::Io`] when `name` is no shipped config and no readable file.
pub fn read_named(name: &str, shipped: Option<&'static configs::Preset>) -> Result<String> {
    match shipped {
        Some(preset) => Ok(preset.text.to_string()),
        None => std::fs::read_to_string(name).map_err(|e| Error::io(name, e)),
    }
}

/// A model config by shipped name (configs/model/) or path, validated.
///
/// # Errors
/// An unreadable file, or a config that does not parse or validate.
pub fn load_model_config(name_or_path: &str) -> Result<VlaConfig> {
    let text = read_named(name_or_path, configs::model_preset(name_or_path))?;
    VlaConfig::from_toml(&text).with_context(|| format!("model config {name_or_path}"))
}

/// Replaces the model's RoPE with the shipped preset `name` (e.g. yarn-4x) and re-validates.
///
/// # Errors
/// An unknown preset, or a model config that does not validate with it.
pub fn apply_rope_preset(config: &mut VlaConfig, name: &str) -> Result<()> {
    let preset = configs::rope_preset(name)
        .ok_or_else(|| Error::config("rope", format!("unknown RoPE preset `{name}`")))?;
    config.rope = runtime::rope::RopeSpec::parse(preset.text)?.config;
    config
        .validate()
        .context("model config with the RoPE preset")?;
    Ok(())
}

/// The file beside a checkpoint's `config.toml` holding the task it was trained on (a
/// `sim::TaskConfig`): what its actions mean and how its inputs were made ([`model_task`],
/// [`fit_task_to_model`]).
pub const TASK_FILE: &str = "task.toml";

/// Writes the training `task` into checkpoint folder `dir` ([`TASK_FILE`]).
///
/// # Errors
/// The file cannot be written.
pub fn write_task(dir: &Path, task: &sim::TaskConfig) -> Result<()> {
    let path = dir.join(TASK_FILE);
    let text = toml::to_string(task).map_err(|e| Error::Invalid(format!("task as TOML: {e}")))?;
    std::fs::write(&path, text).map_err(|e| Error::io(path.display(), e))
}

/// The task checkpoint `dir` was trained on (its [`TASK_FILE`]), or `None` for a checkpoint
/// without one (trained before runs recorded it) or no checkpoint.
///
/// # Errors
/// A task file that cannot be read or does not parse.
pub fn model_task(dir: Option<&Path>) -> Result<Option<sim::TaskConfig>> {
    let Some(path) = dir.map(|d| d.join(TASK_FILE)).filter(|p| p.exists()) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(path.display(), e))?;
    let task = sim::TaskConfig::from_toml(&text).with_context(|| path.display())?;
    Ok(Some(task))
}

/// Fits the simulator's `task` to `model` before anything runs. Checks that the model can
/// drive it: its action and proprio widths are the simulator's, its cue head (if any) has one
/// class per pad, and, when its checkpoint recorded the task it was trained on (`trained`),
/// the simulator makes the inputs the same way: the proprio's phase value, the image size and
/// the camera rig. Then sets the task's action space to the model's (the trained task's;
/// joint velocities when the checkpoint does not say), so its actions are applied as learned.
///
/// # Errors
/// [`Error::Mismatch`] naming what differs.
pub fn fit_task_to_model(
    model: &VlaConfig,
    trained: Option<&sim::TaskConfig>,
    task: &mut sim::TaskConfig,
) -> Result<()> {
    if model.action_dim != sim::ACTION_DIM || model.proprio_dim != sim::PROPRIO_DIM {
        return Err(Error::Mismatch(format!(
            "the model takes {} proprio values and writes {} per action; the simulator gives {} and applies {}",
            model.proprio_dim,
            model.action_dim,
            sim::PROPRIO_DIM,
            sim::ACTION_DIM
        )));
    }
    if model.cue_classes > 0 && model.cue_classes != task.n_targets {
        return Err(Error::Mismatch(format!(
            "the model's cue head names {} pads, the task has n_targets = {}",
            model.cue_classes, task.n_targets
        )));
    }
    let action = trained.map(|t| t.action).unwrap_or_default();
    if task.action != action {
        tracing::info!(
            task = task.action.name(),
            model = action.name(),
            "the simulator applies the model's actions in the model's action space"
        );
        task.action = action;
    }
    let Some(trained) = trained else {
        return Ok(());
    };
    let differs = |key: &str, trained: String, here: String| {
        Error::Mismatch(format!(
            "the checkpoint was trained with task key `{key}` = {trained}, this task has {here}: \
             its inputs would not be what it learned from (use a task with the same value, e.g. \
             the checkpoint's own task.toml)"
        ))
    };
    if trained.phase != task.phase {
        return Err(differs(
            "phase",
            serde_json::to_string(&trained.phase)?,
            serde_json::to_string(&task.phase)?,
        ));
    }
    if trained.image_size != task.image_size {
        return Err(differs(
            "image_size",
            format!("{:?}", trained.image_size),
            format!("{:?}", task.image_size),
        ));
    }
    if trained.rig != task.rig {
        return Err(differs("rig", trained.rig.clone(), task.rig.clone()));
    }
    Ok(())
}

/// The file beside a checkpoint's `config.toml` holding the image preprocessing it was trained
/// with (a `vision::PreprocessConfig` table).
pub const PREPROCESS_FILE: &str = "preprocess.toml";

/// Writes `preprocess` into checkpoint folder `dir` ([`PREPROCESS_FILE`]).
///
/// # Errors
/// The file cannot be written.
pub fn write_preprocess(dir: &Path, preprocess: &vision::PreprocessConfig) -> Result<()> {
    let path = dir.join(PREPROCESS_FILE);
    let text = toml::to_string(preprocess)
        .map_err(|e| Error::Invalid(format!("preprocessing as TOML: {e}")))?;
    std::fs::write(&path, text).map_err(|e| Error::io(path.display(), e))
}

/// Whether `preprocess` makes the patches `model` takes (count per camera and values each).
pub fn model_preprocess_fits(preprocess: &vision::PreprocessConfig, model: &VlaConfig) -> bool {
    preprocess.n_patches() == model.patches_per_camera && preprocess.patch_dim() == model.patch_dim
}

/// The image preprocessing a model is fed with: checkpoint `dir`'s [`PREPROCESS_FILE`] (every
/// checkpoint `train` and `import-weights` write has one), or, for a folder without one or a
/// random init, the one training uses ([`sim::training_preprocess`]: 64x64, 16-pixel
/// patches, values in [-1, 1]); checked against the model's patch sizes, so that a checkpoint
/// and images of another geometry are an error at start-up, not wrong patches.
pub fn model_preprocess(dir: Option<&Path>, model: &VlaConfig) -> Result<vision::PreprocessConfig> {
    let file = dir
        .map(|d| d.join(PREPROCESS_FILE))
        .filter(|path| path.exists());
    let (preprocess, from) = match &file {
        Some(path) => {
            let from = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(&from, e))?;
            let preprocess: vision::PreprocessConfig =
                toml::from_str(&text).map_err(|e| Error::toml(&from, e))?;
            (preprocess, from)
        }
        None => (
            sim::training_preprocess(),
            "the training preprocessing (no preprocess.toml)".to_string(),
        ),
    };
    preprocess
        .validate("preprocess")
        .with_context(|| from.clone())?;
    if !model_preprocess_fits(&preprocess, model) {
        return Err(Error::Mismatch(format!(
            "{from}: {}x{} images in {}-pixel patches give {} patches of {} values, the model takes {} of {}",
            preprocess.width,
            preprocess.height,
            preprocess.patch_size,
            preprocess.n_patches(),
            preprocess.patch_dim(),
            model.patches_per_camera,
            model.patch_dim
        )));
    }
    Ok(preprocess)
}

/// Where a checkpoint folder named by a relative path (such as the default `models/edge-memory`)
/// is found when it is not below the working directory: `$EDGEVLA_HOME/<path>`, then beside the
/// executable (its folder and the folders above it, so `target/release/edgevla` and an
/// installed `bin/edgevla` next to `models/` both work), then the source tree this binary was
/// built from. Returns the folder and where it was found; `None` when no candidate holds a
/// `config.toml`.
pub fn find_checkpoint(path: &Path) -> Option<(PathBuf, &'static str)> {
    let holds = |dir: &Path| dir.join("config.toml").is_file();
    if holds(path) {
        return Some((path.to_path_buf(), "working directory"));
    }
    if path.is_absolute() {
        return None;
    }
    if let Some(home) = std::env::var_os("EDGEVLA_HOME") {
        let dir = Path::new(&home).join(path);
        if holds(&dir) {
            return Some((dir, "EDGEVLA_HOME"));
        }
    }
    if let Ok(exe) = std::env::current_exe() {
        for base in exe.ancestors().skip(1).take(4) {
            let dir = base.join(path);
            if holds(&dir) {
                return Some((dir, "beside the executable"));
            }
        }
    }
    // This crate's folder is one below the workspace root, where `models/` is.
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join(path);
    holds(&dir).then_some((dir, "the source tree it was built from"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge() -> VlaConfig {
        VlaConfig::from_toml(configs::model_preset("edge").expect("edge").text).expect("edge")
    }

    /// A checkpoint's training task is its task.toml (none without the file; a file that
    /// does not parse is an error naming it); a task whose inputs differ from it (phase value,
    /// image size, rig), or whose pads do not match the cue head, is refused at start-up.
    #[test]
    fn model_task_is_read_and_a_mismatched_task_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(model_task(None).expect("none").is_none());
        assert!(model_task(Some(dir.path())).expect("absent").is_none());
        let trained = sim::TaskConfig {
            action: sim::ActionSpace::JointTarget,
            phase: sim::PhaseValue::None,
            ..sim::TaskConfig::default()
        };
        write_task(dir.path(), &trained).expect("write");
        let read = model_task(Some(dir.path())).expect("read").expect("some");
        assert_eq!(read, trained);

        let mut model = edge();
        model.cue_classes = trained.n_targets;
        // Its own task, given in the other action space, runs in the model's.
        let mut own = sim::TaskConfig {
            action: sim::ActionSpace::JointVelocity,
            ..trained.clone()
        };
        fit_task_to_model(&model, Some(&read), &mut own).expect("its own task");
        assert_eq!(own, trained);
        let mut unrecorded = sim::TaskConfig::default();
        fit_task_to_model(&model, None, &mut unrecorded).expect("nothing recorded");
        assert_eq!(unrecorded.action, sim::ActionSpace::JointVelocity);
        let mut episode_phase = sim::TaskConfig::default();
        let err = fit_task_to_model(&model, Some(&read), &mut episode_phase).unwrap_err();
        assert!(err.to_string().contains("`phase`"), "{err}");
        let mut bigger = sim::TaskConfig {
            image_size: [96, 96],
            ..trained.clone()
        };
        let err = fit_task_to_model(&model, Some(&read), &mut bigger).unwrap_err();
        assert!(err.to_string().contains("`image_size`"), "{err}");
        let mut six_pads = sim::TaskConfig {
            n_targets: 6,
            ..trained.clone()
        };
        let err = fit_task_to_model(&model, None, &mut six_pads).unwrap_err();
        assert!(err.to_string().contains("n_targets = 6"), "{err}");

        std::fs::write(dir.path().join(TASK_FILE), "action = \"joint_torque\"\n").expect("write");
        let err = format!("{:#}", model_task(Some(dir.path())).unwrap_err());
        assert!(err.contains(TASK_FILE) && err.contains("action"), "{err}");
    }

    /// A checkpoint's preprocess.toml is read and checked against the model's patch sizes:
    /// none means the default, one of another geometry or with an unknown key is an error
    /// naming the file.
    #[test]
    fn model_preprocess_reads_and_checks_the_checkpoints() {
        let model = edge();
        let default = model_preprocess(None, &model).expect("default");
        assert_eq!(default, vision::PreprocessConfig::default());
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            model_preprocess(Some(dir.path()), &model).expect("absent"),
            default
        );
        let mut normalized = default.clone();
        normalized.mean = [0.4, 0.45, 0.5];
        write_preprocess(dir.path(), &normalized).expect("write");
        assert_eq!(
            model_preprocess(Some(dir.path()), &model).expect("read"),
            normalized
        );
        let small = vision::PreprocessConfig {
            width: 32,
            height: 32,
            ..default
        };
        write_preprocess(dir.path(), &small).expect("write");
        let err = format!(
            "{:#}",
            model_preprocess(Some(dir.path()), &model).unwrap_err()
        );
        assert!(
            err.contains("preprocess.toml")
                && err.contains("4 patches")
                && err.contains("16 of 768"),
            "{err}"
        );
        std::fs::write(dir.path().join(PREPROCESS_FILE), "widht = 64\n").expect("write");
        let err = format!(
            "{:#}",
            model_preprocess(Some(dir.path()), &model).unwrap_err()
        );
        assert!(err.contains("widht"), "{err}");
    }
}
