//! Operations on files and the process rather than tables (docs/operations-api.md): the configuration
//! file (`set_configuration`, cluster routes), `cluster_status`, `system_information`,
//! `read_log`, and `read_audit_log`'s argument handling.
//!
//! File reads and writes run on the blocking pool (`run_blocking`), never on a core. The config
//! file is rewritten whole through a temporary file and a rename, so a crash leaves the old or
//! the new file, never half of one.

use std::path::PathBuf;

use serde_yaml::Value as Yaml;

use super::decode::{from_json, to_json, ReadAuditLog, ReadLog};
use super::OpError;
use crate::config::{Config, ConfigTree};
use crate::resource::nosql::AuditSearch;
use crate::resource::{run_blocking, Resources, VerbError};
use crate::value::{Object, Value};

/// `read_log` reads at most this many bytes from the end of the log file.
pub const LOG_BYTES_MAX: u64 = 32 << 20;
/// `read_log` returns at most this many lines whatever `limit` says.
pub const LOG_LINES_MAX: u64 = 100_000;

fn config_file(resources: &Resources) -> PathBuf {
    crate::config::file_path(&resources.config.root)
}

fn read_yaml(path: &PathBuf) -> Result<Yaml, String> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Ok(Yaml::Mapping(Default::default())),
        Ok(text) => serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Yaml::Mapping(Default::default())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Applies `changes` to the configuration file: in place, line by line, keeping comments and
/// order (`config::edit`); a file that edit cannot handle (flow mappings) is rewritten whole,
/// with a warning that its comments are gone.
fn write_settings(path: &PathBuf, changes: Vec<(String, Yaml)>) -> Result<(), String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let edited = changes.iter().try_fold(text, |text, (key, value)| {
        crate::config::edit::set_in_text(&text, key, value)
    });
    match edited {
        Ok(text) => write_text(path, &text),
        Err(e) => {
            tracing::warn!(
                "set_configuration: {} rewritten without its comments ({e})",
                path.display()
            );
            let mut yaml = read_yaml(path)?;
            for (key, value) in changes {
                set_path(&mut yaml, &key, value);
            }
            write_yaml(path, &yaml)
        }
    }
}

fn write_yaml(path: &PathBuf, yaml: &Yaml) -> Result<(), String> {
    let text = serde_yaml::to_string(yaml).map_err(|e| e.to_string())?;
    write_text(path, &text)
}

/// Replaces the file atomically (a temporary file renamed over it).
fn write_text(path: &PathBuf, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

fn set_path(root: &mut Yaml, path: &str, value: Yaml) {
    let mut node = root;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if !node.is_mapping() {
            *node = Yaml::Mapping(Default::default());
        }
        let Yaml::Mapping(map) = node else { return };
        let key = Yaml::String((*part).to_string());
        if i + 1 == parts.len() {
            map.insert(key, value);
            return;
        }
        node = map
            .entry(key)
            .or_insert_with(|| Yaml::Mapping(Default::default()));
    }
}

fn get_path<'y>(root: &'y Yaml, path: &str) -> Option<&'y Yaml> {
    let mut node = root;
    for part in path.split('.') {
        node = node.as_mapping()?.get(part)?;
    }
    Some(node)
}

/// Flattened lower-case key → dotted path, from the defaults (the same rule as the overrides).
fn known_keys() -> Vec<(String, String)> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
        if let serde_json::Value::Object(map) = v {
            for (k, child) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if matches!(child, serde_json::Value::Object(m) if !m.is_empty()) {
                    walk(&path, child, out);
                }
                out.push((path.replace('.', "_").to_ascii_lowercase(), path));
            }
        }
    }
    let mut out = Vec::new();
    walk("", &ConfigTree::defaults().to_json(), &mut out);
    out
}

fn to_yaml(v: &Value) -> Yaml {
    serde_yaml::to_value(to_json(v)).unwrap_or(Yaml::Null)
}

/// Keys HarperDB accepts that change nothing in tidepool: `set_configuration` stores them in the
/// file and says so, and `get_configuration` shows them as the file has them.
const NO_EFFECT_PREFIXES: &[&str] = &["logging.rotation", "localStudio", "customFunctions"];

