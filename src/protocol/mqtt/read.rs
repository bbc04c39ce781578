//! Reading one MQTT packet at a time from a connection's read half (docs/design.md, "Idle
//! connections"): the wait an idle connection sits in, with what ends it (a kick from its core,
//! or the shutdown signal before the core knows of it), and the connection's 4-byte clock.

use std::future::Future;
use std::time::Instant;

use tidepool_io::{race, Either, ReadBytes, ReadHalf, Shutdown};

use super::codec::{self, DecodeError, Level, Packet};
use super::connect::Kick;
use super::outbound::Conn;

pub(super) enum ReadError {
    Closed,
    Decode(DecodeError),
    Kicked,
    Shutdown,
}

impl ReadError {
    /// What happened, for the log line of a connection that ended before its CONNECT.
    pub(super) fn before_connect(&self) -> String {
        match self {
            ReadError::Closed => "the client closed the connection".into(),
            ReadError::Decode(e) => format!("malformed packet ({e:?})"),
            ReadError::Kicked => "taken over".into(),
            ReadError::Shutdown => "server shutdown".into(),
        }
    }
}

/// Reads until one whole packet is buffered, then decodes it. Bytes after it stay buffered in
/// the read half. `conn`, once there is one, is told when bytes arrive (keep-alive) and what
/// the read half holds while it waits (`/health?verbose` `mqtt_buffer_bytes`). `stop` makes
/// what else ends a wait: [`kicked`] for a connection its core knows of (the core's shutdown
/// kicks those, see [`Sessions::stop_all`](super::dispatch::Sessions::stop_all)), [`kicked_or_shutdown`] before that.
///
/// Not an `async fn`, which would keep its arguments twice: an idle connection waits here.
#[allow(clippy::manual_async_fn)]
pub(super) fn read_packet<'a, R: ReadBytes, S: Future<Output = ReadError> + 'a>(
    reader: &'a mut ReadHalf<R>,
    packet_bytes_max: usize,
    level: Level,
    conn: Option<&'a Conn>,
    stop: impl Fn() -> S + 'a,
) -> impl Future<Output = Result<Packet, ReadError>> + 'a {
    async move {
        loop {
            let buf = reader.buffered();
            match codec::check(buf, packet_bytes_max) {
                Ok(Some(len)) => {
                    let packet = codec::decode(buf.get(..len).unwrap_or_default(), level)
                        .map_err(ReadError::Decode);
                    buf.drain(..len);
                    return packet;
                }
                Ok(None) => {}
                Err(e) => return Err(ReadError::Decode(e)),
            }
            // Keep-alive expiry (the core's sweep), takeover and shutdown all arrive as a kick or the
            // shutdown signal: no timer per connection, so an idle one costs no timer's memory. A
            // read dropped on either loses nothing (the read half keeps it).
            if let Some(conn) = conn {
                let held = reader.held_while_waiting();
                conn.read_held.set(u32::try_from(held).unwrap_or(u32::MAX));
            }
            match race(reader.fill(), stop()).await {
                Either::Left(Ok(0)) | Either::Left(Err(_)) => return Err(ReadError::Closed),
                Either::Left(Ok(_)) => {
                    if let Some(conn) = conn {
                        conn.heard_ms.set(millis());
                    }
                }
                Either::Right(e) => return Err(e),
            }
        }
    }
}

/// Milliseconds since the first call, wrapping every 49.7 days: when a connection was last heard
/// from, in 4 bytes instead of an `Instant`'s 16 (every idle connection keeps one). Differences
/// are taken with `wrapping_sub`, right for any span under the wrap (a keep-alive is at most
/// 65,535 × 1.5 s, and the sweep looks every [`KEEP_ALIVE_SWEEP`](super::conn::KEEP_ALIVE_SWEEP)).
pub(super) fn millis() -> u32 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    // Truncation intended: the count wraps.
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u32
}

/// What ends the wait for the next packet of a connection its core knows of: a kick (takeover,
/// keep-alive, an outbound bound, or the core's shutdown pass, [`Sessions::stop_all`](super::dispatch::Sessions::stop_all)). Not the
/// shutdown signal itself: registering a waiter there would cost every idle connection a slot.
pub(super) fn kicked(kick: &Kick) -> impl Future<Output = ReadError> + '_ {
    std::future::poll_fn(|cx| kick.poll_kicked(cx).map(|()| ReadError::Kicked))
}

/// What ends the wait for a packet before the core knows of the connection (CONNECT), and
/// after (the drain at its end): a kick or the shutdown signal.
pub(super) async fn kicked_or_shutdown(kick: &Kick, shutdown: &Shutdown) -> ReadError {
    match race(kick.wait(), shutdown.wait()).await {
        Either::Left(()) => ReadError::Kicked,
        Either::Right(()) => ReadError::Shutdown,
    }
}
