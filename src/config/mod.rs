//! Server configuration: `harperdb-config.yaml`, environment and `--KEY value` overrides.
//!
//! Owns the tree of settings and its typed view ([`Config`]). Precedence: `--KEY value` >
//! environment > file > default. A key is a config path joined by `_`, case-insensitive
//! (`HTTP_PORT` ↔ `http.port`). Values parse as YAML scalars, or JSON for lists and objects.
//! It never opens a socket or a database; it reads and writes only the config file.

mod defaults;
pub mod edit;
mod harperdb_keys;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml::{Mapping, Value as Yaml};

pub use defaults::DEFAULT_CONFIG_YAML;

/// A setting that cannot be used, named by its dotted path.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigError {}

fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        message: message.into(),
    }
}

/// Where a listener binds; `None` in a [`Config`] field means the listener is off (`null`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr(pub SocketAddr);

impl ListenAddr {
    /// `9926` binds every IPv4 address; `127.0.0.1:9926` or `[::1]:9926` binds one.
    pub fn parse(key: &str, value: &Yaml) -> Result<Option<ListenAddr>, ConfigError> {
        match value {
            Yaml::Null => Ok(None),
            Yaml::Number(n) => {
                let port = n
                    .as_u64()
                    .filter(|p| *p <= u16::MAX as u64)
                    .ok_or_else(|| err(key, format!("{n:?} is not a port number (0-65535)")))?;
                Ok(Some(ListenAddr(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    port as u16,
                ))))
            }
            Yaml::String(s) => {
                let s = s.trim();
                if let Ok(port) = s.parse::<u16>() {
                    return Ok(Some(ListenAddr(SocketAddr::new(
                        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                        port,
                    ))));
                }
                s.parse::<SocketAddr>()
                    .map(|a| Some(ListenAddr(a)))
                    .map_err(|_| {
                        err(
                            key,
                            format!("{s:?} is neither a port nor host:port (e.g. 127.0.0.1:9926)"),
                        )
                    })
            }
            other => Err(err(
                key,
                format!(
                    "expected a port, host:port or null, got {}",
                    yaml_kind(other)
                ),
            )),
        }
    }
}

fn yaml_kind(value: &Yaml) -> &'static str {
    match value {
        Yaml::Null => "null",
        Yaml::Bool(_) => "a boolean",
        Yaml::Number(_) => "a number",
        Yaml::String(_) => "a string",
        Yaml::Sequence(_) => "a list",
        Yaml::Mapping(_) => "a mapping",
        Yaml::Tagged(_) => "a tagged value",
    }
}

/// The settings tree: defaults, overlaid by the file, the environment and the command line.
#[derive(Debug, Clone)]
pub struct ConfigTree {
    root: Yaml,
    /// Flattened lower-case key (`http_port`) → dotted path (`http.port`), from the defaults.
    known: BTreeMap<String, String>,
    /// HarperDB keys tidepool does not use (accepted, one warning each).
    pub warnings: Vec<String>,
    /// Keys that are neither tidepool's nor HarperDB's: the start stops on them.
    pub errors: Vec<String>,
}

fn flatten(prefix: &str, value: &Yaml, out: &mut BTreeMap<String, String>) {
    if let Yaml::Mapping(map) = value {
        for (k, v) in map {
            let Some(k) = k.as_str() else { continue };
            let path = if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}.{k}")
            };
            // A mapping default with no children (e.g. `{}`) is itself a settable leaf.
            if matches!(v, Yaml::Mapping(m) if !m.is_empty()) {
                flatten(&path, v, out);
            }
            out.insert(path.replace('.', "_").to_ascii_lowercase(), path);
        }
    }
}

/// The configuration file: `HDB_CONFIG` when set (the packaged unit points it at
/// `/etc/tidepool/harperdb-config.yaml`, deploy/README.md), else `<root>/harperdb-config.yaml`.
pub fn file_path(root: &Path) -> PathBuf {
    std::env::var_os("HDB_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("harperdb-config.yaml"))
}

/// Parses an override value: YAML scalar syntax (`null`, `9000`, `true`), JSON for lists/objects.
pub fn parse_override_value(raw: &str) -> Yaml {
    serde_yaml::from_str::<Yaml>(raw).unwrap_or_else(|_| Yaml::String(raw.to_string()))
}

/// How an unknown key was written, to suggest a known one in the same form.
#[derive(Clone, Copy)]
enum KeyStyle {
    /// `http.port` in a YAML file.
    Path,
    /// `--HTTP_PORT` on the command line.
    Flag,
}

impl KeyStyle {
    /// Command-line options that are not settings, suggested for flags only (`--core` → `--cores`).
    fn extra(self) -> &'static [&'static str] {
        match self {
            KeyStyle::Path => &[],
            KeyStyle::Flag => &[
                "--cores",
                "--root",
                "--io-driver",
                "--share-ports",
                "--help",
            ],
        }
    }
}

