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

/// What a wait for the next packet answers to besides the client's bytes (see [`read_packet`]).
pub(super) trait Waiting {
    /// Completes when the wait is to end without a packet.
    fn stopped(&self) -> impl Future<Output = ReadError> + '_;
    /// Bytes came from the client (keep-alive).
    fn heard(&self) {}
    /// What the read half holds while it waits (`/health?verbose` `mqtt_buffer_bytes`).
    fn holding(&self, _bytes: usize) {}
}

/// A connection its core knows of: its state is told when bytes arrive and what the read half
/// holds, and a kick ends the wait (takeover, keep-alive, an outbound bound, or the core's
/// shutdown pass, [`Sessions::stop_all`](super::dispatch::Sessions::stop_all)). Not the
/// shutdown signal itself: registering a waiter there would cost every idle connection a slot.
impl Waiting for &Conn {
    fn stopped(&self) -> impl Future<Output = ReadError> + '_ {
        kicked(&self.kick)
    }

    fn heard(&self) {
        self.heard_ms.set(millis());
    }

    fn holding(&self, bytes: usize) {
        self.read_held.set(u32::try_from(bytes).unwrap_or(u32::MAX));
    }
}

/// A connection its core does not know of (before CONNECT, and in the drain at its end): its
/// kick or the shutdown signal ends the wait.
#[derive(Clone, Copy)]
pub(super) struct Unknown<'a> {
    pub(super) kick: &'a Kick,
    pub(super) shutdown: &'a Shutdown,
}

impl Waiting for Unknown<'_> {
    fn stopped(&self) -> impl Future<Output = ReadError> + '_ {
        kicked_or_shutdown(self.kick, self.shutdown)
    }
}

/// Reads until one whole packet is buffered, then decodes it. Bytes after it stay buffered in
/// the read half. `waiting` is told when bytes arrive and what the read half holds while it
/// waits, and says what else ends a wait (see [`Waiting`]).
///
/// Not an `async fn`, which would keep its arguments twice: an idle connection waits here. What
/// the future keeps beside the wait is as narrow as it can be (the packet bound in 4 bytes; the
/// connection's state, not a closure beside it).
#[allow(clippy::manual_async_fn)]
pub(super) fn read_packet<'a, R: ReadBytes, S: Waiting + 'a>(
    reader: &'a mut ReadHalf<R>,
    packet_bytes_max: usize,
    level: Level,
    waiting: S,
) -> impl Future<Output = Result<Packet, ReadError>> + 'a {
    // At most `codec::REMAINING_BYTES_MAX` (see `MqttShared::new`), well within 32 bits.
    let packet_bytes_max = u32::try_from(packet_bytes_max).unwrap_or(u32::MAX);
    async move {
        loop {
            let buf = reader.buffered();
            match codec::check(buf, packet_bytes_max as usize) {
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
            waiting.holding(reader.held_while_waiting());
            match race(reader.fill(), waiting.stopped()).await {
                Either::Left(Ok(0)) | Either::Left(Err(_)) => return Err(ReadError::Closed),
                Either::Left(Ok(_)) => waiting.heard(),
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

/// What ends the wait for the next packet of a connection its core knows of (see
/// [`Waiting`] for `&Conn`). A plain future (a reference): an idle connection waits on it.
fn kicked(kick: &Kick) -> impl Future<Output = ReadError> + '_ {
    std::future::poll_fn(|cx| kick.poll_kicked(cx).map(|()| ReadError::Kicked))
}

/// What ends the wait for a packet before the core knows of the connection (CONNECT), and
/// after (the drain at its end): a kick or the shutdown signal.
async fn kicked_or_shutdown(kick: &Kick, shutdown: &Shutdown) -> ReadError {
    match race(kick.wait(), shutdown.wait()).await {
        Either::Left(()) => ReadError::Kicked,
        Either::Right(()) => ReadError::Shutdown,
    }
}
