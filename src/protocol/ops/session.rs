//! `login` and `logout` (docs/operations-api.md, docs/security.md): cookie sessions on the Operations API. `login` checks
//! `username`/`password` (or takes the already authenticated caller), stores a session through
//! `auth::session` and answers `Set-Cookie`; `logout` clears the session the request's cookie
//! names. The decoder knows both names as not served; [`super::handle`] routes them here first.

use std::sync::Arc;

use crate::auth::{self, session, AuthError};
use crate::protocol::http::{Request, Response};
use crate::resource::{Caller, Resources};
use crate::value::{self, DecodeLimits, Value};

use super::decode::{BodyType, BODY_DEPTH_MAX};
use super::{message, OpError, Reply};

/// The operations served here.
pub const OPERATIONS: [&str; 2] = ["login", "logout"];
/// A login body holds two short strings; anything larger is not one.
const LOGIN_BODY_BYTES_MAX: usize = 64 << 10;

/// `username` and `password` of a login body, when both are strings.
fn login_fields(body_type: BodyType, body: &[u8]) -> Option<(String, String)> {
    let limits = DecodeLimits {
        depth_max: BODY_DEPTH_MAX,
        bytes_max: LOGIN_BODY_BYTES_MAX,
        values_max: 1024,
    };
    let parsed = match body_type {
        BodyType::Json => value::json::parse_with(body, &limits),
        BodyType::Cbor => value::cbor::parse_with(body, &limits),
        BodyType::MsgPack => value::msgpack::parse_with(body, &limits),
    }
    .ok()?;
    let field = |k: &str| parsed.get(k).and_then(Value::as_str).map(str::to_string);
    Some((field("username")?, field("password")?))
}

/// Runs `login` or `logout` (`name`), adding `Set-Cookie` to `resp`.
pub async fn run(
    resources: &Arc<Resources>,
    caller: Result<&Caller, &AuthError>,
    req: &Request<'_>,
    body_type: BodyType,
    name: &str,
    resp: &mut Response,
) -> Result<Reply, OpError> {
    if !session::enabled(resources) {
        return Err(OpError::bad(
            "Sessions are disabled (authentication.enableSessions: false)",
        ));
    }
    let authenticated = || match caller {
        Ok(c) if !c.is_anonymous() => Ok(c.clone()),
        Ok(_) => Err(OpError::auth(&AuthError::MustLogin)),
        Err(e) => Err(OpError::auth(e)),
    };
    let reply = if name == "login" {
        let caller = match login_fields(body_type, req.body) {
            Some((username, password)) => {
                auth::authenticate_password(resources, &username, &password, req.peer)
                    .await
                    .map_err(|e| OpError::auth(&e))?
            }
            None => authenticated()?,
        };
        let id = session::login(resources, &caller)
            .await
            .map_err(|e| OpError::auth(&e))?;
        resp.header(
            "Set-Cookie",
            &session::set_cookie(resources, req, Some(&id)),
        );
        "Login successful"
    } else {
        match session::session_id(resources, req) {
            Some(id) => session::logout(resources, id)
                .await
                .map_err(|e| OpError::auth(&e))?,
            None => {
                authenticated()?;
            }
        }
        resp.header("Set-Cookie", &session::set_cookie(resources, req, None));
        "Logout successful"
    };
    Ok(Reply::Value(message(reply)))
}
