//! ROS 2 mode: rmw_zenoh's wire protocol, so a robot whose ROS 2 nodes run on rmw_zenoh (the
//! Tier-1 Zenoh middleware) and edgevla hear each other with configuration only.
//!
//! What rmw_zenoh puts on the wire (its `docs/design.md` and `rmw_zenoh_cpp/src/detail/`
//! sources, jazzy 0.2.4 and later):
//! - **Data**: topic `/a/b` of type `pkg/msg/T` in domain `d` is the key expression
//!   `d/a/b/pkg::msg::dds_::T_/RIHS01_<sha256>` ([`topic_key`]), no wildcards; the payload is
//!   the CDR message with its 4-byte encapsulation header (what [`crate::msg::encode`] writes),
//!   sent with zenoh's default encoding.
//! - **Attachment** on every sample ([`Attachment`]): the sequence number (i64 LE, from 1), the
//!   source timestamp (i64 LE, ns since the Unix epoch), then the 16-byte publisher GID behind a
//!   one-byte length (zenoh-ext's serializer: 33 bytes). rmw_zenoh drops a sample without one.
//! - **Type hash** ([`type_hash`]): REP 2011's RIHS01, the SHA-256 of the type description as
//!   rosidl serializes it, computed here from the same message definitions the MCAP recorder
//!   writes ([`MessageKind::ros2msg_schema`]).
//! - **Graph**: liveliness tokens under `@ros2_lv/<domain>/…` for the node (`NN`), each
//!   publisher (`MP`) and each subscription (`MS`) ([`node_token`], [`entity_token`]), with `/`
//!   inside a field written `%` and the QoS as [`Qos::to_keyexpr`] writes it; `ros2 node list`
//!   and `ros2 topic list` on the robot show what these announce.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use crate::error::{Result, TransportError};
use crate::msg::MessageKind;

/// The liveliness admin space of rmw_zenoh's graph.
pub const ADMIN_SPACE: &str = "@ros2_lv";

/// Bytes of a publisher GID (`RMW_GID_STORAGE_SIZE`).
pub const GID_LEN: usize = 16;

/// Bytes of an [`Attachment`] on the wire.
pub const ATTACHMENT_LEN: usize = 8 + 8 + 1 + GID_LEN;

/// A kind's names on the wire, computed once per process (a subscriber compares them on
/// every sample).
#[derive(Debug)]
struct WireType {
    /// `sensor_msgs::msg::dds_::Image_`.
    dds: String,
    /// `RIHS01_…`.
    hash: String,
    /// `<dds>/<hash>`.
    suffix: String,
}

fn wire_type(kind: MessageKind) -> &'static WireType {
    use std::sync::OnceLock;
    static TYPES: [OnceLock<WireType>; 6] = [const { OnceLock::new() }; 6];
    // Exhaustive: a new kind must get a slot here.
    let slot = match kind {
        MessageKind::CompressedImage => 0,
        MessageKind::Image => 1,
        MessageKind::JointState => 2,
        MessageKind::Imu => 3,
        MessageKind::String => 4,
        MessageKind::ActionChunk => 5,
    };
    TYPES[slot].get_or_init(|| {
        let full = kind.type_name();
        let (namespace, name) = full.rsplit_once('/').unwrap_or(("", full));
        let dds = format!("{}::dds_::{name}_", namespace.replace('/', "::"));
        let hash = compute_type_hash(kind);
        WireType {
            suffix: format!("{dds}/{hash}"),
            dds,
            hash,
        }
    })
}

/// The DDS type name rmw_zenoh puts in keys: `sensor_msgs/msg/Image` →
/// `sensor_msgs::msg::dds_::Image_`.
#[must_use]
pub fn dds_type_name(kind: MessageKind) -> &'static str {
    &wire_type(kind).dds
}

