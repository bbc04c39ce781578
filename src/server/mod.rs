//! The running server: root folder and its lock, listeners, executors, routing, shutdown.
//!
//! It wires subsystems together and owns the process lifecycle; protocol details live in
//! `protocol`, data in `store`. Start order: lock the root, bind every listener (exit 2 if one
//! cannot bind), start the executors, log the listeners and tell systemd READY=1. Stop order on
//! SIGTERM/SIGINT: stop accepting, `/health` → 503, close idle connections, let in-flight
//! requests finish up to the deadline, exit 0; a second signal exits 1 at once.

mod analytics;
mod http_stats;
mod lock;
mod mqtt;
mod notify;
mod replication;
mod router;
mod static_files;
mod system;
pub mod tls;

use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidepool_io::{
    bind_listeners, race, spawn, start_cores, timeout, BindError, CoreContext, Either, InFlight,
    IoDriver, Listener, RuntimeConfig, Shutdown, TerminationSignals, TlsAcceptor,
};

use crate::config::{Config, ConfigTree};
use crate::logging::NOTIFY;
use crate::protocol::http::{self, Limits};
use crate::protocol::ws;
use crate::pubsub::{self, Registry};
use crate::store::{Commit, Store, StoreOptions};

pub use lock::{holder as lock_holder, operations_api as recorded_operations_api, RootLock};
use router::{PortKind, Router};
pub use system::tables as system_tables;

/// How long in-flight requests get after a shutdown signal (docs/design.md).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A start-up failure, with the exit status README.md#running-it gives it.
#[derive(Debug)]
pub enum RunError {
    /// Invalid configuration, schema or root folder: exit 1.
    Invalid(String),
    /// A listener cannot bind: exit 2.
    Bind(String),
}

impl RunError {
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Invalid(_) => 1,
            RunError::Bind(_) => 2,
        }
    }
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Invalid(m) | RunError::Bind(m) => f.write_str(m),
        }
    }
}

pub struct RunOptions {
    /// Held until the process exits: one process per root.
    pub lock: RootLock,
    pub app_dir: PathBuf,
    pub config: Config,
    pub tree: ConfigTree,
    pub io_driver: IoDriver,
    /// One executor per CPU listed.
    pub cpus: Vec<usize>,
    /// `tidepool dev`: watch the application folder and re-apply its schema live.
    pub watch: bool,
}

/// Per-core counters, each written only by its own core and read by anyone (`/health?verbose`).
#[derive(Default)]
pub struct CoreStats {
    pub connections_accepted: AtomicU64,
    pub connections_open: AtomicU64,
    pub connections_refused: AtomicU64,
    pub requests: AtomicU64,
    /// Milliseconds since start when this core's heartbeat task last ran (the watchdog reads it).
    pub heartbeat_ms: AtomicU64,
    /// This core's HTTP connection memory: buffer bytes, request bodies in flight.
    pub http: http::ConnGauges,
    /// MQTT connections open on this core (plain and TLS ports; over WebSocket they count as HTTP).
    pub mqtt_connections_open: AtomicU64,
    /// HTTP answers by route and status class, and their latency (`/metrics`).
    pub answers: http_stats::HttpStats,
}

/// What every core shares, read-mostly.
pub struct Shared {
    pub config: Config,
    pub resources: Arc<crate::resource::Resources>,
    pub static_files: Option<static_files::StaticFiles>,
    pub stats: Vec<CoreStats>,
    pub shutdown: Shutdown,
    pub in_flight: InFlight,
    pub limits: Limits,
    pub started: Instant,
    /// The same moment as seconds since the Unix epoch (`process_start_time_seconds`).
    pub started_unix_s: f64,
    /// Per-core real-time counters (`/health?verbose`).
    pub pubsub: Vec<Arc<pubsub::Counters>>,
    /// Each core's event inbox, taken by that core at start.
    inboxes: Mutex<Vec<Option<tidepool_io::Inbox<Arc<Commit>>>>>,
    /// A version above every commit made before the cores started (see `pubsub::Registry::new`).
    start_version: f64,
    /// `rest.webSocket` (default true).
    web_socket: bool,
    /// Where cores send their analytics reports; `None` with `analytics.aggregatePeriod: 0`.
    analytics: Option<std::sync::mpsc::SyncSender<crate::resource::analytics::Report>>,
}

