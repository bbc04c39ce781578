//! Routes each HTTP request on a port to the interface that owns it, after authenticating it
//! once (`/health` and `/metrics` are answered before; static files ignore the result).

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::auth::AuthError;
use crate::protocol::http::{Method, Refused, Request, Response, Service};
use crate::protocol::{sse, ws};
use crate::resource::Caller;

use super::http_stats::Route;
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
    /// This core's analytics counts (`None` with analytics off).
    analytics: Option<AnalyticsRecorder>,
}

type AnalyticsRecorder = std::rc::Rc<std::cell::RefCell<crate::resource::analytics::Recorder>>;

impl Router {
    pub fn new(
        kind: PortKind,
        core: usize,
        shared: Arc<Shared>,
        realtime: std::rc::Rc<ws::Context>,
        analytics: Option<AnalyticsRecorder>,
    ) -> Self {
        Self {
            kind,
            core,
            shared,
            realtime,
            analytics,
        }
    }

    /// WebSocket upgrades and event streams, before REST sees the request. Returns true when
    /// answered.
    fn realtime(
        &self,
        req: &Request<'_>,
        resp: &mut Response,
        caller: Result<&crate::resource::Caller, &crate::auth::AuthError>,
    ) -> bool {
        if ws::is_upgrade(req) {
            if ws::wants_mqtt(req) {
                // MQTT over WebSocket (docs/mqtt.md): any path, subprotocol `mqtt`.
                super::mqtt::web_socket_upgrade(req, resp, caller);
                return true;
            }
            if !ws::upgrade(&self.realtime, req, resp, caller) {
                // Δ HarperDB (which upgrades, then closes 1011): an unknown path is refused plainly.
                resp.text(404, "Not found");
            }
            return true;
        }
        sse::is_event_stream(req) && sse::accept(&self.realtime, req, resp, caller)
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
                    "{{\"core\":{core},\"connections_accepted\":{},\"connections_open\":{},\"connections_refused\":{},\"requests\":{},\"connection_buffer_bytes\":{},\"body_bytes_in_flight\":{},\"refused_before_body\":{},\"buffer_sets_allocated\":{},\"mqtt_connections_open\":{}",
                    stats.connections_accepted.load(Ordering::Relaxed),
                    stats.connections_open.load(Ordering::Relaxed),
                    stats.connections_refused.load(Ordering::Relaxed),
                    stats.requests.load(Ordering::Relaxed),
                    stats.http.buffer_bytes.load(Ordering::Relaxed),
                    stats.http.body_bytes_in_flight.load(Ordering::Relaxed),
                    stats.http.refused_before_body.load(Ordering::Relaxed),
                    stats.http.buffer_sets_allocated.load(Ordering::Relaxed),
                    stats.mqtt_connections_open.load(Ordering::Relaxed),
                );
                if let Some(p) = self.shared.pubsub.get(core) {
                    let _ = write!(
                        body,
                        ",\"subscriptions\":{},\"commits_dispatched\":{},\"commits_lost\":{},\"events_queued\":{},\"events_dropped\":{},\"subscriber_queue_bytes\":{},\"mqtt_queue_bytes\":{},\"mqtt_buffer_bytes\":{}",
                        p.subscriptions.load(Ordering::Relaxed),
                        p.commits_dispatched.load(Ordering::Relaxed),
                        p.commits_lost.load(Ordering::Relaxed),
                        p.events_queued.load(Ordering::Relaxed),
                        p.events_dropped.load(Ordering::Relaxed),
                        p.queued_bytes.load(Ordering::Relaxed),
                        p.mqtt_queued_bytes.load(Ordering::Relaxed),
                        p.mqtt_buffer_bytes.load(Ordering::Relaxed),
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

/// A per-database metric: its name, type, help text and how to read it.
type PerDatabaseMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&crate::store::Database) -> f64,
);

/// A per-core counter: its name, help text and how to read it.
type PerCoreMetric<T = super::CoreStats> = (&'static str, &'static str, fn(&T) -> u64);

impl Router {
    fn metrics(&self) -> String {
        use crate::metrics::Exposition;
        let mut e = Exposition::new();
        self.per_core_metrics(&mut e);
        self.pubsub_metrics(&mut e);
        super::http_stats::render(&mut e, self.shared.stats.iter().map(|s| &s.answers));
        super::http_stats::render_process(&mut e, self.shared.started_unix_s);
        crate::protocol::mqtt::events::render(&mut e);
        e.family(
            "tidepool_requests_in_flight",
            "gauge",
            "HTTP requests being served now.",
        );
        e.sample(
            "tidepool_requests_in_flight",
            &[],
            self.shared.in_flight.count() as f64,
        );
        let store = &self.shared.resources.store;
        let databases: Vec<_> = store
            .database_names()
            .into_iter()
            .filter_map(|n| store.database(&n))
            .collect();
        per_database_metrics(&mut e, &databases);
        commit_histogram(&mut e, &databases);
        if let Some(repl) = crate::replication::get() {
            replication_metrics(&mut e, &repl);
        }
        e.finish()
    }

