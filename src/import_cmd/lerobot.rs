//! LeRobot v2.1 episodes, as flattened in `../shared/data/g1_pick_bottle` (LeRobot stores
//! parquet tables and AV1 videos; this reads an episode exported to frames + CSV):
//!
//! - `info.json`: `fps`; `features["observation.state"].names` (the joint names; a list, a
//!   list of lists or a `{group: [names]}` map, flattened in order) and `.shape`; the same for
//!   `action`; one `observation.images.<camera>` feature per camera with its `shape`
//!   (`[height, width, channels]`, or `video.height`/`video.width` in its `info`).
//! - `<camera>/NNNNNN.jpg` (or `.png`): frame `N` of that camera, at the `timestamp_s` of the
//!   `episode.csv` row whose `frame_index` is `N`.
//! - `episode.csv`: header `timestamp_s, frame_index, state_0.., action_0..` (and optionally
//!   `task_index`).
//! - `tasks.jsonl`: `{"task_index": i, "task": "..."}` per line.
//!
//! Written per row: each camera's frame, the state as `sensor_msgs/JointState` (positions,
//! names from `info.json`) on `<prefix>/<id>/joints`, and the action as a one-step
//! `edgevla_msgs/ActionChunk` (`sequence` = `frame_index`) on `<prefix>/<id>/action`; the
//! task as `std_msgs/String` on `<prefix>/<id>/instruction` at the first row (and again
//! wherever a `task_index` column changes task), before that row's frames.
//!
//! The dataset has no camera calibration: the rig's intrinsics are nominal (90° horizontal
//! field of view, principal point at the centre) and the pose is a camera at the body origin
//! looking along +x, both marked as such in the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use transport::keys::KeySpace;
use transport::msg::{ActionChunk, Header, JointState, StringMsg, Time};

use super::{
    CameraSpec, Item, Payload, Plan, check_rig, rig_name, seconds_to_ns, sync_section, toml_f64,
    toml_str,
};

/// LeRobot-specific choices.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    /// Write the actions.
    pub actions: bool,
    /// The task to use when the episode does not say.
    pub task_index: Option<u64>,
}

/// The names of a feature: a list, a list of lists, or a map of lists, flattened.
fn feature_names(feature: &Value) -> Option<Vec<String>> {
    fn flatten(v: &Value, out: &mut Vec<String>) -> bool {
        match v {
            Value::String(s) => {
                out.push(s.clone());
                true
            }
            Value::Array(items) => items.iter().all(|i| flatten(i, out)),
            Value::Object(map) => map.values().all(|i| flatten(i, out)),
            _ => false,
        }
    }
    let mut out = Vec::new();
    let names = feature.get("names")?;
    (flatten(names, &mut out) && !out.is_empty()).then_some(out)
}

/// The length of a 1-D feature from its `shape`.
fn feature_dim(feature: &Value) -> Option<usize> {
    let shape = feature.get("shape")?.as_array()?;
    match shape.as_slice() {
        [n] => n.as_u64().and_then(|n| usize::try_from(n).ok()),
        _ => None,
    }
}

/// `[width, height]` of an image feature.
fn image_resolution(feature: &Value) -> Option<[u32; 2]> {
    let info = feature.get("info");
    let from_info = |k: &str| {
        info.and_then(|i| i.get(k))
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
    };
    if let (Some(w), Some(h)) = (from_info("video.width"), from_info("video.height")) {
        return Some([w, h]);
    }
    let shape: Vec<u32> = feature
        .get("shape")?
        .as_array()?
        .iter()
        .filter_map(|v| v.as_u64().and_then(|v| u32::try_from(v).ok()))
        .collect();
    let names: Vec<&str> = feature
        .get("names")
        .and_then(Value::as_array)
        .map(|n| n.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let at = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .and_then(|i| shape.get(i))
    };
    match (at("width"), at("height")) {
        (Some(&w), Some(&h)) => Some([w, h]),
        // LeRobot's default order is [height, width, channels].
        _ => match shape.as_slice() {
            [h, w, _] => Some([*w, *h]),
            _ => None,
        },
    }
}