struct BoundPort {
    kind: PortKind,
    addr: SocketAddr,
    /// Set on the secure ports: every connection starts with a TLS handshake.
    tls: Option<TlsAcceptor>,
    /// One listener per core, taken by that core at start.
    listeners: Mutex<Vec<Option<StdTcpListener>>>,
}

/// Binds `kind`'s listeners on `addr`; `secure`: a TLS port, named by its `securePort` key in
/// errors.
fn bind(
    kind: PortKind,
    secure: bool,
    addr: SocketAddr,
    cores: usize,
    config: &Config,
) -> Result<BoundPort, RunError> {
    let name = if secure {
        secure_name(kind)
    } else {
        kind.name()
    };
    let (listeners, bound) = bind_listeners(
        addr,
        cores,
        config.share_ports,
        config.http.port_wait_after_crash,
    )
    .map_err(|e: BindError| RunError::Bind(format!("{name} port: {e}")))?;
    Ok(BoundPort {
        kind,
        addr: bound,
        tls: None,
        listeners: Mutex::new(listeners.into_iter().map(Some).collect()),
    })
}

/// Runs the server in the foreground until a shutdown signal. Returns after a graceful stop.
pub fn run(opts: RunOptions) -> Result<(), RunError> {
    let config = opts.config;
    let root = config.root.clone();
    let lock = opts.lock;
    write_default_config(&root, &opts.tree);
    if !opts.app_dir.is_dir() {
        return Err(RunError::Invalid(format!(
            "application folder {} does not exist",
            opts.app_dir.display()
        )));
    }

    let app = crate::schema::load_app(&opts.app_dir)
        .map_err(|e| RunError::Invalid(format!("application {}: {e}", opts.app_dir.display())))?;
    for warning in &app.warnings {
        tracing::warn!("{warning}");
    }

    let cores = opts.cpus.len();
    let (ports, mqtt_secure_port) = bind_ports(&config, cores)?;
    let ports = Arc::new(ports);
    let mqtt_port = mqtt::bind(config.mqtt_port.map(|a| a.0), cores, &config, None)?;

    let limits = limits_of(&config);
    // Storage opens after the ports are ours (so a second process never touches our files) and
    // before any core serves a request.
    let mut store_options =
        StoreOptions::new(&config.storage.path).with_node_name(&config.node_name);
    store_options.sync = config.storage.sync;
    store_options.queue_time_max = config.storage.max_transaction_queue_time;
    store_options.commit_batch_max = config.storage.commit_batch_max;
    store_options.map_bytes = config.storage.map_bytes;
    store_options.audit_retention = Some(config.logging.audit_retention).filter(|d| !d.is_zero());
    // Every commit goes to every core's inbox; each core matches it against its own subscriptions.
    // MQTT sessions take them from the same inbox (a `pubsub::Registry` listener).
    let pubsub_counters: Vec<Arc<pubsub::Counters>> = (0..cores).map(|_| Arc::default()).collect();
    let (events, inboxes) = tidepool_io::mesh::<Arc<Commit>>(cores, pubsub::INBOX_COMMITS_MAX);
    let pubsub_publisher = pubsub::publisher(events, pubsub_counters.clone());
    let store = Store::open(store_options, pubsub_publisher)
        .map_err(|e| RunError::Invalid(format!("storage: {e}")))?;
    let mut tables = system::tables();
    tables.extend(app.tables.iter().cloned());
    store
        .apply_schema(&tables)
        .map_err(|e| RunError::Invalid(format!("storage: {e}")))?;
    let replication = replication::start(store.clone(), &config, &opts.tree)?;
    let static_files = static_files::StaticFiles::load(&app);
    let resources = Arc::new(
        crate::resource::Resources::new(store.clone(), Arc::new(app), Arc::new(config.clone()))
            .with_config_tree(opts.tree.clone()),
    );
    // Before anything hashes a password or opens a file off the cores (docs/security.md
    // "Password checks").
    crate::resource::blocking::configure(&config.blocking);
    crate::auth::start(&resources).map_err(RunError::Invalid)?;

    let web_socket = !matches!(
        opts.tree.get("rest.webSocket"),
        Some(serde_yaml::Value::Bool(false))
    );
    let start_version = store.clock().next();
    let shutdown = Shutdown::new();
    let (analytics, analytics_thread) = match config.analytics_aggregate_period {
        Some(period) => {
            let (sender, thread) =
                analytics::start(&resources, &shutdown, period).map_err(|e| {
                    RunError::Invalid(format!("cannot start the analytics thread: {e}"))
                })?;
            (Some(sender), Some(thread))
        }
        None => (None, None),
    };
    let shared = Arc::new(Shared {
        analytics,
        pubsub: pubsub_counters,
        inboxes: Mutex::new(inboxes.into_iter().map(Some).collect()),
        start_version,
        web_socket,
        resources,
        static_files,
        stats: (0..cores).map(|_| CoreStats::default()).collect(),
        shutdown,
        in_flight: InFlight::new(),
        limits,
        started: Instant::now(),
        started_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        config,
    });

    let mqtt = Arc::new(mqtt::Mqtt {
        port: mqtt_port,
        secure_port: mqtt_secure_port,
        shared: Arc::new(crate::protocol::mqtt::conn::MqttShared::new(
            shared.resources.clone(),
            usize::try_from(shared.config.http.body_bytes_max).unwrap_or(usize::MAX),
            mqtt::require_authentication(&opts.tree),
            shared.shutdown.clone(),
        )),
    });

    // Signals are taken on this (main) thread, never on an executor.
    let signals = TerminationSignals::install()
        .map_err(|e| RunError::Invalid(format!("cannot install signal handlers: {e}")))?;

    let mut runtime = RuntimeConfig::new(opts.cpus.clone(), opts.io_driver);
    runtime.thread_name = "http".into();
    let core_shared = shared.clone();
    let core_ports = ports.clone();
    let core_mqtt = mqtt.clone();
    let (driver, handles) = start_cores(&runtime, move |ctx| {
        core_main(
            ctx,
            core_shared.clone(),
            core_ports.clone(),
            core_mqtt.clone(),
        )
    })
    .map_err(|e| RunError::Invalid(format!("cannot start executors: {e}")))?;

    log_listening(&shared, &ports, &mqtt, driver, &opts.cpus, &opts.app_dir);
    if let Some(port) = ports
        .iter()
        .find(|p| p.tls.is_none() && p.kind != PortKind::Rest)
    {
        lock.record_operations_api(port.addr);
    }
    notify::send("READY=1");
    start_helper_threads(opts.watch, &opts.app_dir, &shared)?;

    stop(signals, &shared, handles);
    if let Some(thread) = analytics_thread {
        // It stops within a quarter second of the shutdown (or after the fold it is in).
        let _ = thread.join();
    }
    if let Some(replication) = &replication {
        replication.stop();
    }
    store.close();
    tracing::info!(target: NOTIFY, "stopped");
    Ok(())
}

