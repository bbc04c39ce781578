//! What every core's MQTT connections share (docs/mqtt.md): the resources, limits from the
//! configuration, the connected client ids for takeover, the export names of tables, publish
//! and shared subscription groups.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tidepool_io::Shutdown;

use super::codec;
use super::connect::Kick;
use super::durable;
use super::general;
use super::share::Groups;
use super::sys::{self, CoreCounts, SysState};
use crate::resource::Resources;

/// Client id → the kick of the connection holding it (which also keeps that connection's Clean
/// Start, where it takes no room: an entry is 24 bytes, and every idle connection has one).
pub(super) type Clients = HashMap<Arc<str>, Arc<Kick>>;

/// What every core's MQTT connections share.
pub struct MqttShared {
    pub resources: Arc<Resources>,
    /// `http.maxBodySize` (docs/mqtt.md), capped at MQTT's own maximum.
    pub packet_bytes_max: usize,
    pub require_authentication: bool,
    pub shutdown: Shutdown,
    /// Connected client ids on any core, for takeover, with the Clean Start of the connection
    /// holding each. Touched at CONNECT and at the end of a connection only, never per publish.
    /// Keyed by the connection's own copy of its client id (one allocation per connection).
    pub(super) clients: Mutex<Clients>,
    /// Delayed wills waiting, by client id (see [`MqttShared::wait_will`]). Touched at CONNECT
    /// and at the end of a connection only; always locked after `clients`.
    pub(super) wills: Mutex<HashMap<String, Arc<PendingWill>>>,
    /// database → table → export name, to name topics of committed changes. Nested so a lookup
    /// per change borrows its names instead of building a key.
    pub(super) exports: HashMap<String, HashMap<String, String>>,
    pub(super) next_client: AtomicU64,
    /// A version at or above every commit made before the cores started: where each core's
    /// dispatch position starts (see [`Sessions::since`]).
    pub(super) start_version: f64,
    /// `mqtt.sessionQueueMax` (docs/configuration.md): messages a resumed durable session gets at most.
    pub session_queue_max: usize,
    /// Set once any session subscribed with Retain As Published: retained publishes carry their origin.
    pub(super) retain_as_published: AtomicBool,
    /// Shared subscription groups.
    pub(super) groups: Groups,
    /// `mqtt.generalTopics`: topics outside tables are served (see `general.rs`).
    pub general_topics: bool,
    /// `mqtt.maxKeepAlive` in seconds (0: none): a v5 client asking for more, or for no keep
    /// alive, is told this as Server Keep Alive (MQTT 5 §3.2.2.3.14) and held to it.
    pub keep_alive_max_s: u16,
    /// The empty export name general topics go by.
    pub(super) general_export: String,
    /// What `$SYS` topics report (see `sys.rs`).
    pub(super) sys: SysState,
    /// `mqtt.sysInterval` in seconds (0: `$SYS` topics are sent only at SUBSCRIBE).
    pub sys_interval_s: u64,
}

impl MqttShared {
    pub fn new(
        resources: Arc<Resources>,
        packet_bytes_max: usize,
        require_authentication: bool,
        shutdown: Shutdown,
    ) -> Self {
        let mut exports: HashMap<String, HashMap<String, String>> = HashMap::new();
        for t in &resources.app.tables {
            if let Some(name) = &t.export {
                exports
                    .entry(t.database.clone())
                    .or_default()
                    .insert(t.table.clone(), name.clone());
            }
        }
        MqttShared {
            // MQTT 5 allows Maximum Packet Size up to the remaining-length ceiling.
            packet_bytes_max: packet_bytes_max.min(codec::REMAINING_BYTES_MAX),
            require_authentication,
            shutdown,
            clients: Mutex::new(HashMap::new()),
            wills: Mutex::new(HashMap::new()),
            session_queue_max: resources
                .config_tree
                .get("mqtt.sessionQueueMax")
                .and_then(|v| v.as_u64())
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(durable::SESSION_QUEUE_MAX_DEFAULT),
            start_version: resources.store.clock().next(),
            retain_as_published: AtomicBool::new(false),
            groups: Groups::default(),
            general_export: String::new(),
            general_topics: resources
                .config_tree
                .get("mqtt.generalTopics")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            keep_alive_max_s: resources
                .config_tree
                .get("mqtt.maxKeepAlive")
                .and_then(|v| v.as_u64())
                .map_or(0, |n| u16::try_from(n).unwrap_or(u16::MAX)),
            sys: SysState::default(),
            sys_interval_s: resources
                .config_tree
                .get("mqtt.sysInterval")
                .and_then(|v| v.as_u64())
                .unwrap_or(sys::INTERVAL_DEFAULT_S),
            resources,
            exports,
            next_client: AtomicU64::new(1),
        }
    }

