//! edgevla's shipped configuration files, embedded at build time so the binary finds them from
//! any working directory. The files themselves live beside this crate (`configs/rope/`,
//! `configs/model/`, `configs/rigs/`); edit them there. Parsing and validation belong to
//! the crates that own each format (`runtime::rope` for RoPE specs).

/// One embedded config file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preset {
    /// Name used on the command line (`--preset NAME`): the file stem.
    pub name: &'static str,
    /// Path relative to the repository root.
    pub path: &'static str,
    /// File contents.
    pub text: &'static str,
}

macro_rules! presets {
    ($dir:literal: $($name:literal),* $(,)?) => {
        &[$(Preset {
            name: $name,
            path: concat!("configs/", $dir, "/", $name, ".toml"),
            text: include_str!(concat!("../", $dir, "/", $name, ".toml")),
        }),*]
    };
}

/// RoPE presets (`configs/rope/`), each a spec for `edgevla rope` and the `rope` table of a model config.
pub const ROPE_PRESETS: &[Preset] = presets!("rope":
    "default",
    "pi-4x",
    "ntk-dynamic-4x",
    "yarn-4x",
    "yarn-8x",
    "yarn-16x",
    "llama3-8x",
);

/// Model configs (`configs/model/`), parsed by `runtime::model::VlaConfig`.
pub const MODEL_PRESETS: &[Preset] =
    presets!("model": "edge", "edge-long", "edge-long-bins", "soak", "tiny");

/// Camera rigs (`configs/rigs/`), parsed by `vision::rig`.
pub const RIG_PRESETS: &[Preset] = presets!("rigs": "edge-3cam", "euroc-stereo", "g1-head");

/// Looks up a camera rig by name.
pub fn rig_preset(name: &str) -> Option<&'static Preset> {
    RIG_PRESETS.iter().find(|p| p.name == name)
}

/// Task configs (`configs/task/`), parsed by `sim::TaskConfig`.
pub const TASK_PRESETS: &[Preset] = presets!(
    "task": "memory",
    "memory-short",
    "memory-short-needle",
    "memory-long",
    "memory-long-train",
    "memory-long-train-wide",
    "memory-long-train-xl",
);

/// Looks up a task config by name.
pub fn task_preset(name: &str) -> Option<&'static Preset> {
    TASK_PRESETS.iter().find(|p| p.name == name)
}

/// Training configs (`configs/training/`), read by `edgevla train`.
pub const TRAINING_PRESETS: &[Preset] = presets!("training": "edge-memory", "edge-memory-short", "edge-memory-stage2", "edge-memory-stage3", "edge-memory-stage4", "edge-long", "edge-long-stage2", "edge-long-target", "edge-long-target-wide", "edge-long-detour", "edge-long-onset", "edge-long-l1", "edge-long-bins", "edge-long-bins-wide", "edge-long-bins-xl", "edge-long-xl-more");

/// Looks up a training config by name.
pub fn training_preset(name: &str) -> Option<&'static Preset> {
    TRAINING_PRESETS.iter().find(|p| p.name == name)
}

/// Node configs (`configs/node/`), read by `edgevla node` and `edgevla demo`.
pub const NODE_PRESETS: &[Preset] = presets!("node": "edge");

/// Looks up a node config by name.
pub fn node_preset(name: &str) -> Option<&'static Preset> {
    NODE_PRESETS.iter().find(|p| p.name == name)
}

/// Looks up a model config by name.
pub fn model_preset(name: &str) -> Option<&'static Preset> {
    MODEL_PRESETS.iter().find(|p| p.name == name)
}

/// Looks up a RoPE preset by name.
pub fn rope_preset(name: &str) -> Option<&'static Preset> {
    ROPE_PRESETS.iter().find(|p| p.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `configs/<dir>/*.toml` on disk is embedded (none forgotten in the lists above).
    #[test]
    fn every_config_file_is_embedded() {
        assert_eq!(names_on_disk("rope"), names(ROPE_PRESETS));
        assert_eq!(names_on_disk("model"), names(MODEL_PRESETS));
        assert_eq!(names_on_disk("rigs"), names(RIG_PRESETS));
        assert_eq!(names_on_disk("task"), names(TASK_PRESETS));
        assert_eq!(names_on_disk("training"), names(TRAINING_PRESETS));
        assert_eq!(names_on_disk("node"), names(NODE_PRESETS));
        assert!(rig_preset("edge-3cam").is_some());
        assert!(rope_preset("yarn-8x").is_some_and(|p| p.text.contains("yarn")));
        assert!(rope_preset("no-such").is_none());
        assert!(model_preset("edge").is_some());
    }

    fn names(presets: &[Preset]) -> Vec<String> {
        let mut names: Vec<String> = presets.iter().map(|p| p.name.to_owned()).collect();
        names.sort();
        names
    }

    fn names_on_disk(folder: &str) -> Vec<String> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(folder);
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| entry.file_name().to_str().map(str::to_owned))
            .filter_map(|name| name.strip_suffix(".toml").map(str::to_owned))
            .collect();
        on_disk.sort();
        on_disk
    }
}
