//! Who may talk to the robot: TLS with mutual authentication on `tls/` endpoints and zenoh's
//! access control rules, as two optional sections of a [`crate::session::SessionConfig`].
//!
//! With both set, a peer must hold a certificate signed by the session's root CA to open a link
//! at all (mutual TLS), and what it may put, subscribe to or declare is decided per key
//! expression by the common name (CN) of that certificate (zenoh's `cert_common_names`
//! subjects). zenoh enforces both; this module only states them in TOML and checks them early,
//! with the config key in each error. The shipped examples are `configs/zenoh/secure-*.toml`
//! (node, simulator, operator) and `configs/zenoh/router-secure.json5` (zenohd); docs/security.md
//! says how to deploy them.
//!
//! ```toml
//! listen = ["tls/127.0.0.1:7447"]
//! [tls]
//! root_ca_certificate = "certs/ca.pem"
//! certificate = "certs/node.pem"       # CN = node
//! private_key = "certs/node.key"
//! [access_control]
//! default_permission = "deny"
//! [[access_control.rules]]
//! id = "operator-commands"
//! messages = ["put"]
//! flows = ["ingress"]
//! permission = "allow"
//! key_exprs = ["robot/edge/instruction"]
//! [[access_control.subjects]]
//! id = "operator"
//! cert_common_names = ["operator"]
//! [[access_control.policies]]
//! rules = ["operator-commands"]
//! subjects = ["operator"]
//! ```

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TransportError};

/// TLS on the session's `tls/` endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the certificate authority that signs every peer's certificate.
    pub root_ca_certificate: PathBuf,
    /// PEM file of this session's certificate (used both when it listens and when it
    /// connects); its common name is what access control rules name.
    pub certificate: PathBuf,
    /// PEM file of this session's private key.
    pub private_key: PathBuf,
    /// Mutual authentication: a listener refuses a peer without a certificate signed by the
    /// root CA (default true; false only encrypts).
    #[serde(default = "yes")]
    pub mutual: bool,
    /// Check that the certificate of the peer connected to names the endpoint's host (default
    /// true; false when certificates name roles, not hosts).
    #[serde(default = "yes")]
    pub verify_name_on_connect: bool,
}

fn yes() -> bool {
    true
}

impl TlsConfig {
    /// Checks that the three files exist.
    ///
    /// # Errors
    /// [`TransportError::Config`] naming the key and the missing file.
    pub fn validate(&self) -> Result<()> {
        for (key, path) in [
            ("session.tls.root_ca_certificate", &self.root_ca_certificate),
            ("session.tls.certificate", &self.certificate),
            ("session.tls.private_key", &self.private_key),
        ] {
            if !path.is_file() {
                return Err(TransportError::Config {
                    key,
                    reason: format!("{} is not a readable file", path.display()),
                });
            }
        }
        Ok(())
    }

    /// The same settings with relative file paths taken from `dir` (the folder of the config
    /// file that named them).
    #[must_use]
    pub fn relative_to(mut self, dir: &Path) -> Self {
        for path in [
            &mut self.root_ca_certificate,
            &mut self.certificate,
            &mut self.private_key,
        ] {
            if path.is_relative() {
                *path = dir.join(&*path);
            }
        }
        self
    }

    /// `(zenoh config key, JSON5 value)` pairs.
    pub(crate) fn zenoh_entries(&self) -> Vec<(String, String)> {
        let path = |p: &Path| format!("{:?}", p.display().to_string());
        let tls = "transport/link/tls";
        vec![
            (
                format!("{tls}/root_ca_certificate"),
                path(&self.root_ca_certificate),
            ),
            (format!("{tls}/listen_certificate"), path(&self.certificate)),
            (format!("{tls}/listen_private_key"), path(&self.private_key)),
            (
                format!("{tls}/connect_certificate"),
                path(&self.certificate),
            ),
            (
                format!("{tls}/connect_private_key"),
                path(&self.private_key),
            ),
            (format!("{tls}/enable_mtls"), self.mutual.to_string()),
            (
                format!("{tls}/verify_name_on_connect"),
                self.verify_name_on_connect.to_string(),
            ),
        ]
    }
}

/// What a rule allows or denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Let the messages through.
    Allow,
    /// Drop them.
    Deny,
}

/// Direction of a message relative to this session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flow {
    /// Arriving from the peer.
    Ingress,
    /// Sent to the peer.
    Egress,
}