impl ConfigTree {
    pub fn defaults() -> Self {
        let root: Yaml = match serde_yaml::from_str(DEFAULT_CONFIG_YAML) {
            Ok(root) => root,
            Err(e) => panic!("built-in default configuration does not parse: {e}"),
        };
        let mut known = BTreeMap::new();
        flatten("", &root, &mut known);
        Self {
            root,
            known,
            warnings: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// Overlays a YAML document (the config file). A HarperDB key tidepool does not use is kept
    /// and warned about; any other unknown key is an error (docs/configuration.md).
    pub fn merge_file(&mut self, source: &str, file: &Path) -> Result<(), ConfigError> {
        let doc: Yaml = serde_yaml::from_str(source)
            .map_err(|e| err(&file.display().to_string(), format!("not valid YAML: {e}")))?;
        match doc {
            Yaml::Null => Ok(()),
            Yaml::Mapping(map) => {
                self.merge_mapping("", &map);
                Ok(())
            }
            other => Err(err(
                &file.display().to_string(),
                format!("expected a mapping, got {}", yaml_kind(&other)),
            )),
        }
    }

    fn merge_mapping(&mut self, prefix: &str, map: &Mapping) {
        for (k, v) in map {
            let Some(k) = k.as_str() else { continue };
            let path = if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}.{k}")
            };
            let flat = path.replace('.', "_").to_ascii_lowercase();
            let is_branch = self.is_branch(&path);
            match v {
                Yaml::Mapping(child) if is_branch => self.merge_mapping(&path, child),
                _ => {
                    if !self.known.contains_key(&flat) {
                        self.unknown(&path, &flat, KeyStyle::Path);
                    }
                    self.set_path(&path, v.clone());
                }
            }
        }
    }

    fn is_branch(&self, path: &str) -> bool {
        matches!(self.get(path), Some(Yaml::Mapping(m)) if !m.is_empty())
    }

    /// Sets a flattened, case-insensitive key (`HTTP_PORT`). Returns false when it is unknown.
    pub fn set_flat(&mut self, key: &str, value: Yaml) -> bool {
        let flat = key.to_ascii_lowercase();
        match self.known.get(&flat).cloned() {
            Some(path) => {
                self.set_path(&path, value);
                true
            }
            None => false,
        }
    }

    /// Applies environment variables whose names are known keys.
    pub fn merge_env<I: IntoIterator<Item = (String, String)>>(&mut self, vars: I) {
        for (name, raw) in vars {
            let flat = name.to_ascii_lowercase();
            if self.known.contains_key(&flat) {
                self.set_flat(&flat, parse_override_value(&raw));
            }
        }
    }

    /// Applies `--KEY value` overrides; unknown keys as in [`ConfigTree::merge_file`].
    pub fn merge_args(&mut self, pairs: &[(String, String)]) {
        for (key, raw) in pairs {
            if !self.set_flat(key, parse_override_value(raw)) {
                self.unknown(key, &key.to_ascii_lowercase(), KeyStyle::Flag);
            }
        }
    }

    /// Records an unknown key: a warning for a HarperDB 4.x key (its configuration file must still
    /// start tidepool), an error with the nearest known key for anything else.
    fn unknown(&mut self, shown: &str, flat: &str, style: KeyStyle) {
        let shown = match style {
            KeyStyle::Path => shown.to_string(),
            KeyStyle::Flag => format!("--{shown}"),
        };
        if harperdb_keys::is_harperdb_key(flat) {
            self.warnings.push(format!(
                "{shown} is a HarperDB setting tidepool does not use: accepted, no effect"
            ));
            return;
        }
        let candidates: Vec<&str> = self
            .known
            .keys()
            .map(String::as_str)
            .chain(style.extra().iter().copied())
            .collect();
        let hint = crate::util::nearest(flat, candidates.into_iter())
            .map(|near| match style {
                KeyStyle::Path => format!("; did you mean {}?", self.known[near]),
                KeyStyle::Flag if near.starts_with('-') => format!("; did you mean {near}?"),
                KeyStyle::Flag => format!("; did you mean --{}?", near.to_ascii_uppercase()),
            })
            .unwrap_or_default();
        self.errors.push(format!(
            "unknown configuration key {shown}{hint} (every setting: docs/configuration.md)"
        ));
    }

    pub fn get(&self, path: &str) -> Option<&Yaml> {
        let mut node = &self.root;
        for part in path.split('.') {
            node = node.as_mapping()?.get(part)?;
        }
        Some(node)
    }

