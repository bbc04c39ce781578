//! Replication between nodes (docs/replication.md): the node list (routes, `hdb_nodes`, gossip), one
//! WebSocket link per peer multiplexing every replicated database, the plain replication
//! listener, reconnects with jittered back-off, and `cluster_status`.
//!
//! Links run on their own plain threads (DESIGN.md allows "tasks on the executors or their own
//! threads"): a link is a reader thread (frames → channel), a control thread (applies what
//! arrives, acknowledges, keeps subscriptions and relays current) and one sender thread per
//! database the peer subscribed to (audit log → `TXN`). Blocking socket I/O and waiting for the
//! writer's replies therefore never touch an executor. No link ever opens a write transaction:
//! every change goes to the database's writer as an [`ApplyJob`], in order, pipelined.
//!
//! One link per peer (not per database): every message body names its `database`. If both nodes
//! dial each other, the link dialled by the node with the smaller name stays.
//!
//! What it never does: parse client requests, hold a write transaction, or replicate `drop_*`,
//! expiry removal or system tables other than `hdb_user`/`hdb_role`.

pub mod auth;
pub mod certs;
pub mod clone;
pub mod link;
pub mod message;
pub mod subscriptions;
pub mod transport;
pub mod ws;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use serde_yaml::Value as Yaml;

use crate::config::{Config, ConfigTree, ListenAddr};
use crate::store::{now_ms, Store, Table, WriteOp, WriteRequest};
use crate::value::{Object, Value};
use subscriptions::Subscriptions;

/// Reconnect back-off bounds (docs/replication.md).
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A link whose TCP connect takes longer gives up and backs off.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The system tables that replicate when `system` is included (docs/replication.md).
const SYSTEM_REPLICATED: &[&str] = &["hdb_user", "hdb_role"];

/// Which databases replicate (`replication.databases`).
#[derive(Debug, Clone, PartialEq)]
pub enum Databases {
    /// `"*"`: every user database, and `system`'s users and roles.
    All,
    Names(Vec<String>),
}

impl Databases {
    pub fn includes(&self, name: &str) -> bool {
        match self {
            Databases::All => true,
            Databases::Names(names) => names.iter().any(|n| n == name),
        }
    }
}

/// Where to dial a peer.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// `startTime` (ms since the epoch): stream from then on instead of from cursors.
    pub start_time: Option<f64>,
    /// `wss://` (true) or `ws://` (false); None = this node's default (TLS when the secure
    /// port is on).
    pub tls: Option<bool>,
    /// `verify_tls: false` accepts any certificate from the peer (docs/replication.md).
    pub verify_tls: bool,
    /// Sent as `Authorization` on the upgrade (`Basic …`), for peers that do not trust our CA;
    /// dropped after a certificate exchange unless `retain_authorization`.
    pub authorization: Option<String>,
    pub retain_authorization: bool,
}

impl Target {
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The address with its scheme when one was given: `wss://h:p`, `ws://h:p`, or `h:p`
    /// (which dials with the node's default).
    pub fn url(&self) -> String {
        match self.tls {
            Some(true) => format!("wss://{}:{}", self.host, self.port),
            Some(false) => format!("ws://{}:{}", self.host, self.port),
            None => self.address(),
        }
    }

    /// `verify_tls`, `authorization` and `retain_authorization` of an `add_node` body or a
    /// route object.
    pub fn apply_options(&mut self, o: &Object) {
        if let Some(Value::Bool(verify)) = o.get("verify_tls").or_else(|| o.get("verifyTls")) {
            self.verify_tls = *verify;
        }
        if let Some(authorization) = authorization_of(o.get("authorization")) {
            self.authorization = Some(authorization);
        }
        if let Some(Value::Bool(retain)) = o
            .get("retain_authorization")
            .or_else(|| o.get("retainAuthorization"))
        {
            self.retain_authorization = *retain;
        }
    }

    /// The URL as this node dials it.
    pub fn resolved_url(&self, tls_default: bool) -> String {
        let scheme = if self.tls.unwrap_or(tls_default) {
            "wss"
        } else {
            "ws"
        };
        format!("{scheme}://{}:{}", self.host, self.port)
    }

    /// A route or node address: `host`, `host:port`, `ws://host:port`, `wss://host:port`, or
    /// `{hostname, port, startTime?}`.
    pub fn parse(v: &Value, port_default: u16) -> Option<Target> {
        match v {
            Value::String(s) => Self::parse_str(s, port_default, None),
            Value::Object(o) => {
                let host = o
                    .get("hostname")
                    .or_else(|| o.get("host"))
                    .or_else(|| o.get("url"))?
                    .as_str()?;
                let port = message::as_u64(o.get("port"))
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or(port_default);
                let start = o
                    .get("startTime")
                    .or_else(|| o.get("start_time"))
                    .and_then(parse_time);
                let mut target = Self::parse_str(host, port, start)?;
                target.apply_options(o);
                Some(target)
            }
            _ => None,
        }
    }

    fn parse_str(s: &str, port_default: u16, start_time: Option<f64>) -> Option<Target> {
        let s = s.trim();
        let (tls, rest) = if let Some(rest) = s.strip_prefix("wss://") {
            (Some(true), rest)
        } else if let Some(rest) = s.strip_prefix("ws://") {
            (Some(false), rest)
        } else {
            (None, s)
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() {
            return None;
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.starts_with('[') => {
                (h.to_string(), p.parse::<u16>().ok()?)
            }
            _ => (rest.to_string(), port_default),
        };
        Some(Target {
            host,
            port,
            start_time,
            tls,
            verify_tls: true,
            authorization: None,
            retain_authorization: false,
        })
    }
}

/// `authorization`: a header value (`Basic …`) or `{username, password}`.
fn authorization_of(v: Option<&Value>) -> Option<String> {
    use base64::Engine;
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(o) => {
            let user = o.get("username")?.as_str()?;
            let password = o.get("password")?.as_str()?;
            Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            ))
        }
        _ => None,
    }
}

/// ISO-8601 or ms since the epoch → ms since the epoch.
pub fn parse_time(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        Value::Date(ms) => Some(*ms),
        Value::String(s) => crate::util::parse_iso8601_ms(s),
        _ => None,
    }
}

/// `replication.*` settings, read from the configuration tree.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_name: String,
    pub url: String,
    /// `replication.port`: the plain listener.
    pub listen: Option<SocketAddr>,
    /// `replication.securePort`: the TLS listener.
    pub secure_listen: Option<SocketAddr>,
    /// Addresses without a scheme are dialled over TLS (the secure port is on).
    pub tls_default: bool,
    pub routes: Vec<Target>,
    pub databases: Databases,
    /// Replication is on (docs/replication.md): hostname, url or routes configured (or known nodes).
    pub configured: bool,
    pub port_default: u16,
    /// `replication.heartbeatInterval`: a `PING` goes to each peer this often.
    pub heartbeat_interval: Duration,
    /// `replication.heartbeatTimeout`: a link that hears nothing for this long is dead.
    pub heartbeat_timeout: Duration,
}

