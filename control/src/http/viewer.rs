//! The viewer token: the fleet page and the read API require it when configured.
//!
//! API clients send `Authorization: Bearer <token>`. A browser opens `/?token=<token>` once: the
//! server answers with an `HttpOnly; SameSite=Strict` cookie and a redirect to `/` (so the token
//! leaves the address bar), and the page's requests and its event stream carry the cookie.
//! The admin token is accepted wherever the viewer token is.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::Router;
use subtle::ConstantTimeEq;

use super::api::AppState;
use super::error::ApiError;

/// Name of the page's cookie.
pub const COOKIE: &str = "contrail_viewer";

fn eq(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The token presented: bearer header, else the page cookie.
fn presented(headers: &HeaderMap) -> Option<String> {
    if let Some(b) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(b.to_owned());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// Whether `token` opens the read side.
pub(crate) fn token_ok(s: &AppState, token: &str) -> bool {
    let viewer = s.viewer_token.as_deref().is_some_and(|v| eq(v, token));
    let admin = s.admin_token.as_deref().is_some_and(|a| eq(a, token));
    viewer || admin
}

/// `Ok` when no viewer token is configured or a valid one is presented.
pub(crate) fn check(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if s.viewer_token.is_none() {
        return Ok(());
    }
    match presented(headers) {
        Some(t) if token_ok(s, &t) => Ok(()),
        _ => Err(ApiError::Unauthorized),
    }
}

/// Middleware of the read routes.
pub(crate) async fn require_viewer(
    State(s): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    match check(&s, req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) if req.uri().path() == "/" => {
            let _ = e;
            (StatusCode::UNAUTHORIZED, Html(LOGIN_PAGE)).into_response()
        }
        Err(e) => e.into_response(),
    }
}

const LOGIN_PAGE: &str = "<!doctype html><html><head><meta charset=\"utf-8\">\
<title>Contrail: token required</title></head><body style=\"font-family:sans-serif\">\
<h1 id=\"unauthorized\">Contrail fleet: viewer token required</h1>\
<form method=\"get\" action=\"/login\"><input name=\"token\" type=\"password\" \
placeholder=\"viewer token\" autofocus> <button>Open</button></form></body></html>";

#[derive(serde::Deserialize)]
struct Login {
    token: String,
}

async fn login(State(s): State<AppState>, q: axum::extract::Query<Login>) -> Response {
    if s.viewer_token.is_none() || !token_ok(&s, &q.token) {
        return (StatusCode::UNAUTHORIZED, Html(LOGIN_PAGE)).into_response();
    }
    let cookie = format!("{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/", q.token);
    let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// `GET /login?token=`: sets the page cookie.
pub(crate) fn login_routes() -> Router<AppState> {
    Router::new().route("/login", axum::routing::get(login))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_bearer_or_cookie() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h), None);
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; contrail_viewer=tok; c=d"),
        );
        assert_eq!(presented(&h).as_deref(), Some("tok"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(presented(&h).as_deref(), Some("x"));
    }
}