    /// The real-time counters of `/health?verbose`, one sample per core (per core, not per
    /// subscriber: a label per subscriber would grow without bound).
    fn pubsub_metrics(&self, e: &mut crate::metrics::Exposition) {
        let families: [PerCoreMetric<crate::pubsub::Counters>; 8] = [
            ("tidepool_pubsub_commits_dispatched_total", "Commits handed to this core's subscribers.", |c| c.commits_dispatched.load(Ordering::Relaxed)),
            ("tidepool_pubsub_commits_lost_total", "Commits the publisher could not hand to this core (its inbox stayed full).", |c| c.commits_lost.load(Ordering::Relaxed)),
            ("tidepool_pubsub_events_queued_total", "Events queued to subscribers.", |c| c.events_queued.load(Ordering::Relaxed)),
            ("tidepool_pubsub_events_dropped_total", "Live events dropped from full subscriber queues (oldest first).", |c| c.events_dropped.load(Ordering::Relaxed)),
            ("tidepool_pubsub_subscriptions", "Subscriptions open now (WebSocket, SSE, MQTT).", |c| c.subscriptions.load(Ordering::Relaxed)),
            ("tidepool_pubsub_queued_bytes", "Encoded bytes waiting in subscriber queues now.", |c| c.queued_bytes.load(Ordering::Relaxed)),
            ("tidepool_mqtt_queued_bytes", "Bytes in MQTT outbound buffers and QoS 1/2 backlogs (as of the last 250 ms sweep).", |c| c.mqtt_queued_bytes.load(Ordering::Relaxed)),
            ("tidepool_mqtt_buffer_bytes", "Buffer capacity MQTT connections hold, read and write (as of the last 250 ms sweep).", |c| c.mqtt_buffer_bytes.load(Ordering::Relaxed)),
        ];
        per_core_families(e, &families, self.shared.pubsub.iter().map(|c| &**c));
    }