impl Settings {
    pub fn from_tree(tree: &ConfigTree, config: &Config) -> Result<Settings, String> {
        let get = |k: &str| tree.get(k).filter(|v| !matches!(v, Yaml::Null));
        let listen = match get("replication.port") {
            Some(v) => ListenAddr::parse("replication.port", v)
                .map_err(|e| e.to_string())?
                .map(|a| a.0),
            None => None,
        };
        let secure_listen = match get("replication.securePort") {
            Some(v) => ListenAddr::parse("replication.securePort", v)
                .map_err(|e| e.to_string())?
                .map(|a| a.0),
            None => None,
        };
        // Routes default to `wss://host:<securePort>`, or to the plain port when only that one
        // is on (docs/replication.md).
        let tls_default = secure_listen.is_some() || listen.is_none();
        let port_default = match (secure_listen, listen) {
            (Some(a), _) | (None, Some(a)) => a.port(),
            (None, None) => 9933,
        };
        let routes: Vec<Target> = match get("replication.routes") {
            Some(Yaml::Sequence(items)) => items
                .iter()
                .filter_map(|y| {
                    let j = serde_json::to_value(y).ok()?;
                    Target::parse(&crate::protocol::ops::decode::from_json(&j), port_default)
                })
                .collect(),
            _ => Vec::new(),
        };
        let databases = match get("replication.databases") {
            Some(Yaml::Sequence(items)) => Databases::Names(
                items
                    .iter()
                    .filter_map(|y| y.as_str().map(str::to_string))
                    .collect(),
            ),
            Some(Yaml::String(s)) if s != "*" => {
                Databases::Names(s.split(',').map(|p| p.trim().to_string()).collect())
            }
            _ => Databases::All,
        };
        let heartbeat_interval = tree
            .duration("replication.heartbeatInterval")
            .map_err(|e| e.to_string())?;
        let heartbeat_timeout = tree
            .duration("replication.heartbeatTimeout")
            .map_err(|e| e.to_string())?;
        if heartbeat_interval.is_zero() || heartbeat_timeout <= heartbeat_interval {
            return Err(format!(
                "replication.heartbeatTimeout ({} ms) must be longer than \
                 replication.heartbeatInterval ({} ms), which must not be 0",
                heartbeat_timeout.as_millis(),
                heartbeat_interval.as_millis()
            ));
        }
        let url = get("replication.url").and_then(|v| v.as_str().map(str::to_string));
        let configured =
            get("replication.hostname").is_some() || url.is_some() || !routes.is_empty();
        let url = url.unwrap_or_else(|| {
            let (scheme, addr) = match (secure_listen, listen) {
                (Some(a), _) => ("wss", Some(a)),
                (None, Some(a)) => ("ws", Some(a)),
                (None, None) => ("wss", None),
            };
            match addr {
                Some(a) if !a.ip().is_unspecified() => format!("{scheme}://{a}"),
                _ => format!("{scheme}://{}:{port_default}", config.node_name),
            }
        });
        Ok(Settings {
            node_name: config.node_name.clone(),
            url,
            listen,
            secure_listen,
            tls_default,
            routes,
            databases,
            configured,
            port_default,
            heartbeat_interval,
            heartbeat_timeout,
        })
    }
}

/// The `hdb_nodes` field holding when a record's subscriptions were set (ms since the epoch).
pub const SUBSCRIPTIONS_TIME: &str = "subscriptions_time";

/// A known peer: a route, an `hdb_nodes` entry or a node learned by gossip.
#[derive(Debug, Clone)]
pub struct Node {
    /// The key operations use: the name given to `add_node`, or the host of a route.
    pub key: String,
    /// The name the peer announced in `HELLO`, once connected.
    pub name: Option<String>,
    pub target: Target,
    pub from_route: bool,
    stop: Arc<AtomicBool>,
}

/// Per-database link counters for `cluster_status` (ms since the epoch; 0 = never).
#[derive(Debug, Clone, Default)]
pub struct SocketStatus {
    pub connected: bool,
    pub last_commit_confirmed: f64,
    pub last_received_remote: f64,
    pub last_received_local: f64,
    pub last_send: f64,
    /// Origin time of the transaction being written to the peer; 0 when not sending.
    pub sending: f64,
    pub nodes: Vec<String>,
}

/// How far one peer's database socket runs behind (`/metrics`, docs/metrics.md).
#[derive(Debug, Clone)]
pub struct SocketLag {
    pub peer: String,
    pub database: String,
    /// Local receive time minus the peer's commit time of the newest transaction received (clock
    /// skew between the nodes adds to it); 0 before any.
    pub received_s: f64,
    /// Age of the transaction being written to the peer now; 0 when nothing is being sent.
    pub sending_s: f64,
    /// Round trip of the last `PING`.
    pub ping_s: Option<f64>,
}

/// A live link, as the manager sees it.
pub struct LinkEntry {
    pub id: u64,
    /// Who dialled it: decides which of two crossing links stays.
    pub dialer: String,
    pub stop: Arc<AtomicBool>,
    socket: TcpStream,
    out: Arc<link::Out>,
    pub thread: u64,
}

/// A node's explicit subscriptions as this node holds them (docs/replication.md "Explicit
/// subscriptions"), with when they were set (ms since the epoch; 0 = never): of two views, the
/// later one wins on both sides.
#[derive(Debug, Clone, Default)]
pub struct PeerSubs {
    /// None: every table replicates.
    pub subs: Option<Subscriptions>,
    pub time: f64,
}

/// What a peer's view of our subscriptions did here.
#[derive(Debug, PartialEq)]
pub enum Adopted {
    /// Ours were set later: the peer must take them.
    Ours,
    /// Theirs were set later and differ: taken (reversed), the link must start over.
    Changed,
    /// Nothing to do.
    Same,
}

#[derive(Default)]
pub struct PeerStatus {
    pub url: String,
    /// Something arrived after `HELLO`: the peer has registered the link (and taken our
    /// subscriptions) too.
    pub ready: bool,
    /// The peer's own origin per database, from its `HELLO` (docs/replication.md "Origins").
    pub streams: BTreeMap<String, String>,
    pub latency_ms: Option<f64>,
    pub sockets: BTreeMap<String, SocketStatus>,
}

