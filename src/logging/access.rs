//! The HTTP access log (`logging.access`, docs/configuration.md): one line per answered request
//! in the combined log format of Apache and nginx, written to `<logging.root>/access.log` by the
//! logging thread through its own bounded, lossy queue.

use std::fmt::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};

/// The target access lines are logged under; only the access log's layer takes them.
pub const ACCESS: &str = "access";

static ENABLED: AtomicBool = AtomicBool::new(false);

pub(super) fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether requests are logged (so callers skip building the line when not).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// One answered request.
pub struct Entry<'a> {
    pub peer: IpAddr,
    /// The authenticated user, if any.
    pub user: Option<&'a str>,
    pub now_ms: i64,
    pub method: &'a str,
    pub target: &'a str,
    pub version_minor: u8,
    pub status: u16,
    pub bytes: usize,
    pub referer: Option<&'a str>,
    pub user_agent: Option<&'a str>,
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `peer - user [10/Oct/2000:13:55:36 +0000] "GET /x HTTP/1.1" 200 2326 "referer" "agent"`;
/// quotes, backslashes and control bytes in client-given text are escaped as `\xNN` (nginx's
/// escaping), so a client cannot forge a line.
pub fn line(e: &Entry<'_>) -> String {
    let mut out = String::with_capacity(160);
    let _ = write!(out, "{} - ", e.peer);
    match e.user {
        Some(user) if !user.is_empty() => escape(&mut out, user),
        _ => out.push('-'),
    }
    let days = e.now_ms.div_euclid(86_400_000);
    let in_day = e.now_ms.rem_euclid(86_400_000) / 1000;
    let (year, month, day) = crate::util::civil_from_days(days);
    let month = MONTHS[(month as usize).clamp(1, 12) - 1];
    let (h, m, s) = (in_day / 3600, in_day / 60 % 60, in_day % 60);
    let _ = write!(
        out,
        " [{day:02}/{month}/{year}:{h:02}:{m:02}:{s:02} +0000] \""
    );
    escape(&mut out, e.method);
    out.push(' ');
    escape(&mut out, e.target);
    let _ = write!(out, " HTTP/1.{}\" {} ", e.version_minor, e.status);
    if e.bytes == 0 {
        out.push('-');
    } else {
        let _ = write!(out, "{}", e.bytes);
    }
    for value in [e.referer, e.user_agent] {
        out.push_str(" \"");
        escape(&mut out, value.unwrap_or("-"));
        out.push('"');
    }
    out
}

fn escape(out: &mut String, text: &str) {
    for c in text.chars() {
        if c == '"' || c == '\\' || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "\\x{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
}

/// Logs one request (when the access log is on).
pub fn log(e: &Entry<'_>) {
    if enabled() {
        tracing::info!(target: ACCESS, "{}", line(e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_format_with_escaping() {
        let e = Entry {
            peer: "127.0.0.1".parse().unwrap(),
            user: Some("admin"),
            now_ms: 971_186_136_000, // 2000-10-10T13:55:36Z
            method: "GET",
            target: "/Dog/1?x=\"y\"",
            version_minor: 1,
            status: 200,
            bytes: 2326,
            referer: None,
            user_agent: Some("curl/8\n"),
        };
        assert_eq!(
            line(&e),
            r#"127.0.0.1 - admin [10/Oct/2000:13:55:36 +0000] "GET /Dog/1?x=\x22y\x22 HTTP/1.1" 200 2326 "-" "curl/8\x0A""#
        );
    }
}
