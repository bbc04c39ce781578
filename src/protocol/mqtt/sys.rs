//! Mosquitto's `$SYS/broker/...` topics for the super user (docs/mqtt.md#sys-topics): each a
//! retained message sent at once on SUBSCRIBE, then again every `mqtt.sysInterval` seconds.
//!
//! The values are not stored: they are read when sent. Messages received and sent are counted
//! per core (each [`CoreCounts`] written only by its core) and summed when read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::dispatch::Sessions;
use super::outbound::{Conn, Outbound};
use super::props::Properties;
use super::shared::MqttShared;
use super::topic::general_matches;

/// `mqtt.sysInterval` when not set (Mosquitto's `sys_interval`), in seconds.
pub const INTERVAL_DEFAULT_S: u64 = 10;

/// The topics published, in the order they are sent.
pub const TOPICS: [&str; 5] = [
    "$SYS/broker/clients/connected",
    "$SYS/broker/uptime",
    "$SYS/broker/version",
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
];

/// Whether a filter is for `$SYS` topics (those only the super user may subscribe to).
pub fn is_sys(filter: &str) -> bool {
    filter == "$SYS" || filter.starts_with("$SYS/")
}

/// One core's message counts (PUBLISH packets in and out).
#[derive(Debug, Default)]
pub struct CoreCounts {
    pub received: AtomicU64,
    pub sent: AtomicU64,
}

impl CoreCounts {
    pub fn count_received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }
}

thread_local! {
    /// This core's counts ([`count_here`]): a connection counts what it sends here, rather than
    /// holding a handle of its own (8 bytes in every connection's state, docs/design.md "Idle
    /// connections").
    static CORE_COUNTS: std::cell::RefCell<Option<Arc<CoreCounts>>> =
        const { std::cell::RefCell::new(None) };
}

/// Makes `counts` this core's (its sessions start, see `Sessions::new`).
pub(super) fn count_here(counts: Arc<CoreCounts>) {
    CORE_COUNTS.with(|c| *c.borrow_mut() = Some(counts));
}

/// Counts one PUBLISH sent on this core.
pub(super) fn count_sent() {
    CORE_COUNTS.with(|c| {
        if let Some(counts) = c.borrow().as_ref() {
            counts.count_sent();
        }
    });
}

/// What the `$SYS` values are read from, shared by every core.
pub struct SysState {
    started: Instant,
    /// Every core's counts (one entry per core, added once at its start). The lock is taken
    /// when a core starts and when `$SYS` values are read (every `mqtt.sysInterval`, or at a
    /// `$SYS` SUBSCRIBE), never per publish: each core counts in its own atomics.
    cores: Mutex<Vec<Arc<CoreCounts>>>,
}

impl Default for SysState {
    fn default() -> Self {
        SysState {
            started: Instant::now(),
            cores: Mutex::new(Vec::new()),
        }
    }
}

impl SysState {
    /// A new core's counts, registered for the sums.
    pub fn core(&self) -> Arc<CoreCounts> {
        let counts = Arc::new(CoreCounts::default());
        if let Ok(mut cores) = self.cores.lock() {
            cores.push(counts.clone());
        }
        counts
    }

    fn sum(&self, f: impl Fn(&CoreCounts) -> u64) -> u64 {
        self.cores
            .lock()
            .map(|cores| cores.iter().map(|c| f(c)).sum())
            .unwrap_or(0)
    }

    /// The `$SYS` topics `filter` matches, with their values now (`connected`: clients with an
    /// accepted CONNECT, on every core).
    pub fn values(&self, filter: &str, connected: usize) -> Vec<(&'static str, String)> {
        TOPICS
            .iter()
            .filter(|t| general_matches(filter, t))
            .map(|&t| {
                let value = match t {
                    "$SYS/broker/clients/connected" => connected.to_string(),
                    "$SYS/broker/uptime" => {
                        format!("{} seconds", self.started.elapsed().as_secs())
                    }
                    "$SYS/broker/version" => {
                        format!("tidepool version {}", env!("CARGO_PKG_VERSION"))
                    }
                    "$SYS/broker/messages/received" => {
                        self.sum(|c| c.received.load(Ordering::Relaxed)).to_string()
                    }
                    _ => self.sum(|c| c.sent.load(Ordering::Relaxed)).to_string(),
                };
                (t, value)
            })
            .collect()
    }
}

impl Conn {
    /// Sends the `$SYS` topics `filters` match, each once, at QoS 0 (`retain`: the values sent
    /// at SUBSCRIBE; the periodic ones are live messages).
    pub(super) fn send_sys(&self, shared: &MqttShared, filters: &[String], retain: bool) {
        if filters.is_empty() {
            return;
        }
        let connected = shared.connected_clients();
        let mut sent: Vec<&str> = Vec::new();
        for filter in filters {
            for (topic, value) in shared.sys.values(filter, connected) {
                if sent.contains(&topic) {
                    continue;
                }
                sent.push(topic);
                self.publish(Outbound {
                    topic: topic.to_string(),
                    qos: 0,
                    retain,
                    body: value.into_bytes(),
                    content_type: None,
                    event: None,
                    resend_id: None,
                    properties: Properties::default(),
                });
            }
        }
    }
}

impl Sessions {
    /// Sends every `$SYS` subscriber of this core the current values (every `mqtt.sysInterval`).
    pub fn publish_sys(&self, shared: &MqttShared) {
        let conns: Vec<_> = self
            .conns
            .borrow()
            .iter()
            .filter_map(std::rc::Weak::upgrade)
            .collect();
        for conn in conns {
            let filters = match conn.extras_if_any() {
                Some(e) => e.sys_subs.borrow().clone(),
                None => continue,
            };
            conn.send_sys(shared, &filters, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_select_sys_topics() {
        let state = SysState::default();
        let core = state.core();
        core.count_sent();
        core.count_sent();
        state.core().count_sent();
        let all = state.values("$SYS/#", 7);
        assert_eq!(all.len(), TOPICS.len());
        assert_eq!(all[0], ("$SYS/broker/clients/connected", "7".to_string()));
        assert_eq!(all[4], ("$SYS/broker/messages/sent", "3".to_string()));
        assert_eq!(state.values("$SYS/broker/messages/+", 0).len(), 2);
        assert!(state.values("#", 0).is_empty());
        assert!(is_sys("$SYS/#") && is_sys("$SYS") && !is_sys("$SYSX/a") && !is_sys("#"));
    }
}
