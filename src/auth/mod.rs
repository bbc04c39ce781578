//! Authentication (docs/security.md): who a request is, from its credentials, and the tokens that
//! prove it later. It owns the JWT key pair, the per-core cache of authentication results and
//! the failed-login counts; it reads users and roles through the resource layer and never
//! decides what a caller may do (that is `resource::permissions`). No password, hash or token
//! ever reaches a log line from here.
//!
//! # The API other protocols call
//!
//! ```text
//! let creds = auth::Credentials { authorization, peer, peer_cn };   // or Credentials::from_request(&req)
//! match auth::authenticate(&resources, &creds).await {
//!     Ok(caller) if caller.is_anonymous() => /* no credentials: 401 "Must login" where needed */,
//!     Ok(caller) => /* check resource::permissions::{can_read, can_insert, can_update,
//!                      can_delete, check, filter_readable}(&caller, db, table, ...) */,
//!     Err(e) => /* e.status() (401, 429 after too many failures, 503 when the password
//!                  pool is full), e.message(), e.retry_after_s() */,
//! }
//! auth::authenticate_password(&resources, user, password, peer).await   // MQTT CONNECT username/password
//! auth::authenticate_request(&resources, &req).await   // HTTP: credentials, then the session cookie
//! ```
//!
//! Order (docs/security.md): mTLS client certificate (with `http.mtls`), `Authorization: Basic`,
//! `Authorization: Bearer <operation token>`, the session cookie ([`session`]), then
//! `authorizeLocal` with a loopback peer → the first super user, else anonymous. Wrong credentials are an error at once, never anonymous. Results are
//! cached per core per header value for `authentication.cacheTTL`; a user or role change bumps
//! `Resources::auth_generation`, which invalidates every core's entries. A cache hit never leaves
//! the core; an argon2id check is awaited on the password pool (`resource::blocking`,
//! docs/security.md "Password checks").

pub mod jwt;
pub mod roles;
pub mod session;
mod verify;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tidepool_io::block_on;

use crate::logging::NOTIFY;
use crate::resource::permissions::Permissions;
use crate::resource::tables::SYSTEM;
use crate::resource::{users, Caller, Resources, Validation};
use crate::store::{PutMode, WriteOp, WriteRequest};
use crate::value::{self, Object, Value};

pub use jwt::{Claims, Keys, TokenError};

const USERS: &str = "hdb_user";
/// Cached authentication results per core; when full, the cache is emptied (a burst of distinct
/// credentials costs re-verification, never memory).
const CACHE_ENTRIES_MAX: usize = 4096;
/// (source address, user name) pairs tracked for failed logins; when full, expired entries are
/// dropped, then the oldest (docs/security.md "Failed logins").
const FAILED_LOGIN_ENTRIES_MAX: usize = 10_000;
/// User names are counted by at most this many bytes (a longer name is its prefix).
const FAILED_LOGIN_NAME_BYTES_MAX: usize = 256;
/// Password-hash upgrades (sha256 → argon2id at login) running at once; more wait for a later
/// login.
const HASH_UPGRADES_MAX: usize = 2;
/// `Authorization` headers longer than this are malformed (a token is ~700 bytes).
const AUTHORIZATION_BYTES_MAX: usize = 8192;

/// Why a request was not authenticated; each maps to docs/security.md's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No credentials where they are needed (callers produce this; `authenticate` returns an
    /// anonymous caller instead).
    MustLogin,
    /// Bad password, unknown user, malformed `Authorization` header.
    LoginFailed,
    /// `create_authentication_tokens` with a wrong username or password.
    InvalidCredentials,
    InvalidToken,
    TokenExpired,
    Inactive,
    /// Too many failed logins for this user name from this address in the current window;
    /// the window ends in `retry_after_s` seconds.
    TooManyAttempts {
        retry_after_s: u64,
    },
    /// The password-check threads are all busy and their queue is full (docs/security.md
    /// "Password checks"): 503 with `Retry-After`, nothing counted against the user.
    Busy,
    /// Keys or the user table could not be read.
    Internal(String),
}

impl From<crate::resource::Busy> for AuthError {
    fn from(e: crate::resource::Busy) -> Self {
        match e {
            crate::resource::Busy::Full => AuthError::Busy,
            crate::resource::Busy::Failed => AuthError::Internal(e.message().to_string()),
        }
    }
}

impl AuthError {
    pub fn status(&self) -> u16 {
        match self {
            AuthError::TooManyAttempts { .. } => 429,
            AuthError::Busy => 503,
            AuthError::Internal(_) => 500,
            _ => 401,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            AuthError::MustLogin => "Must login",
            AuthError::LoginFailed => "Login failed",
            AuthError::InvalidCredentials => "invalid credentials",
            AuthError::InvalidToken => "invalid token",
            AuthError::TokenExpired => "token expired",
            AuthError::Inactive => "User is not active",
            AuthError::TooManyAttempts { .. } => "Too many failed logins; try again later",
            AuthError::Busy => "Server busy; try again later",
            AuthError::Internal(m) => m,
        }
    }

    /// Seconds a client should wait before trying again (`Retry-After`), for 429 and 503.
    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            AuthError::TooManyAttempts { retry_after_s } => Some(*retry_after_s),
            AuthError::Busy => Some(crate::resource::blocking::BUSY_RETRY_AFTER_S),
            _ => None,
        }
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

/// What a request offers to prove who it is.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    /// The `Authorization` header value.
    pub authorization: Option<&'a str>,
    pub peer: SocketAddr,
    /// Subject CN of a verified client certificate.
    pub peer_cn: Option<&'a str>,
}

impl<'a> Credentials<'a> {
    pub fn from_request(req: &crate::protocol::http::Request<'a>) -> Self {
        Credentials {
            authorization: req.header_str("authorization"),
            peer: req.peer,
            peer_cn: req.peer_cn,
        }
    }
}

/// Settings read once from `authentication.*`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub authorize_local: bool,
    pub cache_ttl: Duration,
    pub operation_token_timeout: Duration,
    pub refresh_token_timeout: Duration,
    pub keys_dir: PathBuf,
}