/// Checks a fully qualified ROS 2 topic name: `/` then tokens of ASCII letters, digits and `_`
/// separated by single `/`, no token starting with a digit, no trailing `/`.
///
/// # Errors
/// [`TransportError::InvalidTopicName`].
pub fn check_topic_name(topic: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(TransportError::InvalidTopicName {
            topic: topic.to_owned(),
            reason: why.to_owned(),
        })
    };
    let Some(rest) = topic.strip_prefix('/') else {
        return bad("a fully qualified name starts with '/'");
    };
    if rest.is_empty() {
        return bad("no name after '/'");
    }
    for token in rest.split('/') {
        if token.is_empty() {
            return bad("empty token (a doubled or trailing '/')");
        }
        if token.starts_with(|c: char| c.is_ascii_digit()) {
            return bad("a token starts with a digit");
        }
        if !token.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return bad("only ASCII letters, digits, '_' and '/' are allowed");
        }
    }
    Ok(())
}

/// `<domain>/<topic without its leading '/'>`: what every data key of `topic` starts with.
///
/// # Errors
/// [`TransportError::InvalidTopicName`] for a name [`check_topic_name`] refuses.
pub fn topic_base(domain: u32, topic: &str) -> Result<String> {
    check_topic_name(topic)?;
    Ok(format!("{domain}/{}", topic.trim_start_matches('/')))
}

/// The key expression of `topic`'s samples of `kind` in ROS 2 domain `domain`.
///
/// # Errors
/// As [`topic_base`].
pub fn topic_key(domain: u32, topic: &str, kind: MessageKind) -> Result<String> {
    Ok(format!(
        "{}/{}",
        topic_base(domain, topic)?,
        type_suffix(kind)
    ))
}

/// `<dds type name>/<type hash>`: the last two chunks of a data key.
#[must_use]
pub fn type_suffix(kind: MessageKind) -> &'static str {
    &wire_type(kind).suffix
}

/// Key expression matching every type published under `base` ([`topic_base`]; the last two
/// chunks free), so a subscriber sees, counts and drops samples of another type instead of
/// never hearing them.
#[must_use]
pub fn base_selector(base: &str) -> String {
    format!("{base}/*/*")
}

/// Splits a data key into `(domain/topic part, dds type name, type hash)`.
#[must_use]
pub fn split_key(key: &str) -> Option<(&str, &str, &str)> {
    let (rest, hash) = key.rsplit_once('/')?;
    let (topic, type_name) = rest.rsplit_once('/')?;
    Some((topic, type_name, hash))
}

