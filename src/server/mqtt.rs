//! MQTT start-up: the `mqtt.network.port` and `mqtt.network.securePort` (TLS) listeners (one
//! SO_REUSEPORT socket per core, like the HTTP ports), each core's accept loops (the TLS
//! handshake happens there, bounded by the CONNECT timeout), and the hand-off of committed changes
//! to the cores' MQTT sessions.
//!
//! **Live events.** MQTT sessions take commits from the same per-core inbox as WebSocket and SSE
//! subscriptions: each core's `pubsub::Registry` calls a listener with every commit it dispatches,
//! in order, and the listener hands it to that core's [`Sessions`], which apply MQTT's own rules
//! (one delivery per session at the highest granted QoS, durable positions, shared groups).

use std::cell::RefCell;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidepool_io::{bind_listeners, race, spawn, timeout, Either, Listener, ReadHalf, TlsAcceptor};

use super::RunError;
use crate::protocol::http::{Request, Response};
use crate::protocol::mqtt::conn::{self, MqttShared, Sessions};
use crate::protocol::ws;
use crate::pubsub::Registry;
use crate::store::Commit;

pub struct MqttPort {
    pub addr: SocketAddr,
    listeners: Mutex<Vec<Option<StdTcpListener>>>,
    /// Set on the secure port: every connection starts with a TLS handshake.
    tls: Option<TlsAcceptor>,
}

/// Binds `mqtt.network.port` (or, with `tls`, `mqtt.network.securePort`) once per core, unless
/// it is null.
pub fn bind(
    addr: Option<SocketAddr>,
    cores: usize,
    config: &crate::config::Config,
    tls: Option<TlsAcceptor>,
) -> Result<Option<MqttPort>, RunError> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let key = if tls.is_some() { "securePort" } else { "port" };
    let (listeners, bound) = bind_listeners(
        addr,
        cores,
        config.share_ports,
        config.http.port_wait_after_crash,
    )
    .map_err(|e| RunError::Bind(format!("MQTT {key}: {e}")))?;
    Ok(Some(MqttPort {
        addr: bound,
        listeners: Mutex::new(listeners.into_iter().map(Some).collect()),
        tls,
    }))
}

thread_local! {
    /// This core's MQTT state, for connections that arrive through the HTTP ports (MQTT over
    /// WebSocket): set once by [`start_core`] on the core's own thread.
    static CORE: RefCell<Option<(Arc<MqttShared>, Rc<Sessions>)>> = const { RefCell::new(None) };
}

/// Starts this core's MQTT accept loops and change dispatcher.
pub fn start_core(
    core: usize,
    ports: &[&MqttPort],
    shared: Arc<MqttShared>,
    registry: &Registry,
    server: &Arc<super::Shared>,
) {
    let sessions = Rc::new(Sessions::new(shared.clone(), registry.counters().clone()));
    {
        let (shared, sessions) = (shared.clone(), sessions.clone());
        registry.add_listener(Box::new(move |commit: &Arc<Commit>| {
            sessions.dispatch(&shared, commit);
        }));
    }
    spawn(keep_alive_loop(sessions.clone(), shared.clone()));
    if shared.sys_interval_s > 0 {
        spawn(sys_loop(sessions.clone(), shared.clone()));
    }
    CORE.with(|c| *c.borrow_mut() = Some((shared.clone(), sessions.clone())));
    for port in ports {
        let std_listener = port
            .listeners
            .lock()
            .ok()
            .and_then(|mut l| l.get_mut(core).and_then(Option::take));
        let Some(std_listener) = std_listener else {
            tracing::error!("core {core}: no MQTT listener for {}", port.addr);
            continue;
        };
        match Listener::from_std(std_listener) {
            Ok(listener) => spawn(accept_loop(
                listener,
                port.tls.clone(),
                shared.clone(),
                sessions.clone(),
                core,
                server.clone(),
            )),
            Err(e) => tracing::error!("core {core}: cannot adopt MQTT listener {}: {e}", port.addr),
        }
    }
}

/// Closes this core's connections whose keep-alive passed (one timer per core, not one per
/// connection).
async fn keep_alive_loop(sessions: Rc<Sessions>, shared: Arc<MqttShared>) {
    loop {
        match race(
            tidepool_io::sleep(conn::KEEP_ALIVE_SWEEP),
            shared.shutdown.wait(),
        )
        .await
        {
            Either::Left(()) => sessions.sweep_keep_alive(),
            Either::Right(()) => {
                // The connections' read loops do not wait on the shutdown signal themselves.
                sessions.stop_all();
                return;
            }
        }
    }
}

/// Sends this core's `$SYS` subscribers the current values every `mqtt.sysInterval` seconds
/// (docs/mqtt.md#sys-topics).
async fn sys_loop(sessions: Rc<Sessions>, shared: Arc<MqttShared>) {
    let every = Duration::from_secs(shared.sys_interval_s);
    loop {
        match race(tidepool_io::sleep(every), shared.shutdown.wait()).await {
            Either::Left(()) => sessions.publish_sys(&shared),
            Either::Right(()) => return,
        }
    }
}

