//! Mutual TLS and access control over real zenoh sessions on loopback, with certificates made
//! in the test (rcgen; no key is committed): who can connect at all, and what an authenticated
//! peer may publish, decided by its certificate's common name.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use transport::clock::SystemClock;
use transport::keys::KeySpace;
use transport::msg::{JointState, StringMsg};
use transport::pubsub::{Publisher, StreamClass, Subscriber, SubscriberConfig};
use transport::security::{
    AccessControl, AclMessage, AclPolicy, AclRule, AclSubject, Flow, Permission, TlsConfig,
};
use transport::session::{SessionConfig, listening, open, wait_for_connections};
use zenoh::{Session, Wait};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A certificate authority and the certificates it signs, written as PEM files into `dir`.
struct Pki {
    dir: PathBuf,
    ca_key: KeyPair,
    ca_params: CertificateParams,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Result<Self> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key)?;
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("ca.pem"), ca.pem())?;
        Ok(Self {
            dir,
            ca_key,
            ca_params,
        })
    }

    /// A certificate for loopback whose common name is `cn`, and the TLS settings using it.
    fn issue(&self, cn: &str) -> Result<TlsConfig> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse()?));
        params.distinguished_name.push(DnType::CommonName, cn);
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer)?;
        let (cert_path, key_path) = (
            self.dir.join(format!("{cn}.pem")),
            self.dir.join(format!("{cn}.key")),
        );
        std::fs::write(&cert_path, cert.pem())?;
        std::fs::write(&key_path, key.serialize_pem())?;
        Ok(TlsConfig {
            root_ca_certificate: self.dir.join("ca.pem"),
            certificate: cert_path,
            private_key: key_path,
            mutual: true,
            verify_name_on_connect: true,
        })
    }
}

fn rule(id: &str, messages: &[AclMessage], flow: Flow, key_exprs: &[&str]) -> AclRule {
    AclRule {
        id: id.into(),
        messages: messages.to_vec(),
        flows: Some(vec![flow]),
        permission: Permission::Allow,
        key_exprs: key_exprs.iter().map(|k| (*k).to_owned()).collect(),
    }
}

fn subject(id: &str, cns: &[&str]) -> AclSubject {
    AclSubject {
        id: id.into(),
        cert_common_names: Some(cns.iter().map(|c| (*c).to_owned()).collect()),
        interfaces: None,
    }
}

/// The robot side's rules: the operator may command (instruction) and send joints, the
/// observer only joints; both may subscribe to the status; nothing else.
fn robot_acl(ks: &KeySpace) -> AccessControl {
    use AclMessage::{DeclareSubscriber, Put};
    AccessControl {
        enabled: true,
        default_permission: Permission::Deny,
        rules: vec![
            rule("command", &[Put], Flow::Ingress, &[&ks.instruction()]),
            rule("joints", &[Put], Flow::Ingress, &[&ks.joints()]),
            // the robot's own subscriptions must reach the peers, or none would send to it
            rule(
                "subscribe-inputs",
                &[DeclareSubscriber],
                Flow::Egress,
                &[&ks.all()],
            ),
            rule(
                "watch",
                &[DeclareSubscriber],
                Flow::Ingress,
                &[&ks.status()],
            ),
            rule("report", &[Put], Flow::Egress, &[&ks.status()]),
        ],
        subjects: vec![
            subject("operator", &["operator"]),
            subject("observer", &["observer"]),
        ],
        policies: vec![
            AclPolicy {
                rules: vec!["command".into(), "joints".into()],
                subjects: vec!["operator".into()],
            },
            AclPolicy {
                rules: vec!["joints".into()],
                subjects: vec!["observer".into()],
            },
            AclPolicy {
                rules: vec!["subscribe-inputs".into(), "watch".into(), "report".into()],
                subjects: vec!["operator".into(), "observer".into()],
            },
        ],
    }
}

/// The robot's session, listening with TLS on a fresh loopback port.
fn robot_session(tls: &TlsConfig, acl: Option<AccessControl>) -> Result<(Session, String)> {
    let cfg = SessionConfig {
        tls: Some(tls.clone()),
        access_control: acl,
        ..SessionConfig::default()
    };
    let (session, endpoint, _) = listening(&cfg, "tls")?;
    Ok((session, endpoint))
}

fn peer_config(endpoint: &str, tls: Option<TlsConfig>) -> SessionConfig {
    SessionConfig {
        listen: Vec::new(),
        connect: vec![endpoint.to_owned()],
        tls,
        ..SessionConfig::default()
    }
}

/// Whether `session` has a peer after `wait` (`false` if none came).
fn connects(session: &Session, wait: Duration) -> bool {
    wait_for_connections(session, 1, wait).is_ok()
}