fn no_effect(path: &str) -> bool {
    NO_EFFECT_PREFIXES
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}.")))
}

/// `get_configuration`: the running configuration, with HarperDB's `rootPath` and
/// `componentsRoot`, and the keys of [`NO_EFFECT_PREFIXES`] and `replication.routes` as the
/// configuration file has them now (a `set_configuration` of one, or a route operation, shows at
/// once, as in HarperDB, whose answer reads the file).
pub async fn get_configuration(resources: &Resources) -> Result<Value, OpError> {
    let mut tree = resources.config_tree.clone();
    let path = config_file(resources);
    let yaml = run_blocking(move || read_yaml(&path))
        .await
        .map_err(VerbError::from)?
        .map_err(|e| OpError::new(500, e))?;
    // The route operations edit `replication.routes` in the file and apply it at once, so the
    // file's routes are the running ones (docs/operations-api.md, `cluster_set_routes`).
    for prefix in NO_EFFECT_PREFIXES.iter().chain([&ROUTES]) {
        if let Some(v) = get_path(&yaml, prefix) {
            tree.set_path(prefix, v.clone());
        }
    }
    let mut json = tree.to_json();
    if let serde_json::Value::Object(map) = &mut json {
        let root = resources.config.root.display().to_string();
        map.insert("rootPath".into(), serde_json::Value::String(root.clone()));
        map.insert(
            "componentsRoot".into(),
            serde_json::Value::String(format!("{root}/components")),
        );
    }
    Ok(from_json(&json))
}

pub async fn set_configuration(
    resources: &Resources,
    settings: Vec<(String, Value)>,
) -> Result<Value, OpError> {
    if settings.is_empty() {
        return Err(OpError::bad("set_configuration needs at least one setting"));
    }
    let known = known_keys();
    let mut changes: Vec<(String, Yaml)> = Vec::with_capacity(settings.len());
    let mut check = resources.config_tree.clone();
    for (key, value) in &settings {
        let flat = key.to_ascii_lowercase();
        let Some((_, path)) = known.iter().find(|(k, _)| *k == flat) else {
            return Err(OpError::bad(format!("Unknown configuration key '{key}'")));
        };
        let yaml = to_yaml(value);
        check.set_path(path, yaml.clone());
        changes.push((path.clone(), yaml));
    }
    // The new values must make a valid configuration before the file changes.
    Config::from_tree(&check, &resources.config.root, 1).map_err(|e| config_refusal(&e))?;
    let path = config_file(resources);
    run_blocking(move || write_settings(&path, changes))
        .await
        .map_err(VerbError::from)?
        .map_err(|e| OpError::new(500, e))?;
    let ignored: Vec<&str> = settings
        .iter()
        .filter(|(key, _)| {
            let flat = key.to_ascii_lowercase();
            known.iter().any(|(k, path)| *k == flat && no_effect(path))
        })
        .map(|(key, _)| key.as_str())
        .collect();
    // HarperDB's message word for word (clients compare it); what tidepool stores without
    // effect goes in a field of its own (docs/operations-api.md, "Server administration").
    let mut o = Object::new();
    o.insert(
        "message",
        Value::from(
            "Configuration successfully set. You must restart HarperDB for new config settings to take effect.",
        ),
    );
    if !ignored.is_empty() {
        o.insert(
            "stored_without_effect",
            Value::Array(ignored.into_iter().map(Value::from).collect()),
        );
    }
    Ok(Value::Object(o))
}

/// An invalid value in HarperDB's words (`HarperDB config file validation error: 'http.cors'
/// must be a boolean`): the prefix is what a client may match on, so it stays HarperDB's.
fn config_refusal(e: &crate::config::ConfigError) -> OpError {
    let text = if e.message.starts_with("expected true or false") {
        "must be a boolean".to_string()
    } else if e.message.starts_with("expected a string") {
        "must be a string".to_string()
    } else if e.message.starts_with("expected a non-negative integer") {
        "must be a non-negative integer".to_string()
    } else {
        e.message.clone()
    };
    OpError::bad(format!(
        "HarperDB config file validation error: '{}' {text}",
        e.key
    ))
}