    pub fn set_path(&mut self, path: &str, value: Yaml) {
        let mut node = &mut self.root;
        let parts: Vec<&str> = path.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            if !node.is_mapping() {
                *node = Yaml::Mapping(Mapping::new());
            }
            let Yaml::Mapping(map) = node else {
                unreachable!("made a mapping above")
            };
            let key = Yaml::String((*part).to_string());
            if i + 1 == parts.len() {
                map.insert(key, value);
                return;
            }
            node = map
                .entry(key)
                .or_insert_with(|| Yaml::Mapping(Mapping::new()));
        }
    }

    /// The whole effective configuration, as nested JSON (for `get_configuration`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.root).unwrap_or(serde_json::Value::Null)
    }

    fn bool(&self, key: &str) -> Result<bool, ConfigError> {
        match self.get(key) {
            Some(Yaml::Bool(b)) => Ok(*b),
            Some(other) => Err(err(
                key,
                format!("expected true or false, got {}", yaml_kind(other)),
            )),
            None => Err(err(key, "missing")),
        }
    }

    fn u64(&self, key: &str) -> Result<u64, ConfigError> {
        match self.get(key) {
            Some(Yaml::Number(n)) => n
                .as_u64()
                .ok_or_else(|| err(key, format!("expected a non-negative integer, got {n}"))),
            Some(other) => Err(err(
                key,
                format!("expected a non-negative integer, got {}", yaml_kind(other)),
            )),
            None => Err(err(key, "missing")),
        }
    }

    /// A number of seconds; 0 or less (HarperDB's `-1`) is `None`, off.
    fn seconds_or_off(&self, key: &str) -> Result<Option<Duration>, ConfigError> {
        match self.get(key) {
            Some(Yaml::Number(n)) => Ok(n
                .as_f64()
                .filter(|s| *s > 0.0)
                .map(|s| Duration::from_secs_f64(s.min(1e9)))),
            Some(other) => Err(err(
                key,
                format!("expected a number of seconds, got {}", yaml_kind(other)),
            )),
            None => Err(err(key, "missing")),
        }
    }

    fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.get(key) {
            Some(Yaml::Null) | None => Ok(None),
            Some(Yaml::String(s)) => Ok(Some(s.clone())),
            Some(Yaml::Number(n)) => Ok(Some(n.to_string())),
            Some(other) => Err(err(
                key,
                format!("expected a string, got {}", yaml_kind(other)),
            )),
        }
    }

    fn listen(&self, key: &str) -> Result<Option<ListenAddr>, ConfigError> {
        ListenAddr::parse(key, self.get(key).unwrap_or(&Yaml::Null))
    }

    /// Bytes, or a size string such as `64M`, `1T` ([`parse_bytes`]).
    fn bytes(&self, key: &str) -> Result<u64, ConfigError> {
        match self.get(key) {
            Some(Yaml::Number(n)) => n
                .as_u64()
                .ok_or_else(|| err(key, format!("expected bytes, got {n}"))),
            Some(Yaml::String(s)) => parse_bytes(s)
                .ok_or_else(|| err(key, format!("{s:?} is not a size (bytes or <n>K/M/G/T)"))),
            Some(other) => Err(err(
                key,
                format!("expected a size, got {}", yaml_kind(other)),
            )),
            None => Err(err(key, "missing")),
        }
    }

    /// Milliseconds, or a duration string such as `30s`, `5m`, `1d`.
    pub(crate) fn duration(&self, key: &str) -> Result<Duration, ConfigError> {
        match self.get(key) {
            Some(Yaml::Number(n)) => n
                .as_u64()
                .map(Duration::from_millis)
                .ok_or_else(|| err(key, format!("expected milliseconds, got {n}"))),
            Some(Yaml::String(s)) => parse_duration(s).ok_or_else(|| {
                err(
                    key,
                    format!("{s:?} is not a duration (milliseconds or <n>ms/s/m/h/d)"),
                )
            }),
            Some(other) => Err(err(
                key,
                format!("expected a duration, got {}", yaml_kind(other)),
            )),
            None => Err(err(key, "missing")),
        }
    }
}

/// `storage.mapSize`, checked against what LMDB and a 64-bit address space can hold
/// (docs/configuration.md).
fn map_bytes(tree: &ConfigTree) -> Result<usize, ConfigError> {
    const KEY: &str = "storage.mapSize";
    let bytes = tree.bytes(KEY)?;
    if !((64 << 20)..=(64 << 40)).contains(&bytes) {
        return Err(err(KEY, "must be between 64M and 64T"));
    }
    usize::try_from(bytes).map_err(|_| err(KEY, "too large for this machine"))
}

/// Leading digits and what follows them, trimmed: `30s` → (30, "s").
fn number_and_unit(s: &str) -> Option<(u64, &str)> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    Some((digits.parse().ok()?, unit.trim()))
}

/// A size in bytes: digits, then optionally `K`, `M`, `G` or `T` (powers of 1024; `KB`, `KiB`
/// and lower case read the same).
pub fn parse_bytes(s: &str) -> Option<u64> {
    let (n, unit) = number_and_unit(s)?;
    let unit = unit.to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return None,
    };
    n.checked_mul(1 << shift)
}

/// `1500`, `1500ms`, `30s`, `5m`, `2h`, `1d`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let (n, unit) = number_and_unit(s)?;
    let ms = match unit {
        "" | "ms" => n,
        "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Fatal,
    Notify,
}