/// What a data key names: the ROS domain, the fully qualified topic (`/a/b`) and the message
/// kind its type name and type hash declare.
///
/// # Errors
/// [`TransportError::UnknownKey`] for a key that is not `<domain>/<topic>/<type>/<hash>`,
/// [`TransportError::InvalidTopicName`] for a topic ROS 2 would refuse, and
/// [`TransportError::TypeMismatch`] for a type edgevla has no definition of or a hash that is not
/// the type's.
pub fn parse_data_key(key: &str) -> Result<(u32, String, MessageKind)> {
    let unknown = || TransportError::UnknownKey {
        key: key.to_owned(),
        prefix: "<domain>/<topic>/<type>/<hash> (rmw_zenoh's data keys)".to_owned(),
    };
    let (base, type_name, hash) = split_key(key).ok_or_else(unknown)?;
    let (domain, topic) = base.split_once('/').ok_or_else(unknown)?;
    let domain: u32 = domain.parse().map_err(|_| unknown())?;
    let topic = format!("/{topic}");
    check_topic_name(&topic)?;
    let mismatch = |expected: String| TransportError::TypeMismatch {
        key: key.to_owned(),
        expected,
        got: format!("{type_name}/{hash}"),
    };
    let kind = MessageKind::ALL
        .into_iter()
        .find(|k| dds_type_name(*k) == type_name)
        .ok_or_else(|| {
            mismatch(format!(
                "a type edgevla has the definition of ({})",
                MessageKind::ALL
                    .into_iter()
                    .map(dds_type_name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    if type_hash(kind) != hash {
        return Err(mismatch(type_suffix(kind).to_owned()));
    }
    Ok((domain, topic, kind))
}

/// rmw_zenoh's per-sample attachment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attachment {
    /// Per publisher, from 1, +1 per sample.
    pub sequence_number: i64,
    /// When the sample was published, ns since the Unix epoch.
    pub source_timestamp_ns: i64,
    /// The publisher's GID.
    pub gid: [u8; GID_LEN],
}

impl Attachment {
    /// The 33 bytes rmw_zenoh writes (zenoh-ext serialization of `(i64, i64, [u8; 16])`).
    #[must_use]
    pub fn encode(&self) -> [u8; ATTACHMENT_LEN] {
        let mut out = [0u8; ATTACHMENT_LEN];
        out[..8].copy_from_slice(&self.sequence_number.to_le_bytes());
        out[8..16].copy_from_slice(&self.source_timestamp_ns.to_le_bytes());
        out[16] = GID_LEN as u8;
        out[17..].copy_from_slice(&self.gid);
        out
    }

    /// The attachment a sample must carry (rmw_zenoh drops a sample without one), read.
    ///
    /// # Errors
    /// [`TransportError::BadAttachment`] when there is none, or as [`Self::decode`].
    pub fn require(bytes: Option<&[u8]>) -> Result<Self> {
        Self::decode(bytes.ok_or_else(|| TransportError::BadAttachment {
            reason: "missing (rmw_zenoh puts one on every sample)".into(),
        })?)
    }

    /// Reads an attachment as rmw_zenoh writes it.
    ///
    /// # Errors
    /// [`TransportError::BadAttachment`] for any other length or a GID length other than 16.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let bad = |reason: String| Err(TransportError::BadAttachment { reason });
        if bytes.len() != ATTACHMENT_LEN {
            return bad(format!(
                "{} bytes (rmw_zenoh writes {ATTACHMENT_LEN}: sequence number, timestamp, GID)",
                bytes.len()
            ));
        }
        if usize::from(bytes[16]) != GID_LEN {
            return bad(format!("GID length {} (expected {GID_LEN})", bytes[16]));
        }
        let i64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            i64::from_le_bytes(b)
        };
        let mut gid = [0u8; GID_LEN];
        gid.copy_from_slice(&bytes[17..]);
        Ok(Self {
            sequence_number: i64_at(0),
            source_timestamp_ns: i64_at(8),
            gid,
        })
    }
}

/// A GID for the entity announced by liveliness token `token`: the first 16 bytes of its
/// SHA-256 (rmw_zenoh hashes the token too, with XXH3; subscribers only use the GID to tell
/// publishers apart, so any stable 16 bytes per publisher serve).
#[must_use]
pub fn gid_for(token: &str) -> [u8; GID_LEN] {
    let digest = Sha256::digest(token.as_bytes());
    let mut gid = [0u8; GID_LEN];
    gid.copy_from_slice(&digest[..GID_LEN]);
    gid
}

/// Delivery guarantee of a topic (`rmw_qos_reliability_policy_e`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reliability {
    /// Retransmit until delivered (rmw_zenoh's default).
    #[default]
    Reliable,
    /// Drop what is late (sensor streams).
    BestEffort,
}

/// Whether late joiners get the last samples (`rmw_qos_durability_policy_e`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// No history for late joiners (rmw_zenoh's default).
    #[default]
    Volatile,
    /// The last `depth` samples kept for late joiners.
    TransientLocal,
}

/// The QoS an entity announces (history is always keep-last `depth`; deadline, lifespan and
/// liveliness are ROS's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qos {
    /// Reliability.
    pub reliability: Reliability,
    /// Durability.
    pub durability: Durability,
    /// History depth (keep last).
    pub depth: u32,
}

impl Qos {
    /// rclcpp's `SensorDataQoS`: best effort, volatile, keep last 5.
    pub const SENSOR_DATA: Self = Self {
        reliability: Reliability::BestEffort,
        durability: Durability::Volatile,
        depth: 5,
    };
    /// rclcpp's default: reliable, volatile, keep last 10.
    pub const DEFAULT: Self = Self {
        reliability: Reliability::Reliable,
        durability: Durability::Volatile,
        depth: 10,
    };

