//! MQTT start-up: the `mqtt.network.port` and `mqtt.network.securePort` (TLS) listeners (one
//! SO_REUSEPORT socket per core, like the HTTP ports), each core's accept loops (the TLS
//! handshake happens there, bounded by the CONNECT timeout), and the interim fan-out of committed
//! changes to the cores' MQTT sessions.
//!
//! **Interim fan-out.** Until the real-time core (`src/pubsub/`) lands, [`InterimFanout`] is the
//! minimum needed for live events: the store's publisher sends every commit to every core's inbox
//! over a `tidepool_io::mesh`, and each core's dispatcher hands it to its MQTT sessions, which
//! match filters by a linear scan. It is meant to be replaced by pubsub's registry and fan-out.

use std::cell::RefCell;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidepool_io::{
    bind_listeners, mesh, race, spawn, timeout, Either, Inbox, Listener, MeshSender, ReadHalf,
    TlsAcceptor,
};

use super::RunError;
use crate::protocol::http::{Request, Response};
use crate::protocol::mqtt::conn::{self, MqttShared, Sessions};
use crate::protocol::ws;
use crate::store::Commit;

/// Commits queued per core inbox; past it a core misses that commit and a `warn` says so.
pub const FANOUT_QUEUE_MAX: usize = 4096;
/// Commits one dispatcher pass hands to sessions before yielding.
const DISPATCH_BATCH_MAX: usize = 256;

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
    shared: bool,
    tls: Option<TlsAcceptor>,
) -> Result<Option<MqttPort>, RunError> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let key = if tls.is_some() { "securePort" } else { "port" };
    let (listeners, bound) = bind_listeners(addr, cores, shared)
        .map_err(|e| RunError::Bind(format!("MQTT {key}: {e}")))?;
    Ok(Some(MqttPort {
        addr: bound,
        listeners: Mutex::new(listeners.into_iter().map(Some).collect()),
        tls,
    }))
}

/// The interim commit fan-out (see the module documentation).
pub struct InterimFanout {
    sender: MeshSender<Arc<Commit>>,
    inboxes: Mutex<Vec<Option<Inbox<Arc<Commit>>>>>,
}

impl InterimFanout {
    pub fn new(cores: usize) -> Self {
        let (sender, inboxes) = mesh(cores, FANOUT_QUEUE_MAX);
        InterimFanout {
            sender,
            inboxes: Mutex::new(inboxes.into_iter().map(Some).collect()),
        }
    }

    /// Called on the writer thread for each commit; never blocks.
    pub fn publish(&self, commit: Arc<Commit>) {
        for core in 0..self.sender.core_count() {
            if self.sender.send(core, commit.clone()).is_err() {
                tracing::warn!(target: "mqtt", "core {core}: change inbox full ({FANOUT_QUEUE_MAX}); a commit was not delivered to its MQTT subscribers");
            }
        }
    }

    fn take_inbox(&self, core: usize) -> Option<Inbox<Arc<Commit>>> {
        self.inboxes.lock().ok()?.get_mut(core)?.take()
    }
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
    fanout: &InterimFanout,
) {
    let sessions = Rc::new(Sessions::new(shared.start_version()));
    if let Some(inbox) = fanout.take_inbox(core) {
        spawn(dispatch_loop(inbox, sessions.clone(), shared.clone()));
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
            )),
            Err(e) => tracing::error!("core {core}: cannot adopt MQTT listener {}: {e}", port.addr),
        }
    }
}

async fn dispatch_loop(inbox: Inbox<Arc<Commit>>, sessions: Rc<Sessions>, shared: Arc<MqttShared>) {
    let mut batch = Vec::with_capacity(DISPATCH_BATCH_MAX);
    loop {
        match race(
            inbox.recv_batch(&mut batch, DISPATCH_BATCH_MAX),
            shared.shutdown.wait(),
        )
        .await
        {
            Either::Left(_) => {}
            Either::Right(()) => return,
        }
        for commit in batch.drain(..) {
            sessions.dispatch(&shared, &commit);
        }
    }
}

async fn accept_loop(
    listener: Listener,
    tls: Option<TlsAcceptor>,
    shared: Arc<MqttShared>,
    sessions: Rc<Sessions>,
    core: usize,
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
                    format_args!("core {core}: connection from {peer}"),
                );
                let (shared, sessions) = (shared.clone(), sessions.clone());
                match tls.clone() {
                    None => spawn(conn::serve(stream, peer, shared, sessions)),
                    Some(acceptor) => spawn(async move {
                        let _ = stream.set_nodelay(true);
                        // The handshake counts against the time CONNECT has to arrive in.
                        let handshake = timeout(conn::CONNECT_TIMEOUT, acceptor.accept(stream));
                        match race(handshake, shared.shutdown.wait()).await {
                            Either::Left(Ok(Ok(tls_stream))) => {
                                conn::serve(tls_stream, peer, shared, sessions).await
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

/// MQTT over WebSocket (SPEC §6.3): an upgrade on any path of an HTTP port asking for subprotocol
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
        conn::serve_split(
            ReadHalf::new(reader),
            writer,
            peer,
            identity,
            shared,
            sessions,
        )
        .await
    });
}

/// What `server::run` hands every core for MQTT.
pub struct Mqtt {
    pub port: Option<MqttPort>,
    pub secure_port: Option<MqttPort>,
    pub shared: Arc<MqttShared>,
    pub fanout: Arc<InterimFanout>,
}

impl Mqtt {
    /// Runs on every core, listeners or not: MQTT over WebSocket needs the sessions too.
    pub fn start_core(&self, core: usize) {
        let ports: Vec<&MqttPort> = self.port.iter().chain(&self.secure_port).collect();
        start_core(core, &ports, self.shared.clone(), &self.fanout);
    }
}

/// `mqtt.requireAuthentication` (default true), read from the configuration tree until `Config`
/// carries it.
pub fn require_authentication(tree: &crate::config::ConfigTree) -> bool {
    tree.get("mqtt.requireAuthentication")
        .and_then(|v| v.as_bool())
        .unwrap_or(true)
}
