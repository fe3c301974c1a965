//! rosbag2 bag folders, the layout `ros2 bag record -s mcap` writes: a folder holding
//! `<folder name>_0.mcap` (profile `ros2`, one channel per topic with its leading slash, ROS 2
//! type names, `ros2msg` schemas, CDR payloads; [`crate::record::McapRecorder`] in ROS 2 mode)
//! and `metadata.yaml` (rosbag2's bag information, version 8: storage `mcap`, the time range,
//! every topic with its type, serialization format, type description hash and message count).
//!
//! `ros2 bag info`, `ros2 bag play` and `rosbags`' rosbag2 reader open such a folder;
//! [`crate::recording::open_recording`] reads it back (and bags written by other tools).
//! The YAML is written here rather than through a YAML crate: every value is a number or a
//! string from a closed alphabet (topic names pass [`crate::ros2::check_topic_name`], type
//! names and hashes are edgevla's own), so the document is a fixed template.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Result, TransportError};
use crate::record::ChannelStats;

/// The rosbag2 metadata version written (jazzy's).
pub const METADATA_VERSION: u32 = 8;

/// A bag folder being written: where its MCAP file goes and what its metadata will name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BagFolder {
    /// The folder.
    pub dir: PathBuf,
    /// The MCAP file's name inside it (`<folder name>_0.mcap`).
    pub file_name: String,
}

impl BagFolder {
    /// Creates the folder `dir` (its parent must exist; like `ros2 bag record -o`, it must not
    /// exist yet, so a bag is never overwritten).
    ///
    /// # Errors
    /// [`TransportError::Io`]: the folder exists, or it cannot be created or named.
    pub fn create(dir: &Path) -> Result<Self> {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                TransportError::Io(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: a bag folder needs a UTF-8 name", dir.display()),
                ))
            })?;
        std::fs::create_dir(dir).map_err(|e| {
            TransportError::Io(io::Error::new(
                e.kind(),
                format!(
                    "creating bag folder {}: {e}{}",
                    dir.display(),
                    if e.kind() == io::ErrorKind::AlreadyExists {
                        " (a bag is never overwritten: name a new folder)"
                    } else {
                        ""
                    }
                ),
            ))
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            file_name: format!("{name}_0.mcap"),
        })
    }

    /// The MCAP file's path.
    #[must_use]
    pub fn mcap_path(&self) -> PathBuf {
        self.dir.join(&self.file_name)
    }

    /// Writes `metadata.yaml` for the finished MCAP file (through a temporary file renamed
    /// into place, so a reader never sees half of it).
    ///
    /// # Errors
    /// [`TransportError::Io`].
    pub fn write_metadata(
        &self,
        channels: &[ChannelStats],
        log_time_range: Option<(u64, u64)>,
    ) -> Result<()> {
        let text = metadata_yaml(&self.file_name, channels, log_time_range);
        let tmp = self.dir.join("metadata.yaml.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.dir.join("metadata.yaml"))?;
        Ok(())
    }
}

/// rosbag2's `metadata.yaml` for one MCAP file holding `channels` (schema-less channels, which
/// no ROS 2 tool can decode, are left out) over `log_time_range`.
#[must_use]
pub fn metadata_yaml(
    file_name: &str,
    channels: &[ChannelStats],
    log_time_range: Option<(u64, u64)>,
) -> String {
    let (start, duration) = log_time_range.map_or((0, 0), |(a, b)| (a, b - a));
    let typed: Vec<&ChannelStats> = channels.iter().filter(|c| c.type_hash.is_some()).collect();
    let count: u64 = typed.iter().map(|c| c.messages).sum();
    let mut y = String::new();
    // Writing to a String cannot fail.
    let _ = write!(
        y,
        "rosbag2_bagfile_information:\n  version: {METADATA_VERSION}\n  storage_identifier: mcap\n  \
         duration:\n    nanoseconds: {duration}\n  starting_time:\n    nanoseconds_since_epoch: {start}\n  \
         message_count: {count}\n  topics_with_message_count:\n"
    );
    if typed.is_empty() {
        y.truncate(y.len() - 1);
        y.push_str(" []\n");
    }
    for c in &typed {
        let _ = write!(
            y,
            "    - topic_metadata:\n        name: {}\n        type: {}\n        serialization_format: cdr\n        \
             offered_qos_profiles: ''\n        type_description_hash: {}\n      message_count: {}\n",
            quote(&c.topic),
            quote(&c.type_name),
            quote(c.type_hash.unwrap_or_default()),
            c.messages
        );
    }
    let _ = write!(
        y,
        "  compression_format: ''\n  compression_mode: ''\n  relative_file_paths:\n    - {file}\n  files:\n    \
         - path: {file}\n      starting_time:\n        nanoseconds_since_epoch: {start}\n      duration:\n        \
         nanoseconds: {duration}\n      message_count: {count}\n  custom_data: ~\n  ros_distro: ''\n",
        file = quote(file_name)
    );
    y
}

/// A YAML single-quoted scalar.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
