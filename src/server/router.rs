//! Routes each HTTP request on a port to the interface that owns it.

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::protocol::http::{Method, Request, Response, Service};
use crate::protocol::{sse, ws};

use super::Shared;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    Rest,
    Operations,
    /// `http.port` equal to `operationsApi.network.port`: one listener serves both.
    Both,
}

impl PortKind {
    pub fn name(self) -> &'static str {
        match self {
            PortKind::Rest => "REST (http.port)",
            PortKind::Operations => "Operations API (operationsApi.network.port)",
            PortKind::Both => "REST and Operations API",
        }
    }
}

pub struct Router {
    kind: PortKind,
    core: usize,
    shared: Arc<Shared>,
    realtime: std::rc::Rc<ws::Context>,
}

impl Router {
    pub fn new(
        kind: PortKind,
        core: usize,
        shared: Arc<Shared>,
        realtime: std::rc::Rc<ws::Context>,
    ) -> Self {
        Self {
            kind,
            core,
            shared,
            realtime,
        }
    }

    /// WebSocket upgrades and event streams, before REST sees the request. Returns true when
    /// answered.
    fn realtime(&self, req: &Request<'_>, resp: &mut Response) -> bool {
        if ws::is_upgrade(req) {
            if ws::wants_mqtt(req) {
                // Hook for MQTT over WebSocket (SPEC §6.3): any path, subprotocol `mqtt`. The MQTT
                // module answers here with `ws::handshake(req, resp, Some("mqtt"))` and
                // `resp.take_over(..)` over `ws::frame`.
                resp.json_error(
                    501,
                    "MQTT over WebSocket is not available in this build yet",
                );
                return true;
            }
            if !ws::upgrade(&self.realtime, req, resp) {
                // Δ HarperDB (which upgrades, then closes 1011): an unknown path is refused plainly.
                resp.text(404, "Not found");
            }
            return true;
        }
        sse::is_event_stream(req) && sse::accept(&self.realtime, req, resp)
    }

    fn health(&self, req: &Request<'_>, resp: &mut Response) {
        if self.shared.shutdown.is_triggered() {
            resp.text(503, "shutting down");
            return;
        }
        if req.query.is_some_and(|q| {
            q.split('&')
                .any(|p| p == "verbose" || p.starts_with("verbose="))
        }) {
            let mut body = String::with_capacity(256);
            let _ = write!(
                body,
                "{{\"status\":\"ok\",\"uptime_ms\":{},\"cores\":[",
                self.shared.started.elapsed().as_millis()
            );
            for (core, stats) in self.shared.stats.iter().enumerate() {
                if core > 0 {
                    body.push(',');
                }
                let _ = write!(
                    body,
                    "{{\"core\":{core},\"connections_accepted\":{},\"connections_open\":{},\"connections_refused\":{},\"requests\":{}",
                    stats.connections_accepted.load(Ordering::Relaxed),
                    stats.connections_open.load(Ordering::Relaxed),
                    stats.connections_refused.load(Ordering::Relaxed),
                    stats.requests.load(Ordering::Relaxed),
                );
                if let Some(p) = self.shared.pubsub.get(core) {
                    let _ = write!(
                        body,
                        ",\"subscriptions\":{},\"commits_dispatched\":{},\"commits_lost\":{},\"events_queued\":{},\"events_dropped\":{}",
                        p.subscriptions.load(Ordering::Relaxed),
                        p.commits_dispatched.load(Ordering::Relaxed),
                        p.commits_lost.load(Ordering::Relaxed),
                        p.events_queued.load(Ordering::Relaxed),
                        p.events_dropped.load(Ordering::Relaxed),
                    );
                }
                body.push('}');
            }
            body.push_str("]}");
            resp.status = 200;
            resp.header("Content-Type", "application/json");
            resp.body.extend_from_slice(body.as_bytes());
            return;
        }
        resp.text(200, "OK");
    }
}

impl Service for Router {
    async fn call(&self, req: &Request<'_>, resp: &mut Response) {
        self.shared.stats[self.core]
            .requests
            .fetch_add(1, Ordering::Relaxed);
        if req.path == "/health" && matches!(req.method, Method::Get | Method::Head) {
            self.health(req, resp);
            return;
        }
        let operations = match self.kind {
            PortKind::Operations => true,
            PortKind::Rest => false,
            PortKind::Both => req.method == Method::Post && req.path == "/",
        };
        if operations {
            if req.method == Method::Post && req.path == "/" {
                resp.json_error(
                    501,
                    "The Operations API is not implemented in this build yet",
                );
            } else {
                resp.json_error(
                    404,
                    "Not found: the Operations API takes POST / with a JSON body",
                );
            }
            return;
        }
        if self.realtime(req, resp) {
            return;
        }
        if crate::protocol::rest::handle(&self.shared.resources, req, resp).await {
            return;
        }
        resp.text(404, "Not found");
    }
}