impl Settings {
    fn read(resources: &Resources) -> Settings {
        let auth = &resources.config.auth;
        Settings {
            authorize_local: resources.config.authorize_local,
            cache_ttl: auth.cache_ttl,
            operation_token_timeout: auth.operation_token_timeout,
            refresh_token_timeout: auth.refresh_token_timeout,
            keys_dir: resources.config.root.join("keys"),
        }
    }
}

/// Failed logins of one (source address, user name) in the window that began at `since` (its
/// first failure), and the password checks of that pair still running.
struct Failures {
    count: u32,
    since: Instant,
    /// Digests of the (user name, password) pairs being checked now, with how many requests
    /// wait on each: distinct ones count against the limit until their check ends, so
    /// concurrent guesses cannot outrun it; the same password sent by many connections at once
    /// counts once.
    pending: Vec<(u64, u32)>,
}

/// The outcome of a password check, for the failed-login counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Verified,
    Failed,
    /// Not decided (the pool was busy, or the request went away): counts nothing.
    Undecided,
}

/// Per-server authentication state, kept in `Resources::auth`.
pub struct State {
    /// Tells this server's cache entries from another's in the same process (tests).
    instance: u64,
    settings: OnceLock<Settings>,
    keys: OnceLock<Result<Keys, String>>,
    failures: Mutex<HashMap<(IpAddr, String), Failures>>,
    /// Password-hash upgrades in flight (at most [`HASH_UPGRADES_MAX`]).
    upgrades: Arc<AtomicUsize>,
}