    /// The QoS field of a liveliness token: `rel:dur:hist,depth:deadline:lifespan:liveliness`,
    /// each value empty where it equals rmw_zenoh's default (reliable, volatile, keep last 42,
    /// infinite durations, automatic liveliness), e.g. `::,10:,:,:,,` for [`Qos::DEFAULT`].
    #[must_use]
    pub fn to_keyexpr(&self) -> String {
        let reliability = match self.reliability {
            Reliability::Reliable => "",
            Reliability::BestEffort => "2",
        };
        let durability = match self.durability {
            Durability::Volatile => "",
            Durability::TransientLocal => "1",
        };
        let depth = match self.depth {
            0 | 42 => String::new(),
            d => d.to_string(),
        };
        format!("{reliability}:{durability}:,{depth}:,:,:,,")
    }
}

/// `/` inside a liveliness-token field is written `%`.
#[must_use]
pub fn mangle(field: &str) -> String {
    field.replace('/', "%")
}

/// Who a node is in a ROS 2 graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// `ROS_DOMAIN_ID`.
    pub domain: u32,
    /// The node's namespace (`/` for the root).
    pub namespace: String,
    /// The node's name.
    pub name: String,
    /// The security enclave (`/` for none).
    pub enclave: String,
}

impl NodeIdentity {
    /// Checks the namespace (`/` or a topic-like name) and the node name (one token).
    ///
    /// # Errors
    /// [`TransportError::InvalidTopicName`] naming the bad part.
    pub fn validate(&self) -> Result<()> {
        if self.namespace != "/" {
            check_topic_name(&self.namespace)?;
        }
        if self.name.contains('/') {
            return Err(TransportError::InvalidTopicName {
                topic: self.name.clone(),
                reason: "a node name is one token (no '/')".into(),
            });
        }
        check_topic_name(&format!("/{}", self.name))?;
        if self.enclave != "/" {
            check_topic_name(&self.enclave)?;
        }
        Ok(())
    }

    fn token_prefix(&self, zid: &str, node_id: u32, entity_id: u32, kind: &str) -> String {
        format!(
            "{ADMIN_SPACE}/{}/{zid}/{node_id}/{entity_id}/{kind}/{}/{}/{}",
            self.domain,
            mangle(&self.enclave),
            mangle(&self.namespace),
            mangle(&self.name)
        )
    }
}

/// The node's liveliness token (`NN`); `zid` is the zenoh session id as zenoh prints it.
#[must_use]
pub fn node_token(node: &NodeIdentity, zid: &str, node_id: u32) -> String {
    node.token_prefix(zid, node_id, node_id, "NN")
}

/// Whether an entity publishes or subscribes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntityKind {
    /// A publisher (`MP`).
    Publisher,
    /// A subscription (`MS`).
    Subscription,
}

/// A publisher's or subscription's liveliness token.
///
/// # Errors
/// [`TransportError::InvalidTopicName`] for a bad topic name.
pub fn entity_token(
    node: &NodeIdentity,
    zid: &str,
    (node_id, entity_id): (u32, u32),
    entity: EntityKind,
    topic: &str,
    kind: MessageKind,
    qos: &Qos,
) -> Result<String> {
    check_topic_name(topic)?;
    let code = match entity {
        EntityKind::Publisher => "MP",
        EntityKind::Subscription => "MS",
    };
    Ok(format!(
        "{}/{}/{}/{}/{}",
        node.token_prefix(zid, node_id, entity_id, code),
        mangle(topic),
        mangle(dds_type_name(kind)),
        type_hash(kind),
        qos.to_keyexpr()
    ))
}

/// REP 2011 type hash (`RIHS01_` + 64 hex digits) of `kind`: the SHA-256 of its type
/// description (its fields, then every type it references, sorted by name) serialized as
/// rosidl's `calculate_type_hash` does (`json.dumps` with `", "` and `": "` separators, keys in
/// rosidl's order, default values left out).
#[must_use]
pub fn type_hash(kind: MessageKind) -> &'static str {
    &wire_type(kind).hash
}

