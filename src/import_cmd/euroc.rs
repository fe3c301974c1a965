//! EuRoC MAV "ASL" folders: one folder per sensor with `sensor.yaml` and `data.csv`.
//!
//! - camera (`sensor_type: camera`): `data.csv` rows `timestamp [ns], filename`, frames in
//!   `data/<filename>`; `sensor.yaml` gives `resolution`, `rate_hz`, pinhole `intrinsics`
//!   `[fu, fv, cu, cv]`, the distortion, and `T_BS` (4×4, the camera pose in the body frame).
//!   Frames go on `<prefix>/<id>/cam/<folder>`, and each camera becomes a rig `[[camera]]`.
//! - imu (`sensor_type: imu`): `data.csv` rows `timestamp [ns], w_x, w_y, w_z, a_x, a_y, a_z`
//!   (rad/s, m/s²) become `sensor_msgs/Imu` on `<prefix>/<id>/imu/<folder>` with the
//!   orientation marked "not provided" and diagonal covariances from the noise densities in
//!   `sensor.yaml` (variance = density² · rate_hz, the discrete-time white noise).
//! - other sensors (Leica position, ground truth) are skipped and listed in the summary.
//!
//! `sensor.yaml` files start with OpenCV's `%YAML:1.0` line, which is not a YAML directive;
//! it is blanked (keeping line numbers) before parsing.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use transport::keys::KeySpace;
use transport::msg::{COVARIANCE_NOT_PROVIDED, Header, Imu, Quaternion, Time, Vector3};

use super::{
    CameraSpec, Item, Payload, Plan, check_rig, rig_name, sync_section, toml_f64, toml_str,
};

/// The folder holding the sensor folders: `dir/mav0` when present, else `dir`.
pub(crate) fn root(dir: &Path) -> PathBuf {
    let mav0 = dir.join("mav0");
    if mav0.is_dir() { mav0 } else { dir.to_owned() }
}

/// `T_BS` and other OpenCV-style matrices.
#[derive(Debug, Deserialize)]
struct YamlMatrix {
    rows: usize,
    cols: usize,
    data: Vec<f64>,
}

/// The `sensor.yaml` keys edgevla reads (others are ignored).
#[derive(Debug, Deserialize)]
struct SensorYaml {
    sensor_type: String,
    #[serde(default)]
    comment: Option<String>,
    #[serde(rename = "T_BS")]
    t_bs: Option<YamlMatrix>,
    rate_hz: Option<f64>,
    resolution: Option<[u32; 2]>,
    camera_model: Option<String>,
    intrinsics: Option<Vec<f64>>,
    distortion_model: Option<String>,
    distortion_coefficients: Option<Vec<f64>>,
    gyroscope_noise_density: Option<f64>,
    accelerometer_noise_density: Option<f64>,
}