    /// The per-core counters and gauges, one sample per core.
    fn per_core_metrics(&self, e: &mut crate::metrics::Exposition) {
        let per_core: [PerCoreMetric; 9] = [
            (
                "tidepool_connections_accepted_total",
                "Connections accepted, per core.",
                |s| s.connections_accepted.load(Ordering::Relaxed),
            ),
            (
                "tidepool_connections_refused_total",
                "Connections refused over http.maxConnectionsPerCore, per core.",
                |s| s.connections_refused.load(Ordering::Relaxed),
            ),
            (
                "tidepool_http_requests_total",
                "HTTP requests received, per core.",
                |s| s.requests.load(Ordering::Relaxed),
            ),
            (
                "tidepool_connections_open",
                "Connections open now, per core.",
                |s| s.connections_open.load(Ordering::Relaxed),
            ),
            (
                "tidepool_connection_buffer_bytes",
                "Bytes held by the read and write buffers of open HTTP connections, per core.",
                |s| s.http.buffer_bytes.load(Ordering::Relaxed),
            ),
            (
                "tidepool_http_body_bytes_in_flight",
                "Bytes of request bodies being read or held, per core (http.maxBodyBytesInFlightPerCore).",
                |s| s.http.body_bytes_in_flight.load(Ordering::Relaxed),
            ),
            (
                "tidepool_http_refused_before_body_total",
                "Requests answered from their head without reading their body, per core.",
                |s| s.http.refused_before_body.load(Ordering::Relaxed),
            ),
            (
                "tidepool_http_buffer_sets_allocated_total",
                "Answering buffer sets (write and response buffers) allocated because the core had no spare one, per core.",
                |s| s.http.buffer_sets_allocated.load(Ordering::Relaxed),
            ),
            (
                "tidepool_mqtt_connections_open",
                "MQTT connections open now on the MQTT ports, per core.",
                |s| s.mqtt_connections_open.load(Ordering::Relaxed),
            ),
        ];
        per_core_families(e, &per_core, self.shared.stats.iter());
    }
}

/// Families with one sample per core (`core` label), read from each core's counters; `_total`
/// names are counters, the others gauges.
fn per_core_families<'a, T: 'a>(
    e: &mut crate::metrics::Exposition,
    families: &[PerCoreMetric<T>],
    cores: impl Iterator<Item = &'a T> + Clone,
) {
    for (name, help, read) in families {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        e.family(name, kind, help);
        for (core, counters) in cores.clone().enumerate() {
            e.sample(name, &[("core", &core.to_string())], read(counters) as f64);
        }
    }
}

/// The per-database writer counters and LMDB map figures.
fn per_database_metrics(
    e: &mut crate::metrics::Exposition,
    databases: &[std::sync::Arc<crate::store::Database>],
) {
    // Per-database families: (name, type, help, how to read it).
    let per_database: [PerDatabaseMetric; 4] = [
        (
            "tidepool_writer_commits_total",
            "counter",
            "LMDB commits (one per group of write requests), per database.",
            |db| db.stats.commits.load(Ordering::Relaxed) as f64,
        ),
        (
            "tidepool_writer_requests_total",
            "counter",
            "Write requests applied, per database.",
            |db| db.stats.requests.load(Ordering::Relaxed) as f64,
        ),
        (
            "tidepool_writer_requests_failed_total",
            "counter",
            "Write requests refused or rolled back, per database.",
            |db| db.stats.requests_failed.load(Ordering::Relaxed) as f64,
        ),
        (
            "tidepool_writer_batch_size_max",
            "gauge",
            "Largest group of write requests committed together, per database.",
            |db| db.stats.batch_size_max.load(Ordering::Relaxed) as f64,
        ),
    ];
    let map_families: [PerDatabaseMetric; 2] = [
        (
            "tidepool_lmdb_map_used_bytes",
            "gauge",
            "Bytes of the LMDB map in use, per database.",
            |db| db.map_usage().0 as f64,
        ),
        (
            "tidepool_lmdb_map_size_bytes",
            "gauge",
            "Bytes of address space reserved for the LMDB map, per database.",
            |db| db.map_usage().1 as f64,
        ),
    ];
    for (name, kind, help, read) in per_database.into_iter().chain(map_families) {
        e.family(name, kind, help);
        for db in databases {
            e.sample(name, &[("database", &db.name)], read(db));
        }
    }
}

/// Replication links (docs/metrics.md): whether each peer's database socket is connected, as
/// `cluster_status` says, and how many links were closed for silence.
fn replication_metrics(e: &mut crate::metrics::Exposition, repl: &crate::replication::Replication) {
    e.family(
        "tidepool_replication_connected",
        "gauge",
        "1 while the replication link to a peer carries the database, else 0.",
    );
    for (peer, database, connected) in repl.socket_states() {
        e.sample(
            "tidepool_replication_connected",
            &[("peer", &peer), ("database", &database)],
            if connected { 1.0 } else { 0.0 },
        );
    }
    replication_lag(e, &repl.socket_lags());
    e.family(
        "tidepool_replication_links_timed_out_total",
        "counter",
        "Replication links closed because nothing was heard for replication.heartbeatTimeout.",
    );
    e.sample(
        "tidepool_replication_links_timed_out_total",
        &[],
        repl.links_timed_out.load(Ordering::Relaxed) as f64,
    );
}

/// Per peer and database: the receive lag of the newest transaction, the age of the one being
/// sent, and the last ping's round trip (docs/metrics.md).
fn replication_lag(e: &mut crate::metrics::Exposition, lags: &[crate::replication::SocketLag]) {
    type Read = fn(&crate::replication::SocketLag) -> Option<f64>;
    let families: [(&str, &str, Read); 3] = [
        (
            "tidepool_replication_lag_seconds",
            "Local receive time minus the peer's commit time of the newest transaction received from it.",
            |l| Some(l.received_s),
        ),
        (
            "tidepool_replication_send_lag_seconds",
            "Age of the transaction being sent to the peer now (0 when caught up).",
            |l| Some(l.sending_s),
        ),
        (
            "tidepool_replication_ping_seconds",
            "Round trip of the last heartbeat PING to the peer.",
            |l| l.ping_s,
        ),
    ];
    for (name, help, read) in families {
        e.family(name, "gauge", help);
        for lag in lags {
            if let Some(v) = read(lag) {
                e.sample(name, &[("peer", &lag.peer), ("database", &lag.database)], v);
            }
        }
    }
}

/// The writer's commit time histogram, per database.
fn commit_histogram(
    e: &mut crate::metrics::Exposition,
    databases: &[std::sync::Arc<crate::store::Database>],
) {
    e.family(
        "tidepool_writer_commit_seconds",
        "histogram",
        "Time to apply and commit one group, per database.",
    );
    for db in databases {
        let buckets = &db.stats.commit_micros_buckets;
        for (i, bound) in crate::store::COMMIT_MICROS_BUCKETS.iter().enumerate() {
            let le = format!("{}", *bound as f64 / 1e6);
            e.sample(
                "tidepool_writer_commit_seconds_bucket",
                &[("database", &db.name), ("le", &le)],
                buckets[i].load(Ordering::Relaxed) as f64,
            );
        }
        let count =
            buckets[crate::store::COMMIT_MICROS_BUCKETS.len()].load(Ordering::Relaxed) as f64;
        e.sample(
            "tidepool_writer_commit_seconds_bucket",
            &[("database", &db.name), ("le", "+Inf")],
            count,
        );
        e.sample(
            "tidepool_writer_commit_seconds_sum",
            &[("database", &db.name)],
            db.stats.commit_micros_sum.load(Ordering::Relaxed) as f64 / 1e6,
        );
        e.sample(
            "tidepool_writer_commit_seconds_count",
            &[("database", &db.name)],
            count,
        );
    }
}

impl Router {
    /// `/health` and `/metrics`, answered before authentication.
    fn is_open_endpoint(&self, req: &Request<'_>) -> bool {
        matches!(req.method, Method::Get | Method::Head)
            && (req.path == "/health" || (req.path == "/metrics" && self.kind != PortKind::Rest))
    }