/// [`type_hash`], computed.
fn compute_type_hash(kind: MessageKind) -> String {
    let schema = kind.ros2msg_schema();
    // Sections: the type's own fields, then `MSG: pkg/Type` blocks after lines of '='.
    let mut types: Vec<(String, Vec<Field>)> = Vec::new();
    let mut current = (full_type_name(kind.type_name()), Vec::new());
    for line in schema.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with("===") {
            continue;
        }
        if let Some(name) = line.strip_prefix("MSG: ") {
            types.push(std::mem::replace(
                &mut current,
                (full_type_name(name), Vec::new()),
            ));
            continue;
        }
        if let Some(field) = Field::parse(line) {
            current.1.push(field);
        }
    }
    types.push(current);
    let (own, mut referenced) = (types.remove(0), types);
    referenced.sort_by(|a, b| a.0.cmp(&b.0));
    let mut json = String::from("{\"type_description\": ");
    describe(&mut json, &own);
    json.push_str(", \"referenced_type_descriptions\": [");
    for (i, t) in referenced.iter().enumerate() {
        if i > 0 {
            json.push_str(", ");
        }
        describe(&mut json, t);
    }
    json.push_str("]}");
    let digest = Sha256::digest(json.as_bytes());
    let mut out = String::from("RIHS01_");
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// `pkg/Type` → `pkg/msg/Type` (names already holding `/msg/` unchanged).
fn full_type_name(name: &str) -> String {
    if name.contains("/msg/") {
        return name.to_owned();
    }
    match name.split_once('/') {
        Some((pkg, ty)) => format!("{pkg}/msg/{ty}"),
        None => name.to_owned(),
    }
}

/// One field of a type description.
struct Field {
    name: String,
    type_id: u32,
    capacity: u64,
    nested: String,
}

impl Field {
    /// `type name` with `type` a primitive or `pkg/Type`, optionally `[]` or `[N]`.
    fn parse(line: &str) -> Option<Self> {
        let mut parts = line.split_whitespace();
        let (ty, name) = (parts.next()?, parts.next()?);
        let (base, array) = match ty.split_once('[') {
            Some((base, rest)) => (base, Some(rest.trim_end_matches(']'))),
            None => (ty, None),
        };
        // rosidl's FieldType ids; nested types are 1.
        let (id, nested) = match base {
            "int8" => (2, String::new()),
            "uint8" => (3, String::new()),
            "int16" => (4, String::new()),
            "uint16" => (5, String::new()),
            "int32" => (6, String::new()),
            "uint32" => (7, String::new()),
            "int64" => (8, String::new()),
            "uint64" => (9, String::new()),
            "float32" => (10, String::new()),
            "float64" => (11, String::new()),
            "char" => (13, String::new()),
            "bool" => (15, String::new()),
            "byte" => (16, String::new()),
            "string" => (17, String::new()),
            "wstring" => (18, String::new()),
            other => (1, full_type_name(other)),
        };
        // Fixed arrays +48 (capacity N), unbounded sequences +144.
        let (type_id, capacity) = match array {
            None => (id, 0),
            Some("") => (id + 144, 0),
            Some(n) => (id + 48, n.parse().ok()?),
        };
        Some(Self {
            name: name.to_owned(),
            type_id,
            capacity,
            nested,
        })
    }
}

fn describe(json: &mut String, (name, fields): &(String, Vec<Field>)) {
    let _ = write!(json, "{{\"type_name\": \"{name}\", \"fields\": [");
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            json.push_str(", ");
        }
        let _ = write!(
            json,
            "{{\"name\": \"{}\", \"type\": {{\"type_id\": {}, \"capacity\": {}, \"string_capacity\": 0, \"nested_type_name\": \"{}\"}}}}",
            f.name, f.type_id, f.capacity, f.nested
        );
    }
    json.push_str("]}");
}

/// A node in the ROS 2 graph: its liveliness token (`NN`), and ids for its publishers' and
/// subscriptions' tokens. Dropping it withdraws the token.
#[derive(Debug)]
pub struct Ros2Node {
    identity: NodeIdentity,
    zid: String,
    next_entity: std::sync::atomic::AtomicU32,
    _token: zenoh::liveliness::LivelinessToken,
}

/// This session's node id (one node per session).
const NODE_ID: u32 = 0;