impl LogLevel {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "trace" => LogLevel::Trace,
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warn" | "warning" => LogLevel::Warn,
            "error" => LogLevel::Error,
            "fatal" => LogLevel::Fatal,
            "notify" => LogLevel::Notify,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
            LogLevel::Fatal => "fatal",
            LogLevel::Notify => "notify",
        }
    }
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub port: Option<ListenAddr>,
    pub secure_port: Option<ListenAddr>,
    pub cors: bool,
    pub cors_access_list: Option<Vec<String>>,
    /// `Access-Control-Allow-Headers` of a CORS preflight (`http.corsAccessControlAllowHeaders`).
    pub cors_allow_headers: String,
    /// `rest.lastModified`: send `Last-Modified` on single-record reads.
    pub last_modified: bool,
    pub keep_alive_timeout: Duration,
    pub headers_timeout: Duration,
    pub request_timeout: Duration,
    pub header_bytes_max: usize,
    pub header_count_max: usize,
    pub body_bytes_max: u64,
    /// `http.maxBodyBytesInFlightPerCore`: request body bytes held at once on one core.
    pub body_bytes_in_flight_max: u64,
    pub connections_per_core_max: usize,
    /// `http.portWaitAfterCrash`: how long start-up waits for listening sockets no live process
    /// owns (a killed process's io_uring being torn down) before giving up on a port.
    pub port_wait_after_crash: Duration,
    /// Client certificates on the secure port (`http.mtls`); None = not asked for.
    pub mtls: Option<MtlsConfig>,
}

/// The `tls` files: the server's certificate chain, its key, and the CA that signed it (also the
/// default CA for verifying client certificates).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    pub certificate_authority: PathBuf,
}

/// `http.mtls` or `mqtt.network.mtls`: `true` or `{user, required, certificateAuthority}`
/// (docs/security.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtlsConfig {
    /// The user a verified certificate maps to; None = the certificate's CN names the user.
    pub user: Option<String>,
    /// Refuse handshakes without a valid client certificate.
    pub required: bool,
    /// Trust anchors for client certificates; None = `tls.certificateAuthority`.
    pub certificate_authority: Option<PathBuf>,
}

impl MtlsConfig {
    fn from_tree(tree: &ConfigTree, key: &str, root: &Path) -> Result<Option<Self>, ConfigError> {
        let map = match tree.get(key) {
            None | Some(Yaml::Null) | Some(Yaml::Bool(false)) => return Ok(None),
            Some(Yaml::Bool(true)) => {
                return Ok(Some(MtlsConfig {
                    user: None,
                    required: false,
                    certificate_authority: None,
                }))
            }
            Some(Yaml::Mapping(map)) => map,
            Some(_) => {
                return Err(err(
                    key,
                    "expected true, false or {user, required, certificateAuthority}",
                ))
            }
        };
        let field = |name: &str| map.get(name).filter(|v| !v.is_null());
        let text = |name: &str| -> Result<Option<String>, ConfigError> {
            match field(name) {
                None => Ok(None),
                Some(Yaml::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(err(&format!("{key}.{name}"), "expected a string")),
            }
        };
        let required = match field("required") {
            None => false,
            Some(Yaml::Bool(b)) => *b,
            Some(_) => return Err(err(&format!("{key}.required"), "expected true or false")),
        };
        Ok(Some(MtlsConfig {
            user: text("user")?,
            required,
            certificate_authority: text("certificateAuthority")?.map(|p| resolve(root, &p)),
        }))
    }
}

#[derive(Debug, Clone)]
pub struct LoggingConfig {
    pub level: LogLevel,
    pub root: PathBuf,
    pub path: PathBuf,
    pub file: bool,
    pub std_streams: bool,
    /// `logging.auditRetention`: audit transactions older than this are trimmed; 0 keeps all.
    pub audit_retention: Duration,
    /// `logging.connections`: MQTT connects/disconnects and failed logins at the default level.
    pub connections: bool,
    /// `logging.access`: the HTTP access log (combined format) in `<logging.root>/access.log`.
    pub access: bool,
}

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub path: PathBuf,
    pub sync: bool,
    pub max_transaction_queue_time: Duration,
    /// Requests committed together at most; 1 = one fsync per request (tidepool).
    pub commit_batch_max: usize,
    /// `storage.mapSize`: bytes of address space each database file may grow to (tidepool).
    pub map_bytes: usize,
}