async fn accept_loop(
    listener: Listener,
    tls: Option<TlsAcceptor>,
    shared: Arc<MqttShared>,
    sessions: Rc<Sessions>,
    core: usize,
    server: Arc<super::Shared>,
) {
    loop {
        let accepted = match race(listener.accept(), shared.shutdown.wait()).await {
            Either::Left(result) => result,
            Either::Right(()) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                crate::protocol::mqtt::events::record(
                    crate::protocol::mqtt::events::Event::Connection,
                    peer.ip(),
                    format_args!("core {core}: connection from {peer}"),
                );
                let (shared, sessions) = (shared.clone(), sessions.clone());
                let open = OpenConnection::new(&server, core);
                match tls.clone() {
                    // The connection's future is spawned as it is, not awaited inside another:
                    // an idle connection's task is only that future (docs/design.md).
                    None => spawn(conn::serve(stream, peer, shared, sessions, open)),
                    Some(acceptor) => spawn(async move {
                        let _ = stream.set_nodelay(true);
                        // The handshake counts against the time CONNECT has to arrive in.
                        let handshake = timeout(conn::CONNECT_TIMEOUT, acceptor.accept(stream));
                        match race(handshake, shared.shutdown.wait()).await {
                            Either::Left(Ok(Ok(tls_stream))) => {
                                conn::serve(tls_stream, peer, shared, sessions, open).await
                            }
                            Either::Left(Ok(Err(e))) => {
                                tracing::debug!(target: "mqtt", "TLS handshake with {peer} failed: {e}")
                            }
                            Either::Left(Err(_)) => {
                                tracing::debug!(target: "mqtt", "TLS handshake with {peer} timed out")
                            }
                            Either::Right(()) => {}
                        }
                    }),
                };
            }
            Err(e) => {
                tracing::warn!("MQTT accept failed on core {core}: {e}");
                tidepool_io::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

thread_local! {
    /// Where this core counts its open MQTT connections (set by [`start_core`]): an
    /// [`OpenConnection`] finds it here, so it holds nothing itself and the box a connection
    /// keeps it in allocates nothing (docs/design.md, "Idle connections").
    static OPEN: RefCell<Option<(Arc<super::Shared>, usize)>> = const { RefCell::new(None) };
}

/// Counts one MQTT connection in its core's `mqtt_connections_open` for as long as it lives.
/// Made and dropped on the core that accepted the connection (a connection never moves).
struct OpenConnection;

impl OpenConnection {
    fn new(server: &Arc<super::Shared>, core: usize) -> Self {
        OPEN.with(|open| {
            open.borrow_mut()
                .get_or_insert_with(|| (server.clone(), core))
                .0
                .stats[core]
                .mqtt_connections_open
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        });
        OpenConnection
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        // `try_with`: a connection dropped as the core's thread ends finds no count to keep.
        let _ = OPEN.try_with(|open| {
            if let Some((server, core)) = &*open.borrow() {
                server.stats[*core]
                    .mqtt_connections_open
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
}

/// MQTT over WebSocket (docs/mqtt.md): an upgrade on any path of an HTTP port asking for subprotocol
/// `mqtt`. Answers 101 with `mqtt` echoed and hands the connection (plain or TLS) to an MQTT
/// session reading through [`ws::transport`]; with `mqtt.webSocket: false`, 404 without upgrading.
/// `caller`: who the upgrade request authenticated as; it counts when CONNECT names no user.
pub fn web_socket_upgrade(
    req: &Request<'_>,
    resp: &mut Response,
    caller: Result<&crate::resource::Caller, &crate::auth::AuthError>,
) {
    let Some((shared, sessions)) = CORE.with(|c| c.borrow().clone()) else {
        resp.json_error(503, "MQTT is not running on this core");
        return;
    };
    if !shared.resources.config.mqtt_web_socket {
        resp.json_error(
            404,
            "MQTT over WebSocket is disabled (mqtt.webSocket: false)",
        );
        return;
    }
    if !ws::handshake(req, resp, Some("mqtt")) {
        return;
    }
    let peer = req.peer;
    let identity = conn::TransportIdentity {
        certificate_cn: None,
        upgrade_caller: caller.ok().filter(|c| !c.is_anonymous()).cloned(),
    };
    // A frame may hold a whole packet and the start of the next.
    let payload_bytes_max = shared
        .packet_bytes_max
        .saturating_add(ws::frame::PAYLOAD_BYTES_MAX);
    resp.take_over(move |up| async move {
        let (reader, writer) = ws::transport::split(up, payload_bytes_max);
        let start = conn::Start {
            peer,
            identity,
            shared,
            sessions,
        };
        conn::serve_split(ReadHalf::new(reader), writer, start, ()).await
    });
}

/// What `server::run` hands every core for MQTT.
pub struct Mqtt {
    pub port: Option<MqttPort>,
    pub secure_port: Option<MqttPort>,
    pub shared: Arc<MqttShared>,
}

impl Mqtt {
    /// Runs on every core, listeners or not: MQTT over WebSocket needs the sessions too.
    pub fn start_core(&self, core: usize, registry: &Registry, server: &Arc<super::Shared>) {
        let ports: Vec<&MqttPort> = self.port.iter().chain(&self.secure_port).collect();
        start_core(core, &ports, self.shared.clone(), registry, server);
    }
}

/// `mqtt.requireAuthentication` (default true), read from the configuration tree until `Config`
/// carries it.
pub fn require_authentication(tree: &crate::config::ConfigTree) -> bool {
    tree.get("mqtt.requireAuthentication")
        .and_then(|v| v.as_bool())
        .unwrap_or(true)
}