impl Ros2Node {
    /// Announces `identity` on `session`.
    ///
    /// # Errors
    /// [`TransportError::InvalidTopicName`] for a bad namespace or name, or
    /// [`TransportError::Zenoh`].
    pub fn declare(session: &zenoh::Session, identity: NodeIdentity) -> Result<Self> {
        use zenoh::Wait as _;
        identity.validate()?;
        let zid = session.zid().to_string();
        let token = session
            .liveliness()
            .declare_token(node_token(&identity, &zid, NODE_ID))
            .wait()
            .map_err(|e| TransportError::zenoh("declare liveliness token", &e))?;
        Ok(Self {
            identity,
            zid,
            next_entity: std::sync::atomic::AtomicU32::new(NODE_ID + 1),
            _token: token,
        })
    }

    /// The node's identity.
    #[must_use]
    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    /// Announces a publisher or subscription of this node; the token lives as long as the
    /// returned handle. Returns the token's key too (a publisher's GID is derived from it).
    ///
    /// # Errors
    /// As [`entity_token`], or [`TransportError::Zenoh`].
    pub fn announce(
        &self,
        session: &zenoh::Session,
        entity: EntityKind,
        topic: &str,
        kind: MessageKind,
        qos: &Qos,
    ) -> Result<(zenoh::liveliness::LivelinessToken, String)> {
        use zenoh::Wait as _;
        let id = self
            .next_entity
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = entity_token(
            &self.identity,
            &self.zid,
            (NODE_ID, id),
            entity,
            topic,
            kind,
            qos,
        )?;
        let token = session
            .liveliness()
            .declare_token(key.clone())
            .wait()
            .map_err(|e| TransportError::zenoh("declare liveliness token", &e))?;
        Ok((token, key))
    }
}

/// A ROS 2 publisher of `M` on one topic, as rmw_zenoh publishes: the topic's key, the
/// attachment on every sample, and a liveliness token for the graph.
#[derive(Debug)]
pub struct Ros2Publisher<M: crate::msg::RosMessage> {
    inner: zenoh::pubsub::Publisher<'static>,
    sequence: std::sync::atomic::AtomicI64,
    gid: [u8; GID_LEN],
    _token: zenoh::liveliness::LivelinessToken,
    _message: std::marker::PhantomData<fn(&M)>,
}

impl<M: crate::msg::RosMessage> Ros2Publisher<M> {
    /// Declares the publisher of `topic` for `node`, with `class`'s zenoh QoS and `qos`
    /// announced in the graph.
    ///
    /// # Errors
    /// [`TransportError::InvalidTopicName`] or [`TransportError::Zenoh`].
    pub fn declare(
        session: &zenoh::Session,
        node: &Ros2Node,
        topic: &str,
        qos: &Qos,
        class: crate::pubsub::StreamClass,
    ) -> Result<Self> {
        let key = topic_key(node.identity.domain, topic, M::KIND)?;
        let inner = crate::pubsub::declare_raw_publisher(
            session,
            &key,
            class,
            zenoh::bytes::Encoding::ZENOH_BYTES,
        )?;
        let (token, token_key) =
            node.announce(session, EntityKind::Publisher, topic, M::KIND, qos)?;
        Ok(Self {
            inner,
            sequence: std::sync::atomic::AtomicI64::new(1),
            gid: gid_for(&token_key),
            _token: token,
            _message: std::marker::PhantomData,
        })
    }

    /// Encodes and sends one message with the next attachment (sequence number, the wall
    /// clock's time, the GID).
    ///
    /// # Errors
    /// Encoding errors or [`TransportError::Zenoh`].
    pub fn publish(&self, msg: &M) -> Result<()> {
        use zenoh::Wait as _;
        let payload = crate::msg::encode(msg)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let attachment = Attachment {
            sequence_number: self
                .sequence
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            source_timestamp_ns: now,
            gid: self.gid,
        };
        self.inner
            .put(payload)
            .attachment(attachment.encode().to_vec())
            .wait()
            .map_err(|e| TransportError::zenoh("put", &e))
    }

