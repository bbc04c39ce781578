//! Cookie sessions (docs/security.md): `login` stores a session `{id, user}` in `system.hdb_session` and
//! answers a `<host>-hdb-session=<uuid>` cookie; later requests carrying it authenticate as that
//! user (after `Authorization`, before `authorizeLocal`); `logout` clears the session's user.
//! It owns the cookie's name, parsing and `Set-Cookie` text, and the session records; it never
//! decides what the user may do. Session ids never reach a log line.

use std::sync::Arc;

use crate::protocol::http::Request;
use crate::resource::tables::SYSTEM;
use crate::resource::{Caller, Resources};
use crate::store::PutMode;
use crate::value::{self, Object, Value};

use super::AuthError;

pub const COOKIE_SUFFIX: &str = "-hdb-session";
const SESSIONS: &str = "hdb_session";
/// Session ids are UUIDs; a longer cookie value is not a session of ours and is not looked up.
const SESSION_ID_BYTES_MAX: usize = 64;
/// `Expires` when `authentication.cookie.expires` is not set: far in the future, so the session
/// lasts until `logout` (as HarperDB).
const EXPIRES_DEFAULT: &str = "Tue, 01 Oct 8307 19:33:20 GMT";
/// What `logout` sets, so browsers drop the cookie.
const EXPIRES_PAST: &str = "Thu, 01 Jan 1970 00:00:00 GMT";

/// `<host>-hdb-session`, `<host>` being the Origin (else Host) with every non-word character as
/// `_` (docs/security.md).
pub fn cookie_name(origin: Option<&str>, host: Option<&str>) -> String {
    let host = origin.or(host).unwrap_or_default();
    let mut name: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    name.push_str(COOKIE_SUFFIX);
    name
}

fn request_cookie_name(req: &Request<'_>) -> String {
    cookie_name(req.header_str("origin"), req.header_str("host"))
}

/// The session id in `Cookie` header values: cookie `name` if present, else any
/// `*-hdb-session` cookie. A client that is not a browser (no `Origin`) sends the Host of each
/// port, so the name it got from one port differs from the other's; browsers scope cookies to
/// their domain anyway, and an id is a random UUID, so accepting the suffix grants nothing a
/// client did not hold. Values that do not look like session ids are ignored.
pub fn find_cookie<'a>(
    headers: impl Iterator<Item = &'a str> + Clone,
    name: &str,
) -> Option<&'a str> {
    let pairs = headers
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .map(|(n, v)| (n.trim(), v.trim().trim_matches('"')))
        .filter(|(_, v)| {
            !v.is_empty()
                && v.len() <= SESSION_ID_BYTES_MAX
                && v.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        });
    let mut fallback = None;
    for (n, v) in pairs {
        if n == name {
            return Some(v);
        }
        if fallback.is_none() && n.ends_with(COOKIE_SUFFIX) {
            fallback = Some(v);
        }
    }
    fallback
}

/// The session id the request's cookie carries, when sessions are on.
pub fn session_id<'a>(resources: &Resources, req: &Request<'a>) -> Option<&'a str> {
    let mut cookies = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .peekable();
    // Most requests carry no cookie: answer before the configuration lookup and the name.
    cookies.peek()?;
    if !enabled(resources) {
        return None;
    }
    find_cookie(cookies, &request_cookie_name(req))
}

/// `authentication.enableSessions` (default true).
pub fn enabled(resources: &Resources) -> bool {
    !matches!(
        resources.config_tree.get("authentication.enableSessions"),
        Some(serde_yaml::Value::Bool(false))
    )
}

/// A config string fit for a cookie attribute (no separators or line breaks).
fn cookie_setting(resources: &Resources, key: &str) -> Option<String> {
    resources
        .config_tree
        .get(key)
        .and_then(|v| v.as_str())
        .filter(|s| !s.bytes().any(|b| matches!(b, b';' | b'\r' | b'\n')))
        .map(str::to_string)
}