    /// A version from the store's clock, after every commit made so far (a shared group's change
    /// of members is stamped with it, see `share.rs`).
    pub(super) fn stamp(&self) -> f64 {
        self.resources.store.clock().next()
    }

    /// Where each core's dispatch position starts (see [`Sessions::new`]).
    pub fn start_version(&self) -> f64 {
        self.start_version
    }

    /// The export a table of `database` is published under; general topics' table is the
    /// export `""` (its ids are whole topics) when `mqtt.generalTopics` is on.
    pub(super) fn export_of(&self, database: &str, table: &str) -> Option<&String> {
        if self.general_topics && database == durable::SYSTEM && table == general::TABLE {
            return Some(&self.general_export);
        }
        self.exports.get(database)?.get(table)
    }

    /// A new core's message counts for `$SYS` (see [`Sessions::new`]).
    pub fn sys_core(&self) -> Arc<CoreCounts> {
        self.sys.core()
    }

    /// Clients with an accepted CONNECT now, on every core.
    pub(super) fn connected_clients(&self) -> usize {
        self.clients.lock().map_or(0, |c| c.len())
    }

    /// Registers `id` as connected by a CONNECT with Clean Start `clean`, kicking whoever held
    /// it (docs/mqtt.md takeover); returns the kicked connection's handle so the caller can wait
    /// for it to store its session. A delayed will of the client id waiting is settled: a
    /// connection resuming the session cancels it, one with Clean Start ends the session and so
    /// sends it now (MQTT 5 §3.1.3.2.2, [MQTT-3.1.3-9]).
    pub(super) fn claim(&self, id: &Arc<str>, kick: Arc<Kick>, clean: bool) -> Option<Arc<Kick>> {
        let Ok(mut clients) = self.clients.lock() else {
            return None;
        };
        // Read under this lock only (`wait_will`), so relaxed is enough.
        kick.set_clean(clean);
        let old = clients.insert(id.clone(), kick);
        if let Some(waiting) = self.wills.lock().ok().and_then(|mut w| w.remove(&**id)) {
            waiting.settle(clean);
        }
        drop(clients);
        if let Some(old) = &old {
            old.kick();
        }
        old
    }

    /// A connection that ended with a will delayed by its Will Delay Interval: the handle its
    /// timer waits on, or `Err(send_now)` when another connection already took the client id
    /// (a takeover): the will goes out now if that one has Clean Start, else never
    /// ([MQTT-3.1.2-8]: not when the new connection resumes the session and the delay is > 0).
    /// `kick`: the ending connection, still holding the client id unless taken over.
    pub(super) fn wait_will(&self, id: &str, kick: &Arc<Kick>) -> Result<Arc<PendingWill>, bool> {
        let Ok(clients) = self.clients.lock() else {
            return Err(true);
        };
        if let Some(holder) = clients.get(id) {
            if !Arc::ptr_eq(holder, kick) {
                return Err(holder.clean());
            }
        }
        let waiting = Arc::new(PendingWill::default());
        if let Ok(mut wills) = self.wills.lock() {
            if let Some(older) = wills.insert(id.to_string(), waiting.clone()) {
                older.settle(false);
            }
        }
        Ok(waiting)
    }

    /// The delayed will `waiting` is due (its delay passed, or the server is stopping): true
    /// when it is still to be sent, and it is forgotten.
    pub(super) fn will_due(&self, id: &str, waiting: &Arc<PendingWill>) -> bool {
        let _clients = self.clients.lock();
        if let Ok(mut wills) = self.wills.lock() {
            if wills.get(id).is_some_and(|w| Arc::ptr_eq(w, waiting)) {
                wills.remove(id);
            }
        }
        !waiting.cancelled.load(Ordering::Acquire)
    }

    pub(super) fn release(&self, id: &str, kick: &Arc<Kick>) {
        if let Ok(mut c) = self.clients.lock() {
            if c.get(id).is_some_and(|k| Arc::ptr_eq(k, kick)) {
                c.remove(id);
            }
        }
        kick.set_released();
    }
}

/// A will waiting out its Will Delay Interval after its connection ended.
#[derive(Default)]
pub(super) struct PendingWill {
    /// Woken when a new connection settles the will before the delay ran out.
    pub(super) settled: Kick,
    /// A new connection resumed the session: the will is never sent.
    cancelled: AtomicBool,
}

impl PendingWill {
    /// A new connection took the client id: with Clean Start the will goes now, else never.
    fn settle(&self, send: bool) {
        self.cancelled.store(!send, Ordering::Release);
        self.settled.kick();
    }
}
