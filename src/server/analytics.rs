//! Analytics wiring (docs/operations-api.md "Analytics"): each core's [`Recorder`] counts the HTTP
//! answers its routers give, a per-core task hands the second's report to the analytics thread,
//! which stores and folds them (`resource::analytics`).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::Duration;

use tidepool_io::{race, Either};

use crate::protocol::http::{Request, Response};
use crate::resource::analytics::{self, Answer, Recorder, Report};

use super::http_stats::Route;
use super::Shared;

/// How often each core hands over its counts (HarperDB: once a second per thread).
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// HarperDB adds this estimate of a response head to an operation's `bytes-sent`.
const ESTIMATED_HEADER_BYTES: usize = 200;

/// Starts the analytics thread; the cores' sender, and the thread to join before the store
/// closes.
pub fn start(
    resources: &Arc<crate::resource::Resources>,
    shutdown: &tidepool_io::Shutdown,
    period: Duration,
) -> std::io::Result<(SyncSender<Report>, std::thread::JoinHandle<()>)> {
    let (sender, receiver) = analytics::channel();
    let resources = resources.clone();
    let shutdown = shutdown.clone();
    let handle = std::thread::Builder::new()
        .name("analytics".into())
        .spawn(move || {
            analytics::run(resources, receiver, period, &|| shutdown.is_triggered());
        })?;
    Ok((sender, handle))
}

/// Counts one answer when it is one HarperDB records: REST on an exported table (`path` the
/// table, `method` the HTTP method), or an operation (`path` its name, `type` "operation").
pub fn record(
    recorder: &RefCell<Recorder>,
    route: Route,
    req: &Request<'_>,
    resp: &Response,
    took: Duration,
) {
    let took_ms = took.as_secs_f64() * 1000.0;
    let answer = match route {
        Route::Operations => match resp.label {
            Some(name) => Answer {
                path: name,
                method: None,
                ty: Some("operation"),
                status: resp.status,
                took_ms,
                bytes_sent: Some(resp.body.len() + ESTIMATED_HEADER_BYTES),
            },
            None => return,
        },
        Route::Rest => Answer {
            path: crate::protocol::rest::export_and_rest(req.path).0,
            method: Some(req.method.as_str()),
            ty: None,
            status: resp.status,
            took_ms,
            bytes_sent: None,
        },
        _ => return,
    };
    if let Ok(mut r) = recorder.try_borrow_mut() {
        r.record(&answer);
    }
}

/// Once a second, this core's counts (when it had traffic) go to the analytics thread.
pub async fn core_loop(
    shared: Arc<Shared>,
    core: usize,
    recorder: Rc<RefCell<Recorder>>,
    sender: SyncSender<Report>,
) {
    let mut dropped = 0u64;
    loop {
        if let Either::Right(()) =
            race(tidepool_io::sleep(REPORT_EVERY), shared.shutdown.wait()).await
        {
            return;
        }
        let report = recorder.borrow_mut().take(core);
        if let Some(report) = report {
            if !analytics::send(&sender, report) {
                dropped += 1;
                tracing::debug!("core {core}: analytics queue full, {dropped} reports dropped");
            }
        }
    }
}
