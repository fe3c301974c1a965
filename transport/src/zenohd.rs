//! A `zenohd` router run as a child process, for tests and tools that need the router
//! deployment (client mode) on loopback: find the binary, start it on a free port, stop it,
//! start it again on the same port (a router restart).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Result, TransportError};
use crate::session::{SessionConfig, free_local_port, open};

fn error(message: String) -> TransportError {
    TransportError::Zenoh {
        context: "zenohd",
        message,
    }
}

/// The `zenohd` to use: `$ZENOHD`, or `zenohd` on PATH; `None` when it does not run.
#[must_use]
pub fn find() -> Option<PathBuf> {
    let path = std::env::var_os("ZENOHD").map_or_else(|| PathBuf::from("zenohd"), PathBuf::from);
    Command::new(&path)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        .then_some(path)
}

/// A running router; killed when dropped.
pub struct Router {
    binary: PathBuf,
    endpoint: String,
    args: Vec<String>,
    dir: Option<PathBuf>,
    probe: Box<dyn Fn(&str) -> SessionConfig + Send>,
    child: Option<Child>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("binary", &self.binary)
            .field("endpoint", &self.endpoint)
            .field("args", &self.args)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Router {
    /// Starts `binary` on a fresh loopback TCP port and waits until a client connects. The port
    /// is probed free and released before zenohd binds it, so another process may take it
    /// first: a router that exits (or does not answer within 10 s) is replaced on another
    /// port, 5 times.
    ///
    /// # Errors
    /// [`TransportError::Zenoh`] when no try comes up; [`TransportError::Io`] from spawning.
    pub fn start(binary: &Path) -> Result<Self> {
        Self::start_with(binary, "tcp", &[], None, SessionConfig::client)
    }

    /// [`Self::start`] with a `scheme` (`tcp`, `tls`), extra zenohd arguments (`-c
    /// router.json5`), a working directory (where relative certificate paths start), and the
    /// client session that probes whether it is up (given the endpoint).
    ///
    /// # Errors
    /// As [`Self::start`].
    pub fn start_with(
        binary: &Path,
        scheme: &str,
        args: &[&str],
        dir: Option<&Path>,
        probe: impl Fn(&str) -> SessionConfig + Send + 'static,
    ) -> Result<Self> {
        let mut router = Self {
            binary: binary.to_path_buf(),
            endpoint: String::new(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            dir: dir.map(Path::to_path_buf),
            probe: Box::new(probe),
            child: None,
        };
        for _ in 0..5 {
            router.endpoint = format!("{scheme}/127.0.0.1:{}", free_local_port()?);
            if router.restart(Duration::from_secs(10)).is_ok() {
                return Ok(router);
            }
        }
        Err(error("did not come up on any of 5 ports".into()))
    }

    /// The endpoint clients connect to, e.g. `tcp/127.0.0.1:41234`.
    #[must_use]
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Kills the router (clients lose their link).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)starts the router on the same endpoint and waits until a client connects, at most
    /// `timeout`.
    ///
    /// # Errors
    /// [`TransportError::Zenoh`] if it exits or does not answer in time.
    pub fn restart(&mut self, timeout: Duration) -> Result<()> {
        self.stop();
        let mut command = Command::new(&self.binary);
        command
            .args(&self.args)
            .args(["--listen", &self.endpoint, "--no-multicast-scouting"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(dir) = &self.dir {
            command.current_dir(dir);
        }
        let child = command.spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                return Err(error(format!("exited at start ({status})")));
            }
            if open(&(self.probe)(&self.endpoint)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop();
        Err(error(format!(
            "no answer on {} within {timeout:?}",
            self.endpoint
        )))
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.stop();
    }
}