/// The typed view of a [`ConfigTree`], checked once at start.
#[derive(Debug, Clone)]
pub struct Config {
    pub root: PathBuf,
    pub http: HttpConfig,
    pub operations_api_port: Option<ListenAddr>,
    pub operations_api_secure_port: Option<ListenAddr>,
    pub tls: TlsConfig,
    pub operations_api_cors: bool,
    pub threads: usize,
    pub authorize_local: bool,
    /// `authentication.*` durations and the failed-login limit (docs/security.md "Failed logins").
    pub auth: AuthConfig,
    /// The bounded thread pools for blocking work (docs/security.md "Password checks").
    pub blocking: BlockingConfig,
    pub mqtt_port: Option<ListenAddr>,
    /// MQTT over TLS (`mqtt.network.securePort`, 8883 by default; null = off).
    pub mqtt_secure_port: Option<ListenAddr>,
    /// Client certificates on the MQTT secure port (`mqtt.network.mtls`); None = not asked for.
    pub mqtt_mtls: Option<MtlsConfig>,
    /// MQTT over WebSocket on the HTTP ports (`mqtt.webSocket`).
    pub mqtt_web_socket: bool,
    pub node_name: String,
    pub logging: LoggingConfig,
    pub storage: StorageConfig,
    /// Allow other processes' listeners on our ports (SO_REUSEPORT sharing). Off: refuse to start.
    pub share_ports: bool,
    /// `analytics.aggregatePeriod`; `None` (0 or less) turns analytics off.
    pub analytics_aggregate_period: Option<Duration>,
}

/// `authentication.*` settings that are checked at start: a bad duration is an error naming
/// its key, never a silent default.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthConfig {
    pub cache_ttl: Duration,
    pub operation_token_timeout: Duration,
    pub refresh_token_timeout: Duration,
    /// Failed logins one (source address, user name) may make per window; 0 = no limit.
    pub failed_login_limit: u32,
    /// The window failed logins are counted over; zero = no limit.
    pub failed_login_window: Duration,
}

/// The two pools of plain threads blocking work runs on, never a core (docs/configuration.md):
/// password checks (`authentication.verifyThreads`, `authentication.verifyQueue`) and other
/// blocking work (`threads.blocking`, `threads.blockingQueue`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockingConfig {
    pub verify_threads: usize,
    pub verify_queue: usize,
    pub threads: usize,
    pub queue: usize,
}

impl BlockingConfig {
    fn from_tree(tree: &ConfigTree, cores: usize) -> Result<BlockingConfig, ConfigError> {
        let in_range = |key: &str, min: u64, max: u64| -> Result<usize, ConfigError> {
            let n = tree.u64(key)?;
            if n < min || n > max {
                return Err(err(key, format!("{n} is out of range ({min}-{max})")));
            }
            Ok(n as usize)
        };
        let verify_threads = match tree.get("authentication.verifyThreads") {
            Some(Yaml::Null) | None => cores.max(2),
            Some(_) => in_range("authentication.verifyThreads", 1, 256)?,
        };
        Ok(BlockingConfig {
            verify_threads,
            verify_queue: in_range("authentication.verifyQueue", 0, 65_536)?,
            threads: in_range("threads.blocking", 1, 256)?,
            queue: in_range("threads.blockingQueue", 0, 65_536)?,
        })
    }
}