/// The `Set-Cookie` value for session `id` (`None`: the cookie cleared, for `logout`).
pub fn set_cookie(resources: &Resources, req: &Request<'_>, id: Option<&str>) -> String {
    let domains: Vec<String> = match resources.config_tree.get("authentication.cookie.domains") {
        Some(serde_yaml::Value::Sequence(list)) => list
            .iter()
            .filter_map(|d| d.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    cookie_text(
        req.header_str("origin"),
        req.header_str("host"),
        id,
        cookie_setting(resources, "authentication.cookie.expires").as_deref(),
        &domains,
    )
}

/// docs/security.md's cookie: `Path=/`, `Expires` (`expires` or far future; the past when clearing),
/// `HttpOnly`, plus `SameSite=None; Secure` for an HTTPS origin or a localhost host, plus
/// `Domain=<d>` for the first of `domains` the host is or is under.
fn cookie_text(
    origin: Option<&str>,
    host_header: Option<&str>,
    id: Option<&str>,
    expires: Option<&str>,
    domains: &[String],
) -> String {
    let name = cookie_name(origin, host_header);
    let expires = match id {
        Some(_) => expires.unwrap_or(EXPIRES_DEFAULT),
        None => EXPIRES_PAST,
    };
    let mut out = format!(
        "{name}={}; Path=/; Expires={expires}; HttpOnly",
        id.unwrap_or_default()
    );
    let host = origin
        .and_then(|o| o.split_once("://").map(|(_, h)| h))
        .or(host_header)
        .unwrap_or_default();
    let hostname = host
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h);
    let local =
        matches!(hostname, "localhost" | "127.0.0.1" | "[::1]") || hostname.ends_with(".localhost");
    if origin.is_some_and(|o| o.starts_with("https://")) || local {
        out.push_str("; SameSite=None; Secure");
    }
    let matching = domains.iter().find(|d| {
        let d = d.trim_start_matches('.');
        !d.is_empty()
            && !d.bytes().any(|b| matches!(b, b';' | b'\r' | b'\n'))
            && (hostname == d || hostname.ends_with(&format!(".{d}")))
    });
    if let Some(d) = matching {
        out.push_str("; Domain=");
        out.push_str(d);
    }
    out
}

/// The user session `id` belongs to; `None` when unknown or logged out.
pub(super) fn session_user(resources: &Resources, id: &str) -> Result<Option<String>, AuthError> {
    let internal = |e: &dyn std::fmt::Display| AuthError::Internal(e.to_string());
    let (db, t) = resources
        .table(SYSTEM, SESSIONS)
        .ok_or_else(|| AuthError::Internal("system.hdb_session is missing".into()))?;
    let txn = db.read().map_err(|e| internal(&e))?;
    let Some(record) = txn
        .get(&t, &Value::String(id.to_string()))
        .map_err(|e| internal(&e))?
    else {
        return Ok(None);
    };
    let v = value::deserialize(record.value).map_err(|e| internal(&e))?;
    Ok(v.get("user").and_then(Value::as_str).map(str::to_string))
}

async fn write_session(
    resources: &Resources,
    id: &str,
    user: Value,
    mode: PutMode,
) -> Result<(), AuthError> {
    let mut record = Object::new();
    record.insert("id", Value::String(id.to_string()));
    record.insert("user", user);
    super::write_system(resources, SESSIONS, record, mode, None).await
}

/// `login` (docs/operations-api.md): a new session for `caller`; returns its id (the cookie value).
pub async fn login(resources: &Arc<Resources>, caller: &Caller) -> Result<String, AuthError> {
    let user = caller
        .username
        .as_deref()
        .map(str::to_string)
        .ok_or(AuthError::MustLogin)?;
    let id = uuid::Uuid::new_v4().to_string();
    write_session(resources, &id, Value::String(user), PutMode::Insert).await?;
    Ok(id)
}

/// `logout` (docs/operations-api.md): clears the session's user, so its cookie no longer authenticates on any core.
pub async fn logout(resources: &Arc<Resources>, id: &str) -> Result<(), AuthError> {
    write_session(resources, id, Value::Null, PutMode::Replace).await?;
    resources.bump_auth_generation();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(headers: &[&str], name: &str, expected: Option<&str>) {
        assert_eq!(
            find_cookie(headers.iter().copied(), name),
            expected,
            "{headers:?}"
        );
    }

    fn check_cookie(
        (origin, host, id): (Option<&str>, Option<&str>, Option<&str>),
        (expires, domains): (Option<&str>, &[&str]),
        expected: &str,
    ) {
        let domains: Vec<String> = domains.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            cookie_text(origin, host, id, expires, &domains),
            expected,
            "{origin:?} {host:?}"
        );
    }

    #[test]
    fn set_cookie_flags() {
        check_cookie(
            (None, Some("db.example.com:9926"), Some("ab")),
            (None, &[]),
            "db_example_com_9926-hdb-session=ab; Path=/; Expires=Tue, 01 Oct 8307 19:33:20 GMT; HttpOnly",
        );
        check_cookie(
            (Some("https://app.example.com"), Some("db.example.com:9926"), Some("ab")),
            (Some("Wed, 01 Jan 2031 00:00:00 GMT"), &["other.org", ".example.com"]),
            "https___app_example_com-hdb-session=ab; Path=/; Expires=Wed, 01 Jan 2031 00:00:00 GMT; HttpOnly; SameSite=None; Secure; Domain=.example.com",
        );
        check_cookie(
            (None, Some("localhost:9926"), None),
            (None, &["localhost"]),
            "localhost_9926-hdb-session=; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; SameSite=None; Secure; Domain=localhost",
        );
        check_cookie(
            (Some("http://notexample.com"), None, Some("ab")),
            (None, &["example.com"]),
            "http___notexample_com-hdb-session=ab; Path=/; Expires=Tue, 01 Oct 8307 19:33:20 GMT; HttpOnly",
        );
    }

    #[test]
    fn cookie_names_and_values() {
        assert_eq!(
            cookie_name(Some("https://app.example.com:8443"), Some("x")),
            "https___app_example_com_8443-hdb-session"
        );
        assert_eq!(
            cookie_name(None, Some("127.0.0.1:9926")),
            "127_0_0_1_9926-hdb-session"
        );
        let n = "h-hdb-session";
        check(&["a=1; h-hdb-session=ab12-cd"], n, Some("ab12-cd"));
        check(&["a=1", "h-hdb-session=\"ff\""], n, Some("ff"));
        check(&["xh-hdb-session=ab"], n, Some("ab"));
        check(&["x-hdb-session=ab; h-hdb-session=cd"], n, Some("cd"));
        check(&["h-session=ab"], n, None);
        check(&["h-hdb-session=not hex"], n, None);
        check(&["h-hdb-session="], n, None);
        check(&[&format!("h-hdb-session={}", "a".repeat(65))], n, None);
    }
}
