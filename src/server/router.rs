//! Routes each HTTP request on a port to the interface that owns it.

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::protocol::http::{Method, Request, Response, Service};

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
}

impl Router {
    pub fn new(kind: PortKind, core: usize, shared: Arc<Shared>) -> Self {
        Self { kind, core, shared }
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
                    "{{\"core\":{core},\"connections_accepted\":{},\"connections_open\":{},\"connections_refused\":{},\"requests\":{}}}",
                    stats.connections_accepted.load(Ordering::Relaxed),
                    stats.connections_open.load(Ordering::Relaxed),
                    stats.connections_refused.load(Ordering::Relaxed),
                    stats.requests.load(Ordering::Relaxed),
                );
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
            PortKind::Both => {
                matches!(req.method, Method::Post | Method::Options) && req.path == "/"
            }
        };
        if operations {
            // Until authentication lands every caller is the built-in super user.
            let caller = crate::resource::Caller::super_user("admin");
            crate::protocol::ops::handle(&self.shared.resources, &caller, req, resp).await;
            return;
        }
        if crate::protocol::rest::handle(&self.shared.resources, req, resp).await {
            return;
        }
        resp.text(404, "Not found");
    }
}