/// A zenoh message kind access control can filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AclMessage {
    /// A publication.
    Put,
    /// A deletion.
    Delete,
    /// A subscriber declaration (asking for the key's samples).
    DeclareSubscriber,
    /// A query.
    Query,
    /// A reply to a query.
    Reply,
    /// A queryable declaration.
    DeclareQueryable,
    /// A liveliness token (rmw_zenoh's graph entries).
    LivelinessToken,
    /// A liveliness query.
    LivelinessQuery,
    /// A liveliness subscriber declaration.
    DeclareLivelinessSubscriber,
}

/// One rule: these messages on these key expressions in these directions are allowed (or
/// denied) for the subjects of the policies naming it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    /// Unique among the rules; policies name it.
    pub id: String,
    /// Message kinds.
    pub messages: Vec<AclMessage>,
    /// Directions (default both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows: Option<Vec<Flow>>,
    /// Allow or deny.
    pub permission: Permission,
    /// zenoh key expressions, e.g. `robot/edge/instruction` or `robot/**`.
    pub key_exprs: Vec<String>,
}

/// Who a policy applies to: peers whose link matches every list given (an absent list matches
/// any peer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclSubject {
    /// Unique among the subjects; policies name it.
    pub id: String,
    /// Common names of the peers' TLS certificates (needs mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_common_names: Option<Vec<String>>,
    /// Network interfaces the link runs over, e.g. `lo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<String>>,
}

/// Rules given to subjects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclPolicy {
    /// Rule ids.
    pub rules: Vec<String>,
    /// Subject ids.
    pub subjects: Vec<String>,
}

/// zenoh access control of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessControl {
    /// On unless set false.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// What happens to messages no rule covers (default deny).
    #[serde(default = "deny")]
    pub default_permission: Permission,
    /// The rules.
    #[serde(default)]
    pub rules: Vec<AclRule>,
    /// The subjects.
    #[serde(default)]
    pub subjects: Vec<AclSubject>,
    /// The policies.
    #[serde(default)]
    pub policies: Vec<AclPolicy>,
}

fn deny() -> Permission {
    Permission::Deny
}

fn acl_error(reason: String) -> TransportError {
    TransportError::Config {
        key: "session.access_control",
        reason,
    }
}

impl AccessControl {
    /// Checks what zenoh would otherwise report late or not at all: duplicate ids, empty
    /// lists, policies naming unknown rules or subjects, malformed key expressions.
    ///
    /// # Errors
    /// [`TransportError::Config`] saying which entry is wrong.
    pub fn validate(&self) -> Result<()> {
        let mut rule_ids = HashSet::new();
        for rule in &self.rules {
            if !rule_ids.insert(rule.id.as_str()) {
                return Err(acl_error(format!("rule id {:?} is used twice", rule.id)));
            }
            if rule.messages.is_empty() || rule.key_exprs.is_empty() {
                return Err(acl_error(format!(
                    "rule {:?} needs at least one message kind and one key expression",
                    rule.id
                )));
            }
            if rule.flows.as_ref().is_some_and(Vec::is_empty) {
                return Err(acl_error(format!(
                    "rule {:?}: flows must not be empty (leave it out for both)",
                    rule.id
                )));
            }
            for k in &rule.key_exprs {
                zenoh::key_expr::KeyExpr::try_from(k.as_str()).map_err(|e| {
                    acl_error(format!("rule {:?}: key expression {k:?}: {e}", rule.id))
                })?;
            }
        }
        let mut subject_ids = HashSet::new();
        for subject in &self.subjects {
            if !subject_ids.insert(subject.id.as_str()) {
                return Err(acl_error(format!(
                    "subject id {:?} is used twice",
                    subject.id
                )));
            }
            let empty = |l: &Option<Vec<String>>| l.as_ref().is_some_and(Vec::is_empty);
            if empty(&subject.cert_common_names) || empty(&subject.interfaces) {
                return Err(acl_error(format!(
                    "subject {:?}: a list must not be empty (leave it out to match any)",
                    subject.id
                )));
            }
        }
        for (i, policy) in self.policies.iter().enumerate() {
            if policy.rules.is_empty() || policy.subjects.is_empty() {
                return Err(acl_error(format!(
                    "policy {i} needs at least one rule and one subject"
                )));
            }
            if let Some(r) = policy.rules.iter().find(|r| !rule_ids.contains(r.as_str())) {
                return Err(acl_error(format!("policy {i} names unknown rule {r:?}")));
            }
            if let Some(s) = policy
                .subjects
                .iter()
                .find(|s| !subject_ids.contains(s.as_str()))
            {
                return Err(acl_error(format!("policy {i} names unknown subject {s:?}")));
            }
        }
        Ok(())
    }

    /// zenoh's `access_control` section (JSON, which JSON5 reads).
    pub(crate) fn to_json5(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|e| acl_error(e.to_string()))
    }
}