    /// Waits up to `timeout` until some subscriber matches this publisher.
    ///
    /// # Errors
    /// [`TransportError::Zenoh`] on a zenoh error or the timeout.
    pub fn wait_for_subscriber(&self, timeout: std::time::Duration) -> Result<()> {
        crate::pubsub::wait_for_match(&self.inner, timeout)
    }
}

/// A publisher on edgevla's key space or on a ROS 2 topic: what the node and tools publish
/// through, whichever mode their config names.
#[derive(Debug)]
pub enum TopicPublisher<M: crate::msg::RosMessage> {
    /// edgevla's keys ([`crate::pubsub::Publisher`]).
    Native(crate::pubsub::Publisher<M>),
    /// A ROS 2 topic ([`Ros2Publisher`]).
    Ros2(Ros2Publisher<M>),
}

impl<M: crate::msg::RosMessage> TopicPublisher<M> {
    /// Encodes and sends one message.
    ///
    /// # Errors
    /// Encoding errors or [`TransportError::Zenoh`].
    pub fn publish(&self, msg: &M) -> Result<()> {
        match self {
            Self::Native(p) => p.publish(msg),
            Self::Ros2(p) => p.publish(msg),
        }
    }

    /// Waits up to `timeout` until some subscriber matches.
    ///
    /// # Errors
    /// [`TransportError::Zenoh`] on a zenoh error or the timeout.
    pub fn wait_for_subscriber(&self, timeout: std::time::Duration) -> Result<()> {
        match self {
            Self::Native(p) => p.wait_for_subscriber(timeout),
            Self::Ros2(p) => p.wait_for_subscriber(timeout),
        }
    }
}