    fn is_operations(&self, req: &Request<'_>) -> bool {
        match self.kind {
            PortKind::Operations => true,
            PortKind::Rest => false,
            PortKind::Both => {
                matches!(req.method, Method::Post | Method::Options) && req.path == "/"
            }
        }
    }
}

impl Service for Router {
    /// The request's authentication, done once from its head.
    type Head = Option<Result<Caller, AuthError>>;

    async fn check_head(
        &self,
        req: &Request<'_>,
        resp: &mut Response,
    ) -> Result<Self::Head, Refused> {
        if self.is_open_endpoint(req) {
            return Ok(None);
        }
        let resources = &self.shared.resources;
        let caller = crate::auth::authenticate_request(resources, req).await;
        let refused = if self.is_operations(req) {
            crate::protocol::ops::refuse_before_body(resources, caller.as_ref(), req, resp)
        } else if ws::is_upgrade(req) || sse::is_event_stream(req) {
            false
        } else {
            let static_get = self.shared.static_files.is_some();
            crate::protocol::rest::refuse_before_body(
                resources,
                caller.as_ref(),
                req,
                resp,
                static_get,
            )
        };
        if refused {
            let stats = &self.shared.stats[self.core];
            stats.requests.fetch_add(1, Ordering::Relaxed);
            let route = if self.is_operations(req) {
                Route::Operations
            } else {
                Route::Rest
            };
            stats
                .answers
                .record(route, resp.status, std::time::Duration::ZERO);
            if crate::logging::access::enabled() {
                access_log(req, resp, None);
            }
            // Counted like an answer when it names an exported table (paths are bounded).
            let export = crate::protocol::rest::export_and_rest(req.path).0;
            if let Some(recorder) = &self.analytics {
                if route == Route::Rest && resources.export(export).is_some() {
                    super::analytics::record(recorder, route, req, resp, Default::default());
                }
            }
            return Err(Refused);
        }
        Ok(Some(caller))
    }