/// The replication manager: one per process.
pub struct Replication {
    pub settings: Settings,
    pub store: Arc<Store>,
    nodes: Mutex<Vec<Node>>,
    links: Mutex<HashMap<String, LinkEntry>>,
    pub(crate) status: Mutex<HashMap<String, PeerStatus>>,
    snapshot_claims: Mutex<HashSet<String>>,
    /// Nodes that removed this node (`BYE removed`): `remove_node` of one answers 200.
    left: Mutex<HashSet<String>>,
    /// This node's own `hdb_nodes` record was written (on its first full link).
    self_recorded: AtomicBool,
    /// Names (and keys) of nodes `remove_node` removed: never dialled, their links refused,
    /// until a new `add_node` (docs/replication.md).
    removed: Mutex<HashSet<String>>,
    /// Explicit subscriptions per node record name (`hdb_nodes.subscriptions`).
    subs: Mutex<HashMap<String, PeerSubs>>,
    /// (peer, database): the tables we subscribe to from that peer grew, so the next
    /// subscription asks for a copy of them (what was filtered out before).
    resync: Mutex<HashSet<(String, String)>>,
    /// TLS for the secure listener and `wss://` dials, swapped when a certificate exchange adds
    /// a CA; None when it could not be set up without a secure port (then `wss://` dials fail
    /// and say why).
    tls: RwLock<Option<Arc<transport::LinkTls>>>,
    /// The node's configuration: its `tls` files sign and reload certificates.
    pub(crate) config: Config,
    stopping: AtomicBool,
    next_link: AtomicU64,
    /// Links closed because nothing was heard for `replication.heartbeatTimeout` (`/metrics`).
    pub links_timed_out: AtomicU64,
}

static INSTANCE: OnceLock<Arc<Replication>> = OnceLock::new();

/// The running replication manager, when replication is on.
pub fn get() -> Option<Arc<Replication>> {
    INSTANCE.get().cloned()
}

/// Reads `hdb_nodes` and the settings; when replication is on, binds the listener (an error is
/// a bind failure) and starts dialling every known node.
pub fn start(
    store: Arc<Store>,
    config: &Config,
    tree: &ConfigTree,
) -> Result<Option<Arc<Replication>>, String> {
    let settings = Settings::from_tree(tree, config)?;
    let (stored, removed, subs) = stored_nodes(&store, settings.port_default, &settings.node_name);
    let leader = clone::Leader::from_env();
    if !settings.configured && stored.is_empty() && leader.is_none() {
        return Ok(None);
    }
    // A clone starts once: later starts find the leader in `hdb_nodes`.
    let first_start = stored.is_empty() && removed.is_empty() && settings.routes.is_empty();
    let bind = |addr: Option<SocketAddr>, what: &str| match addr {
        Some(addr) => TcpListener::bind(addr)
            .map(Some)
            .map_err(|e| format!("replication {what} {addr}: cannot listen: {e}")),
        None => Ok(None),
    };
    let listener = bind(settings.listen, "port")?;
    let secure_listener = bind(settings.secure_listen, "securePort")?;
    let tls = match transport::LinkTls::load(config, &certs::stored_authorities(&store)) {
        Ok(tls) => Some(Arc::new(tls)),
        Err(e) if secure_listener.is_none() => {
            tracing::warn!("replication: no TLS for wss:// links: {e}");
            None
        }
        Err(e) => return Err(format!("replication securePort: {e}")),
    };
    let repl = Arc::new(Replication {
        settings,
        store,
        nodes: Mutex::new(Vec::new()),
        links: Mutex::new(HashMap::new()),
        status: Mutex::new(HashMap::new()),
        snapshot_claims: Mutex::new(HashSet::new()),
        left: Mutex::new(HashSet::new()),
        self_recorded: AtomicBool::new(false),
        removed: Mutex::new(removed),
        subs: Mutex::new(subs),
        resync: Mutex::new(HashSet::new()),
        tls: RwLock::new(tls),
        config: config.clone(),
        stopping: AtomicBool::new(false),
        next_link: AtomicU64::new(1),
        links_timed_out: AtomicU64::new(0),
    });
    if INSTANCE.set(repl.clone()).is_err() {
        return Err("replication started twice".into());
    }
    for (listener, kind) in [
        (listener, link::Accepted::Plain),
        (secure_listener, link::Accepted::Secure),
    ] {
        let Some(listener) = listener else {
            continue;
        };
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let scheme = match kind {
            link::Accepted::Plain => "ws",
            link::Accepted::Secure => "wss",
        };
        tracing::info!(target: crate::logging::NOTIFY, "replication listening on {addr} ({scheme}, subprotocol {})", ws::SUBPROTOCOL);
        let r = repl.clone();
        std::thread::Builder::new()
            .name(format!("repl-listen-{scheme}"))
            .spawn(move || r.accept_loop(listener, kind))
            .map_err(|e| e.to_string())?;
    }
    if let Some(leader) = leader {
        match leader {
            Ok(leader) if first_start && clone::first_start(&repl) => clone::start(&repl, leader),
            Ok(_) => tracing::info!("replication: HDB_LEADER_URL ignored: not a first start"),
            Err(e) => tracing::error!("replication: {e}"),
        }
    }
    for target in repl.settings.routes.clone() {
        repl.add_target(target.host.clone(), target, true);
    }
    for (key, target) in stored {
        repl.add_target(key, target, false);
    }
    Ok(Some(repl))
}

/// What `hdb_nodes` holds for the manager: the entries to dial (name, target), the names
/// marked removed, and each entry's explicit subscriptions.
type StoredNodes = (
    Vec<(String, Target)>,
    HashSet<String>,
    HashMap<String, PeerSubs>,
);

/// `hdb_nodes`, as [`StoredNodes`].
fn stored_nodes(store: &Store, port_default: u16, own_name: &str) -> StoredNodes {
    let mut nodes = Vec::new();
    let mut removed = HashSet::new();
    let mut subs = HashMap::new();
    let Some(db) = store.database("system") else {
        return (nodes, removed, subs);
    };
    let Some(table) = db.table("hdb_nodes") else {
        return (nodes, removed, subs);
    };
    let Ok(txn) = db.read() else {
        return (nodes, removed, subs);
    };
    let Ok(records) = txn.raw_records(&table) else {
        return (nodes, removed, subs);
    };
    for v in records.into_iter().filter_map(|r| r.value) {
        let Some(name) = v.get("name").and_then(Value::as_str).map(str::to_string) else {
            continue;
        };
        if matches!(v.get("removed"), Some(Value::Bool(true))) {
            removed.insert(name);
            continue;
        }
        let time = match v.get(SUBSCRIPTIONS_TIME) {
            Some(Value::Float(f)) => *f,
            Some(Value::Int(i)) => *i as f64,
            _ => 0.0,
        };
        // A record this build cannot read replicates everything (as without the key).
        let explicit = Subscriptions::parse(v.get("subscriptions")).unwrap_or(None);
        if explicit.is_some() || time > 0.0 {
            subs.insert(
                name.clone(),
                PeerSubs {
                    subs: explicit,
                    time,
                },
            );
        }
        if name == own_name {
            // This node's own record (docs/replication.md "hdb_nodes").
            continue;
        }
        let url = v.get("url").cloned().unwrap_or(Value::String(name.clone()));
        if let Some(target) = Target::parse(&url, port_default) {
            nodes.push((name, target));
        }
    }
    (nodes, removed, subs)
}

/// Blocks a plain thread on a future (a writer reply), parking between polls.
pub(crate) fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(Duration::from_millis(10));
    }
}