/// The liveliness tokens of ROS 2 domain `domain` as `session` sees them (what `ros2 node list`
/// and `ros2 topic list` are built from), sorted.
///
/// # Errors
/// [`TransportError::Zenoh`].
pub fn graph_tokens(
    session: &zenoh::Session,
    domain: u32,
    timeout: std::time::Duration,
) -> Result<Vec<String>> {
    use zenoh::Wait as _;
    let replies = session
        .liveliness()
        .get(format!("{ADMIN_SPACE}/{domain}/**"))
        .timeout(timeout)
        .wait()
        .map_err(|e| TransportError::zenoh("liveliness get", &e))?;
    let mut tokens: Vec<String> = replies
        .iter()
        .filter_map(|reply| reply.result().ok().map(|s| s.key_expr().to_string()))
        .collect();
    tokens.sort();
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Published RIHS01 hashes of ROS 2 jazzy (rmw_zenoh's `docs/design.md` for String; the
    /// `ros2 topic info -v` output of a jazzy install for the sensor messages).
    #[test]
    fn type_hashes_equal_ros2_jazzy() {
        for (kind, want) in [
            (
                MessageKind::String,
                "RIHS01_df668c740482bbd48fb39d76a70dfd4bd59db1288021743503259e948f6b1a18",
            ),
            (
                MessageKind::CompressedImage,
                "RIHS01_15640771531571185e2efc8a100baf923961a4d15d5569652e6cb6691e8e371a",
            ),
            (
                MessageKind::Image,
                "RIHS01_d31d41a9a4c4bc8eae9be757b0beed306564f7526c88ea6a4588fb9582527d47",
            ),
            (
                MessageKind::JointState,
                "RIHS01_a13ee3a330e346c9d87b5aa18d24e11690752bd33a0350f11c5882bc9179260e",
            ),
        ] {
            assert_eq!(type_hash(kind), want, "{kind:?}");
        }
        // Every kind hashes (ActionChunk and Imu have no published value to compare with).
        for kind in MessageKind::ALL {
            let h = type_hash(kind);
            assert!(h.starts_with("RIHS01_") && h.len() == 71, "{kind:?} {h}");
        }
    }

    /// design.md's example key and tokens, rebuilt.
    #[test]
    fn keys_and_tokens_as_rmw_zenoh_writes_them() {
        assert_eq!(
            topic_key(0, "/robot1/chatter", MessageKind::String).unwrap(),
            "0/robot1/chatter/std_msgs::msg::dds_::String_/RIHS01_df668c740482bbd48fb39d76a70dfd4bd59db1288021743503259e948f6b1a18"
        );
        assert_eq!(
            dds_type_name(MessageKind::CompressedImage),
            "sensor_msgs::msg::dds_::CompressedImage_"
        );
        let talker = NodeIdentity {
            domain: 2,
            namespace: "/".into(),
            name: "talker".into(),
            enclave: "/".into(),
        };
        let zid = "8b20917502ee955ac4476e0266340d5c";
        let qos = Qos {
            depth: 7,
            ..Qos::DEFAULT
        };
        assert_eq!(
            entity_token(
                &talker,
                zid,
                (0, 10),
                EntityKind::Publisher,
                "/chatter",
                MessageKind::String,
                &qos
            )
            .unwrap(),
            "@ros2_lv/2/8b20917502ee955ac4476e0266340d5c/0/10/MP/%/%/talker/%chatter/std_msgs::msg::dds_::String_/RIHS01_df668c740482bbd48fb39d76a70dfd4bd59db1288021743503259e948f6b1a18/::,7:,:,:,,"
        );
        let listener = NodeIdentity {
            name: "listener".into(),
            ..talker
        };
        assert_eq!(
            node_token(&listener, "aac3178e146ba6f1fc6e6a4085e77f21", 0),
            "@ros2_lv/2/aac3178e146ba6f1fc6e6a4085e77f21/0/0/NN/%/%/listener"
        );
        assert_eq!(Qos::DEFAULT.to_keyexpr(), "::,10:,:,:,,");
        assert_eq!(Qos::SENSOR_DATA.to_keyexpr(), "2::,5:,:,:,,");
        let latched = Qos {
            durability: Durability::TransientLocal,
            depth: 1,
            ..Qos::DEFAULT
        };
        assert_eq!(latched.to_keyexpr(), ":1:,1:,:,:,,");
        let key = topic_key(0, "/cam/front", MessageKind::Image).unwrap();
        let (topic, ty, hash) = split_key(&key).unwrap();
        assert_eq!(topic, "0/cam/front");
        assert_eq!(ty, dds_type_name(MessageKind::Image));
        assert_eq!(hash, type_hash(MessageKind::Image));
        assert_eq!(
            base_selector(&topic_base(0, "/cam/front").unwrap()),
            "0/cam/front/*/*"
        );
    }

    #[test]
    fn bad_topic_names_are_refused() {
        for bad in [
            "", "/", "cam", "/cam/", "//cam", "/cam//x", "/1cam", "/cam-x", "/cam/*",
        ] {
            assert!(
                matches!(
                    check_topic_name(bad),
                    Err(TransportError::InvalidTopicName { .. })
                ),
                "{bad:?}"
            );
        }
        for good in ["/joint_states", "/cam/front_left", "/a1/b_2"] {
            check_topic_name(good).unwrap();
        }
    }

    /// The attachment's bytes (design.md: i64 LE, i64 LE, GID length, GID) both ways; other
    /// lengths and GID lengths are errors, never panics.
    #[test]
    fn attachment_round_trip_and_bad_bytes() {
        let a = Attachment {
            sequence_number: 1,
            source_timestamp_ns: 1_700_000_000_123_456_789,
            gid: std::array::from_fn(|i| i as u8),
        };
        let bytes = a.encode();
        assert_eq!(&bytes[..8], &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            &bytes[8..16],
            &[0x15, 0xcd, 0x85, 0x3d, 0xfe, 0x9c, 0x97, 0x17]
        );
        assert_eq!(bytes[16], 16);
        assert_eq!(Attachment::decode(&bytes).unwrap(), a);
        assert!(Attachment::decode(&bytes[..32]).is_err());
        assert!(Attachment::decode(&[]).is_err());
        let mut wrong_len = bytes;
        wrong_len[16] = 15;
        assert!(Attachment::decode(&wrong_len).is_err());
        // The keyed form of rmw_zenoh 0.2.0-0.2.3 (77 bytes) is not this format.
        assert!(Attachment::decode(&[0u8; 77]).is_err());
        assert_ne!(gid_for("a"), gid_for("b"));
    }
}