/// Binds the REST, Operations API and secure ports, and the MQTT secure port (with the TLS
/// certificate reloaded on SIGHUP); returns the HTTP ports and the MQTT secure port.
fn bind_ports(
    config: &Config,
    cores: usize,
) -> Result<(Vec<BoundPort>, Option<mqtt::MqttPort>), RunError> {
    let mut ports = Vec::new();
    let rest = config.http.port.map(|a| a.0);
    let ops = config.operations_api_port.map(|a| a.0);
    if let Some(addr) = rest {
        // Port 0 means "any free port" for each listener, so two zero ports are two listeners.
        let kind = if Some(addr) == ops && addr.port() != 0 {
            PortKind::Both
        } else {
            PortKind::Rest
        };
        ports.push(bind(kind, false, addr, cores, config)?);
    }
    if let Some(addr) = ops.filter(|a| Some(*a) != rest || a.port() == 0) {
        ports.push(bind(PortKind::Operations, false, addr, cores, config)?);
    }
    let secure = bind_secure_ports(config, &mut ports, cores)?;
    let mqtt_secure_port = match &secure {
        Some(certificate) if config.mqtt_secure_port.is_some() => {
            let server_config = tls::server_config(
                certificate.clone(),
                &config.tls,
                config.mqtt_mtls.as_ref(),
                &[],
            )
            .map_err(|e| RunError::Invalid(format!("TLS for MQTT: {e}")))?;
            let acceptor = Some(TlsAcceptor::new(server_config));
            let addr = config.mqtt_secure_port.map(|a| a.0);
            mqtt::bind(addr, cores, config, acceptor)?
        }
        _ => None,
    };
    if let Some(certificate) = secure {
        let tls_files = config.tls.clone();
        tidepool_io::watch_hangups(move || match certificate.reload(&tls_files) {
            Ok(()) => tracing::info!(target: NOTIFY, "SIGHUP: reloaded the TLS certificate {}", tls_files.certificate.display()),
            Err(e) => tracing::error!("SIGHUP: TLS certificate not reloaded, the running one stays: {e}"),
        })
        .map_err(|e| RunError::Invalid(format!("cannot install the SIGHUP handler: {e}")))?;
    }
    Ok((ports, mqtt_secure_port))
}

