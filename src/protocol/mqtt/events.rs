//! MQTT events (docs/mqtt.md "Events"): `connection` (a socket accepted), `connected` (CONNECT
//! accepted), `auth-failed` (CONNECT refused for its credentials) and `disconnected` (a session's
//! connection ended). Each is a log line that starts with the event's name (`connected` and
//! `disconnected` at the default level, limited per source: `logging.connections`), and a
//! process-wide counter that `/metrics` shows as `tidepool_mqtt_events_total{event="…"}`.
//!
//! Counting only: nothing here keeps per-client state.

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics::Exposition;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Connection,
    Connected,
    AuthFailed,
    Disconnected,
}

impl Event {
    const ALL: [Event; 4] = [
        Event::Connection,
        Event::Connected,
        Event::AuthFailed,
        Event::Disconnected,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Event::Connection => "connection",
            Event::Connected => "connected",
            Event::AuthFailed => "auth-failed",
            Event::Disconnected => "disconnected",
        }
    }

    fn index(self) -> usize {
        match self {
            Event::Connection => 0,
            Event::Connected => 1,
            Event::AuthFailed => 2,
            Event::Disconnected => 3,
        }
    }
}

static COUNTS: [AtomicU64; 4] = [
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
];

/// Logs `event` (`<name>: <detail>`) and counts it. `connected` and `disconnected` are
/// connection lines at the default level, limited per source address
/// ([`crate::logging::connection_event`]); `auth-failed` is logged by the login itself as a
/// failed login, so its line here stays at `info`, as does `connection`.
pub fn record(event: Event, source: IpAddr, detail: fmt::Arguments<'_>) {
    if let Some(c) = COUNTS.get(event.index()) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    match event {
        Event::Connected | Event::Disconnected => crate::logging::connection_event(
            source,
            format_args!("mqtt {}: {detail}", event.name()),
        ),
        Event::Connection | Event::AuthFailed => {
            tracing::info!(target: "mqtt", "{}: {detail}", event.name())
        }
    }
}

/// How many of `event` happened in this process.
pub fn count(event: Event) -> u64 {
    COUNTS
        .get(event.index())
        .map_or(0, |c| c.load(Ordering::Relaxed))
}

/// Appends the event counters to a `/metrics` exposition.
pub fn render(e: &mut Exposition) {
    const NAME: &str = "tidepool_mqtt_events_total";
    e.family(
        NAME,
        "counter",
        "MQTT events: connection, connected, auth-failed, disconnected.",
    );
    for event in Event::ALL {
        e.sample(NAME, &[("event", event.name())], count(event) as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(event: Event, name: &str) {
        let before = count(event);
        record(
            event,
            std::net::Ipv4Addr::LOCALHOST.into(),
            format_args!("test"),
        );
        assert_eq!((event.name(), count(event)), (name, before + 1));
    }

    #[test]
    fn events_are_named_and_counted() {
        check(Event::Connection, "connection");
        check(Event::Connected, "connected");
        check(Event::AuthFailed, "auth-failed");
        check(Event::Disconnected, "disconnected");
        let mut e = Exposition::new();
        render(&mut e);
        assert!(e
            .finish()
            .contains("tidepool_mqtt_events_total{event=\"auth-failed\"}"));
    }
}