/// docs/replication.md's shape while replication is off.
pub fn cluster_status() -> Value {
    let mut o = Object::new();
    o.insert("type", Value::String("cluster-status".into()));
    o.insert("connections", Value::Array(Vec::new()));
    o.insert("node_name", Value::Null);
    o.insert("is_enabled", Value::Bool(false));
    Value::Object(o)
}

const ROUTES: &str = "replication.routes";

fn route_valid(route: &Value) -> bool {
    match route {
        Value::String(s) => !s.is_empty(),
        // `host` is HarperDB's older spelling (its cluster test collection still uses it).
        Value::Object(o) => {
            matches!(o.get("hostname").or_else(|| o.get("host")), Some(Value::String(h)) if !h.is_empty())
                && matches!(o.get("port"), None | Some(Value::Int(_)))
        }
        _ => false,
    }
}

async fn current_routes(resources: &Resources) -> Result<(PathBuf, Yaml, Vec<Value>), OpError> {
    let path = config_file(resources);
    let read_path = path.clone();
    let yaml = run_blocking(move || read_yaml(&read_path))
        .await
        .map_err(VerbError::from)?
        .map_err(|e| OpError::new(500, e))?;
    let routes = match get_path(&yaml, ROUTES) {
        Some(Yaml::Sequence(items)) => items
            .iter()
            .map(|y| {
                serde_json::to_value(y)
                    .map(|j| from_json(&j))
                    .unwrap_or(Value::Null)
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok((path, yaml, routes))
}

async fn store_routes(path: PathBuf, mut yaml: Yaml, routes: &[Value]) -> Result<(), OpError> {
    set_path(
        &mut yaml,
        ROUTES,
        Yaml::Sequence(routes.iter().map(to_yaml).collect()),
    );
    run_blocking(move || write_yaml(&path, &yaml))
        .await
        .map_err(VerbError::from)?
        .map_err(|e| OpError::new(500, e))
}

pub async fn get_routes(resources: &Resources) -> Result<Value, OpError> {
    Ok(Value::Array(current_routes(resources).await?.2))
}

pub async fn set_routes(resources: &Resources, new: Vec<Value>) -> Result<Value, OpError> {
    if let Some(bad) = new.iter().find(|r| !route_valid(r)) {
        return Err(OpError::bad(format!(
            "Invalid route {}: a route is a URL string or {{hostname (or host), port}}",
            String::from_utf8_lossy(&crate::value::json::to_vec(bad))
        )));
    }
    let (path, yaml, mut routes) = current_routes(resources).await?;
    let (mut set, mut skipped) = (Vec::new(), Vec::new());
    for route in new {
        if routes.contains(&route) || set.contains(&route) {
            skipped.push(route);
        } else {
            set.push(route);
        }
    }
    routes.extend(set.iter().cloned());
    store_routes(path, yaml, &routes).await?;
    let mut o = Object::new();
    o.insert(
        "message",
        Value::String("cluster routes successfully set".into()),
    );
    o.insert("set", Value::Array(set));
    o.insert("skipped", Value::Array(skipped));
    Ok(Value::Object(o))
}

pub async fn delete_routes(resources: &Resources, gone: Vec<Value>) -> Result<Value, OpError> {
    let (path, yaml, mut routes) = current_routes(resources).await?;
    let (mut deleted, mut skipped) = (Vec::new(), Vec::new());
    for route in gone {
        if let Some(i) = routes.iter().position(|r| *r == route) {
            routes.remove(i);
            deleted.push(route);
        } else {
            skipped.push(route);
        }
    }
    store_routes(path, yaml, &routes).await?;
    let mut o = Object::new();
    o.insert(
        "message",
        Value::String("cluster routes successfully deleted".into()),
    );
    o.insert("deleted", Value::Array(deleted));
    o.insert("skipped", Value::Array(skipped));
    Ok(Value::Object(o))
}

fn meminfo() -> Object {
    let mut o = Object::new();
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(name), Some(kb)) = (parts.next(), parts.next()) else {
            continue;
        };
        let key = match name {
            "MemTotal:" => "total",
            "MemFree:" => "free",
            "MemAvailable:" => "available",
            "SwapTotal:" => "swaptotal",
            "SwapFree:" => "swapfree",
            "Active:" => "active",
            _ => continue,
        };
        if let Ok(kb) = kb.parse::<i64>() {
            o.insert(key, Value::Int(kb.saturating_mul(1024)));
        }
    }
    // HarperDB's derived fields: used = total - free, swapused = swaptotal - swapfree.
    for (out, total, free) in [
        ("used", "total", "free"),
        ("swapused", "swaptotal", "swapfree"),
    ] {
        if let (Some(Value::Int(t)), Some(Value::Int(f))) = (o.get(total), o.get(free)) {
            let used = t.saturating_sub(*f);
            o.insert(out, Value::Int(used));
        }
    }
    o
}

/// `time`: now, the host's uptime in seconds (`/proc/uptime`, as HarperDB reports it), and the
/// time zone (`TZ`, else `/etc/timezone`, else UTC).
fn time_info() -> Object {
    let mut t = Object::new();
    t.insert("current", Value::Float(crate::resource::now_ms()));
    let uptime = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    t.insert("uptime", Value::Float(uptime));
    let name = std::env::var("TZ")
        .ok()
        .filter(|z| !z.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/timezone")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|z| !z.is_empty())
        })
        .unwrap_or_else(|| "Etc/UTC".into());
    t.insert(
        "timezone",
        Value::String(std::env::var("TZ").unwrap_or_else(|_| "UTC".into())),
    );
    t.insert("timezoneName", Value::String(name));
    t
}