/// The HTTP limits of `http.*` (README, "Limits").
fn limits_of(config: &Config) -> Limits {
    Limits {
        header_bytes_max: config.http.header_bytes_max,
        header_count_max: config.http.header_count_max,
        body_bytes_max: config.http.body_bytes_max,
        keep_alive_timeout: config.http.keep_alive_timeout,
        headers_timeout: config.http.headers_timeout,
        request_timeout: config.http.request_timeout,
        body_bytes_in_flight_max: config.http.body_bytes_in_flight_max,
    }
}

/// The start-up lines: version, cores, every listening port, the application and root.
fn log_listening(
    shared: &Shared,
    ports: &[BoundPort],
    mqtt: &mqtt::Mqtt,
    driver: tidepool_io::DriverKind,
    cpus: &[usize],
    app_dir: &std::path::Path,
) {
    let cores = cpus.len();
    let root = &shared.config.root;
    tracing::info!(target: NOTIFY, "tidepool {} node {} starting with {cores} cores on CPUs {:?}, io driver {driver}",
        env!("CARGO_PKG_VERSION"), shared.config.node_name, cpus);
    for port in ports {
        let (scheme, name) = match port.tls {
            Some(_) => ("HTTPS ", secure_name(port.kind)),
            None => ("", port.kind.name()),
        };
        tracing::info!(target: NOTIFY, "{scheme}{name} listening on {} ({} listeners, SO_REUSEPORT)", port.addr, cores);
    }
    if let Some(port) = &mqtt.port {
        tracing::info!(target: NOTIFY, "MQTT (mqtt.network.port) listening on {} ({} listeners, SO_REUSEPORT)", port.addr, cores);
    }
    if let Some(port) = &mqtt.secure_port {
        tracing::info!(target: NOTIFY, "MQTTS (mqtt.network.securePort) listening on {} ({} listeners, SO_REUSEPORT)", port.addr, cores);
    }
    tracing::info!(target: NOTIFY, "application {} on root {}", app_dir.display(), root.display());
}

