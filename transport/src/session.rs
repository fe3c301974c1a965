//! zenoh sessions from a small serde config: `peer` mode on loopback with multicast scouting
//! off (the embedded default: no router needed), or `client` mode to a `zenohd` router.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
pub use zenoh::Session;
use zenoh::Wait;

use crate::error::{Result, TransportError};
pub use crate::security::{AccessControl, TlsConfig};

/// How the session joins the zenoh network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Talk to other peers directly (listen and/or connect).
    #[default]
    Peer,
    /// Talk through a router (`connect` must name it).
    Client,
}

impl std::str::FromStr for Mode {
    type Err = TransportError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "peer" => Ok(Self::Peer),
            "client" => Ok(Self::Client),
            other => Err(TransportError::Config {
                key: "session.mode",
                reason: format!("{other:?} is neither `peer` nor `client`"),
            }),
        }
    }
}

/// A zenoh session's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// `peer` (default) or `client`.
    #[serde(default)]
    pub mode: Mode,
    /// Endpoints to listen on (peer only), e.g. `tcp/127.0.0.1:7447`. Default: loopback, a
    /// port chosen by the OS.
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// Endpoints to connect to: other peers, or the router in client mode.
    #[serde(default)]
    pub connect: Vec<String>,
    /// Multicast scouting (off by default: discovery by explicit endpoints only).
    #[serde(default)]
    pub multicast_scouting: bool,
    /// Longest wait between tries to (re)connect a `connect` endpoint, milliseconds (first
    /// try after 100 ms, doubling up to this): a client whose router restarts is back within
    /// this of the router (zenoh's own default is 4,000).
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// TLS on `tls/` endpoints: this session's certificate and key, the CA that signs the
    /// others' (mutual authentication by default). See [`crate::security`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// zenoh access control: who may put, subscribe to or declare what, by the certificate
    /// common name of the peer on the other end of each link. See [`crate::security`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_control: Option<AccessControl>,
}

fn default_reconnect_max_ms() -> u64 {
    500
}

fn default_listen() -> Vec<String> {
    vec!["tcp/127.0.0.1:0".to_owned()]
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Peer,
            listen: default_listen(),
            connect: Vec::new(),
            multicast_scouting: false,
            reconnect_max_ms: default_reconnect_max_ms(),
            tls: None,
            access_control: None,
        }
    }
}

impl SessionConfig {
    /// A peer listening on `127.0.0.1:port`.
    #[must_use]
    pub fn peer_listening(port: u16) -> Self {
        Self {
            listen: vec![format!("tcp/127.0.0.1:{port}")],
            ..Self::default()
        }
    }

    /// A peer connecting to `127.0.0.1:port` (and listening on an OS-chosen loopback port).
    #[must_use]
    pub fn peer_connecting(port: u16) -> Self {
        Self {
            connect: vec![format!("tcp/127.0.0.1:{port}")],
            ..Self::default()
        }
    }

    /// A client of the router at `endpoint`.
    #[must_use]
    pub fn client(endpoint: &str) -> Self {
        Self {
            mode: Mode::Client,
            listen: Vec::new(),
            connect: vec![endpoint.to_owned()],
            ..Self::default()
        }
    }

    /// Checks the combination of settings.
    ///
    /// # Errors
    /// [`TransportError::Config`]: a client without `connect`, or a client with `listen`.
    pub fn validate(&self) -> Result<()> {
        if self.mode == Mode::Client {
            if self.connect.is_empty() && !self.multicast_scouting {
                return Err(TransportError::Config {
                    key: "session.connect",
                    reason: "client mode needs a router endpoint to connect to".into(),
                });
            }
            if !self.listen.is_empty() {
                return Err(TransportError::Config {
                    key: "session.listen",
                    reason: "a client does not listen; leave it empty".into(),
                });
            }
        }
        let uses_tls = self
            .listen
            .iter()
            .chain(&self.connect)
            .any(|e| e.starts_with("tls/"));
        match &self.tls {
            Some(tls) => tls.validate()?,
            None if uses_tls => {
                return Err(TransportError::Config {
                    key: "session.tls",
                    reason: "a tls/ endpoint needs a [tls] section (certificate, private key, \
                             root CA)"
                        .into(),
                });
            }
            None => {}
        }
        if let Some(acl) = &self.access_control {
            acl.validate()?;
        }
        Ok(())
    }