/// `disk`: the size, use and free space of the file system holding the root directory.
fn disk_info(root: &std::path::Path) -> Object {
    let mut o = Object::new();
    let mut sizes = Vec::new();
    if let Ok(path) = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()) {
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `path` is a NUL-terminated string and `st` is written by statvfs on success.
        if unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) } == 0 {
            // SAFETY: statvfs returned 0, so it filled `st`.
            let st = unsafe { st.assume_init() };
            let frsize = st.f_frsize as i64;
            let size = (st.f_blocks as i64).saturating_mul(frsize);
            let free = (st.f_bavail as i64).saturating_mul(frsize);
            let mut fs = Object::new();
            fs.insert("mount", Value::String(root.display().to_string()));
            fs.insert("size", Value::Int(size));
            fs.insert(
                "used",
                Value::Int(size.saturating_sub((st.f_bfree as i64).saturating_mul(frsize))),
            );
            fs.insert("available", Value::Int(free));
            sizes.push(Value::Object(fs));
        }
    }
    o.insert("size", Value::Array(sizes));
    o
}

/// `network`: each interface of `/proc/net/dev` with its received and sent bytes.
fn network_info() -> Object {
    let mut o = Object::new();
    let text = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    let mut interfaces = Vec::new();
    for line in text.lines().skip(2) {
        let Some((name, counters)) = line.split_once(':') else {
            continue;
        };
        let fields: Vec<i64> = counters
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        let mut i = Object::new();
        i.insert("iface", Value::String(name.trim().to_string()));
        i.insert("rx_bytes", Value::Int(fields.first().copied().unwrap_or(0)));
        i.insert("tx_bytes", Value::Int(fields.get(8).copied().unwrap_or(0)));
        interfaces.push(Value::Object(i));
    }
    o.insert("interfaces", Value::Array(interfaces));
    o
}

fn system_info() -> Object {
    let mut o = Object::new();
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    o.insert("platform", Value::String(std::env::consts::OS.into()));
    o.insert("arch", Value::String(std::env::consts::ARCH.into()));
    o.insert("hostname", Value::String(read("/proc/sys/kernel/hostname")));
    o.insert("kernel", Value::String(read("/proc/sys/kernel/osrelease")));
    o.insert(
        "server_version",
        Value::String(env!("CARGO_PKG_VERSION").into()),
    );
    o
}