#[test]
fn only_holders_of_a_certificate_from_the_ca_can_connect() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let pki = Pki::new(tmp.path(), "robot")?;
    let rogue = Pki::new(tmp.path(), "rogue")?;
    let (_robot, endpoint) = robot_session(&pki.issue("robot")?, None)?;

    // a certificate from the robot's CA: connects
    let operator = open(&peer_config(&endpoint, Some(pki.issue("operator")?)))?;
    assert!(connects(&operator, TIMEOUT), "the operator did not connect");

    // a certificate from another CA (the intruder trusts the robot's CA, so only the robot's
    // check of the client certificate can stop it)
    let mut wrong = rogue.issue("operator")?;
    wrong.root_ca_certificate = pki.dir.join("ca.pem");
    let intruder = open(&peer_config(&endpoint, Some(wrong)))?;
    // no certificate at all: plain TLS that trusts the robot's CA
    // (zenoh's own config: edgevla's refuses a tls/ endpoint without a certificate)
    let mut anonymous_cfg = SessionConfig {
        listen: Vec::new(),
        ..SessionConfig::default()
    }
    .to_zenoh()?;
    let ca = format!("{:?}", pki.dir.join("ca.pem").display().to_string());
    for (key, value) in [
        ("connect/endpoints", format!("[{endpoint:?}]")),
        ("transport/link/tls/root_ca_certificate", ca),
    ] {
        anonymous_cfg
            .insert_json5(key, &value)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let anonymous = zenoh::open(anonymous_cfg)
        .wait()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // plain TCP to the TLS port
    let plain = open(&peer_config(&endpoint.replacen("tls/", "tcp/", 1), None))?;
    for (who, s) in [
        ("a certificate of another CA", &intruder),
        ("no client certificate", &anonymous),
        ("plain TCP", &plain),
    ] {
        assert!(
            !connects(s, Duration::from_secs(3)),
            "a peer with {who} connected"
        );
    }
    Ok(())
}

fn recv_joint(sub: &Subscriber) -> Result<JointState> {
    match sub
        .recv_timeout(TIMEOUT)
        .context("nothing arrived")?
        .message
    {
        transport::msg::AnyMessage::JointState(j) => Ok(j),
        other => bail!("expected joints, got {:?}", other.kind()),
    }
}

fn joints(v: f64) -> JointState {
    JointState {
        name: vec!["q1".into()],
        position: vec![v],
        ..JointState::default()
    }
}

#[test]
fn only_the_operator_certificate_may_command_the_robot() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let pki = Pki::new(tmp.path(), "robot")?;
    let ks = KeySpace::new("robot", "edge")?;
    let (robot, endpoint) = robot_session(&pki.issue("robot")?, Some(robot_acl(&ks)))?;
    let clock = Arc::new(SystemClock::new());
    let inbox = Subscriber::declare(
        &robot,
        &ks.all(),
        "robot",
        SubscriberConfig::default(),
        clock,
    )?;

    let observer = open(&peer_config(&endpoint, Some(pki.issue("observer")?)))?;
    let operator = open(&peer_config(&endpoint, Some(pki.issue("operator")?)))?;
    assert!(connects(&observer, TIMEOUT) && connects(&operator, TIMEOUT));
    let obs_cmd =
        Publisher::<StringMsg>::declare(&observer, &ks.instruction(), StreamClass::Telemetry)?;
    let obs_joints =
        Publisher::<JointState>::declare(&observer, &ks.joints(), StreamClass::Telemetry)?;
    let op_cmd =
        Publisher::<StringMsg>::declare(&operator, &ks.instruction(), StreamClass::Telemetry)?;
    obs_joints.wait_for_subscriber(TIMEOUT)?;
    op_cmd.wait_for_subscriber(TIMEOUT)?;

    // the observer's instruction is dropped at the robot's ingress; its joints, sent after it
    // on the same link, arrive: so the instruction had its chance to arrive first.
    obs_cmd.publish(&StringMsg {
        data: "observer says reset".into(),
    })?;
    obs_joints.publish(&joints(1.5))?;
    assert_eq!(recv_joint(&inbox)?.position, vec![1.5]);
    // the operator's instruction arrives
    op_cmd.publish(&StringMsg {
        data: "pick the red cup".into(),
    })?;
    let got = inbox.recv_timeout(TIMEOUT).context("no instruction")?;
    match got.message {
        transport::msg::AnyMessage::String(s) => assert_eq!(s.data, "pick the red cup"),
        other => bail!(
            "expected the operator's instruction, got {:?}",
            other.kind()
        ),
    }
    // nothing else came: the observer's instruction never did
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        if let Some(r) = inbox.recv_timeout(Duration::from_millis(50)) {
            bail!("unexpected message on {}", r.key);
        }
    }
    let stats = inbox.stats();
    assert_eq!(stats.received, 2, "{stats:?}");
    Ok(())
}

#[test]
fn a_tls_endpoint_without_tls_settings_and_bad_acls_are_config_errors() {
    let no_tls = SessionConfig {
        listen: vec!["tls/127.0.0.1:0".into()],
        ..SessionConfig::default()
    };
    let e = no_tls.validate().unwrap_err().to_string();
    assert!(e.contains("session.tls"), "{e}");

    let missing = SessionConfig {
        tls: Some(TlsConfig {
            root_ca_certificate: "/nonexistent/ca.pem".into(),
            certificate: "/nonexistent/a.pem".into(),
            private_key: "/nonexistent/a.key".into(),
            mutual: true,
            verify_name_on_connect: true,
        }),
        ..SessionConfig::default()
    };
    let e = missing.validate().unwrap_err().to_string();
    assert!(
        e.contains("root_ca_certificate") && e.contains("/nonexistent/ca.pem"),
        "{e}"
    );

    let ks = KeySpace::new("robot", "edge").expect("key space");
    let mut acl = robot_acl(&ks);
    acl.policies[0].rules.push("no-such-rule".into());
    let e = acl.validate().unwrap_err().to_string();
    assert!(e.contains("no-such-rule"), "{e}");
    let mut acl = robot_acl(&ks);
    acl.rules[1].id = "command".into();
    assert!(acl.validate().unwrap_err().to_string().contains("twice"));
    let mut acl = robot_acl(&ks);
    acl.rules[0].key_exprs = vec!["robot//bad".into()];
    assert!(
        acl.validate()
            .unwrap_err()
            .to_string()
            .contains("robot//bad")
    );
    assert!(robot_acl(&ks).validate().is_ok());
}