/// Polls a future once without blocking.
pub(crate) fn poll_once<F: Future + Unpin>(f: &mut F) -> Option<F::Output> {
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    match std::pin::Pin::new(f).poll(&mut cx) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// Whether `table` of `database` ever leaves this node.
pub fn table_replicates(database: &str, table: &Table) -> bool {
    table.def.replicate && (database != "system" || SYSTEM_REPLICATED.contains(&&*table.name))
}

/// A jittered delay in [d/2, d].
fn jittered(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let fraction = 0.5 + f64::from(nanos % 1000) / 2000.0;
    d.mul_f64(fraction)
}

impl Replication {
    pub(crate) fn tls(&self) -> Option<Arc<transport::LinkTls>> {
        match self.tls.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Rebuilds the TLS configurations with the CAs now in `hdb_certificate`; links already
    /// open keep theirs.
    pub(crate) fn reload_tls(&self) -> Result<(), String> {
        let fresh =
            transport::LinkTls::load(&self.config, &certs::stored_authorities(&self.store))?;
        match self.tls.write() {
            Ok(mut t) => *t = Some(Arc::new(fresh)),
            Err(poisoned) => *poisoned.into_inner() = Some(Arc::new(fresh)),
        }
        Ok(())
    }

    /// After a certificate exchange with the node dialled at `address`: later dials verify it
    /// and drop the credentials, unless told to keep them.
    pub(crate) fn exchange_done(&self, address: &str) {
        self.each_node_at(address, |n| {
            n.target.verify_tls = true;
            if !n.target.retain_authorization {
                n.target.authorization = None;
            }
        });
    }

    fn each_node_at(&self, address: &str, f: impl FnMut(&mut Node)) {
        self.nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
            .filter(|n| n.target.address() == address)
            .for_each(f);
    }

    pub fn node_name(&self) -> &str {
        &self.settings.node_name
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Databases this node replicates, by name.
    pub fn databases(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .store
            .database_names()
            .into_iter()
            .filter(|d| self.settings.databases.includes(d))
            .collect();
        if self.settings.databases == Databases::All && !names.iter().any(|n| n == "system") {
            names.push("system".into());
        }
        names
    }

    /// Adds (or replaces) a node under `key` and starts dialling it.
    pub fn add_target(self: &Arc<Self>, key: String, target: Target, from_route: bool) {
        if self.own_addresses().contains(&target.address()) {
            return;
        }
        {
            // An explicit add undoes a removal (gossip never gets here for removed nodes).
            let mut removed = self.removed.lock().unwrap_or_else(|e| e.into_inner());
            removed.remove(&key);
            removed.remove(&target.host);
        }
        let stop = Arc::new(AtomicBool::new(false));
        {
            let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(old) = nodes
                .iter()
                .position(|n| n.key == key || n.target.address() == target.address())
            {
                let old = nodes.remove(old);
                if old.target == target {
                    // Same target: keep its dialler running.
                    nodes.push(old);
                    return;
                }
                old.stop.store(true, Ordering::Release);
            }
            nodes.push(Node {
                key,
                name: None,
                target: target.clone(),
                from_route,
                stop: stop.clone(),
            });
        }
        let r = self.clone();
        let _ = std::thread::Builder::new()
            .name(format!("repl-dial-{}", target.address()))
            .spawn(move || r.dial_loop(target, stop));
    }

    fn own_addresses(&self) -> Vec<String> {
        [self.settings.listen, self.settings.secure_listen]
            .into_iter()
            .flatten()
            .filter(|a| !a.ip().is_unspecified())
            .map(|a| a.to_string())
            .collect()
    }

    /// Whether `name` was removed from the cluster (by `remove_node` here or by gossip).
    pub fn is_removed(&self, name: &str) -> bool {
        self.removed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(name)
    }

    /// `remove_node` (docs/replication.md): stops dialling the node `key` (a name, a host or an
    /// address), closes its link with `BYE removed`, marks it removed (kept in `hdb_nodes`, so
    /// it is neither dialled nor let in, nor rediscovered by gossip) and tells every peer.
    /// Returns whether it was known. A plain thread only: it waits for the commit.
    pub fn remove_node(&self, key: &str) -> bool {
        if key == self.settings.node_name {
            // This node's own record (docs/replication.md "hdb_nodes"), as HarperDB deletes it.
            let had = self.has_record(key);
            self.delete_node(key);
            return had;
        }
        let already = self.is_removed(key);
        let left = self
            .left
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        let recorded = self.has_record(key);
        let explicit = self.explicit(key);
        let mut names = vec![key.to_string()];
        names.extend(
            self.nodes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|n| n.key == key || n.target.address() == key || n.target.host == key)
                .filter_map(|n| n.name.clone()),
        );
        let known = self.drop_node(key, "removed") || recorded || left;
        if !known && !already {
            return false;
        }
        if explicit || left {
            // A node of explicit subscriptions (never gossiped) or one that removed us already:
            // its record goes, as in HarperDB, and no mark is kept or spread.
            for name in &names {
                self.forget_subs(name);
                self.delete_node(name);
            }
            return true;
        }
        {
            let mut removed = self.removed.lock().unwrap_or_else(|e| e.into_inner());
            removed.extend(names.iter().cloned());
        }
        for name in &names {
            self.forget_subs(name);
            self.mark_removed(name);
        }
        self.broadcast_nodes();
        known || already
    }

    /// Stops dialling `key` and closes its link with `BYE <reason>`, without marking it (a
    /// route gone from the configuration, or a peer that removed us).
    pub fn drop_node(&self, key: &str, reason: &str) -> bool {
        let removed: Vec<Node> = {
            let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
            let (gone, kept): (Vec<Node>, Vec<Node>) = nodes.drain(..).partition(|n| {
                n.key == key
                    || n.name.as_deref() == Some(key)
                    || n.target.address() == key
                    || n.target.host == key
                    || n.target.url() == key
            });
            *nodes = kept;
            gone
        };
        for node in &removed {
            node.stop.store(true, Ordering::Release);
            for name in [Some(node.key.as_str()), node.name.as_deref()]
                .into_iter()
                .flatten()
            {
                self.close_link(name, reason);
            }
        }
        let peer_known = self.close_link(key, reason);
        !removed.is_empty() || peer_known
    }

    fn close_link(&self, peer: &str, reason: &str) -> bool {
        let entry = self
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(peer);
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(peer);
        match entry {
            Some(e) => {
                e.stop.store(true, Ordering::Release);
                // Never wait behind a blocked write: closing matters more than the BYE.
                let _ = e.out.try_send(
                    "BYE",
                    message::object(vec![("reason", Value::String(reason.into()))]),
                );
                let _ = e.socket.shutdown(std::net::Shutdown::Both);
                true
            }
            None => false,
        }
    }

    /// Every link's peer and sending half, taken out of the lock so sends never hold it.
    fn link_outs(&self) -> Vec<(String, Arc<link::Out>)> {
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(peer, l)| (peer.clone(), l.out.clone()))
            .collect()
    }

    /// Sends our node list (`NODES`, removed marks included) on every link: after a change.
    pub fn broadcast_nodes(&self) {
        let list = self.nodes_message();
        let outs = self.link_outs();
        // Nodes with explicit subscriptions get no gossip (docs/replication.md).
        for (_, out) in outs.into_iter().filter(|(peer, _)| !self.explicit(peer)) {
            let _ = out.send("NODES", list.clone());
        }
    }

    /// Sends one message on the link with `peer`, if there is one (never waits behind a
    /// blocked write).
    pub(crate) fn send_to(&self, peer: &str, kind: &str, body: Value) {
        let out = self
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)
            .map(|l| l.out.clone());
        if let Some(out) = out {
            let _ = out.try_send(kind, body);
        }
    }

    /// `restart_service` with `replicated` (docs/operations-api.md): every linked node is asked to
    /// restart (`RESTART`). Unlike [`Replication::send_to`] this waits for a sender that is
    /// writing on the link (at most the link's write timeout): this node stops right after, and
    /// a request skipped because a change was being sent at that moment would never be made.
    /// Called from the restart job's thread, never from a core.
    pub fn restart_peers(&self, service: &str) {
        let body = message::object(vec![("service", Value::String(service.into()))]);
        let outs = self.link_outs();
        for (peer, out) in outs {
            tracing::info!("replication: asking {peer} to restart ({service})");
            if let Err(e) = out.send("RESTART", body.clone()) {
                tracing::warn!("replication: could not ask {peer} to restart: {e}");
            }
        }
    }

    /// `NODES` (docs/replication.md): us, every node we know, and the removed ones marked.
    pub fn nodes_message(&self) -> Value {
        let mut list = vec![message::object(vec![
            ("name", Value::String(self.settings.node_name.clone())),
            ("url", Value::String(self.settings.url.clone())),
        ])];
        // A node with explicit subscriptions is known only to this node: peers never dial it
        // for everything (docs/replication.md).
        let nodes: Vec<_> = self
            .nodes()
            .into_iter()
            .filter(|(key, _, _)| !self.explicit(key))
            .collect();
        // Nodes that dialled us are announced too (their URL from their `HELLO`).
        let callers: Vec<String> = self
            .connected_peers()
            .into_iter()
            .filter(|p| !self.explicit(p))
            .collect();
        let status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let mut named: Vec<String> = Vec::new();
        for (key, name, target) in nodes {
            let name = name.unwrap_or(key);
            let url = status
                .get(&name)
                .map(|s| s.url.clone())
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| target.resolved_url(self.settings.tls_default));
            named.push(name.clone());
            list.push(message::object(vec![
                ("name", Value::String(name)),
                ("url", Value::String(url)),
            ]));
        }
        for peer in callers {
            let url = status.get(&peer).map(|s| s.url.clone()).unwrap_or_default();
            if named.contains(&peer) || url.is_empty() {
                continue;
            }
            list.push(message::object(vec![
                ("name", Value::String(peer)),
                ("url", Value::String(url)),
            ]));
        }
        drop(status);
        let mut removed: Vec<String> = self
            .removed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        removed.sort();
        for name in removed {
            list.push(message::object(vec![
                ("name", Value::String(name)),
                ("url", Value::String(String::new())),
                ("removed", Value::Bool(true)),
            ]));
        }
        Value::Array(list)
    }

    /// Replaces the route-derived nodes by `routes` (after `cluster_set_routes`/`delete`).
    pub fn set_routes(self: &Arc<Self>, routes: &[Value]) {
        let wanted: Vec<Target> = routes
            .iter()
            .filter_map(|r| Target::parse(r, self.settings.port_default))
            .collect();
        let stale: Vec<String> = self
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|n| n.from_route && !wanted.iter().any(|t| t.address() == n.target.address()))
            .map(|n| n.key.clone())
            .collect();
        for key in stale {
            self.drop_node(&key, "shutdown");
        }
        for t in wanted {
            self.add_target(t.host.clone(), t, true);
        }
    }

    /// Every known node: (key, announced name, target).
    pub fn nodes(&self) -> Vec<(String, Option<String>, Target)> {
        self.nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|n| (n.key.clone(), n.name.clone(), n.target.clone()))
            .collect()
    }

    /// Nodes added by operations or gossip (not routes): (key, name, target).
    pub fn added_nodes(&self) -> Vec<(String, Option<String>, Target)> {
        self.nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|n| !n.from_route)
            .map(|n| (n.key.clone(), n.name.clone(), n.target.clone()))
            .collect()
    }

    /// After `remove_node`: the entry stays in `system.hdb_nodes`, marked removed (done by
    /// [`Replication::remove_node`]); kept for the operations layer, which calls it after.
    pub fn forget_node(&self, name: &str) {
        if !self.is_removed(name) {
            self.delete_node(name);
        }
    }

    /// Deletes a node entry from `system.hdb_nodes` (a plain thread only: waits for the commit).
    fn delete_node(&self, name: &str) {
        let Some(db) = self.store.database("system") else {
            return;
        };
        let request = WriteRequest {
            ops: vec![WriteOp::Delete {
                table: "hdb_nodes".into(),
                key: Value::String(name.into()),
            }],
            user: None,
            extras: None,
        };
        if let Ok(rx) = db.submit(request) {
            let _ = block_on(rx);
        }
    }

    /// Lets a removed node back in (a new `add_node` reached it by address).
    pub(crate) fn unmark_removed(&self, name: &str) {
        self.removed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        let listed = self
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|n| n.key == name);
        if !listed {
            self.delete_node(name);
        }
        tracing::info!("replication: node {name} added again after its removal");
    }

    /// Writes `{name, removed: true}` to `system.hdb_nodes` (waits for the commit).
    fn mark_removed(&self, name: &str) {
        self.write_node(name, None);
    }

    /// A peer answered `BYE removed`: we are out of its cluster, so stop dialling it (without
    /// marking it: a new `add_node` on its side lets us back in).
    pub(crate) fn removed_by(&self, peer: &str) {
        let keys: Vec<String> = self
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|n| n.key == peer || n.name.as_deref() == Some(peer))
            .map(|n| n.key.clone())
            .collect();
        self.drop_node(peer, "shutdown");
        self.forget_subs(peer);
        {
            let mut left = self.left.lock().unwrap_or_else(|e| e.into_inner());
            left.insert(peer.to_string());
            left.extend(keys.iter().cloned());
        }
        if !keys.iter().any(|k| k == peer) {
            // The record of a node that dialled us (it has no dialling entry here).
            self.delete_node(peer);
        }
        for key in keys {
            self.forget_subs(&key);
            self.delete_node(&key);
        }
    }

    /// Gossip: removal marks spread (drop the link, keep the mark, pass it on); nodes we do not
    /// know yet (by name) are dialled and remembered in `hdb_nodes`, unless removed.
    pub fn learn_nodes(self: &Arc<Self>, announced: &[(String, String)], removed: &[String]) {
        let mut changed = false;
        for name in removed {
            if name == &self.settings.node_name || self.is_removed(name) {
                continue;
            }
            tracing::info!("replication: node {name} was removed from the cluster (gossip)");
            self.drop_node(name, "removed");
            self.removed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.clone());
            self.mark_removed(name);
            changed = true;
        }
        if changed {
            self.broadcast_nodes();
        }
        for (name, url) in announced {
            if name == &self.settings.node_name || url.is_empty() || self.is_removed(name) {
                continue;
            }
            let Some(target) =
                Target::parse(&Value::String(url.clone()), self.settings.port_default)
            else {
                continue;
            };
            let known = self
                .nodes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|n| {
                    n.name.as_deref() == Some(name.as_str())
                        || &n.key == name
                        || n.target.address() == target.address()
                })
                || self.connected(name);
            if known {
                continue;
            }
            tracing::info!("replication: discovered node {name} at {url} by gossip");
            self.add_target(name.clone(), target, false);
            self.store_node(name, url);
        }
    }

    /// Whether `system.hdb_nodes` holds a record named `name`.
    fn has_record(&self, name: &str) -> bool {
        let Some(db) = self.store.database("system") else {
            return false;
        };
        let Some(table) = db.table("hdb_nodes") else {
            return false;
        };
        db.read()
            .and_then(|r| {
                r.get(&table, &Value::String(name.into()))
                    .map(|v| v.is_some())
            })
            .unwrap_or(false)
    }

    /// On a link that replicates everything (docs/replication.md "hdb_nodes"): `hdb_nodes`
    /// lists every node of the cluster, this one and `peer` (which may have dialled us)
    /// included, as HarperDB's replicated table does. A plain thread only.
    pub(crate) fn record_members(&self, peer: &str, peer_url: &str) {
        if !self.self_recorded.swap(true, Ordering::AcqRel)
            && !self.has_record(&self.settings.node_name)
        {
            self.store_node(&self.settings.node_name, &self.settings.url);
        }
        let listed = self
            .nodes()
            .iter()
            .any(|(key, name, _)| key == peer || name.as_deref() == Some(peer));
        if !peer_url.is_empty() && !listed && !self.has_record(peer) {
            self.store_node(peer, peer_url);
        }
    }

    /// Writes a node entry to `system.hdb_nodes` (waits for the commit: a plain thread only).
    pub fn store_node(&self, name: &str, url: &str) {
        self.write_node(name, Some(url));
    }

    /// `{name, url}`, or `{name, removed: true}` without a URL.
    fn write_node(&self, name: &str, url: Option<&str>) {
        let Some(db) = self.store.database("system") else {
            return;
        };
        let mut record = Object::new();
        record.insert("name", Value::String(name.into()));
        match url {
            Some(url) => {
                record.insert("url", Value::String(url.into()));
                // HarperDB's fields: the explicit list, or `replicates: true` for everything.
                let p = self
                    .subs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(name)
                    .cloned()
                    .unwrap_or_default();
                record.insert("replicates", Value::Bool(p.subs.is_none()));
                record.insert("subscriptions", subscriptions::value_of(p.subs.as_ref()));
                if p.time > 0.0 {
                    record.insert(SUBSCRIPTIONS_TIME, Value::Float(p.time));
                }
            }
            None => {
                record.insert("removed", Value::Bool(true));
            }
        };
        let request = WriteRequest {
            ops: vec![WriteOp::Put {
                table: "hdb_nodes".into(),
                key: Some(Value::String(name.into())),
                record: Value::Object(record),
                mode: crate::store::PutMode::Replace,
                expires_in_s: None,
            }],
            user: None,
            extras: None,
        };
        if let Ok(rx) = db.submit(request) {
            let _ = block_on(rx);
        }
    }

    pub fn connected(&self, peer: &str) -> bool {
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(peer)
    }

    /// Whether `origin`'s transactions in `db` come from its node itself over a live link:
    /// `origin` is the stream that connected peer announced (or, when it announced none for
    /// `db`, any stream of its name). Otherwise a peer relays them (an earlier incarnation of a
    /// re-provisioned node, a node we have no link to).
    pub fn sent_by_its_node(&self, db: &str, origin: &str, connected: &[String]) -> bool {
        let node = crate::store::stream_node(origin);
        if !connected.iter().any(|p| p == node) {
            return false;
        }
        let status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        match status.get(node).and_then(|s| s.streams.get(db)) {
            Some(stream) => stream == origin,
            None => true,
        }
    }

    /// Names of peers with a live link.
    pub fn connected_peers(&self) -> Vec<String> {
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Registers a link to `peer` after `HELLO`. With a link already there, the one dialled by
    /// the smaller node name stays (a redial by the same dialer replaces its stale link).
    /// Returns false when the new link must close.
    pub(crate) fn register(
        &self,
        peer: &str,
        dialer: &str,
        socket: &TcpStream,
        out: Arc<link::Out>,
        stop: Arc<AtomicBool>,
    ) -> Option<u64> {
        let id = self.next_link.fetch_add(1, Ordering::Relaxed);
        let socket = socket.try_clone().ok()?;
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = links.get(peer) {
            if existing.dialer != dialer && existing.dialer.as_str() < dialer {
                return None;
            }
            existing.stop.store(true, Ordering::Release);
            let _ = existing.socket.shutdown(std::net::Shutdown::Both);
        }
        links.insert(
            peer.to_string(),
            LinkEntry {
                id,
                dialer: dialer.to_string(),
                stop,
                socket,
                out,
                thread: id,
            },
        );
        drop(links);
        Some(id)
    }

    pub(crate) fn unregister(&self, peer: &str, id: u64) {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        if links.get(peer).map(|l| l.id) == Some(id) {
            links.remove(peer);
            drop(links);
            if let Some(s) = self
                .status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(peer)
            {
                s.ready = false;
                for socket in s.sockets.values_mut() {
                    socket.connected = false;
                }
            }
        }
    }

    /// Waits (a plain thread, at most `limit`) until the node added under `key` is linked and
    /// has registered the link on its side, as HarperDB's `add_node` answers once the node
    /// has taken it. Returns whether it was.
    pub fn wait_linked(&self, key: &str, limit: Duration) -> bool {
        let until = std::time::Instant::now() + limit;
        loop {
            let name = self
                .nodes()
                .into_iter()
                .find(|(k, _, _)| k == key)
                .and_then(|(_, name, _)| name);
            if let Some(name) = name {
                let ready = self
                    .status
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&name)
                    .is_some_and(|s| s.ready);
                if ready && self.connected(&name) {
                    return true;
                }
            }
            if std::time::Instant::now() >= until || self.stopping() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The key of the node dialled at `address`.
    pub(crate) fn key_at(&self, address: &str) -> Option<String> {
        self.nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|n| n.target.address() == address)
            .map(|n| n.key.clone())
    }

    /// Records the announced name of the node dialled at `address`.
    pub(crate) fn name_target(&self, address: &str, name: &str) {
        self.each_node_at(address, |n| n.name = Some(name.to_string()));
    }

    /// Only one link at a time copies a database into an empty node.
    pub(crate) fn claim_snapshot(&self, database: &str) -> bool {
        self.snapshot_claims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(database.to_string())
    }

    pub(crate) fn release_snapshot(&self, database: &str) {
        self.snapshot_claims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(database);
    }

    pub(crate) fn snapshot_in_progress(&self, database: &str) -> bool {
        self.snapshot_claims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(database)
    }

    pub(crate) fn with_status<R>(&self, peer: &str, f: impl FnOnce(&mut PeerStatus) -> R) -> R {
        let mut all = self.status.lock().unwrap_or_else(|e| e.into_inner());
        f(all.entry(peer.to_string()).or_default())
    }

    /// Stops every link and dialler (shutdown), telling peers `BYE shutdown`.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        for n in self.nodes.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            n.stop.store(true, Ordering::Release);
        }
        for peer in self.connected_peers() {
            self.close_link(&peer, "shutdown");
        }
    }

    /// Plain-port trust (docs/replication.md (3)): the peer's IP belongs to a route or known node. A
    /// listener bound to a loopback address is reachable only from this host, so it also trusts
    /// loopback peers (several test nodes on one machine, joined by `add_node`).
    fn trusted(&self, peer: IpAddr) -> bool {
        if peer.is_loopback() && self.settings.listen.is_some_and(|a| a.ip().is_loopback()) {
            return true;
        }
        let targets: Vec<Target> = self
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|n| n.target.clone())
            .collect();
        targets.iter().any(|t| {
            (t.host.as_str(), t.port)
                .to_socket_addrs()
                .map(|mut addrs| addrs.any(|a| a.ip() == peer))
                .unwrap_or(false)
        })
    }

    fn accept_loop(self: Arc<Self>, listener: TcpListener, kind: link::Accepted) {
        if listener.set_nonblocking(true).is_err() {
            tracing::error!("replication listener: cannot poll");
            return;
        }
        while !self.stopping() {
            match listener.accept() {
                Ok((stream, peer)) => {
                    if kind == link::Accepted::Plain && !self.trusted(peer.ip()) {
                        tracing::warn!("replication: refused {peer}: not a route or known node");
                        let mut s = stream;
                        let _ = std::io::Write::write_all(
                            &mut s,
                            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                        continue;
                    }
                    let _ = stream.set_nonblocking(false);
                    let r = self.clone();
                    let _ = std::thread::Builder::new()
                        .name(format!("repl-in-{peer}"))
                        .spawn(move || {
                            let conn = match (kind, &r.tls()) {
                                (link::Accepted::Plain, _) => transport::Conn::plain(stream),
                                (link::Accepted::Secure, Some(tls)) => {
                                    transport::Conn::tls_server(stream, tls.server.clone())
                                }
                                (link::Accepted::Secure, None) => return,
                            };
                            let result = match conn {
                                Ok(conn) => link::run(&r, conn, None, kind),
                                Err(e) => {
                                    tracing::info!(
                                        "replication: TLS handshake with {peer} failed: {e}"
                                    );
                                    return;
                                }
                            };
                            if let Err(e) = result {
                                tracing::debug!("replication link from {peer} ended: {e}");
                            }
                        });
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    tracing::warn!("replication accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// Opens the link transport to `target`: TCP from our listener's address when it is a
    /// specific one (so IP-based trust works with several nodes on one host), then TLS for
    /// `wss://`, verifying the peer unless the target says `verify_tls: false`.
    fn connect(&self, target: &Target) -> std::io::Result<transport::Conn> {
        let socket = self.connect_tcp(target)?;
        if !target.tls.unwrap_or(self.settings.tls_default) {
            return transport::Conn::plain(socket);
        }
        let tls = self
            .tls()
            .ok_or_else(|| std::io::Error::other("no TLS certificates for wss:// links"))?;
        let config = tls.client(target.verify_tls, target.authorization.is_none());
        transport::Conn::tls_client(socket, &target.host, config)
    }

    fn connect_tcp(&self, target: &Target) -> std::io::Result<TcpStream> {
        let addr = (target.host.as_str(), target.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        let listening = self.settings.secure_listen.or(self.settings.listen);
        if let Some(local) = listening.filter(|a| !a.ip().is_unspecified()) {
            if local.is_ipv4() == addr.is_ipv4() {
                socket.bind(&SocketAddr::new(local.ip(), 0).into())?;
            }
        }
        socket.connect_timeout(&addr.into(), CONNECT_TIMEOUT)?;
        let stream: TcpStream = socket.into();
        Ok(stream)
    }

    fn dial_loop(self: Arc<Self>, mut target: Target, stop: Arc<AtomicBool>) {
        let mut backoff = BACKOFF_MIN;
        // Until a link has been up, up to BACKOFF_MAX between attempts; once one was, the node
        // exists and a lost link is a restart or a partition: redial at least every heartbeat
        // interval so catch-up starts as soon as it heals (docs/replication.md "Link liveness").
        let mut cap = BACKOFF_MAX;
        let address = target.address();
        while !stop.load(Ordering::Acquire) && !self.stopping() {
            // The entry may have changed since (a certificate exchange drops credentials).
            let name = {
                let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
                let node = nodes.iter().find(|n| n.target.address() == address);
                if let Some(n) = node {
                    target = n.target.clone();
                }
                node.and_then(|n| n.name.clone())
            };
            if name.as_deref().is_some_and(|n| self.connected(n)) {
                // Linked already (perhaps the peer dialled us): check again later.
                std::thread::sleep(BACKOFF_MIN);
                backoff = BACKOFF_MIN;
                continue;
            }
            match self.connect(&target) {
                Ok(conn) => {
                    let began = std::time::Instant::now();
                    let result = link::run(&self, conn, Some(&target), link::Accepted::Plain);
                    let was_up = result.is_ok()
                        || matches!(result, Err(link::LinkError::Silent(_)))
                        || began.elapsed() >= self.settings.heartbeat_timeout;
                    if was_up {
                        backoff = BACKOFF_MIN;
                        cap = self.settings.heartbeat_interval.max(BACKOFF_MIN);
                    }
                    if let Err(e) = result {
                        tracing::debug!("replication link to {address}: {e}");
                    }
                }
                Err(e) => tracing::debug!("replication: cannot reach {address}: {e}"),
            }
            let wait = jittered(backoff);
            let until = std::time::Instant::now() + wait;
            while std::time::Instant::now() < until
                && !stop.load(Ordering::Acquire)
                && !self.stopping()
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            backoff = (backoff * 2).min(cap);
        }
    }

    /// Each peer's database sockets with how far behind they run (docs/metrics.md).
    pub fn socket_lags(&self) -> Vec<SocketLag> {
        let status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let now_ms = now();
        let mut out = Vec::new();
        for (peer, p) in status.iter() {
            for (db, s) in &p.sockets {
                let received = if s.last_received_remote > 0.0 {
                    (s.last_received_local - s.last_received_remote).max(0.0) / 1000.0
                } else {
                    0.0
                };
                let sending = if s.sending > 0.0 {
                    (now_ms - s.sending).max(0.0) / 1000.0
                } else {
                    0.0
                };
                out.push(SocketLag {
                    peer: peer.clone(),
                    database: db.clone(),
                    received_s: received,
                    sending_s: sending,
                    ping_s: p.latency_ms.map(|ms| ms / 1000.0),
                });
            }
        }
        out.sort_by(|a, b| (&a.peer, &a.database).cmp(&(&b.peer, &b.database)));
        out
    }

    /// Each peer's database sockets and whether each is connected now, as `cluster_status`
    /// shows them: (peer, database, connected).
    pub fn socket_states(&self) -> Vec<(String, String, bool)> {
        let status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (peer, p) in status.iter() {
            for (db, s) in &p.sockets {
                out.push((
                    peer.clone(),
                    db.clone(),
                    s.connected && links.contains_key(peer),
                ));
            }
        }
        out.sort();
        out
    }

    /// `cluster_status` (docs/replication.md).
    pub fn cluster_status(&self) -> Value {
        let nodes = self.nodes();
        // Each peer's subscriptions, read before the status locks are taken.
        let mut subs: HashMap<String, Option<Subscriptions>> = HashMap::new();
        let peers: Vec<String> = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .chain(
                nodes
                    .iter()
                    .map(|(key, name, _)| name.clone().unwrap_or_else(|| key.clone())),
            )
            .collect();
        for peer in peers {
            let s = self.subscriptions_with(&peer);
            subs.insert(peer, s);
        }
        let status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen: Vec<String> = Vec::new();
        let mut connections = Vec::new();
        let mut entry = |name: String, url: String| {
            if seen.contains(&name) || name == self.settings.node_name {
                return;
            }
            seen.push(name.clone());
            let explicit = subs.get(&name).cloned().flatten();
            let peer = status.get(&name);
            let thread = links.get(&name).map(|l| l.thread).unwrap_or(0);
            let sockets: Vec<Value> = peer
                .map(|p| {
                    p.sockets
                        .iter()
                        .map(|(db, s)| {
                            let mut fields = vec![
                                ("database", Value::String(db.clone())),
                                (
                                    "connected",
                                    Value::Bool(s.connected && links.contains_key(&name)),
                                ),
                                (
                                    "latency",
                                    p.latency_ms.map(Value::Float).unwrap_or(Value::Null),
                                ),
                                ("thread_id", Value::Int(thread as i64)),
                                (
                                    "nodes",
                                    Value::Array(
                                        s.nodes.iter().cloned().map(Value::String).collect(),
                                    ),
                                ),
                                ("lastCommitConfirmed", http_date(s.last_commit_confirmed)),
                                ("lastReceivedRemoteTime", http_date(s.last_received_remote)),
                                ("lastReceivedLocalTime", http_date(s.last_received_local)),
                                ("lastSendTime", http_date(s.last_send)),
                            ];
                            // Only while a transaction is being written (docs/replication.md).
                            if s.sending > 0.0 {
                                fields.push(("sendingMessage", http_date(s.sending)));
                            }
                            message::object(fields)
                        })
                        .collect()
                })
                .unwrap_or_default();
            connections.push(message::object(vec![
                ("name", Value::String(name)),
                (
                    "url",
                    Value::String(
                        peer.map(|p| p.url.clone())
                            .filter(|u| !u.is_empty())
                            .unwrap_or(url),
                    ),
                ),
                ("replicateByDefault", Value::Bool(explicit.is_none())),
                ("replicates", Value::Bool(explicit.is_none())),
                ("subscriptions", subscriptions::value_of(explicit.as_ref())),
                ("database_sockets", Value::Array(sockets)),
            ]));
        };
        for (key, name, target) in nodes {
            entry(
                name.unwrap_or(key),
                target.resolved_url(self.settings.tls_default),
            );
        }
        for name in status.keys() {
            entry(name.clone(), String::new());
        }
        message::object(vec![
            ("type", Value::String("cluster-status".into())),
            ("node_name", Value::String(self.settings.node_name.clone())),
            ("is_enabled", Value::Bool(true)),
            ("connections", Value::Array(connections)),
        ])
    }
}

/// An HTTP date for `cluster_status`, or null for "never".
fn http_date(ms: f64) -> Value {
    if ms <= 0.0 {
        return Value::Null;
    }
    let secs = (ms / 1000.0).floor() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = crate::util::civil_from_days(days);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let weekday = WEEKDAYS[days.rem_euclid(7) as usize];
    let month = MONTHS[(m.clamp(1, 12) - 1) as usize];
    Value::String(format!(
        "{weekday}, {d:02} {month} {y} {:02}:{:02}:{:02} GMT",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

/// Now, for link counters.
pub(crate) fn now() -> f64 {
    now_ms()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: Option<(&str, u16)>) {
        let got = Target::parse(&Value::String(input.into()), 9933);
        assert_eq!(
            got.as_ref().map(|t| (t.host.as_str(), t.port)),
            expect,
            "{input}"
        );
    }

    #[test]
    fn routes_parse() {
        check("server-two", Some(("server-two", 9933)));
        check("server-two:9925", Some(("server-two", 9925)));
        check("ws://127.0.0.2:9925", Some(("127.0.0.2", 9925)));
        check("wss://host:1/", Some(("host", 1)));
        check("host:notaport", None);
        check("", None);
        let o = message::object(vec![
            ("hostname", Value::String("h".into())),
            ("port", Value::Int(7)),
            ("startTime", Value::String("2024-01-01T00:00:00Z".into())),
        ]);
        let t = Target::parse(&o, 1).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("h", 7));
        assert_eq!(t.start_time, Some(1_704_067_200_000.0));
        assert_eq!(
            (t.tls, t.verify_tls, t.authorization.as_deref()),
            (None, true, None)
        );
        assert_eq!(t.url(), "h:7");
        assert_eq!(t.resolved_url(true), "wss://h:7");
        let credentials = message::object(vec![
            ("username", Value::String("u".into())),
            ("password", Value::String("p".into())),
        ]);
        let o = message::object(vec![
            ("hostname", Value::String("wss://h".into())),
            ("verify_tls", Value::Bool(false)),
            ("authorization", credentials),
            ("retain_authorization", Value::Bool(true)),
        ]);
        let t = Target::parse(&o, 9).unwrap();
        assert_eq!(
            (
                t.tls,
                t.verify_tls,
                t.authorization.as_deref(),
                t.retain_authorization
            ),
            (Some(true), false, Some("Basic dTpw"), true)
        );
        assert_eq!(t.url(), "wss://h:9");
        let plain = Target::parse(&Value::String("ws://h:3".into()), 9).unwrap();
        assert_eq!(plain.resolved_url(true), "ws://h:3");
    }
}