/// The dev watcher (`tidepool dev`) and the systemd watchdog, each on its own thread.
fn start_helper_threads(
    watch: bool,
    app_dir: &std::path::Path,
    shared: &Arc<Shared>,
) -> Result<(), RunError> {
    if watch {
        let resources = shared.resources.clone();
        let dir = app_dir.to_path_buf();
        let shutdown = shared.shutdown.clone();
        std::thread::Builder::new()
            .name("dev-watch".into())
            .spawn(move || dev_watch(dir, resources, shutdown))
            .map_err(|e| RunError::Invalid(format!("cannot start the dev watcher: {e}")))?;
    }
    if let Some(interval) = notify::watchdog_interval() {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || watchdog(shared, interval))
            .map_err(|e| RunError::Invalid(format!("cannot start watchdog thread: {e}")))?;
    }
    Ok(())
}

/// Waits for the first signal (or a `restart`), then stops gracefully: shutdown triggered,
/// requests in flight given [`SHUTDOWN_GRACE`], executors awaited until then. A second signal
/// exits at once.
fn stop(
    mut signals: TerminationSignals,
    shared: &Shared,
    handles: Vec<std::thread::JoinHandle<()>>,
) {
    // Wait for the first signal.
    let first = signals.wait();
    if crate::resource::RESTART_REQUESTED.load(std::sync::atomic::Ordering::SeqCst) {
        // The `restart` operation: the same graceful stop, then `main` executes the binary again
        // in this process (same PID), which systemd sees as a reload (docs/operations-api.md).
        tracing::info!(target: NOTIFY, "restart requested: stopping, then starting again with the same arguments");
        notify::send("RELOADING=1");
    } else {
        tracing::info!(target: NOTIFY, "signal {} received: shutting down (a second signal exits at once)", first.unwrap_or(0));
        notify::send("STOPPING=1");
    }
    shared.shutdown.trigger();
    std::thread::spawn(move || {
        if signals.wait().is_some() {
            tracing::error!("second signal: exiting without waiting");
            std::process::exit(1);
        }
    });

    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while shared.in_flight.count() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let abandoned = shared.in_flight.count();
    if abandoned > 0 {
        tracing::warn!(
            "{abandoned} requests still in flight after {SHUTDOWN_GRACE:?}; closing them"
        );
    }
    for handle in handles {
        if Instant::now() >= deadline {
            break;
        }
        // Executors return once their connections are closed; past the deadline we stop waiting.
        while !handle.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn secure_name(kind: PortKind) -> &'static str {
    match kind {
        PortKind::Rest => "REST (http.securePort)",
        PortKind::Operations => "Operations API (operationsApi.network.securePort)",
        PortKind::Both => "REST and Operations API (securePort)",
    }
}

/// First start generates the `tls` files (README.md#running-it) whether or not a secure port is on, as MQTT
/// and replication use them too; then `http.securePort` and `operationsApi.network.securePort`
/// are bound like the plain ports (one listener per core, equal addresses share one listener).
/// Returns the certificate they serve, for SIGHUP to reload, when any secure port is on
/// (`mqtt.network.securePort` included; the MQTT listener is bound by the caller).
fn bind_secure_ports(
    config: &Config,
    ports: &mut Vec<BoundPort>,
    cores: usize,
) -> Result<Option<Arc<tls::CertificateSlot>>, RunError> {
    let rest = config.http.secure_port.map(|a| a.0);
    let ops = config.operations_api_secure_port.map(|a| a.0);
    let any_secure = rest.is_some() || ops.is_some() || config.mqtt_secure_port.is_some();
    match tls::ensure_certificates(config) {
        Ok(Some(generated)) => tracing::info!(target: NOTIFY,
            "generated a TLS certificate authority {} (key {}) and a certificate {} signed by it for {}",
            generated.certificate_authority.display(),
            tls::ca_key_path(&config.tls).display(),
            generated.certificate.display(),
            generated.subject_alt_names.join(", ")),
        Ok(None) => {}
        Err(e) if !any_secure => tracing::warn!("TLS certificates: {e}"),
        Err(e) => return Err(RunError::Invalid(format!("TLS certificates: {e}"))),
    }
    if !any_secure {
        return Ok(None);
    }
    let invalid = |e: tls::TlsError| RunError::Invalid(format!("TLS: {e}"));
    let certificate = tls::CertificateSlot::load(&config.tls).map_err(invalid)?;
    let server_config = tls::server_config(
        certificate.clone(),
        &config.tls,
        config.http.mtls.as_ref(),
        &[b"http/1.1"],
    )
    .map_err(invalid)?;
    let acceptor = TlsAcceptor::new(server_config);
    if let Some(addr) = rest {
        let kind = if Some(addr) == ops && addr.port() != 0 {
            PortKind::Both
        } else {
            PortKind::Rest
        };
        let mut port = bind(kind, true, addr, cores, config)?;
        port.tls = Some(acceptor.clone());
        ports.push(port);
    }
    if let Some(addr) = ops.filter(|a| Some(*a) != rest || a.port() == 0) {
        let mut port = bind(PortKind::Operations, true, addr, cores, config)?;
        port.tls = Some(acceptor);
        ports.push(port);
    }
    Ok(Some(certificate))
}

/// The configuration file is written with defaults when missing (README.md#running-it). With
/// `HDB_CONFIG` set it exists already (start-up refuses a missing one), so nothing is written
/// into the root beside it.
fn write_default_config(root: &std::path::Path, _tree: &ConfigTree) {
    let path = crate::config::file_path(root);
    if !path.exists() {
        if let Err(e) = std::fs::write(&path, crate::config::DEFAULT_CONFIG_YAML) {
            tracing::warn!("cannot write {}: {e}", path.display());
        }
    }
}

async fn core_main(
    ctx: CoreContext,
    shared: Arc<Shared>,
    ports: Arc<Vec<BoundPort>>,
    mqtt: Arc<mqtt::Mqtt>,
) {
    let core = ctx.core.0;
    let open = std::rc::Rc::new(std::cell::Cell::new(0usize));
    let registry = std::rc::Rc::new(Registry::new(
        shared.start_version,
        shared.pubsub[core].clone(),
    ));
    mqtt.start_core(core, &registry, &shared);
    let inbox = shared
        .inboxes
        .lock()
        .ok()
        .and_then(|mut i| i.get_mut(core).and_then(Option::take));
    match inbox {
        Some(inbox) => {
            spawn(pubsub::run_inbox(
                inbox,
                registry.clone(),
                shared.shutdown.clone(),
            ));
        }
        None => tracing::error!("core {core}: no event inbox; subscriptions here get no events"),
    }
    let realtime = std::rc::Rc::new(ws::Context {
        registry,
        resources: shared.resources.clone(),
        shutdown: shared.shutdown.clone(),
        web_socket: shared.web_socket,
        cors: shared.config.http.cors,
        cors_access_list: shared.config.http.cors_access_list.clone(),
    });
    let recorder = std::rc::Rc::new(std::cell::RefCell::new(
        crate::resource::analytics::Recorder::default(),
    ));
    if let Some(sender) = &shared.analytics {
        spawn(analytics::core_loop(
            shared.clone(),
            core,
            recorder.clone(),
            sender.clone(),
        ));
    }
    for port in ports.iter() {
        let std_listener = port
            .listeners
            .lock()
            .ok()
            .and_then(|mut l| l.get_mut(core).and_then(Option::take));
        let Some(std_listener) = std_listener else {
            tracing::error!("core {core}: no listener for {}", port.addr);
            continue;
        };
        let listener = match Listener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("core {core}: cannot adopt listener {}: {e}", port.addr);
                continue;
            }
        };
        let router = std::rc::Rc::new(Router::new(
            port.kind,
            core,
            shared.clone(),
            realtime.clone(),
            shared.analytics.is_some().then(|| recorder.clone()),
        ));
        spawn(accept_loop(
            listener,
            port.tls.clone(),
            router,
            shared.clone(),
            core,
            open.clone(),
        ));
    }
    // Reads between two commits share one LMDB read transaction; the heartbeat lets it go.
    crate::store::cache_reads_on_this_thread();
    spawn(heartbeat(shared.clone(), core));
    tracing::debug!("core {core} ready on CPU {}", ctx.cpu);
    shared.shutdown.wait().await;
    // Let this core's connections finish, MQTT ones too (their core kicks them at shutdown and
    // a v5 client gets DISCONNECT 0x8B); the main thread enforces the overall deadline.
    let mqtt_open = || {
        shared.stats[core]
            .mqtt_connections_open
            .load(Ordering::Relaxed)
    };
    while open.get() > 0 || mqtt_open() > 0 {
        tidepool_io::sleep(Duration::from_millis(10)).await;
    }
}

