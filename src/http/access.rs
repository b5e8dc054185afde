//! Who may use the HTTP server. With `[http] password_file`, every request needs HTTP basic
//! auth as one of the file's users (checked on the blocking pool: a PBKDF2 run per request).
//! Without one, only loopback peers are served (the configuration refuses a non-loopback
//! `bind` without a file, so this is a second fence, not the only one).

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use super::HttpState;
use crate::auth::PasswordFile;

/// The HTTP users: the `[http] password_file` in force, if any.
pub struct Users(ArcSwap<Option<PasswordFile>>);

impl Users {
    /// A holder of the password file in force.
    pub fn new(file: Option<PasswordFile>) -> Self {
        Users(ArcSwap::from_pointee(file))
    }

    /// Puts a re-read password file in force.
    pub fn replace(&self, file: Option<PasswordFile>) {
        self.0.store(Arc::new(file));
    }
}

/// The middleware: passes the request on, or answers 401 or 403.
pub(super) async fn check(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let users = state.users.0.load_full();
    if users.is_none() {
        if peer.ip().is_loopback() {
            return next.run(request).await;
        }
        tracing::debug!(%peer, "http request refused: not loopback");
        return (StatusCode::FORBIDDEN, "loopback clients only\n").into_response();
    }
    let Some((user, password)) = basic_credentials(request.headers()) else {
        return unauthorized();
    };
    let verified = tokio::task::spawn_blocking(move || {
        users
            .as_ref()
            .as_ref()
            .is_some_and(|f| f.verify(&user, password.as_bytes()))
    })
    .await
    .unwrap_or(false);
    if verified {
        next.run(request).await
    } else {
        tracing::debug!(%peer, "http request refused: bad credentials");
        unauthorized()
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            "Basic realm=\"tern\", charset=\"UTF-8\"",
        )],
        "authentication required\n",
    )
        .into_response()
}

/// The user name and password of an `Authorization: Basic` header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().expect("header"));
        h
    }

    #[test]
    fn basic_credentials_are_read_and_junk_is_not() {
        // "admin:s3:cret" -- the password may hold a colon.
        let h = headers("Basic YWRtaW46czM6Y3JldA==");
        assert_eq!(
            basic_credentials(&h),
            Some(("admin".into(), "s3:cret".into()))
        );
        for junk in ["Bearer abc", "Basic !!!", "Basic YWRtaW4=", "Basic"] {
            assert_eq!(basic_credentials(&headers(junk)), None, "{junk}");
        }
    }
}