/// `tasks.jsonl`: task index -> text.
fn read_tasks(path: &Path) -> Result<BTreeMap<u64, String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut tasks = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let v: Value = serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
        let index = v["task_index"]
            .as_u64()
            .with_context(|| format!("{}: no integer `task_index`", at()))?;
        let task = v["task"]
            .as_str()
            .with_context(|| format!("{}: no string `task`", at()))?;
        tasks.insert(index, task.to_owned());
    }
    Ok(tasks)
}

/// A camera of the episode: its spec index and frame folder.
struct Cam {
    index: usize,
    folder: PathBuf,
}

/// Reads a LeRobot episode folder into a plan.
pub(crate) fn plan(dir: &Path, keys: &KeySpace, options: &Options) -> Result<Plan> {
    let info_path = dir.join("info.json");
    let info: Value = serde_json::from_str(
        &std::fs::read_to_string(&info_path)
            .with_context(|| format!("reading {}", info_path.display()))?,
    )
    .with_context(|| format!("parsing {}", info_path.display()))?;
    let fps = info["fps"]
        .as_f64()
        .filter(|f| f.is_finite() && *f > 0.0)
        .with_context(|| format!("{}: no positive `fps`", info_path.display()))?;
    let features = info["features"]
        .as_object()
        .with_context(|| format!("{}: no `features` object", info_path.display()))?;
    let state = features
        .get("observation.state")
        .with_context(|| format!("{}: no `observation.state` feature", info_path.display()))?;
    let n_state = feature_dim(state).with_context(|| {
        format!(
            "{}: `observation.state` has no 1-D `shape`",
            info_path.display()
        )
    })?;
    let joint_names = feature_names(state)
        .unwrap_or_else(|| (0..n_state).map(|i| format!("joint_{i}")).collect());
    if joint_names.len() != n_state {
        bail!(
            "{}: `observation.state` has {} names for shape [{n_state}]",
            info_path.display(),
            joint_names.len()
        );
    }
    let n_action = match (options.actions, features.get("action")) {
        (true, Some(a)) => Some(
            feature_dim(a)
                .with_context(|| format!("{}: `action` has no 1-D `shape`", info_path.display()))?,
        ),
        _ => None,
    };

    let mut plan = Plan::default();
    let mut cams = Vec::new();
    let mut rig_cameras = String::new();
    for (feature_key, feature) in features {
        let Some(name) = feature_key.strip_prefix("observation.images.") else {
            continue;
        };
        let resolution = image_resolution(feature).with_context(|| {
            format!(
                "{}: `{feature_key}` has no [height, width, channels] shape",
                info_path.display()
            )
        })?;
        let folder = dir.join(name);
        if !folder.is_dir() {
            bail!(
                "{}: camera `{feature_key}` has no frame folder {}",
                info_path.display(),
                folder.display()
            );
        }
        let key = keys.camera(name)?;
        cams.push(Cam {
            index: plan.cameras.len(),
            folder,
        });
        plan.cameras.push(CameraSpec {
            name: name.to_owned(),
            key: key.clone(),
            resolution,
            rate_hz: fps,
        });
        let [w, h] = resolution;
        let (w, h) = (f64::from(w), f64::from(h));
        rig_cameras.push_str(&format!(
            "\n[[camera]]\nname = {}\ntopic = {}\nresolution = [{}, {}]\nrate_hz = {}\n\
             # NOMINAL: 90° horizontal field of view (fx = fy = width / 2), principal point at the\n\
             # centre. The dataset publishes no calibration.\n\
             intrinsics = {{ fx = {}, fy = {}, cx = {}, cy = {} }}\n\
             [camera.extrinsics]\n\
             # NOMINAL: at the body origin, looking along the robot's +x (optical frame x right,\n\
             # y down, z forward; columns are the camera axes in robot coordinates).\n\
             translation = [0.0, 0.0, 0.0]\n\
             rotation_matrix = [\n    [0.0, 0.0, 1.0],\n    [-1.0, 0.0, 0.0],\n    [0.0, -1.0, 0.0],\n]\n",
            toml_str(name),
            toml_str(&key),
            resolution[0],
            resolution[1],
            toml_f64(fps),
            toml_f64(w / 2.0),
            toml_f64(w / 2.0),
            toml_f64(w / 2.0),
            toml_f64(h / 2.0),
        ));
    }
    if cams.is_empty() {
        bail!("{}: no `observation.images.*` feature", info_path.display());
    }

    let csv_path = dir.join("episode.csv");
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(&csv_path)
        .with_context(|| format!("opening {}", csv_path.display()))?;
    let headers = reader
        .headers()
        .with_context(|| format!("reading {}'s header", csv_path.display()))?
        .clone();
    let column = |name: &str| headers.iter().position(|h| h == name);
    let need = |name: &str| {
        column(name).with_context(|| format!("{}: no `{name}` column", csv_path.display()))
    };
    let t_col = match column("timestamp_s") {
        Some(c) => c,
        None => need("timestamp")?,
    };
    let frame_col = need("frame_index")?;
    let state_cols: Vec<usize> = (0..n_state)
        .map(|i| need(&format!("state_{i}")))
        .collect::<Result<_>>()?;
    let action_cols: Option<Vec<usize>> = n_action
        .map(|n| (0..n).map(|i| need(&format!("action_{i}"))).collect())
        .transpose()?;
    let task_col = column("task_index");

    let tasks_path = dir.join("tasks.jsonl");
    let tasks = if tasks_path.is_file() {
        read_tasks(&tasks_path)?
    } else {
        plan.skipped
            .push("tasks.jsonl: missing, no instruction written".to_owned());
        BTreeMap::new()
    };
    let fixed_task = match (task_col, options.task_index, tasks.len()) {
        (_, Some(i), _) => Some(
            tasks
                .get(&i)
                .cloned()
                .with_context(|| format!("--task-index {i}: not in {}", tasks_path.display()))?,
        ),
        (None, None, 0) => None,
        (None, None, 1) => tasks.values().next().cloned(),
        (None, None, n) => bail!(
            "{}: {n} tasks and {} has no `task_index` column: pick one with --task-index",
            tasks_path.display(),
            csv_path.display()
        ),
        (Some(_), None, _) => None,
    };

    // Streams at equal times: instruction, cameras, joints, action.
    let n_cams = u32::try_from(cams.len()).unwrap_or(u32::MAX);
    let instruction_idx = plan.key(keys.instruction());
    let joints_key = plan.key(keys.joints());
    let action_key = plan.key(keys.action());
    let mut last_t: Option<u64> = None;
    let mut last_task: Option<String> = None;
    let mut rows = 0usize;
    for record in reader.records() {
        let record = record.with_context(|| format!("reading {}", csv_path.display()))?;
        let line = record.position().map_or(0, csv::Position::line);
        let at = || format!("{}:{line}", csv_path.display());
        let field = |c: usize| record.get(c).unwrap_or_default();
        let t = seconds_to_ns(field(t_col)).with_context(|| format!("{}: timestamp_s", at()))?;
        if let Some(prev) = last_t
            && t <= prev
        {
            bail!(
                "{}: timestamp {t} ns does not increase (previous {prev})",
                at()
            );
        }
        last_t = Some(t);
        let frame: u64 = field(frame_col)
            .parse()
            .with_context(|| format!("{}: frame_index {:?}", at(), field(frame_col)))?;
        let number = |c: usize| -> Result<f64> {
            let text = field(c);
            let v: f64 = text
                .parse()
                .with_context(|| format!("{}: {} {text:?} is not a number", at(), &headers[c]))?;
            if v.is_finite() {
                Ok(v)
            } else {
                bail!("{}: {} is {v}", at(), &headers[c])
            }
        };

        let task = match task_col {
            Some(c) => {
                let i: u64 = field(c)
                    .parse()
                    .with_context(|| format!("{}: task_index {:?}", at(), field(c)))?;
                Some(tasks.get(&i).cloned().with_context(|| {
                    format!(
                        "{}: task_index {i} is not in {}",
                        at(),
                        tasks_path.display()
                    )
                })?)
            }
            None => fixed_task.clone(),
        };
        if let Some(task) = task
            && last_task.as_ref() != Some(&task)
        {
            plan.push(instruction_idx, t, 0, &StringMsg { data: task.clone() })?;
            last_task = Some(task);
        }
        for cam in &cams {
            let stem = format!("{frame:06}");
            let path = ["jpg", "jpeg", "png"]
                .iter()
                .map(|ext| cam.folder.join(format!("{stem}.{ext}")))
                .find(|p| p.is_file())
                .with_context(|| {
                    format!(
                        "{}: frame {frame}: {} is missing",
                        at(),
                        cam.folder.join(format!("{stem}.jpg")).display()
                    )
                })?;
            plan.items.push(Item {
                t_ns: t,
                stream: 1 + u32::try_from(cam.index).unwrap_or(0),
                payload: Payload::Frame {
                    camera: cam.index,
                    path,
                    origin: at(),
                },
            });
        }
        let stamp = Header {
            stamp: Time::from_nanos(t),
            frame_id: String::new(),
        };
        let position = state_cols
            .iter()
            .map(|&c| number(c))
            .collect::<Result<Vec<_>>>()?;
        plan.push(
            joints_key,
            t,
            n_cams + 1,
            &JointState {
                header: stamp.clone(),
                name: joint_names.clone(),
                position,
                ..JointState::default()
            },
        )?;
        if let Some(cols) = &action_cols {
            // LeRobot stores float32: the CSV holds each value's exact decimal, so this cast
            // restores it exactly.
            let values = cols
                .iter()
                .map(|&c| number(c).map(|v| v as f32))
                .collect::<Result<Vec<_>>>()?;
            plan.push(
                action_key,
                t,
                n_cams + 2,
                &ActionChunk {
                    stamp: stamp.stamp,
                    sequence: frame,
                    horizon: 1,
                    dims: u32::try_from(values.len()).unwrap_or(u32::MAX),
                    values,
                },
            )?;
        }
        rows += 1;
    }
    if rows == 0 {
        bail!("{}: no rows", csv_path.display());
    }
    for cam in &cams {
        let files = std::fs::read_dir(&cam.folder)
            .with_context(|| format!("reading {}", cam.folder.display()))?
            .count();
        if files > rows {
            plan.skipped.push(format!(
                "{}: {} frame files have no episode.csv row",
                cam.folder.display(),
                files - rows
            ));
        }
    }
    plan.rig_toml = format!(
        "# Imported by `edgevla import` from {} (LeRobot v2.1 episode, robot_type {}).\n\
         # Cameras from info.json (`observation.images.*`); calibration is NOMINAL (see below):\n\
         # replace it with your robot's before using the rig for geometry.\n\
         # Stepped at the dataset's fps; tolerance a quarter frame period.\n\
         name = {}\n\n\
         {}\
         {rig_cameras}",
        dir.display(),
        info["robot_type"].as_str().unwrap_or("unknown"),
        toml_str(&rig_name(dir)),
        sync_section(fps),
    );
    check_rig(&plan.rig_toml)?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_flatten_in_every_lerobot_spelling() {
        let nested = json!({"names": [["a", "b"]], "shape": [2]});
        assert_eq!(feature_names(&nested).unwrap(), ["a", "b"]);
        assert_eq!(feature_dim(&nested), Some(2));
        let map = json!({"names": {"motors": ["x", "y", "z"]}});
        assert_eq!(feature_names(&map).unwrap(), ["x", "y", "z"]);
        assert!(feature_names(&json!({"names": null})).is_none());
        assert!(feature_names(&json!({"names": [1]})).is_none());
    }

    #[test]
    fn image_resolution_from_shape_or_video_info() {
        let f = json!({"shape": [480, 640, 3], "names": ["height", "width", "channel"]});
        assert_eq!(image_resolution(&f), Some([640, 480]));
        let g = json!({"shape": [3, 240, 320], "names": ["channel", "height", "width"]});
        assert_eq!(image_resolution(&g), Some([320, 240]));
        let v = json!({"shape": [1], "info": {"video.width": 8, "video.height": 6}});
        assert_eq!(image_resolution(&v), Some([8, 6]));
        assert_eq!(image_resolution(&json!({"shape": [5]})), None);
    }
}