impl Default for State {
    fn default() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        State {
            instance: NEXT.fetch_add(1, Ordering::Relaxed),
            settings: OnceLock::new(),
            keys: OnceLock::new(),
            failures: Mutex::new(HashMap::new()),
            upgrades: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl State {
    fn settings(&self, resources: &Resources) -> &Settings {
        self.settings.get_or_init(|| Settings::read(resources))
    }

    /// The keys if they are loaded; never waits.
    fn keys_now(&self) -> Option<&Keys> {
        self.keys.get().and_then(|k| k.as_ref().ok())
    }

    /// Loads or generates the keys; blocks (call from a plain thread only).
    fn keys_blocking(&self, dir: &std::path::Path) -> Result<&Keys, String> {
        self.keys
            .get_or_init(|| Keys::load_or_generate(dir))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Whether `user` from `ip` has used up its failed logins in the current window: the
    /// seconds until the window ends, rounded up.
    fn locked_out(
        &self,
        limits: &crate::config::AuthConfig,
        ip: IpAddr,
        user: &str,
    ) -> Option<u64> {
        let (limit, window) = (limits.failed_login_limit, limits.failed_login_window);
        if limit == 0 || window.is_zero() {
            return None;
        }
        let map = self.failures.lock().ok()?;
        let f = map.get(&(ip, failure_name(user).to_string()))?;
        let left = window.checked_sub(f.since.elapsed())?;
        (f.count >= limit).then(|| left.as_millis().div_ceil(1000).max(1) as u64)
    }

    /// Starts a password check of (`user`, the password with digest `digest`) from `ip`, or
    /// refuses it: the seconds until the window ends when the pair has used up its failed
    /// logins, 1 when its failures and the distinct checks still running reach the limit.
    /// `Ok(false)`: the limit is off, nothing is tracked.
    fn begin_check(
        &self,
        limits: &crate::config::AuthConfig,
        ip: IpAddr,
        user: &str,
        digest: u64,
    ) -> Result<bool, u64> {
        let (limit, window) = (limits.failed_login_limit, limits.failed_login_window);
        if limit == 0 || window.is_zero() {
            return Ok(false);
        }
        let Ok(mut map) = self.failures.lock() else {
            return Ok(false);
        };
        let entry = Self::entry(&mut map, (ip, failure_name(user).to_string()), window);
        if entry.count > 0 && entry.since.elapsed() >= window {
            entry.count = 0;
        }
        if entry.count >= limit {
            let left = window.saturating_sub(entry.since.elapsed());
            return Err(left.as_millis().div_ceil(1000).max(1) as u64);
        }
        let running = entry.pending.len();
        match entry.pending.iter_mut().find(|(d, _)| *d == digest) {
            Some((_, waiting)) => *waiting = waiting.saturating_add(1),
            None if entry.count as usize + running >= limit as usize => return Err(1),
            None => entry.pending.push((digest, 1)),
        }
        Ok(true)
    }

    /// Ends a check [`State::begin_check`] started (tracked), counting a failure.
    fn end_check(
        &self,
        limits: &crate::config::AuthConfig,
        ip: IpAddr,
        user: &str,
        digest: u64,
        outcome: Outcome,
    ) {
        let Ok(mut map) = self.failures.lock() else {
            return;
        };
        let key = (ip, failure_name(user).to_string());
        let Some(entry) = map.get_mut(&key) else {
            return; // dropped by the bound meanwhile
        };
        if let Some(i) = entry.pending.iter().position(|(d, _)| *d == digest) {
            entry.pending[i].1 -= 1;
            if entry.pending[i].1 == 0 {
                entry.pending.swap_remove(i);
            }
        }
        if outcome == Outcome::Failed {
            Self::count_failure(entry, limits.failed_login_window);
        }
        if entry.count == 0 && entry.pending.is_empty() {
            map.remove(&key);
        }
    }

    /// The pair's entry, made room for within [`FAILED_LOGIN_ENTRIES_MAX`]: when full, expired
    /// entries without checks running are dropped, then the oldest.
    fn entry(
        map: &mut HashMap<(IpAddr, String), Failures>,
        key: (IpAddr, String),
        window: Duration,
    ) -> &mut Failures {
        if map.len() >= FAILED_LOGIN_ENTRIES_MAX && !map.contains_key(&key) {
            map.retain(|_, f| f.since.elapsed() < window || !f.pending.is_empty());
            if map.len() >= FAILED_LOGIN_ENTRIES_MAX {
                let oldest = map
                    .iter()
                    .min_by_key(|(_, f)| f.since)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    map.remove(&oldest);
                }
            }
        }
        map.entry(key).or_insert_with(|| Failures {
            count: 0,
            since: Instant::now(),
            pending: Vec::new(),
        })
    }

    fn count_failure(entry: &mut Failures, window: Duration) {
        if entry.count == 0 || entry.since.elapsed() >= window {
            entry.count = 0;
            entry.since = Instant::now();
        }
        entry.count = entry.count.saturating_add(1);
    }

    #[cfg(test)]
    fn record_failure(&self, limits: &crate::config::AuthConfig, ip: IpAddr, user: &str) {
        let (limit, window) = (limits.failed_login_limit, limits.failed_login_window);
        if limit == 0 || window.is_zero() {
            return;
        }
        let Ok(mut map) = self.failures.lock() else {
            return;
        };
        let entry = Self::entry(&mut map, (ip, failure_name(user).to_string()), window);
        Self::count_failure(entry, window);
    }

    /// The (address, user name) pairs counted now (for tests of the bound).
    #[cfg(test)]
    fn failure_entries(&self) -> usize {
        self.failures.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// The part of a user name failed logins are counted by.
fn failure_name(user: &str) -> &str {
    let mut end = user.len().min(FAILED_LOGIN_NAME_BYTES_MAX);
    while !user.is_char_boundary(end) {
        end -= 1;
    }
    &user[..end]
}

struct CacheEntry {
    /// The server instance the entry belongs to (tests run several in one process).
    instance: u64,
    caller: Caller,
    generation: u64,
    expires: Instant,
}

thread_local! {
    /// Header value → result. Per core: no lock on the request path. Keyed by the header alone
    /// so a lookup borrows it instead of building a key; the instance is checked on a hit.
    /// At most `CACHE_ENTRIES_MAX` entries, each a credential that passed, so a fast hash is
    /// safe here.
    static CACHE: RefCell<HashMap<String, CacheEntry, foldhash::fast::RandomState>> =
        RefCell::new(HashMap::default());
}

fn cache_get(resources: &Resources, key: &str) -> Option<Caller> {
    let generation = resources.auth_generation();
    CACHE.with(|c| {
        let c = c.borrow();
        let e = c.get(key)?;
        // The core's recent clock reading (`tidepool_io::clock`) is fine for an expiry check.
        (e.instance == resources.auth.instance
            && e.generation == generation
            && e.expires > tidepool_io::clock::recent())
        .then(|| e.caller.clone())
    })
}

fn cache_put(resources: &Resources, key: &str, caller: &Caller, ttl: Duration) {
    let entry = CacheEntry {
        instance: resources.auth.instance,
        caller: caller.clone(),
        generation: resources.auth_generation(),
        expires: Instant::now() + ttl,
    };
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= CACHE_ENTRIES_MAX {
            c.clear();
        }
        c.insert(key.to_string(), entry);
    });
}

/// A stored user, as authentication needs it.
struct UserRecord {
    username: String,
    password: String,
    role: String,
    active: bool,
    refresh_token: Option<String>,
}

fn user_from(v: &Value) -> Option<UserRecord> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    Some(UserRecord {
        username: s("username")?,
        password: s("password").unwrap_or_default(),
        role: s("role").unwrap_or_default(),
        active: !matches!(v.get("active"), Some(Value::Bool(false))),
        refresh_token: s("refresh_token"),
    })
}

fn find_user(resources: &Resources, username: &str) -> Result<Option<UserRecord>, AuthError> {
    let (db, t) = resources
        .table(SYSTEM, USERS)
        .ok_or_else(|| AuthError::Internal("system.hdb_user is missing".into()))?;
    let txn = db.read().map_err(|e| AuthError::Internal(e.to_string()))?;
    let record = txn
        .get(&t, &Value::String(username.to_string()))
        .map_err(|e| AuthError::Internal(e.to_string()))?;
    match record {
        Some(r) => {
            let v = value::deserialize(r.value).map_err(|e| AuthError::Internal(e.to_string()))?;
            Ok(user_from(&v))
        }
        None => Ok(None),
    }
}

fn all_users(resources: &Resources) -> Result<Vec<UserRecord>, AuthError> {
    let internal = |e: &dyn std::fmt::Display| AuthError::Internal(e.to_string());
    let (db, t) = resources
        .table(SYSTEM, USERS)
        .ok_or_else(|| AuthError::Internal("system.hdb_user is missing".into()))?;
    let txn = db.read().map_err(|e| internal(&e))?;
    let mut out = Vec::new();
    for item in txn.scan(&t, false).map_err(|e| internal(&e))? {
        let (_, record) = item.map_err(|e| internal(&e))?;
        let v = value::deserialize(record.value).map_err(|e| internal(&e))?;
        out.extend(user_from(&v));
    }
    Ok(out)
}

/// The permissions of the role with this id (or name); unknown roles grant nothing.
fn role_permissions(resources: &Resources, role: &str) -> Result<Permissions, AuthError> {
    let roles = users::list_roles(resources).map_err(|e| AuthError::Internal(e.message))?;
    Ok(roles
        .iter()
        .find(|r| {
            r.get("id").and_then(Value::as_str) == Some(role)
                || r.get("role").and_then(Value::as_str) == Some(role)
        })
        .and_then(|r| r.get("permission"))
        .map(Permissions::from_role)
        .unwrap_or_default())
}

fn caller_for(resources: &Resources, user: &UserRecord) -> Result<Caller, AuthError> {
    if !user.active {
        return Err(AuthError::Inactive);
    }
    Ok(Caller::with_role(
        &user.username,
        role_permissions(resources, &user.role)?,
    ))
}

/// Who an HTTP request is (docs/security.md): its credentials, then its session cookie (docs/security.md).
/// A cached result is answered without leaving the core; a password check not cached waits for
/// the password pool (docs/security.md "Password checks").
pub async fn authenticate_request(
    resources: &Resources,
    req: &crate::protocol::http::Request<'_>,
) -> Result<Caller, AuthError> {
    authenticate_with(
        resources,
        &Credentials::from_request(req),
        session::session_id(resources, req),
    )
    .await
}

/// Who the request is (docs/security.md). `Ok(anonymous)` when it offers nothing; wrong credentials
/// are an error, never anonymous.
pub async fn authenticate(
    resources: &Resources,
    creds: &Credentials<'_>,
) -> Result<Caller, AuthError> {
    authenticate_with(resources, creds, None).await
}

/// The session's user, cached like credentials. A session that is unknown or logged out is no
/// credential at all (a browser keeps the cookie after `logout`), so the request goes on as if
/// it had none.
fn session_caller(resources: &Resources, id: &str) -> Result<Option<Caller>, AuthError> {
    let key = format!("\u{0}session:{id}");
    if let Some(c) = cache_get(resources, &key) {
        return Ok(Some(c));
    }
    let Some(username) = session::session_user(resources, id)? else {
        return Ok(None);
    };
    let Some(user) = find_user(resources, &username)? else {
        return Ok(None);
    };
    let caller = caller_for(resources, &user)?;
    let ttl = resources.auth.settings(resources).cache_ttl;
    cache_put(resources, &key, &caller, ttl);
    Ok(Some(caller))
}

async fn authenticate_with(
    resources: &Resources,
    creds: &Credentials<'_>,
    session: Option<&str>,
) -> Result<Caller, AuthError> {
    let settings = resources.auth.settings(resources);
    if let (Some(cn), Some(mtls)) = (creds.peer_cn, &resources.config.http.mtls) {
        return authenticate_certificate(resources, cn, mtls);
    }
    if let Some(header) = creds.authorization.filter(|h| !h.trim().is_empty()) {
        if let Some(c) = cache_get(resources, header) {
            return Ok(c);
        }
        if header.len() > AUTHORIZATION_BYTES_MAX {
            return Err(AuthError::LoginFailed);
        }
        let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header, ""));
        let rest = rest.trim();
        let (caller, ttl) = if scheme.eq_ignore_ascii_case("basic") {
            let decoded = crate::util::decode_base64(rest)
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or(AuthError::LoginFailed)?;
            let (user, password) = decoded.split_once(':').ok_or(AuthError::LoginFailed)?;
            (
                authenticate_password(resources, user, password, creds.peer).await?,
                settings.cache_ttl,
            )
        } else if scheme.eq_ignore_ascii_case("bearer") {
            let (caller, exp) = authenticate_token(resources, rest)?;
            let left = Duration::from_secs(exp.saturating_sub(jwt::now_s()));
            (caller, settings.cache_ttl.min(left))
        } else {
            return Err(AuthError::LoginFailed);
        };
        cache_put(resources, header, &caller, ttl);
        return Ok(caller);
    }
    if let Some(id) = session {
        if let Some(caller) = session_caller(resources, id)? {
            return Ok(caller);
        }
    }
    if settings.authorize_local && creds.peer.ip().is_loopback() {
        return local_super_user(resources);
    }
    Ok(Caller::anonymous())
}

