//! Logging: docs/configuration.md's line format, levels and destinations, never blocking a core.
//!
//! Lines look like `2026-11-25T17:00:00.123Z [http/1] [warn] [mqtt]: message`. Events go through a
//! bounded queue to one logging thread (tracing-appender, lossy): a core that logs never waits on
//! the disk; overflow drops lines rather than stalling. `notify` lines (start-up, listeners) are
//! always written — they are `info` events with target `notify` — and also go to stderr when logs
//! go to a file, so an operator running in the foreground sees them. Warnings and errors (that pass
//! `logging.level`) go to stderr as well, so they reach the terminal or the journal under systemd
//! without reading `hdb.log` (docs/configuration.md, "Logging").

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::{Event, Level, Subscriber};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::config::{LogLevel, LoggingConfig};

pub mod access;

/// Lines queued for the logging thread before new ones are dropped.
const QUEUE_LINES_MAX: usize = 64 * 1024;

/// The target for `notify` lines: `tracing::info!(target: "notify", ...)`.
pub const NOTIFY: &str = "notify";

/// `bare`: the message alone (access lines, built whole by `access::line`).
struct LineFormat {
    bare: bool,
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if self.bare {
            ctx.field_format().format_fields(writer.by_ref(), event)?;
            return writeln!(writer);
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let mut stamp = String::with_capacity(24);
        crate::util::write_iso8601_ms(&mut stamp, now_ms);
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("main");
        // Executor threads are named `http-<core>`, writers `writer-<n>`: print `[http/1]`.
        let (kind, index) = match name.rsplit_once('-') {
            Some((kind, index)) if index.bytes().all(|b| b.is_ascii_digit()) => (kind, index),
            _ => (name, "0"),
        };
        let meta = event.metadata();
        let level = if meta.target() == NOTIFY {
            "notify"
        } else {
            match *meta.level() {
                Level::TRACE => "trace",
                Level::DEBUG => "debug",
                Level::INFO => "info",
                Level::WARN => "warn",
                Level::ERROR => "error",
            }
        };
        write!(writer, "{stamp} [{kind}/{index}] [{level}]")?;
        let target = meta.target();
        if target != NOTIFY && !target.starts_with("tidepool") {
            write!(writer, " [{target}]")?;
        }
        writer.write_str(": ")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

fn passes(level: LogLevel, meta: &tracing::Metadata<'_>) -> bool {
    if meta.target() == access::ACCESS {
        return false;
    }
    if meta.target() == NOTIFY {
        return true;
    }
    let event_level = match *meta.level() {
        Level::TRACE => LogLevel::Trace,
        Level::DEBUG => LogLevel::Debug,
        Level::INFO => LogLevel::Info,
        Level::WARN => LogLevel::Warn,
        Level::ERROR => LogLevel::Error,
    };
    event_level >= level
}

/// Lines one source address gets per [`SOURCE_WINDOW`] on one core; the rest are counted and
/// reported in one line when its next window starts (docs/configuration.md, "Logging").
pub const SOURCE_LINES_MAX: u32 = 10;
pub const SOURCE_WINDOW: Duration = Duration::from_secs(60);
/// Sources one core tracks at once; past it, expired ones go, then all (counts are lost, never
/// memory).
const SOURCES_TRACKED_MAX: usize = 4096;

/// `logging.connections`: connection events at the default level (on), or at `info` only.
static CONNECTION_EVENTS: AtomicBool = AtomicBool::new(true);

struct SourceWindow {
    started: Instant,
    lines: u32,
    suppressed: u32,
}

thread_local! {
    /// Per core (per thread): no lock and no state shared between cores.
    static SOURCES: RefCell<HashMap<IpAddr, SourceWindow>> = RefCell::new(HashMap::new());
}

/// Whether a line from `source` may be written now, and how many of its lines the previous
/// window suppressed.
fn admit(source: IpAddr, now: Instant) -> (bool, u32) {
    SOURCES.with(|sources| {
        let mut sources = sources.borrow_mut();
        if sources.len() >= SOURCES_TRACKED_MAX && !sources.contains_key(&source) {
            sources.retain(|_, w| now.duration_since(w.started) < SOURCE_WINDOW);
            if sources.len() >= SOURCES_TRACKED_MAX {
                sources.clear();
            }
        }
        let window = sources.entry(source).or_insert(SourceWindow {
            started: now,
            lines: 0,
            suppressed: 0,
        });
        let mut reported = 0;
        if now.duration_since(window.started) >= SOURCE_WINDOW {
            reported = window.suppressed;
            *window = SourceWindow {
                started: now,
                lines: 0,
                suppressed: 0,
            };
        }
        window.lines += 1;
        if window.lines > SOURCE_LINES_MAX {
            window.suppressed += 1;
            return (false, reported);
        }
        (true, reported)
    })
}

/// A connection event — an MQTT client connected or disconnected, a failed login on any
/// interface — as one line at the default level (`notify`, as Mosquitto logs connections), at
/// most [`SOURCE_LINES_MAX`] per source address per minute per core; the others go at `info`.
pub fn connection_event(source: IpAddr, line: fmt::Arguments<'_>) {
    if !CONNECTION_EVENTS.load(Ordering::Relaxed) {
        tracing::info!("{line}");
        return;
    }
    let (write, suppressed) = admit(source, Instant::now());
    if suppressed > 0 {
        tracing::info!(target: NOTIFY, "{suppressed} more connection events from {source} were not logged in the minute before");
    }
    if write {
        tracing::info!(target: NOTIFY, "{line}");
    } else {
        tracing::info!("{line}");
    }
}

/// Keeps the logging thread alive; dropping it flushes what is queued.
pub struct LogGuard {
    _guards: Vec<WorkerGuard>,
}

/// Installs the global subscriber for `config`. Creates the log folder when logging to a file.
pub fn init(config: &LoggingConfig) -> io::Result<LogGuard> {
    CONNECTION_EVENTS.store(config.connections, Ordering::Relaxed);
    let level = config.level;
    let mut guards = Vec::new();
    let main_writer: Box<dyn io::Write + Send> = if config.std_streams || !config.file {
        Box::new(io::stdout())
    } else {
        Box::new(open_log_file(&config.path)?)
    };
    let (main, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUE_LINES_MAX)
        .finish(main_writer);
    guards.push(guard);
    let main_layer = tracing_subscriber::fmt::layer()
        .event_format(LineFormat { bare: false })
        .with_writer(main)
        .with_filter(filter_fn(move |meta| passes(level, meta)));
    let echo_layer = if !config.std_streams && config.file {
        let (echo, guard) = NonBlockingBuilder::default()
            .lossy(true)
            .finish(io::stderr());
        guards.push(guard);
        Some(
            tracing_subscriber::fmt::layer()
                .event_format(LineFormat { bare: false })
                .with_writer(echo)
                .with_filter(filter_fn(move |meta| {
                    meta.target() == NOTIFY || (*meta.level() <= Level::WARN && passes(level, meta))
                })),
        )
    } else {
        None
    };
    let access_layer = if config.access {
        let file = open_log_file(&config.root.join("access.log"))?;
        let (writer, guard) = NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(QUEUE_LINES_MAX)
            .finish(file);
        guards.push(guard);
        access::enable();
        Some(
            tracing_subscriber::fmt::layer()
                .event_format(LineFormat { bare: true })
                .with_writer(writer)
                .with_filter(filter_fn(|meta| meta.target() == access::ACCESS)),
        )
    } else {
        None
    };
    let subscriber = tracing_subscriber::registry()
        .with(main_layer)
        .with(echo_layer)
        .with(access_layer);
    tracing::subscriber::set_global_default(subscriber).map_err(io::Error::other)?;
    Ok(LogGuard { _guards: guards })
}

fn open_log_file(path: &Path) -> io::Result<std::fs::File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn connection_lines_are_limited_per_source() {
        let a: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let b: std::net::IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = std::time::Instant::now();
        for _ in 0..super::SOURCE_LINES_MAX {
            assert_eq!(super::admit(a, t0), (true, 0));
        }
        assert_eq!(super::admit(a, t0), (false, 0));
        assert_eq!(super::admit(a, t0), (false, 0));
        assert_eq!(
            super::admit(b, t0),
            (true, 0),
            "another source has its own budget"
        );
        let later = t0 + super::SOURCE_WINDOW;
        assert_eq!(
            super::admit(a, later),
            (true, 2),
            "the next window reports what was not written"
        );
    }
}