fn read_sensor_yaml(path: &Path) -> Result<SensorYaml> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // OpenCV writes `%YAML:1.0`, which YAML parsers reject; blank it, keeping line numbers.
    let text: String = text
        .lines()
        .map(|l| if l.starts_with("%YAML:") { "" } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    serde_norway::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// A camera pose from `T_BS`: translation and row-major rotation.
fn pose(t: &YamlMatrix, path: &Path) -> Result<([f64; 3], [[f64; 3]; 3])> {
    if t.rows != 4 || t.cols != 4 || t.data.len() != 16 {
        bail!(
            "{}: T_BS must be 4x4 with 16 values (rows {}, cols {}, {} values)",
            path.display(),
            t.rows,
            t.cols,
            t.data.len()
        );
    }
    let m = |r: usize, c: usize| t.data[r * 4 + c];
    let last = [m(3, 0), m(3, 1), m(3, 2), m(3, 3)];
    if last
        .iter()
        .zip([0.0, 0.0, 0.0, 1.0])
        .any(|(a, b)| (a - b).abs() > 1e-9)
    {
        bail!(
            "{}: T_BS's last row is {last:?}, not [0, 0, 0, 1]",
            path.display()
        );
    }
    let rotation = [
        [m(0, 0), m(0, 1), m(0, 2)],
        [m(1, 0), m(1, 1), m(1, 2)],
        [m(2, 0), m(2, 1), m(2, 2)],
    ];
    Ok(([m(0, 3), m(1, 3), m(2, 3)], rotation))
}

/// A CSV reader for EuRoC's `data.csv`: the `#` header line is a comment, fields trimmed.
fn csv_reader(path: &Path) -> Result<csv::Reader<std::fs::File>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .flexible(true)
        .from_path(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// One row of a `data.csv`: its line and fields.
struct Row {
    line: u64,
    fields: csv::StringRecord,
}

fn rows(path: &Path, n_fields: usize) -> Result<Vec<Row>> {
    let mut out = Vec::new();
    for record in csv_reader(path)?.into_records() {
        let fields = record.with_context(|| format!("reading {}", path.display()))?;
        let line = fields.position().map_or(0, csv::Position::line);
        if fields.len() != n_fields {
            bail!(
                "{}:{line}: {} fields, expected {n_fields}",
                path.display(),
                fields.len()
            );
        }
        out.push(Row { line, fields });
    }
    Ok(out)
}

/// The timestamp of a row (field 0), checked to increase.
fn stamp(path: &Path, row: &Row, last: &mut Option<u64>) -> Result<u64> {
    let text = row.fields.get(0).unwrap_or_default();
    let t: u64 = text.parse().with_context(|| {
        format!(
            "{}:{}: timestamp {text:?} is not an integer of nanoseconds",
            path.display(),
            row.line
        )
    })?;
    if let Some(prev) = *last
        && t <= prev
    {
        bail!(
            "{}:{}: timestamp {t} does not increase (previous {prev})",
            path.display(),
            row.line
        );
    }
    *last = Some(t);
    Ok(t)
}

fn float(path: &Path, row: &Row, i: usize, what: &str) -> Result<f64> {
    let text = row.fields.get(i).unwrap_or_default();
    let v: f64 = text.parse().with_context(|| {
        format!(
            "{}:{}: {what} {text:?} is not a number",
            path.display(),
            row.line
        )
    })?;
    if !v.is_finite() {
        bail!("{}:{}: {what} is {v}", path.display(), row.line);
    }
    Ok(v)
}

/// Reads an EuRoC folder into a plan.
pub(crate) fn plan(dir: &Path, keys: &KeySpace) -> Result<Plan> {
    let root = root(dir);
    let mut sensors: Vec<PathBuf> = std::fs::read_dir(&root)
        .with_context(|| format!("reading {}", root.display()))?
        .filter_map(std::result::Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    sensors.sort();
    let mut plan = Plan::default();
    let mut rig_cameras = String::new();
    let mut rig_notes = String::new();
    let mut stream = 0u32;
    for folder in &sensors {
        let name = folder
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let yaml_path = folder.join("sensor.yaml");
        if !yaml_path.is_file() {
            plan.skipped.push(format!("{name}: no sensor.yaml"));
            continue;
        }
        let yaml = read_sensor_yaml(&yaml_path)?;
        let data_csv = folder.join("data.csv");
        match yaml.sensor_type.as_str() {
            "camera" | "imu" if !data_csv.is_file() => {
                bail!(
                    "{} is missing (named by {})",
                    data_csv.display(),
                    yaml_path.display()
                )
            }
            "camera" => {
                let (toml, frames) = camera(&mut plan, keys, &name, folder, &yaml, stream)?;
                rig_cameras.push_str(&toml);
                tracing::info!(camera = name, frames, "EuRoC camera");
            }
            "imu" => {
                let n = imu(&mut plan, keys, &name, folder, &yaml, stream)?;
                if let Some(t) = &yaml.t_bs {
                    let (tr, r) = pose(t, &yaml_path)?;
                    rig_notes.push_str(&format!(
                        "# {name} (IMU, {n} samples on {}): T_BS translation {tr:?}, rotation {r:?}\n",
                        keys.imu(&name)?
                    ));
                }
            }
            other => {
                plan.skipped
                    .push(format!("{name}: sensor_type {other} is not imported"));
                continue;
            }
        }
        stream += 1;
    }
    if plan.cameras.is_empty() {
        bail!(
            "{}: no camera folders (sensor_type: camera)",
            root.display()
        );
    }
    let slowest = plan
        .cameras
        .iter()
        .map(|c| c.rate_hz)
        .fold(f64::INFINITY, f64::min);
    plan.rig_toml = format!(
        "# Imported by `edgevla import` from {} (EuRoC ASL layout).\n\
         # Intrinsics [fu, fv, cu, cv] and extrinsics T_BS (camera pose in the body frame) are\n\
         # copied from each camera's sensor.yaml. The rig format has no distortion model: frames\n\
         # are used as recorded (each camera's coefficients are noted above it).\n\
         # Stepped at the slowest camera's rate; tolerance a quarter frame period.\n\
         {rig_notes}\
         name = {}\n\n\
         {}\
         {rig_cameras}",
        root.display(),
        toml_str(&rig_name(dir)),
        sync_section(slowest),
    );
    check_rig(&plan.rig_toml)?;
    Ok(plan)
}

/// Adds a camera's frames; returns its rig `[[camera]]` text and the frame count.
fn camera(
    plan: &mut Plan,
    keys: &KeySpace,
    name: &str,
    folder: &Path,
    yaml: &SensorYaml,
    stream: u32,
) -> Result<(String, usize)> {
    let yaml_path = folder.join("sensor.yaml");
    let missing = |key: &str| anyhow::anyhow!("{}: no `{key}`", yaml_path.display());
    let resolution = yaml.resolution.ok_or_else(|| missing("resolution"))?;
    let rate = yaml.rate_hz.ok_or_else(|| missing("rate_hz"))?;
    let k = yaml
        .intrinsics
        .as_ref()
        .ok_or_else(|| missing("intrinsics"))?;
    let &[fx, fy, cx, cy] = k.as_slice() else {
        bail!(
            "{}: `intrinsics` has {} values, expected 4 ([fu, fv, cu, cv])",
            yaml_path.display(),
            k.len()
        );
    };
    let model = yaml.camera_model.as_deref().unwrap_or("pinhole");
    if model != "pinhole" {
        bail!(
            "{}: camera_model {model:?}: the rig format is pinhole only",
            yaml_path.display()
        );
    }
    let t_bs = yaml.t_bs.as_ref().ok_or_else(|| missing("T_BS"))?;
    let (translation, rotation) = pose(t_bs, &yaml_path)?;
    let key = keys.camera(name)?;
    let index = plan.cameras.len();
    plan.cameras.push(CameraSpec {
        name: name.to_owned(),
        key: key.clone(),
        resolution,
        rate_hz: rate,
    });
    let csv_path = folder.join("data.csv");
    let mut last = None;
    let rows = rows(&csv_path, 2)?;
    for row in &rows {
        let t = stamp(&csv_path, row, &mut last)?;
        let file = row.fields.get(1).unwrap_or_default();
        let path = folder.join("data").join(file);
        if file.is_empty() || !path.is_file() {
            bail!(
                "{}:{}: frame {} is missing",
                csv_path.display(),
                row.line,
                path.display()
            );
        }
        plan.items.push(Item {
            t_ns: t,
            stream,
            payload: Payload::Frame {
                camera: index,
                path,
                origin: format!("{}:{}", csv_path.display(), row.line),
            },
        });
    }
    let mut toml = String::new();
    toml.push_str(&format!(
        "\n# {name}: {}{}\n",
        yaml.comment.as_deref().unwrap_or("camera"),
        match (&yaml.distortion_model, &yaml.distortion_coefficients) {
            (Some(m), Some(c)) => format!("; distortion {m} {c:?} (not modelled)"),
            _ => String::new(),
        }
    ));
    toml.push_str(&format!(
        "[[camera]]\nname = {}\ntopic = {}\nresolution = [{}, {}]\nrate_hz = {}\n\
         intrinsics = {{ fx = {}, fy = {}, cx = {}, cy = {} }}\n\
         [camera.extrinsics]\ntranslation = [{}, {}, {}]\nrotation_matrix = [\n",
        toml_str(name),
        toml_str(&key),
        resolution[0],
        resolution[1],
        toml_f64(rate),
        toml_f64(fx),
        toml_f64(fy),
        toml_f64(cx),
        toml_f64(cy),
        toml_f64(translation[0]),
        toml_f64(translation[1]),
        toml_f64(translation[2]),
    ));
    for r in rotation {
        toml.push_str(&format!(
            "    [{}, {}, {}],\n",
            toml_f64(r[0]),
            toml_f64(r[1]),
            toml_f64(r[2])
        ));
    }
    toml.push_str("]\n");
    Ok((toml, rows.len()))
}

/// Adds an IMU's samples as `sensor_msgs/Imu`; returns the sample count.
fn imu(
    plan: &mut Plan,
    keys: &KeySpace,
    name: &str,
    folder: &Path,
    yaml: &SensorYaml,
    stream: u32,
) -> Result<usize> {
    let csv_path = folder.join("data.csv");
    let key = plan.key(keys.imu(name)?);
    let diagonal = |density: Option<f64>| {
        let mut cov = [0.0; 9];
        if let (Some(d), Some(rate)) = (density, yaml.rate_hz) {
            let var = d * d * rate;
            cov[0] = var;
            cov[4] = var;
            cov[8] = var;
        }
        cov
    };
    let gyro_cov = diagonal(yaml.gyroscope_noise_density);
    let accel_cov = diagonal(yaml.accelerometer_noise_density);
    let mut last = None;
    let rows = rows(&csv_path, 7)?;
    for row in &rows {
        let t = stamp(&csv_path, row, &mut last)?;
        let v = |i: usize, what: &str| float(&csv_path, row, i, what);
        let msg = Imu {
            header: Header {
                stamp: Time::from_nanos(t),
                frame_id: name.to_owned(),
            },
            orientation: Quaternion::default(),
            orientation_covariance: COVARIANCE_NOT_PROVIDED,
            angular_velocity: Vector3 {
                x: v(1, "w_x")?,
                y: v(2, "w_y")?,
                z: v(3, "w_z")?,
            },
            angular_velocity_covariance: gyro_cov,
            linear_acceleration: Vector3 {
                x: v(4, "a_x")?,
                y: v(5, "a_y")?,
                z: v(6, "a_z")?,
            },
            linear_acceleration_covariance: accel_cov,
        };
        plan.push(key, t, stream, &msg)?;
    }
    Ok(rows.len())
}