/// How often `tidepool dev` looks at the application folder.
const DEV_POLL: Duration = Duration::from_millis(300);

/// A cheap fingerprint of the application folder: every file's path, size and modification time.
fn folder_fingerprint(dir: &std::path::Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((folder, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.path());
        for entry in entries.into_iter().take(10_000) {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                if depth < 8 {
                    stack.push((path, depth + 1));
                }
                continue;
            }
            path.hash(&mut hasher);
            meta.len().hash(&mut hasher);
            meta.modified().ok().hash(&mut hasher);
        }
    }
    hasher.finish()
}

/// `tidepool dev`: re-applies the application's schema whenever its files change. A broken file
/// logs its error (file:line:column) and the last good state keeps serving. Runs on its own
/// thread: loading files and migrating tables block.
fn dev_watch(dir: PathBuf, resources: Arc<crate::resource::Resources>, shutdown: Shutdown) {
    let mut seen = folder_fingerprint(&dir);
    while !shutdown.is_triggered() {
        std::thread::sleep(DEV_POLL);
        let now = folder_fingerprint(&dir);
        if now == seen {
            continue;
        }
        seen = now;
        match crate::schema::load_app(&dir) {
            Err(e) => tracing::error!(
                "dev reload of {}: {e}; keeping the last good schema",
                dir.display()
            ),
            Ok(app) => match resources.reload_app(&app) {
                Ok(()) => {
                    tracing::info!(target: NOTIFY, "dev reload: applied {} tables from {}", app.tables.len(), dir.display())
                }
                Err(e) => tracing::error!(
                    "dev reload of {}: {e}; keeping the last good schema",
                    dir.display()
                ),
            },
        }
    }
}