/// The first active super user, for `authorizeLocal` loopback requests.
fn local_super_user(resources: &Resources) -> Result<Caller, AuthError> {
    const KEY: &str = "\u{0}local";
    if let Some(c) = cache_get(resources, KEY) {
        return Ok(c);
    }
    let mut found = None;
    for user in all_users(resources)? {
        if user.active && role_permissions(resources, &user.role)?.super_user {
            found = Some(Caller::super_user(&user.username));
            break;
        }
    }
    // Before any user exists (a store opened without `start`), loopback is still the admin.
    let caller = found.unwrap_or_else(|| Caller::super_user("HDB_ADMIN"));
    let ttl = resources.auth.settings(resources).cache_ttl;
    cache_put(resources, KEY, &caller, ttl);
    Ok(caller)
}

/// A verified client certificate with common name `cn`, on a listener whose mTLS settings are
/// `mtls` (`http.mtls` or `mqtt.network.mtls`): its user is `mtls.user` or else the CN.
pub fn authenticate_certificate(
    resources: &Resources,
    cn: &str,
    mtls: &crate::config::MtlsConfig,
) -> Result<Caller, AuthError> {
    let name = mtls.user.as_deref().unwrap_or(cn);
    let key = format!("\u{0}cn:{name}");
    if let Some(c) = cache_get(resources, &key) {
        return Ok(c);
    }
    let user = find_user(resources, name)?.ok_or(AuthError::LoginFailed)?;
    let caller = caller_for(resources, &user)?;
    let settings = resources.auth.settings(resources);
    cache_put(resources, &key, &caller, settings.cache_ttl);
    Ok(caller)
}

/// A username and password (Basic, MQTT CONNECT, `create_authentication_tokens`, `login`).
/// Failures count against (`peer`'s address, `username`): past `authentication.failedLoginLimit`
/// in `authentication.failedLoginWindow` that pair is refused (429) until the window ends,
/// while other user names from the same address, and the same name from other addresses, are
/// checked as usual (docs/security.md "Failed logins").
pub async fn authenticate_password(
    resources: &Resources,
    username: &str,
    password: &str,
    peer: SocketAddr,
) -> Result<Caller, AuthError> {
    let ip = peer.ip();
    let limits = &resources.config.auth;
    if let Some(retry_after_s) = resources.auth.locked_out(limits, ip, username) {
        return Err(AuthError::TooManyAttempts { retry_after_s });
    }
    // Verified passwords are cached per core like headers: an argon2id check costs tens of ms
    // of a pool thread, so MQTT CONNECTs, logins and token requests pay it once per `cacheTTL`.
    // The key is a digest, never the password.
    let digest = Sha256::digest(format!("{username}\u{0}{password}").as_bytes());
    let key = format!("\u{0}pw:{}", crate::util::hex(&digest));
    if let Some(c) = cache_get(resources, &key) {
        return Ok(c);
    }
    let short = u64::from_le_bytes(digest[..8].try_into().unwrap_or_default());
    let tracked = resources
        .auth
        .begin_check(limits, ip, username, short)
        .map_err(|retry_after_s| AuthError::TooManyAttempts { retry_after_s })?;
    let mut check = Check {
        resources,
        ip,
        username,
        digest: short,
        tracked,
        outcome: Outcome::Undecided,
    };
    let user = find_user(resources, username)?;
    let verified = match &user {
        Some(user) => verify::password_matches(short, password, &user.password).await?,
        // An unknown name costs the check a wrong password costs, so how long the answer takes
        // does not tell whether the name exists (docs/security.md "Password checks").
        None => verify::unknown_user(users::HashFunction::of(resources), password).await?,
    };
    match user {
        Some(user) if verified => {
            check.outcome = Outcome::Verified;
            let caller = caller_for(resources, &user)?;
            let ttl = resources.auth.settings(resources).cache_ttl;
            cache_put(resources, &key, &caller, ttl);
            upgrade_hash(resources, &user, password);
            Ok(caller)
        }
        _ => {
            check.outcome = Outcome::Failed;
            crate::logging::connection_event(
                ip,
                format_args!("failed login for user {username:?} from {ip}"),
            );
            Err(AuthError::LoginFailed)
        }
    }
}