/// `system_information`: the requested sections (all without `attributes`).
pub async fn system_information(resources: &Resources, attributes: Option<&[String]>) -> Value {
    let wanted = |name: &str| attributes.is_none_or(|a| a.iter().any(|x| x == name));
    let mut o = Object::new();
    if wanted("system") {
        o.insert("system", Value::Object(system_info()));
    }
    if wanted("time") {
        o.insert("time", Value::Object(time_info()));
    }
    if wanted("cpu") {
        let mut c = Object::new();
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as i64)
            .unwrap_or(1);
        c.insert("cpus", Value::Int(cpus));
        c.insert("cores", Value::Int(resources.config.threads as i64));
        o.insert("cpu", Value::Object(c));
    }
    if wanted("memory") {
        o.insert("memory", Value::Object(meminfo()));
    }
    if wanted("harperdb_processes") {
        let mut p = Object::new();
        p.insert(
            "core",
            Value::Array(vec![Value::Int(i64::from(std::process::id()))]),
        );
        o.insert("harperdb_processes", Value::Object(p));
    }
    if wanted("threads") {
        let threads = (0..resources.config.threads)
            .map(|i| {
                let mut t = Object::new();
                t.insert("threadId", Value::Int(i as i64));
                Value::Object(t)
            })
            .collect();
        o.insert("threads", Value::Array(threads));
    }
    if wanted("table_size") {
        let mut sizes = Vec::new();
        for db_name in resources.store.database_names() {
            let Some(db) = resources.store.database(&db_name) else {
                continue;
            };
            for table_name in db.table_names() {
                let Some(table) = db.table(&table_name) else {
                    continue;
                };
                let Ok(txn) = db.read() else { continue };
                let mut t = Object::new();
                t.insert("schema", Value::String(db_name.clone()));
                t.insert("table", Value::String(table_name.clone()));
                t.insert(
                    "table_size",
                    Value::Int(txn.table_size(&table).unwrap_or(0) as i64),
                );
                t.insert(
                    "record_count",
                    Value::Int(txn.count(&table).unwrap_or(0) as i64),
                );
                sizes.push(Value::Object(t));
            }
        }
        o.insert("table_size", Value::Array(sizes));
    }
    if wanted("replication") {
        o.insert("replication", cluster_status());
    }
    if wanted("disk") {
        o.insert("disk", Value::Object(disk_info(&resources.config.root)));
    }
    if wanted("network") {
        o.insert("network", Value::Object(network_info()));
    }
    if wanted("metrics") && attributes.is_some() {
        o.insert("metrics", Value::Object(Object::new()));
    }
    Value::Object(o)
}

/// One docs/configuration.md line: `<ISO> [<thread>/<core>] [<level>] [<tag>]…: <message>`.
fn parse_log_line(line: &str) -> Option<(String, String, String, Vec<String>, String)> {
    let (timestamp, rest) = line.split_once(' ')?;
    let rest = rest.strip_prefix('[')?;
    let (thread, rest) = rest.split_once("] [")?;
    let (level, mut rest) = rest.split_once(']')?;
    let mut tags = Vec::new();
    while let Some(after) = rest.strip_prefix(" [") {
        let (tag, tail) = after.split_once(']')?;
        tags.push(tag.to_string());
        rest = tail;
    }
    let message = rest.strip_prefix(": ").unwrap_or(rest);
    Some((
        timestamp.to_string(),
        thread.to_string(),
        level.to_string(),
        tags,
        message.to_string(),
    ))
}

