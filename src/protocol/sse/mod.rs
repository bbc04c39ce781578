//! Server-Sent Events (docs/realtime.md): `GET /T/<id>` or `/T/` with `Accept: text/event-stream`.
//!
//! Answers 200 `text/event-stream` (no length; the stream ends when the client leaves or the
//! server stops) and takes the connection over: each event is one `data:` line with the
//! WebSocket object (JSON), an `id:` line with its version and a blank line; a `:` comment every
//! 30 s keeps proxies from timing out and finds departed clients. `Last-Event-ID` resumes like
//! `startTime`. Subscriptions go through `pubsub`; this module never touches storage itself.

use std::time::{Duration, Instant};

use tidepool_io::{race, timeout, Either, Shutdown};

use crate::auth::AuthError;
use crate::protocol::http::{Method, Request, Response, Upgraded};
use crate::protocol::ws::{self, Context};
use crate::pubsub::{Format, Overflow, Sink, Subscription};
use crate::resource::Caller;

/// A keep-alive comment goes out after this long without an event (docs/realtime.md).
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Events written per batch.
const WRITE_BATCH_EVENTS_MAX: usize = 256;

/// Whether `req` asks for an event stream.
pub fn is_event_stream(req: &Request<'_>) -> bool {
    req.method == Method::Get
        && req
            .header_str("accept")
            .is_some_and(|a| a.contains("text/event-stream"))
}

/// Serves an event-stream request. Returns false when the path is not under an export.
/// `caller` is the request's authentication: refusals are ordinary 401/403 answers before any
/// streaming (docs/realtime.md); a role with attribute restrictions receives trimmed events.
pub fn accept(
    ctx: &Context,
    req: &Request<'_>,
    resp: &mut Response,
    caller: Result<&Caller, &AuthError>,
) -> bool {
    let mut target = match ws::target(&ctx.resources, req.path, req.query) {
        Ok(Some(t)) => t,
        Ok(None) => return false,
        Err((status, message)) => {
            resp.json_error(status, &message);
            return true;
        }
    };
    let readable = match ws::authorize(&ctx.resources, caller, &target) {
        Ok(r) => r,
        Err(refusal) => {
            refusal.respond(resp);
            return true;
        }
    };
    if let Some(last) = req.header_str("last-event-id") {
        match last.trim().parse::<f64>() {
            Ok(v) if v.is_finite() => {
                target.options.start_time = Some(v);
                target.options.previous_count = None;
            }
            _ => {
                resp.json_error(400, "Last-Event-ID is not a version");
                return true;
            }
        }
    }
    let sink = Sink::restricted(
        Format::Json,
        Overflow::DropOldest,
        ctx.registry.counters().clone(),
        readable,
    );
    let subscription = match ws::subscribe(ctx, target, &sink) {
        Ok(s) => s,
        Err((status, message)) => {
            resp.json_error(status, &message);
            return true;
        }
    };
    resp.status = 200;
    resp.header("Content-Type", "text/event-stream");
    resp.header("Cache-Control", "no-cache");
    if ctx.cors {
        if let Some(origin) = req.header_str("origin") {
            let allowed = ctx
                .cors_access_list
                .as_ref()
                .is_none_or(|list| list.iter().any(|o| o == origin || o == "*"));
            if allowed {
                resp.header("Access-Control-Allow-Origin", origin);
                resp.header("Access-Control-Allow-Credentials", "true");
                resp.header("Vary", "Origin");
            }
        }
    }
    let shutdown = ctx.shutdown.clone();
    resp.take_over(move |up| serve(up, sink, subscription, shutdown));
    true
}

/// Appends one event in SSE framing.
pub fn write_event(json: &[u8], version: f64, out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\nid: ");
    crate::value::json::write_float(version, out);
    out.extend_from_slice(b"\n\n");
}

/// Streams events until the client leaves (a read returns end-of-stream or a write fails) or
/// shutdown. Anything the client sends is read and discarded.
pub async fn serve(up: Upgraded, sink: Sink, subscription: Subscription, shutdown: Shutdown) {
    let _subscription = subscription;
    let Upgraded { mut stream, .. } = up;
    let mut wbuf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut rbuf: Vec<u8> = Vec::with_capacity(512);
    let mut batch = Vec::with_capacity(WRITE_BATCH_EVENTS_MAX);
    let mut wrote = Instant::now();
    loop {
        batch.clear();
        sink.pop_batch(&mut batch, WRITE_BATCH_EVENTS_MAX);
        for event in &batch {
            write_event(&sink.encoded(event), event.version(), &mut wbuf);
        }
        batch.clear();
        if sink.failure().is_some() {
            // The state could not be read in full (logged): end the stream rather than leave a
            // gap; the client reconnects.
            let _ = stream.write_all(wbuf).await;
            let _ = stream.shutdown_write().await;
            return;
        }
        if wrote.elapsed() >= KEEP_ALIVE_INTERVAL && wbuf.is_empty() {
            wbuf.extend_from_slice(b":\n\n");
        }
        if !wbuf.is_empty() {
            match race(stream.write_all(std::mem::take(&mut wbuf)), shutdown.wait()).await {
                Either::Left((Ok(()), returned)) => {
                    wbuf = returned;
                    wbuf.clear();
                    wrote = Instant::now();
                }
                Either::Left((Err(_), _)) | Either::Right(()) => return,
            }
            if !sink.is_empty() {
                continue;
            }
        }
        if shutdown.is_triggered() {
            let _ = stream.shutdown_write().await;
            return;
        }
        let until_keep_alive = KEEP_ALIVE_INTERVAL.saturating_sub(wrote.elapsed());
        rbuf.clear();
        let wake = race(
            race(sink.ready(), shutdown.wait()),
            timeout(
                until_keep_alive,
                stream.read_append(std::mem::take(&mut rbuf), 512),
            ),
        )
        .await;
        match wake {
            Either::Left(Either::Left(())) => {}
            Either::Left(Either::Right(())) => {
                let _ = stream.shutdown_write().await;
                return;
            }
            Either::Right(Ok((Ok(n), returned))) if n > 0 => rbuf = returned,
            Either::Right(Ok(_)) => return,
            Either::Right(Err(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_framing() {
        let mut out = Vec::new();
        write_event(br#"{"id":"1"}"#, 1718000000123.5, &mut out);
        assert_eq!(out, b"data: {\"id\":\"1\"}\nid: 1718000000123.5\n\n");
    }
}