    /// The zenoh configuration these settings stand for.
    ///
    /// # Errors
    /// [`TransportError::Config`] from [`Self::validate`]; [`TransportError::Zenoh`] if zenoh
    /// rejects a value (a malformed endpoint, say).
    pub fn to_zenoh(&self) -> Result<zenoh::Config> {
        self.validate()?;
        let mut cfg = zenoh::Config::default();
        let mode = match self.mode {
            Mode::Peer => "\"peer\"",
            Mode::Client => "\"client\"",
        };
        let set = |cfg: &mut zenoh::Config, key: &str, value: String| {
            cfg.insert_json5(key, &value)
                .map_err(|e| TransportError::zenoh("config", &e))
        };
        set(&mut cfg, "mode", mode.to_owned())?;
        set(
            &mut cfg,
            "scouting/multicast/enabled",
            self.multicast_scouting.to_string(),
        )?;
        set(&mut cfg, "listen/endpoints", json_list(&self.listen))?;
        set(&mut cfg, "connect/endpoints", json_list(&self.connect))?;
        let max = self.reconnect_max_ms.max(1);
        set(
            &mut cfg,
            "connect/retry",
            format!(
                "{{period_init_ms: {}, period_max_ms: {max}, period_increase_factor: 2}}",
                max.min(100)
            ),
        )?;
        if let Some(tls) = &self.tls {
            for (key, value) in tls.zenoh_entries() {
                set(&mut cfg, &key, value)?;
            }
        }
        if let Some(acl) = &self.access_control {
            set(&mut cfg, "access_control", acl.to_json5()?)?;
        }
        Ok(cfg)
    }
}

fn json_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(","))
}

/// Opens a session.
///
/// # Errors
/// As [`SessionConfig::to_zenoh`], or [`TransportError::Zenoh`] if zenoh cannot open it (a
/// port in use, an unreachable router in client mode).
pub fn open(config: &SessionConfig) -> Result<Session> {
    let cfg = config.to_zenoh()?;
    let session = zenoh::open(cfg)
        .wait()
        .map_err(|e| TransportError::zenoh("open session", &e))?;
    tracing::debug!(zid = %session.zid(), mode = ?config.mode, "zenoh session open");
    Ok(session)
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read, release).
///
/// # Errors
/// [`TransportError::Io`] if binding fails.
pub fn free_local_port() -> Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// A peer session listening on a fresh loopback port, and the port. Retried (5 times): another
/// process may take the port between [`free_local_port`] and zenoh's bind.
///
/// # Errors
/// The last zenoh failure when every try fails.
pub fn listening_peer() -> Result<(Session, u16)> {
    listening(&SessionConfig::default(), "tcp").map(|(session, _, port)| (session, port))
}

/// A session of `config` listening on a fresh loopback port with `scheme` (`tcp`, `tls`)
/// instead of `config`'s own endpoints, and that endpoint and port. Retried (5 times): another
/// process may take the port between [`free_local_port`] and zenoh's bind.
///
/// # Errors
/// The last failure when every try fails.
pub fn listening(config: &SessionConfig, scheme: &str) -> Result<(Session, String, u16)> {
    let mut last = None;
    for _ in 0..5 {
        let port = free_local_port()?;
        let endpoint = format!("{scheme}/127.0.0.1:{port}");
        let cfg = SessionConfig {
            listen: vec![endpoint.clone()],
            ..config.clone()
        };
        match open(&cfg) {
            Ok(session) => return Ok((session, endpoint, port)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(TransportError::Zenoh {
        context: "listen on loopback",
        message: "no attempt made".into(),
    }))
}

/// Waits until the session sees at least `n` peers or routers, up to `timeout`.
///
/// # Errors
/// [`TransportError::Zenoh`] naming the timeout.
pub fn wait_for_connections(session: &Session, n: usize, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let info = session.info();
        let count = info.peers_zid().wait().count() + info.routers_zid().wait().count();
        if count >= n {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(TransportError::Zenoh {
                context: "wait for connections",
                message: format!("saw {count} of {n} within {timeout:?}"),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_loopback_peer_without_multicast() {
        let c = SessionConfig::default();
        assert_eq!(c.mode, Mode::Peer);
        assert_eq!(c.listen, vec!["tcp/127.0.0.1:0".to_owned()]);
        assert!(!c.multicast_scouting);
        let z = c.to_zenoh().unwrap();
        let s = format!("{z:?}");
        assert!(s.contains("127.0.0.1"), "{s}");
    }

    #[test]
    fn client_needs_a_router_and_no_listen() {
        let mut c = SessionConfig {
            mode: Mode::Client,
            listen: vec![],
            ..SessionConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(TransportError::Config {
                key: "session.connect",
                ..
            })
        ));
        c.connect = vec!["tcp/127.0.0.1:7447".into()];
        c.validate().unwrap();
        c.listen = default_listen();
        assert!(c.validate().is_err());
    }

    #[test]
    fn config_rejects_unknown_keys_and_parses_modes() {
        let c: SessionConfig =
            serde_json::from_str(r#"{"mode":"client","listen":[],"connect":["tcp/127.0.0.1:1"]}"#)
                .unwrap();
        assert_eq!(c.mode, Mode::Client);
        assert!(serde_json::from_str::<SessionConfig>(r#"{"mdoe":"peer"}"#).is_err());
        assert!("router".parse::<Mode>().is_err());
    }

    #[test]
    fn free_port_is_nonzero() {
        assert_ne!(free_local_port().unwrap(), 0);
    }
}