/// How often each core proves it is still turning its event loop.
const HEARTBEAT: Duration = Duration::from_millis(250);

/// Also lets go of the core's cached read transactions each beat (`store/read.rs`): an old
/// snapshot is never held open longer than a beat.
async fn heartbeat(shared: Arc<Shared>, core: usize) {
    while !shared.shutdown.is_triggered() {
        let now = shared.started.elapsed().as_millis() as u64;
        shared.stats[core]
            .heartbeat_ms
            .store(now, Ordering::Relaxed);
        crate::store::release_cached_reads();
        if let Either::Right(()) = race(tidepool_io::sleep(HEARTBEAT), shared.shutdown.wait()).await
        {
            break;
        }
    }
    crate::store::release_cached_reads();
}

/// systemd's watchdog: WATCHDOG=1 every half interval, but only while every core's heartbeat is
/// fresh, so a wedged core gets the service restarted.
fn watchdog(shared: Arc<Shared>, interval: Duration) {
    let period = interval / 2;
    let stale_after = (interval / 2).max(HEARTBEAT * 4).as_millis() as u64;
    while !shared.shutdown.is_triggered() {
        std::thread::sleep(period);
        let now = shared.started.elapsed().as_millis() as u64;
        let wedged: Vec<usize> = shared
            .stats
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                now.saturating_sub(s.heartbeat_ms.load(Ordering::Relaxed)) > stale_after
            })
            .map(|(core, _)| core)
            .collect();
        if wedged.is_empty() {
            notify::send("WATCHDOG=1");
        } else {
            tracing::error!(
                "cores {wedged:?} missed their heartbeat; withholding the systemd watchdog ping"
            );
        }
    }
}