    async fn call(&self, req: &Request<'_>, resp: &mut Response, head: Option<Self::Head>) {
        // The batch's shared reading (`tidepool_io::clock`): when this request's answering began.
        let started = tidepool_io::clock::recent();
        // The access log names the authenticated user (docs/configuration.md).
        let mut user = None;
        let route = self.answer(req, resp, head, &mut user).await;
        if crate::logging::access::enabled() {
            access_log(req, resp, user.as_deref());
        }
        let took = tidepool_io::clock::now().saturating_duration_since(started);
        self.shared.stats[self.core]
            .answers
            .record(route, resp.status, took);
        if let Some(recorder) = &self.analytics {
            super::analytics::record(recorder, route, req, resp, took);
        }
    }
}

/// One line of the access log for an answered request.
fn access_log(req: &Request<'_>, resp: &Response, user: Option<&str>) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    crate::logging::access::log(&crate::logging::access::Entry {
        peer: req.peer.ip(),
        user,
        now_ms,
        method: req.method_raw,
        target: req.target,
        version_minor: req.version_minor,
        status: resp.status,
        bytes: resp.body.len(),
        referer: req.header_str("Referer"),
        user_agent: req.header_str("User-Agent"),
    });
}

impl Router {
    /// Answers one request; returns what it was for (`/metrics` counts it).
    async fn answer(
        &self,
        req: &Request<'_>,
        resp: &mut Response,
        head: Option<<Router as Service>::Head>,
        user: &mut Option<String>,
    ) -> Route {
        self.shared.stats[self.core]
            .requests
            .fetch_add(1, Ordering::Relaxed);
        if req.path == "/health" && matches!(req.method, Method::Get | Method::Head) {
            self.health(req, resp);
            return Route::Health;
        }
        if req.path == "/metrics"
            && self.kind != PortKind::Rest
            && matches!(req.method, Method::Get | Method::Head)
        {
            // docs/metrics.md: loopback peers, or super-user credentials.
            if !req.peer.ip().is_loopback() {
                match crate::auth::authenticate_request(&self.shared.resources, req).await {
                    Ok(c) if c.super_user => {}
                    Ok(c) if !c.is_anonymous() => {
                        resp.json_error(403, "/metrics needs a super user");
                        return Route::Metrics;
                    }
                    Ok(_) => {
                        crate::protocol::rest::unauthorized(
                            resp,
                            &crate::auth::AuthError::MustLogin,
                        );
                        return Route::Metrics;
                    }
                    Err(e) => {
                        crate::protocol::rest::unauthorized(resp, &e);
                        return Route::Metrics;
                    }
                }
            }
            resp.status = 200;
            resp.header("Content-Type", "text/plain; version=0.0.4; charset=utf-8");
            resp.body.extend_from_slice(self.metrics().as_bytes());
            return Route::Metrics;
        }
        let operations = self.is_operations(req);
        // Authenticated once per request (docs/security.md), from its head when that was judged before
        // the body; each interface decides what it needs.
        let resources = &self.shared.resources;
        let caller = match head.flatten() {
            Some(caller) => caller,
            None => crate::auth::authenticate_request(resources, req).await,
        };
        if crate::logging::access::enabled() {
            *user = caller
                .as_ref()
                .ok()
                .and_then(|c| c.username.as_deref().map(str::to_string));
        }
        if operations {
            crate::protocol::ops::handle(resources, caller.as_ref(), req, resp).await;
            return Route::Operations;
        }
        // Subscriptions check `read` themselves (docs/security.md: SSE answers 401/403, WebSocket
        // upgrades and closes 3000/3003).
        if self.realtime(req, resp, caller.as_ref()) {
            return Route::Realtime;
        }
        if crate::protocol::rest::handle(resources, caller.as_ref(), req, resp).await {
            return Route::Rest;
        }
        if let Some(files) = &self.shared.static_files {
            if files.serve(req, resp) {
                return Route::Static;
            }
        }
        crate::protocol::rest::not_found(resources, caller.as_ref().ok(), req.path, resp);
        Route::NotFound
    }
}