fn resolve(root: &Path, template: &str) -> PathBuf {
    let replaced = template.replace("<root>", &root.display().to_string());
    let path = PathBuf::from(replaced);
    if path.is_absolute() {
        path
    } else {
        root.join(path)
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

impl Config {
    pub fn from_tree(
        tree: &ConfigTree,
        root: &Path,
        cpus_available: usize,
    ) -> Result<Config, ConfigError> {
        let threads = match tree.get("threads.count") {
            Some(Yaml::Null) | None => cpus_available,
            Some(_) => {
                let n = tree.u64("threads.count")?;
                if n == 0 || n > 1024 {
                    return Err(err(
                        "threads.count",
                        format!("{n} is out of range (1-1024)"),
                    ));
                }
                n as usize
            }
        };
        let level_raw = tree
            .string("logging.level")?
            .unwrap_or_else(|| "warn".into());
        let level = LogLevel::parse(&level_raw).ok_or_else(|| {
            err(
                "logging.level",
                format!(
                    "{level_raw:?} is not one of trace, debug, info, warn, error, fatal, notify"
                ),
            )
        })?;
        let log_root = resolve(
            root,
            &tree
                .string("logging.root")?
                .unwrap_or_else(|| "<root>/log".into()),
        );
        let log_path = match tree.string("logging.path")? {
            Some(p) => resolve(root, &p),
            None => log_root.join("hdb.log"),
        };
        let cors_access_list = match tree.get("http.corsAccessList") {
            Some(Yaml::Null) | None => None,
            Some(Yaml::Sequence(items)) => Some(
                items
                    .iter()
                    .map(|i| {
                        i.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| err("http.corsAccessList", "expected a list of origins"))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(_) => {
                return Err(err(
                    "http.corsAccessList",
                    "expected a list of origins or null",
                ))
            }
        };
        let write_async = matches!(tree.get("storage.writeAsync"), Some(Yaml::Bool(true)));
        let header_bytes_max = tree.u64("http.maxHeaderSize")? as usize;
        if header_bytes_max < 256 {
            return Err(err("http.maxHeaderSize", "must be at least 256 bytes"));
        }
        let header_count_max = tree.u64("http.maxHeaderCount")? as usize;
        if !(1..=1024).contains(&header_count_max) {
            return Err(err("http.maxHeaderCount", "must be between 1 and 1024"));
        }
        let tls_path = |key: &str, default: &str| -> Result<PathBuf, ConfigError> {
            Ok(resolve(
                root,
                &tree.string(key)?.unwrap_or_else(|| default.into()),
            ))
        };
        Ok(Config {
            root: root.to_path_buf(),
            http: HttpConfig {
                port: tree.listen("http.port")?,
                secure_port: tree.listen("http.securePort")?,
                cors: tree.bool("http.cors")?,
                cors_access_list,
                cors_allow_headers: tree
                    .string("http.corsAccessControlAllowHeaders")?
                    .unwrap_or_else(|| "Accept, Content-Type, Authorization".into()),
                last_modified: matches!(tree.get("rest.lastModified"), Some(Yaml::Bool(true))),
                keep_alive_timeout: tree.duration("http.keepAliveTimeout")?,
                headers_timeout: tree.duration("http.headersTimeout")?,
                request_timeout: tree.duration("http.timeout")?,
                header_bytes_max,
                header_count_max,
                body_bytes_max: tree.u64("http.maxBodySize")?,
                body_bytes_in_flight_max: tree.u64("http.maxBodyBytesInFlightPerCore")?,
                connections_per_core_max: tree.u64("http.maxConnectionsPerCore")?.max(1) as usize,
                port_wait_after_crash: tree.duration("http.portWaitAfterCrash")?,
                mtls: MtlsConfig::from_tree(tree, "http.mtls", root)?,
            },
            operations_api_port: tree.listen("operationsApi.network.port")?,
            operations_api_secure_port: tree.listen("operationsApi.network.securePort")?,
            tls: TlsConfig {
                certificate: tls_path("tls.certificate", "<root>/keys/certificate.pem")?,
                private_key: tls_path("tls.privateKey", "<root>/keys/privateKey.pem")?,
                certificate_authority: tls_path("tls.certificateAuthority", "<root>/keys/ca.pem")?,
            },
            operations_api_cors: tree.bool("operationsApi.network.cors")?,
            threads,
            authorize_local: tree.bool("authentication.authorizeLocal")?,
            auth: AuthConfig {
                cache_ttl: tree.duration("authentication.cacheTTL")?,
                operation_token_timeout: tree.duration("authentication.operationTokenTimeout")?,
                refresh_token_timeout: tree.duration("authentication.refreshTokenTimeout")?,
                failed_login_limit: u32::try_from(tree.u64("authentication.failedLoginLimit")?)
                    .unwrap_or(u32::MAX),
                failed_login_window: tree.duration("authentication.failedLoginWindow")?,
            },
            blocking: BlockingConfig::from_tree(tree, threads)?,
            mqtt_port: tree.listen("mqtt.network.port")?,
            mqtt_secure_port: tree.listen("mqtt.network.securePort")?,
            mqtt_mtls: MtlsConfig::from_tree(tree, "mqtt.network.mtls", root)?,
            mqtt_web_socket: tree.bool("mqtt.webSocket")?,
            node_name: tree
                .string("replication.hostname")?
                .unwrap_or_else(hostname),
            logging: LoggingConfig {
                level,
                root: log_root,
                path: log_path,
                file: tree.bool("logging.file")?,
                std_streams: tree.bool("logging.stdStreams")?,
                audit_retention: tree.duration("logging.auditRetention")?,
                connections: tree.bool("logging.connections")?,
                access: tree.bool("logging.access")?,
            },
            storage: StorageConfig {
                path: resolve(
                    root,
                    &tree
                        .string("storage.path")?
                        .unwrap_or_else(|| "<root>/database".into()),
                ),
                sync: tree.bool("storage.sync")? && !write_async,
                max_transaction_queue_time: tree.duration("storage.maxTransactionQueueTime")?,
                commit_batch_max: tree.u64("storage.commitBatchMax")?.clamp(1, 65_536) as usize,
                map_bytes: map_bytes(tree)?,
            },
            share_ports: tree.bool("http.sharePorts")?,
            analytics_aggregate_period: tree.seconds_or_off("analytics.aggregatePeriod")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(
        file: &str,
        env: &[(&str, &str)],
        args: &[(&str, &str)],
    ) -> Result<(Config, Vec<String>), ConfigError> {
        let mut tree = ConfigTree::defaults();
        tree.merge_file(file, Path::new("harperdb-config.yaml"))?;
        tree.merge_env(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let args: Vec<(String, String)> = args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        tree.merge_args(&args);
        let config = Config::from_tree(&tree, Path::new("/tmp/root"), 2)?;
        assert!(tree.errors.is_empty(), "{:?}", tree.errors);
        Ok((config, tree.warnings))
    }

    #[test]
    fn precedence_args_over_env_over_file() {
        let (c, _) = load("http:\n  port: 9001\n", &[], &[]).unwrap();
        assert_eq!(c.http.port.unwrap().0.port(), 9001);
        let (c, _) = load(
            "http:\n  port: 9001\n",
            &[("HTTP_PORT", "127.0.0.1:9000")],
            &[],
        )
        .unwrap();
        assert_eq!(c.http.port.unwrap().0.to_string(), "127.0.0.1:9000");
        let (c, _) = load(
            "",
            &[("HTTP_PORT", "127.0.0.1:9000")],
            &[("HTTP_PORT", "9100")],
        )
        .unwrap();
        assert_eq!(c.http.port.unwrap().0.port(), 9100);
        let (c, _) = load("", &[("http_port", "null")], &[]).unwrap();
        assert!(c.http.port.is_none());
    }

    #[test]
    fn analytics_period_is_on_by_default_and_off_at_zero_or_less() {
        let (c, _) = load("", &[], &[]).unwrap();
        assert_eq!(c.analytics_aggregate_period, Some(Duration::from_secs(60)));
        let (c, _) = load("analytics:\n  aggregatePeriod: 0.5\n", &[], &[]).unwrap();
        assert_eq!(
            c.analytics_aggregate_period,
            Some(Duration::from_millis(500))
        );
        for off in ["0", "-1"] {
            let file = format!("analytics:\n  aggregatePeriod: {off}\n");
            let (c, _) = load(&file, &[], &[]).unwrap();
            assert_eq!(c.analytics_aggregate_period, None, "{off}");
        }
    }

    #[test]
    fn invalid_values_name_their_key() {
        let cases: &[(&str, &str)] = &[
            ("http:\n  port: abc\n", "http.port"),
            ("http:\n  port: 70000\n", "http.port"),
            ("logging:\n  level: loud\n", "logging.level"),
            ("threads:\n  count: 0\n", "threads.count"),
            ("http:\n  keepAliveTimeout: soon\n", "http.keepAliveTimeout"),
            ("storage:\n  sync: maybe\n", "storage.sync"),
            (
                "analytics:\n  aggregatePeriod: hourly\n",
                "analytics.aggregatePeriod",
            ),
            (
                "authentication:\n  cacheTTL: thirty\n",
                "authentication.cacheTTL",
            ),
            (
                "authentication:\n  operationTokenTimeout: 1w\n",
                "authentication.operationTokenTimeout",
            ),
            (
                "authentication:\n  refreshTokenTimeout: -5\n",
                "authentication.refreshTokenTimeout",
            ),
            (
                "authentication:\n  failedLoginWindow: a minute\n",
                "authentication.failedLoginWindow",
            ),
            (
                "authentication:\n  failedLoginLimit: many\n",
                "authentication.failedLoginLimit",
            ),
            (
                "authentication:\n  verifyThreads: 0\n",
                "authentication.verifyThreads",
            ),
            (
                "authentication:\n  verifyQueue: lots\n",
                "authentication.verifyQueue",
            ),
            ("threads:\n  blocking: 0\n", "threads.blocking"),
            ("threads:\n  blockingQueue: -1\n", "threads.blockingQueue"),
        ];
        for (file, key) in cases {
            let e = load(file, &[], &[]).unwrap_err();
            assert_eq!(&e.key, key, "{file}");
        }
    }

    #[test]
    fn mtls_and_tls_paths() {
        let check = |file: &str, args: &[(&str, &str)], expected: Option<MtlsConfig>| {
            let (c, warnings) = load(file, &[], args).unwrap();
            assert_eq!(c.http.mtls, expected, "{file} {args:?}");
            assert!(warnings.is_empty(), "{warnings:?}");
        };
        let optional = MtlsConfig {
            user: None,
            required: false,
            certificate_authority: None,
        };
        check("", &[], None);
        check("http:\n  mtls: true\n", &[], Some(optional.clone()));
        check("", &[("HTTP_MTLS", "true")], Some(optional.clone()));
        check(
            "http:\n  mtls:\n    required: true\n    user: admin\n    certificateAuthority: <root>/ca2.pem\n",
            &[],
            Some(MtlsConfig {
                user: Some("admin".into()),
                required: true,
                certificate_authority: Some(PathBuf::from("/tmp/root/ca2.pem")),
            }),
        );
        check(
            "",
            &[("HTTP_MTLS", r#"{"required": true}"#)],
            Some(MtlsConfig {
                required: true,
                ..optional
            }),
        );
        let e = load("http:\n  mtls: 3\n", &[], &[]).unwrap_err();
        assert_eq!(e.key, "http.mtls");
        let e = load("http:\n  mtls:\n    required: sometimes\n", &[], &[]).unwrap_err();
        assert_eq!(e.key, "http.mtls.required");
        let (c, _) = load("tls:\n  certificate: cert.pem\n", &[], &[]).unwrap();
        assert_eq!(c.tls.certificate, PathBuf::from("/tmp/root/cert.pem"));
        assert_eq!(
            c.tls.private_key,
            PathBuf::from("/tmp/root/keys/privateKey.pem")
        );
    }

    #[test]
    fn mqtt_transport_keys() {
        let check = |file: &str, port: Option<u16>, mtls_required: Option<bool>, ws: bool| {
            let (c, warnings) = load(file, &[], &[]).unwrap();
            assert_eq!(c.mqtt_secure_port.map(|a| a.0.port()), port, "{file}");
            assert_eq!(c.mqtt_mtls.map(|m| m.required), mtls_required, "{file}");
            assert_eq!(c.mqtt_web_socket, ws, "{file}");
            assert!(warnings.is_empty(), "{warnings:?}");
        };
        check("", Some(8883), None, true);
        check(
            "mqtt:\n  network:\n    securePort: null\n",
            None,
            None,
            true,
        );
        check(
            "mqtt:\n  network:\n    securePort: 0\n    mtls:\n      required: true\n  webSocket: false\n",
            Some(0),
            Some(true),
            false,
        );
        check(
            "mqtt:\n  network:\n    mtls: true\n",
            Some(8883),
            Some(false),
            true,
        );
        let e = load("mqtt:\n  network:\n    mtls: 3\n", &[], &[]).unwrap_err();
        assert_eq!(e.key, "mqtt.network.mtls");
    }

    #[test]
    fn unknown_keys_are_errors_with_a_suggestion_harperdb_keys_warnings() {
        let mut tree = ConfigTree::defaults();
        let file = "http:\n  porty: 1\nloging:\n  level: info\nnope: 2\n\
                    clustering:\n  enabled: true\ncustomFunctions:\n  network:\n    port: 9926\n";
        tree.merge_file(file, Path::new("harperdb-config.yaml"))
            .unwrap();
        let args = [
            ("HTTP_PROT", "1"),
            ("core", "2"),
            ("LOGGING_ROTATION_RETENTION", "1d"),
        ];
        let args: Vec<(String, String)> = args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        tree.merge_args(&args);
        let errors = tree.errors.join("\n");
        for expected in [
            "unknown configuration key http.porty; did you mean http.port?",
            "unknown configuration key loging; did you mean logging?",
            "unknown configuration key nope (",
            "unknown configuration key --HTTP_PROT; did you mean --HTTP_PORT?",
            "unknown configuration key --core; did you mean --cores?",
        ] {
            assert!(errors.contains(expected), "{expected:?} not in {errors}");
        }
        assert_eq!(tree.errors.len(), 5, "{errors}");
        assert_eq!(tree.warnings.len(), 3, "{:?}", tree.warnings);
        assert!(tree.warnings[0].starts_with("clustering is a HarperDB setting"));
    }

    #[test]
    fn deploy_example_config_has_only_known_keys() {
        let (_, warnings) =
            load(include_str!("../../deploy/harperdb-config.yaml"), &[], &[]).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn durations() {
        for (s, ms) in [
            ("1500", 1500),
            ("30s", 30_000),
            ("5m", 300_000),
            ("1d", 86_400_000),
        ] {
            assert_eq!(parse_duration(s), Some(Duration::from_millis(ms)));
        }
        assert_eq!(parse_duration("1w"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn sizes() {
        for (s, bytes) in [
            ("4096", 4096),
            ("64M", 64 << 20),
            ("64MB", 64 << 20),
            ("2 GiB", 2 << 30),
            ("1t", 1 << 40),
            ("10k", 10 << 10),
        ] {
            assert_eq!(parse_bytes(s), Some(bytes), "{s}");
        }
        for bad in ["", "M", "1.5G", "-1G", "1P", "99999999999T"] {
            assert_eq!(parse_bytes(bad), None, "{bad}");
        }
    }

    /// docs/configuration.md's table lists exactly the keys of the defaults file.
    #[test]
    fn docs_table_lists_every_setting() {
        let docs = include_str!("../../docs/configuration.md");
        let documented: std::collections::BTreeSet<&str> = docs
            .lines()
            .filter_map(|l| l.strip_prefix("| `")?.split_once("` |").map(|(k, _)| k))
            .filter(|k| !k.contains(' '))
            .collect();
        let mut leaves = BTreeMap::new();
        let root: Yaml = serde_yaml::from_str(DEFAULT_CONFIG_YAML).unwrap();
        flatten("", &root, &mut leaves);
        let tree = ConfigTree::defaults();
        let settings: std::collections::BTreeSet<&str> = leaves
            .values()
            .map(String::as_str)
            .filter(|path| !tree.is_branch(path))
            .collect();
        let undocumented: Vec<_> = settings.difference(&documented).collect();
        let unknown: Vec<_> = documented.difference(&settings).collect();
        assert!(
            undocumented.is_empty(),
            "not in docs/configuration.md: {undocumented:?}"
        );
        assert!(unknown.is_empty(), "in docs but not a setting: {unknown:?}");
    }
}