async fn accept_loop(
    listener: Listener,
    tls: Option<TlsAcceptor>,
    router: std::rc::Rc<Router>,
    shared: Arc<Shared>,
    core: usize,
    open: std::rc::Rc<std::cell::Cell<usize>>,
) {
    let stats = &shared.stats[core];
    loop {
        let accepted = match race(listener.accept(), shared.shutdown.wait()).await {
            Either::Left(result) => result,
            Either::Right(()) => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!("accept failed on core {core}: {e}");
                tidepool_io::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        stats.connections_accepted.fetch_add(1, Ordering::Relaxed);
        if open.get() >= shared.config.http.connections_per_core_max {
            stats.connections_refused.fetch_add(1, Ordering::Relaxed);
            // A plain-text 503 means nothing inside TLS: a secure port just closes.
            if tls.is_none() {
                spawn(refuse(stream));
            }
            continue;
        }
        open.set(open.get() + 1);
        stats.connections_open.fetch_add(1, Ordering::Relaxed);
        let router = router.clone();
        let shared = shared.clone();
        let open = open.clone();
        let tls = tls.clone();
        spawn(async move {
            match tls {
                None => serve_http(stream, peer, &router, &shared, core).await,
                // Boxed: a TLS connection's state (rustls, its handshake) is several KiB that
                // plain connections, sharing this task's type, would otherwise reserve too.
                Some(acceptor) => {
                    Box::pin(async {
                        let _ = stream.set_nodelay(true);
                        // The handshake gets the same bound as a request head, and shutdown ends it.
                        let handshake =
                            timeout(shared.limits.headers_timeout, acceptor.accept(stream));
                        match race(handshake, shared.shutdown.wait()).await {
                            Either::Left(Ok(Ok(tls_stream))) => {
                                serve_http(tls_stream, peer, &router, &shared, core).await
                            }
                            Either::Left(Ok(Err(e))) => {
                                tracing::debug!("TLS handshake with {peer} failed: {e}")
                            }
                            Either::Left(Err(_)) => {
                                tracing::debug!("TLS handshake with {peer} timed out")
                            }
                            Either::Right(()) => {}
                        }
                    })
                    .await
                }
            }
            open.set(open.get() - 1);
            shared.stats[core]
                .connections_open
                .fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// One HTTP connection, plain or TLS, with its core's settings and counters.
async fn serve_http<T: tidepool_io::Transport + Into<tidepool_io::AnyStream>>(
    stream: T,
    peer: SocketAddr,
    router: &Router,
    shared: &Shared,
    core: usize,
) {
    http::serve(
        stream,
        peer,
        router,
        &shared.limits,
        &shared.shutdown,
        &shared.in_flight,
        &shared.stats[core].http,
    )
    .await
}

/// Over `http.maxConnectionsPerCore`: answer 503 and close, without reading the request.
async fn refuse(mut stream: tidepool_io::Stream) {
    let mut resp = http::Response::new();
    resp.json_error(
        503,
        "Too many connections on this core (http.maxConnectionsPerCore)",
    );
    resp.header("Retry-After", "1");
    let mut out = Vec::with_capacity(256);
    http::encode_response(&mut out, &resp, false, true, false);
    let _ = stream.write_all(out).await;
    let _ = stream.shutdown_write().await;
}