/// A password check in progress: ends it in the failed-login counters however the request
/// ends (answered, refused busy, or dropped with its connection).
struct Check<'a> {
    resources: &'a Resources,
    ip: IpAddr,
    username: &'a str,
    digest: u64,
    tracked: bool,
    outcome: Outcome,
}

impl Drop for Check<'_> {
    fn drop(&mut self) {
        if self.tracked {
            let r = self.resources;
            r.auth.end_check(
                &r.config.auth,
                self.ip,
                self.username,
                self.digest,
                self.outcome,
            );
        }
    }
}

/// After a successful login with a hash older than the configured function (salted SHA-256
/// while `authentication.hashFunction` is argon2id), rehashes the password on a helper thread
/// and stores it only if the user's stored hash is still the one that verified: the writer
/// checks that ([`WriteOp::Swap`]), so an `alter_user` that changed the password meanwhile
/// wins. At most [`HASH_UPGRADES_MAX`] run at once; a skipped upgrade happens at a later login.
fn upgrade_hash(resources: &Resources, user: &UserRecord, password: &str) {
    if user.password.starts_with("$argon2")
        || users::HashFunction::of(resources) != users::HashFunction::Argon2id
    {
        return;
    }
    let Some((db, _)) = resources.table(SYSTEM, USERS) else {
        return;
    };
    let running = resources.auth.upgrades.clone();
    if running.fetch_add(1, Ordering::AcqRel) >= HASH_UPGRADES_MAX {
        running.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let (username, old, password) = (
        user.username.clone(),
        user.password.clone(),
        password.to_string(),
    );
    let spawned = std::thread::Builder::new()
        .name("hash-upgrade".into())
        .spawn(move || {
            let new = users::hash_password_with(&password, users::HashFunction::Argon2id);
            let request = WriteRequest {
                ops: vec![WriteOp::Swap {
                    table: USERS.to_string(),
                    key: Value::String(username.clone()),
                    attribute: "password".to_string(),
                    expected: Value::String(old),
                    value: Value::String(new),
                }],
                user: Some(username),
                extras: None,
            };
            // Waiting here is fine: this is a plain thread, not a core.
            if let Ok(reply) = db.submit(request) {
                let _ = block_on(reply);
            }
            running.fetch_sub(1, Ordering::AcqRel);
        });
    if spawned.is_err() {
        resources.auth.upgrades.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An operation token (`Bearer`): the caller with its user's current role, and the token's
/// expiry (seconds since the epoch).
pub fn authenticate_token(resources: &Resources, token: &str) -> Result<(Caller, u64), AuthError> {
    let keys = resources.auth.keys_now().ok_or(AuthError::InvalidToken)?;
    let claims = keys.verify(token).map_err(token_error)?;
    if claims.sub != "operation" {
        return Err(AuthError::InvalidToken);
    }
    let user = find_user(resources, &claims.username)?.ok_or(AuthError::InvalidToken)?;
    Ok((caller_for(resources, &user)?, claims.exp))
}

fn token_error(e: TokenError) -> AuthError {
    match e {
        TokenError::Expired => AuthError::TokenExpired,
        TokenError::Invalid => AuthError::InvalidToken,
    }
}

fn token_hash(token: &str) -> String {
    crate::util::hex(&Sha256::digest(token.as_bytes()))
}

/// The keys, loading or generating them off the core if start-up has not finished that yet.
async fn keys(resources: &Arc<Resources>) -> Result<&Keys, AuthError> {
    if let Some(k) = resources.auth.keys_now() {
        return Ok(k);
    }
    let r = resources.clone();
    let dir = resources.auth.settings(resources).keys_dir.clone();
    crate::resource::run_blocking(move || {
        let _ = r.auth.keys_blocking(&dir);
    })
    .await?;
    resources
        .auth
        .keys
        .get()
        .ok_or_else(|| AuthError::Internal("JWT keys are not available".into()))?
        .as_ref()
        .map_err(|e| AuthError::Internal(e.clone()))
}

fn claims_for(caller: &Caller, sub: &str, lifetime: Duration) -> Claims {
    let now = jwt::now_s();
    Claims {
        username: caller.username.as_deref().unwrap_or_default().to_string(),
        super_user: caller.super_user,
        cluster_user: caller.permissions.cluster_user,
        iat: now,
        exp: now.saturating_add(lifetime.as_secs().max(1)),
        sub: sub.to_string(),
        jti: uuid::Uuid::new_v4().simple().to_string(),
    }
}

/// `create_authentication_tokens` (docs/operations-api.md): an operation and a refresh token for `caller`, whose
/// refresh-token hash replaces the user's previous one (only the newest is accepted).
pub async fn create_tokens(
    resources: &Arc<Resources>,
    caller: &Caller,
) -> Result<(String, String), AuthError> {
    let username = caller.username.clone().ok_or(AuthError::MustLogin)?;
    let settings = resources.auth.settings(resources).clone();
    let keys = keys(resources).await?;
    let operation = keys
        .sign(&claims_for(
            caller,
            "operation",
            settings.operation_token_timeout,
        ))
        .map_err(AuthError::Internal)?;
    let refresh = keys
        .sign(&claims_for(
            caller,
            "refresh",
            settings.refresh_token_timeout,
        ))
        .map_err(AuthError::Internal)?;
    store_refresh_hash(resources, &username, &token_hash(&refresh)).await?;
    Ok((operation, refresh))
}

async fn store_refresh_hash(
    resources: &Resources,
    username: &str,
    hash: &str,
) -> Result<(), AuthError> {
    let mut record = Object::new();
    record.insert("username", Value::String(username.to_string()));
    record.insert("refresh_token", Value::String(hash.to_string()));
    write_system(resources, USERS, record, PutMode::Update, Some(username)).await
}

/// Writes one record of a system table (validated as a whole record unless `mode` merges).
async fn write_system(
    resources: &Resources,
    table: &str,
    mut record: Object,
    mode: PutMode,
    user: Option<&str>,
) -> Result<(), AuthError> {
    let (db, t) = resources
        .table(SYSTEM, table)
        .ok_or_else(|| AuthError::Internal(format!("system.{table} is missing")))?;
    let validation = match mode {
        PutMode::Update | PutMode::Upsert => Validation::Partial,
        PutMode::Replace | PutMode::Insert => Validation::Full,
    };
    crate::resource::validate_record(&t.def, &mut record, validation)
        .map_err(AuthError::Internal)?;
    crate::resource::write(
        &db,
        WriteRequest {
            ops: vec![WriteOp::Put {
                table: table.to_string(),
                key: None,
                record: Value::Object(record),
                mode,
                expires_in_s: None,
            }],
            user: user.map(str::to_string),
            extras: None,
        },
    )
    .await
    .map_err(|e| AuthError::Internal(e.to_string()))?;
    Ok(())
}

/// `refresh_operation_token` (docs/operations-api.md): a new operation token for the newest refresh token of an
/// active user.
pub async fn refresh_operation_token(
    resources: &Arc<Resources>,
    refresh_token: &str,
) -> Result<String, AuthError> {
    let keys = keys(resources).await?;
    let claims = keys.verify(refresh_token).map_err(token_error)?;
    if claims.sub != "refresh" {
        return Err(AuthError::InvalidToken);
    }
    let user = find_user(resources, &claims.username)?.ok_or(AuthError::InvalidToken)?;
    let caller = caller_for(resources, &user)?;
    let expected = user.refresh_token.as_deref().unwrap_or("");
    let got = token_hash(refresh_token);
    let same = expected.len() == got.len()
        && expected
            .bytes()
            .zip(got.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Err(AuthError::InvalidToken);
    }
    let lifetime = resources.auth.settings(resources).operation_token_timeout;
    keys.sign(&claims_for(&caller, "operation", lifetime))
        .map_err(AuthError::Internal)
}

/// First start (README.md#running-it): creates the super user when there are no users, and loads (or generates,
/// on a background thread so start-up does not wait) the JWT key pair. Called once, before the
/// cores serve requests, from a plain thread.
pub fn start(resources: &Arc<Resources>) -> Result<(), String> {
    let existing = all_users(resources).map_err(|e| e.to_string())?;
    if existing.is_empty() {
        let name = std::env::var("HDB_ADMIN_USERNAME")
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "HDB_ADMIN".to_string());
        let given = std::env::var("HDB_ADMIN_PASSWORD")
            .ok()
            .filter(|p| !p.is_empty());
        let password = given
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let admin = Caller::super_user("system");
        let added = block_on(users::add_user(
            resources,
            &admin,
            &name,
            &password,
            "super_user",
            true,
        ));
        match added {
            Ok(_) => {}
            // Replication from a peer (or a clone) brought the user in while we hashed the
            // password: the peer's user stands, and nothing was generated here.
            Err(e) if e.status == 409 => {
                tracing::info!(target: NOTIFY, "super user {name} arrived from a peer; not created here");
                return finish_start(resources);
            }
            Err(e) => return Err(format!("cannot create the super user: {}", e.message)),
        }
        if given.is_some() {
            tracing::info!(target: NOTIFY, "created super user {name} from HDB_ADMIN_USERNAME/HDB_ADMIN_PASSWORD");
        } else {
            // docs/quickstart.md "Credentials": never logged; a file only its owner can read.
            let path = write_initial_password(&resources.config.root, &password)
                .map_err(|e| format!("cannot write the generated super user password: {e}"))?;
            tracing::info!(target: NOTIFY, "created super user {name}; its generated password is in {} (readable by its owner only; change it with alter_user)", path.display());
        }
    }
    finish_start(resources)
}

/// The rest of [`start`] once the users are there: role files, then the key pair.
fn finish_start(resources: &Arc<Resources>) -> Result<(), String> {
    let applied = roles::apply(resources)?;
    if applied > 0 {
        tracing::info!("created or updated {applied} roles from the application's role files");
    }
    let r = resources.clone();
    let dir = resources.auth.settings(resources).keys_dir.clone();
    std::thread::Builder::new()
        .name("jwt-keys".into())
        .spawn(move || {
            if let Err(e) = r.auth.keys_blocking(&dir) {
                tracing::error!("JWT keys: {e}; token operations will fail");
            }
        })
        .map_err(|e| format!("cannot start the key thread: {e}"))?;
    Ok(())
}

/// Where the generated first super user's password is written (docs/quickstart.md "Credentials").
pub const INITIAL_PASSWORD_FILE: &str = "keys/.initial-admin-password";

/// Writes `password` to `<root>/keys/.initial-admin-password`, created anew with mode 0600
/// (a file left by an earlier first start is replaced); returns its path.
fn write_initial_password(
    root: &std::path::Path,
    password: &str,
) -> std::io::Result<std::path::PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = root.join(INITIAL_PASSWORD_FILE);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&path); // from an earlier first start whose store was removed
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    file.write_all(format!("{password}\n").as_bytes())?;
    file.sync_all()?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(dir: &std::path::Path, authorize_local: bool) -> Arc<Resources> {
        let local = if authorize_local { "true" } else { "false" };
        resources_with(dir, &[("authentication_authorizeLocal", local)])
    }

    /// A store with the system tables and the example app, with `settings` (flat keys, YAML
    /// values) over the defaults.
    fn resources_with(dir: &std::path::Path, settings: &[(&str, &str)]) -> Arc<Resources> {
        let store =
            crate::store::Store::open(crate::store::StoreOptions::new(dir), Arc::new(|_| {}))
                .expect("store");
        store
            .apply_schema(&crate::server::system_tables())
            .expect("system tables");
        let mut tree = crate::config::ConfigTree::defaults();
        for (key, value) in settings {
            assert!(
                tree.set_flat(key, crate::config::parse_override_value(value)),
                "{key}"
            );
        }
        let config = crate::config::Config::from_tree(&tree, dir, 1).expect("config");
        let app = crate::schema::load_app(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/app"
        )))
        .expect("example app");
        Arc::new(Resources::new(store, Arc::new(app), Arc::new(config)).with_config_tree(tree))
    }

    fn peer(ip: &str) -> SocketAddr {
        format!("{ip}:5000").parse().expect("addr")
    }

    fn basic(user: &str, password: &str) -> String {
        use std::fmt::Write;
        // Base64 by hand: the test must not trust the decoder it tests.
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let raw = format!("{user}:{password}").into_bytes();
        let mut out = String::from("Basic ");
        for chunk in raw.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    let _ = out.write_char(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    /// `expected`: Ok(username or "" for anonymous) or the error.
    fn check(
        r: &Resources,
        authorization: Option<&str>,
        ip: &str,
        expected: Result<&str, AuthError>,
    ) {
        let creds = Credentials {
            authorization,
            peer: peer(ip),
            peer_cn: None,
        };
        let got = block_on(authenticate(r, &creds))
            .map(|c| c.username.as_deref().unwrap_or_default().to_string());
        assert_eq!(
            got,
            expected.map(str::to_string),
            "{authorization:?} from {ip}"
        );
    }

    #[test]
    fn credentials_in_order() {
        let dir = tempfile::tempdir().expect("temp");
        let r = resources(dir.path(), true);
        std::env::remove_var("HDB_ADMIN_USERNAME");
        start(&r).expect("start");
        let admin = Caller::super_user("system");
        block_on(users::add_user(
            &r,
            &admin,
            "ann",
            "pw1",
            "super_user",
            true,
        ))
        .expect("ann");
        block_on(users::add_user(
            &r,
            &admin,
            "off",
            "pw2",
            "super_user",
            false,
        ))
        .expect("off");

        check(&r, Some(&basic("ann", "pw1")), "10.0.0.1", Ok("ann"));
        check(
            &r,
            Some(&basic("ann", "nope")),
            "10.0.0.1",
            Err(AuthError::LoginFailed),
        );
        check(
            &r,
            Some(&basic("who", "pw1")),
            "10.0.0.1",
            Err(AuthError::LoginFailed),
        );
        check(
            &r,
            Some(&basic("off", "pw2")),
            "10.0.0.1",
            Err(AuthError::Inactive),
        );
        check(
            &r,
            Some("Basic !!!"),
            "10.0.0.1",
            Err(AuthError::LoginFailed),
        );
        check(
            &r,
            Some("Digest x"),
            "10.0.0.1",
            Err(AuthError::LoginFailed),
        );
        check(
            &r,
            Some("Bearer abc"),
            "10.0.0.1",
            Err(AuthError::InvalidToken),
        );
        check(&r, None, "10.0.0.1", Ok(""));
        // authorizeLocal: loopback without credentials is the first super user.
        check(&r, None, "127.0.0.1", Ok("HDB_ADMIN"));
        // Wrong credentials on loopback are still wrong.
        check(
            &r,
            Some(&basic("ann", "nope")),
            "127.0.0.1",
            Err(AuthError::LoginFailed),
        );

        // A cached success is dropped when users change.
        check(&r, Some(&basic("ann", "pw1")), "10.0.0.2", Ok("ann"));
        block_on(users::alter_user(
            &r,
            &admin,
            "ann",
            None,
            None,
            Some(false),
        ))
        .expect("alter");
        check(
            &r,
            Some(&basic("ann", "pw1")),
            "10.0.0.2",
            Err(AuthError::Inactive),
        );

        r.store.close();
    }

    /// Resources whose failed-login limit is 3 in a 60 s window.
    fn three_failures_a_minute(dir: &std::path::Path) -> Arc<Resources> {
        resources_with(
            dir,
            &[
                ("authentication_failedLoginLimit", "3"),
                ("authentication_failedLoginWindow", "60s"),
            ],
        )
    }

    #[test]
    fn failed_logins_count_per_address_and_user_name() {
        let dir = tempfile::tempdir().expect("temp");
        let r = three_failures_a_minute(dir.path());
        start(&r).expect("start");
        let admin = Caller::super_user("system");
        for name in ["ann", "bob"] {
            block_on(users::add_user(&r, &admin, name, "pw", "super_user", true)).expect("user");
        }
        for _ in 0..3 {
            check(
                &r,
                Some(&basic("ann", "bad")),
                "10.9.9.9",
                Err(AuthError::LoginFailed),
            );
        }
        // ann from that address is refused without a check, even with the right password...
        let creds = Credentials {
            authorization: Some(&basic("ann", "pw")),
            peer: peer("10.9.9.9"),
            peer_cn: None,
        };
        match block_on(authenticate(&r, &creds)) {
            Err(AuthError::TooManyAttempts { retry_after_s }) => {
                assert!((1..=60).contains(&retry_after_s), "{retry_after_s}")
            }
            other => panic!("expected 429, got {other:?}"),
        }
        // ...but bob from the same address, and ann from another, are checked as usual.
        check(&r, Some(&basic("bob", "pw")), "10.9.9.9", Ok("bob"));
        check(&r, Some(&basic("ann", "pw")), "10.9.9.8", Ok("ann"));

        // The table of counters is bounded: a flood of distinct names keeps it at its maximum.
        for i in 0..FAILED_LOGIN_ENTRIES_MAX + 50 {
            r.auth.record_failure(
                &r.config.auth,
                "10.1.1.1".parse().expect("ip"),
                &format!("u{i}"),
            );
        }
        assert_eq!(r.auth.failure_entries(), FAILED_LOGIN_ENTRIES_MAX);
        // Long names are counted by their prefix, so they cannot grow an entry.
        assert_eq!(failure_name(&"é".repeat(200)).len(), 256);
        r.store.close();
    }

    /// Checks still running count against the limit by distinct password (docs/security.md
    /// "Failed logins"); a check that ends undecided (busy pool, request gone) counts nothing.
    #[test]
    fn checks_in_flight_count_against_the_limit() {
        let dir = tempfile::tempdir().expect("temp");
        let r = three_failures_a_minute(dir.path());
        let (limits, ip) = (&r.config.auth, peer("10.2.2.2").ip());
        // Undecided checks leave nothing behind.
        for _ in 0..10 {
            assert_eq!(r.auth.begin_check(limits, ip, "ann", 7), Ok(true));
            r.auth.end_check(limits, ip, "ann", 7, Outcome::Undecided);
        }
        assert_eq!(r.auth.failure_entries(), 0);
        // One failure and two distinct passwords in flight reach the limit of 3...
        assert_eq!(r.auth.begin_check(limits, ip, "ann", 1), Ok(true));
        r.auth.end_check(limits, ip, "ann", 1, Outcome::Failed);
        assert_eq!(r.auth.begin_check(limits, ip, "ann", 2), Ok(true));
        assert_eq!(r.auth.begin_check(limits, ip, "ann", 3), Ok(true));
        // ...so a third distinct one waits (Retry-After 1), while the same password as one
        // in flight joins it, and another user name is not affected.
        assert_eq!(r.auth.begin_check(limits, ip, "ann", 4), Err(1));
        assert_eq!(r.auth.begin_check(limits, ip, "ann", 2), Ok(true));
        assert_eq!(r.auth.begin_check(limits, ip, "bob", 4), Ok(true));
        r.auth.end_check(limits, ip, "bob", 4, Outcome::Verified);
        // Password 2 verifies (both waiters), 3 fails: two failures, nothing running.
        r.auth.end_check(limits, ip, "ann", 2, Outcome::Verified);
        r.auth.end_check(limits, ip, "ann", 2, Outcome::Verified);
        r.auth.end_check(limits, ip, "ann", 3, Outcome::Failed);
        assert_eq!(r.auth.locked_out(limits, ip, "ann"), None);
        assert_eq!(r.auth.begin_check(limits, ip, "ann", 5), Ok(true));
        r.auth.end_check(limits, ip, "ann", 5, Outcome::Failed);
        assert!(r.auth.locked_out(limits, ip, "ann").is_some());
        assert!(
            matches!(r.auth.begin_check(limits, ip, "ann", 6), Err(s) if (1..=60).contains(&s))
        );
        r.store.close();
    }

    #[test]
    fn a_limit_of_zero_never_refuses() {
        let dir = tempfile::tempdir().expect("temp");
        let r = resources_with(dir.path(), &[("authentication_failedLoginLimit", "0")]);
        start(&r).expect("start");
        let admin = Caller::super_user("system");
        block_on(users::add_user(&r, &admin, "ann", "pw", "super_user", true)).expect("ann");
        for _ in 0..40 {
            check(
                &r,
                Some(&basic("ann", "bad")),
                "10.9.9.9",
                Err(AuthError::LoginFailed),
            );
        }
        check(&r, Some(&basic("ann", "pw")), "10.9.9.9", Ok("ann"));
        assert_eq!(r.auth.failure_entries(), 0);
        r.store.close();
    }

    /// A sha256 hash is upgraded to argon2id at login only while it is still the stored one.
    #[test]
    fn hash_upgrade_is_conditional() {
        let dir = tempfile::tempdir().expect("temp");
        let r = resources_with(dir.path(), &[("authentication_hashFunction", "argon2id")]);
        start(&r).expect("start");
        let admin = Caller::super_user("system");
        block_on(users::add_user(&r, &admin, "ann", "pw", "super_user", true)).expect("ann");
        let old = users::hash_password("old-pw");
        let set_hash = |hash: &str| {
            let mut record = Object::new();
            record.insert("username", Value::String("ann".into()));
            record.insert("password", Value::String(hash.to_string()));
            block_on(write_system(&r, USERS, record, PutMode::Update, None)).expect("write");
        };
        let stored = || find_user(&r, "ann").expect("read").expect("ann").password;
        let swap = |expected: &str, value: &str| {
            let (db, _) = r.table(SYSTEM, USERS).expect("users");
            let outcome = block_on(crate::resource::write(
                &db,
                WriteRequest {
                    ops: vec![WriteOp::Swap {
                        table: USERS.into(),
                        key: Value::String("ann".into()),
                        attribute: "password".into(),
                        expected: Value::String(expected.into()),
                        value: Value::String(value.into()),
                    }],
                    user: None,
                    extras: None,
                },
            ))
            .expect("swap");
            matches!(outcome.results[0], crate::store::OpResult::Written { .. })
        };
        // The writer's compare-and-set: a stale expectation changes nothing.
        set_hash(&old);
        assert!(!swap("$sha256$stale$hash", "replaced"));
        assert_eq!(stored(), old);
        assert!(swap(&old, &old));

        // A login with the sha256 password upgrades it.
        check(&r, Some(&basic("ann", "old-pw")), "10.0.0.1", Ok("ann"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !stored().starts_with("$argon2id$") {
            assert!(Instant::now() < deadline, "never upgraded: {}", stored());
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(users::verify_password("old-pw", &stored()));
        r.store.close();
    }

    #[test]
    fn tokens_issue_refresh_and_rotate() {
        let dir = tempfile::tempdir().expect("temp");
        let r = resources(dir.path(), false);
        start(&r).expect("start");
        let admin = Caller::super_user("system");
        block_on(users::add_user(
            &r,
            &admin,
            "ann",
            "pw1",
            "super_user",
            true,
        ))
        .expect("ann");
        let ann = Caller::super_user("ann");
        let (op, refresh) = block_on(create_tokens(&r, &ann)).expect("tokens");
        check(&r, Some(&format!("Bearer {op}")), "10.0.0.1", Ok("ann"));
        check(
            &r,
            Some(&format!("Bearer {refresh}")),
            "10.0.0.1",
            Err(AuthError::InvalidToken),
        );
        let op2 = block_on(refresh_operation_token(&r, &refresh)).expect("refresh");
        check(&r, Some(&format!("Bearer {op2}")), "10.0.0.1", Ok("ann"));
        assert_eq!(
            block_on(refresh_operation_token(&r, &op)),
            Err(AuthError::InvalidToken)
        );
        // New tokens retire the old refresh token.
        let (_, refresh2) = block_on(create_tokens(&r, &ann)).expect("tokens");
        assert_eq!(
            block_on(refresh_operation_token(&r, &refresh)),
            Err(AuthError::InvalidToken)
        );
        assert!(block_on(refresh_operation_token(&r, &refresh2)).is_ok());
        r.store.close();
    }
}