pub async fn read_log(resources: &Resources, q: ReadLog) -> Result<Value, OpError> {
    let path = resources.config.logging.path.clone();
    let text = run_blocking(move || -> Result<String, String> {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len > LOG_BYTES_MAX {
            let _ = file.seek(SeekFrom::Start(len - LOG_BYTES_MAX));
        }
        let mut bytes = Vec::new();
        file.take(LOG_BYTES_MAX)
            .read_to_end(&mut bytes)
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    })
    .await
    .map_err(VerbError::from)?
    .map_err(|e| OpError::new(500, e))?;
    let mut entries: Vec<Value> = Vec::new();
    for line in text.lines() {
        let Some((timestamp, thread, level, tags, message)) = parse_log_line(line) else {
            continue;
        };
        if q.level.as_deref().is_some_and(|l| l != level) {
            continue;
        }
        if q.from.as_deref().is_some_and(|f| timestamp.as_str() < f) {
            continue;
        }
        if q.until.as_deref().is_some_and(|u| timestamp.as_str() > u) {
            continue;
        }
        if q.filter.as_deref().is_some_and(|f| !line.contains(f)) {
            continue;
        }
        let mut o = Object::new();
        o.insert("level", Value::String(level));
        o.insert("message", Value::String(message));
        o.insert("timestamp", Value::String(timestamp));
        o.insert("thread", Value::String(thread));
        o.insert(
            "tags",
            Value::Array(tags.into_iter().map(Value::String).collect()),
        );
        entries.push(Value::Object(o));
    }
    if q.descending {
        entries.reverse();
    }
    let start = usize::try_from(q.start).unwrap_or(usize::MAX);
    let limit = usize::try_from(q.limit.min(LOG_LINES_MAX)).unwrap_or(usize::MAX);
    Ok(Value::Array(
        entries.into_iter().skip(start).take(limit).collect(),
    ))
}

fn timestamp_arg(v: &Value) -> Result<f64, OpError> {
    match v {
        Value::Int(i) => Ok(*i as f64),
        Value::Float(f) | Value::Date(f) => Ok(*f),
        Value::String(s) => crate::util::parse_iso8601_ms(s)
            .or_else(|| s.parse().ok())
            .ok_or_else(|| OpError::bad(format!("Invalid timestamp \"{s}\""))),
        _ => Err(OpError::bad("search_values must be timestamps")),
    }
}

pub fn read_audit_log(resources: &Resources, q: &ReadAuditLog) -> Result<Value, OpError> {
    let search = match q.search_type.as_str() {
        "username" => AuditSearch::Username(
            q.search_values
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(OpError::bad("search_values must be user names")),
                })
                .collect::<Result<_, _>>()?,
        ),
        "hash_value" => AuditSearch::HashValue(q.search_values.clone()),
        _ => match q.search_values.as_slice() {
            [] => AuditSearch::Timestamp(None, None),
            [from] => AuditSearch::Timestamp(Some(timestamp_arg(from)?), None),
            [from, to] => {
                AuditSearch::Timestamp(Some(timestamp_arg(from)?), Some(timestamp_arg(to)?))
            }
            _ => {
                return Err(OpError::bad(
                    "search_values takes at most two timestamps for a timestamp search",
                ))
            }
        },
    };
    let mut found =
        crate::resource::nosql::read_audit_log(resources, &q.database, &q.table, &search)?;
    if let (Some(limit), Value::Array(items)) = (q.limit, &mut found) {
        items.truncate(limit);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(line: &str, expected: Option<(&str, &str, &str, &[&str], &str)>) {
        let got = parse_log_line(line);
        let want = expected.map(|(t, th, l, tags, m)| {
            (
                t.to_string(),
                th.to_string(),
                l.to_string(),
                tags.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                m.to_string(),
            )
        });
        assert_eq!(got, want, "{line}");
    }

    #[test]
    fn log_lines() {
        check(
            "2026-11-25T17:00:00.123Z [http/1] [warn] [mqtt]: hello: world",
            Some((
                "2026-11-25T17:00:00.123Z",
                "http/1",
                "warn",
                &["mqtt"],
                "hello: world",
            )),
        );
        check(
            "2026-11-25T17:00:00.123Z [main/0] [notify]: up",
            Some(("2026-11-25T17:00:00.123Z", "main/0", "notify", &[], "up")),
        );
        check("garbage", None);
        check("", None);
    }

    #[test]
    fn flattened_keys_know_nested_paths() {
        let known = known_keys();
        assert!(known
            .iter()
            .any(|(k, p)| k == "logging_level" && p == "logging.level"));
        assert!(known
            .iter()
            .any(|(k, p)| k == "http_port" && p == "http.port"));
    }
}
