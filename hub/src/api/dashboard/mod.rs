//! The web dashboard under `/ui`: server-rendered pages ([`pages`], pure),
//! one embedded stylesheet, no script. It answers to the same tokens, roles
//! and scopes as the API: every page asks `access::decide` what the token
//! behind the browser's cookie may see or do.
//!
//! How a browser holds a token: the login form (`POST /ui/login`) takes an
//! API token and, if the hub knows it, sets it as the cookie
//! `outpost_session` (`HttpOnly`, `SameSite=Strict`, `Path=/ui`, `Secure`
//! when the API serves TLS, expiring after [`SESSION_SECS`]). The cookie is
//! looked up like a bearer token on every request, so a revoked token is
//! logged out at its next click. `outpost-hub dashboard` makes a one-time
//! login link instead (`POST /v1/ui/links`: single use, valid
//! [`LINK_SECS`]) so no secret has to be pasted. Forms that change
//! something (pause, resume, abort, log out) are POSTs: a cross-site POST
//! carries no `SameSite=Strict` cookie, and one whose `Origin` names another
//! host is refused as well. Documented in docs/api.md and docs/security.md.

pub mod pages;

use super::auth::allow;
use super::{internal, ApiState, AppError};
use crate::access::{self, Caller, Request as Access};
use crate::api::{DeviceDetail, DeviceSummary};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Json, Router};
use pages::{RolloutRow, Viewer};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Mutex;

/// The session cookie's name.
pub const COOKIE: &str = "outpost_session";
/// How long a browser keeps the session cookie.
pub const SESSION_SECS: u64 = 12 * 3600;
/// How long a login link stays valid (it also works once only).
pub const LINK_SECS: u64 = 120;
const CSS: &str = include_str!("style.css");

/// One-time login links waiting to be used: link id → (token secret,
/// expiry on the hub's clock). In memory: a hub restart forgets them, which
/// only costs a new link.
#[derive(Debug, Default)]
pub struct Links(Mutex<HashMap<String, (String, u64)>>);

impl Links {
    fn insert(&self, id: String, secret: String, expires: u64, now: u64) {
        if let Ok(mut m) = self.0.lock() {
            m.retain(|_, (_, exp)| *exp > now);
            m.insert(id, (secret, expires));
        }
    }

    /// The secret behind link `id`, once, if it has not expired.
    fn take(&self, id: &str, now: u64) -> Option<String> {
        let mut m = self.0.lock().ok()?;
        let (secret, exp) = m.remove(id)?;
        (exp > now).then_some(secret)
    }
}

/// Routes under `/ui` (and `POST /v1/ui/links`, which needs a bearer token
/// and is merged into the API's authenticated routes).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/ui", get(overview))
        .route("/ui/", get(overview))
        .route("/ui/style.css", get(style))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/link/{id}", get(follow_link))
        .route("/ui/devices/{id}", get(device))
        .route("/ui/deployments", get(deployments))
        .route("/ui/rollouts/{name}/{command}", post(rollout_command))
}

/// A page, with headers that keep it out of caches and frames and allow
/// nothing but our own stylesheet.
fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// An API error as a page.
fn error_page(viewer: Option<&Viewer>, e: AppError) -> Response {
    html(
        e.status,
        pages::error(viewer, e.status.as_u16(), &e.message),
    )
}

fn viewer(c: &Caller) -> Viewer {
    Viewer {
        token: c.name.clone(),
        role: c.role.to_string(),
        scope: c.scope.to_string(),
    }
}

/// The session cookie's value, if the request has one. (Pure.)
pub fn session_secret(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The `Set-Cookie` value that logs `secret` in (`None`: logs out). (Pure.)
pub fn set_cookie(secret: Option<&str>, tls: bool) -> String {
    let secure = if tls { "; Secure" } else { "" };
    match secret {
        Some(s) => format!(
            "{COOKIE}={s}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECS}{secure}"
        ),
        None => format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

/// May a form post with these headers change something? Refused when its
/// `Origin` names another host than the one it was sent to. (Pure.)
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        // Browsers send Origin with every POST; a client without one is
        // not a browser being tricked (and still needs the cookie).
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .split_once("://")
        .map_or(origin, |(_, rest)| rest)
        .trim_end_matches('/');
    !host.is_empty() && origin_host == host
}

/// The caller behind the session cookie; `Err` with the response to send
/// instead (the login page, or an error page).
async fn session(s: &ApiState, headers: &HeaderMap) -> Result<Caller, Response> {
    let Some(secret) = session_secret(headers) else {
        return Err(Redirect::to("/ui/login").into_response());
    };
    let store = s.hub.store.clone();
    let now = s.hub.now();
    let found =
        tokio::task::spawn_blocking(move || crate::tokens::authenticate(&store, &secret, now))
            .await;
    match found {
        Ok(Ok(Some(c))) => Ok(c),
        Ok(Ok(None)) => {
            tracing::info!("dashboard session with an unknown or revoked token");
            let mut r = html(
                StatusCode::UNAUTHORIZED,
                pages::login(Some("your token is unknown or was revoked; log in again")),
            );
            if let Ok(v) = HeaderValue::from_str(&set_cookie(None, s.tls)) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            Err(r)
        }
        Ok(Err(e)) => Err(error_page(None, AppError::from(e))),
        Err(e) => Err(error_page(None, internal(e))),
    }
}

async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        CSS,
    )
}

async fn login_form() -> Response {
    html(StatusCode::OK, pages::login(None))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    if !same_origin(&headers) {
        return html(
            StatusCode::FORBIDDEN,
            pages::login(Some("login refused: the form came from another site")),
        );
    }
    let secret = f.token.trim().to_string();
    let store = s.hub.store.clone();
    let now = s.hub.now();
    let check = secret.clone();
    let found =
        tokio::task::spawn_blocking(move || crate::tokens::authenticate(&store, &check, now)).await;
    match found {
        Ok(Ok(Some(c))) => {
            tracing::info!(token = %c.name, "dashboard login");
            logged_in(&s, &secret, "/ui")
        }
        Ok(Ok(None)) => {
            tracing::warn!("dashboard login with an unknown or revoked token");
            html(
                StatusCode::UNAUTHORIZED,
                pages::login(Some("the hub knows no live token with that secret")),
            )
        }
        Ok(Err(e)) => error_page(None, AppError::from(e)),
        Err(e) => error_page(None, internal(e)),
    }
}

/// Set the session cookie and go to `next`.
fn logged_in(s: &ApiState, secret: &str, next: &str) -> Response {
    let mut r = Redirect::to(next).into_response();
    match HeaderValue::from_str(&set_cookie(Some(secret), s.tls)) {
        Ok(v) => {
            r.headers_mut().insert(header::SET_COOKIE, v);
            r
        }
        Err(_) => html(
            StatusCode::BAD_REQUEST,
            pages::login(Some("that token cannot be kept in a cookie")),
        ),
    }
}

async fn logout(State(s): State<ApiState>) -> Response {
    let mut r = Redirect::to("/ui/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&set_cookie(None, s.tls)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewLink {
    /// The dashboard page to open, e.g. `/ui/devices/pi-01` (default `/ui`).
    #[serde(default)]
    next: Option<String>,
}

/// Where a login link may lead: a dashboard page, nowhere else. (Pure.)
pub fn safe_next(next: Option<&str>) -> Option<String> {
    match next {
        None | Some("") => Some("/ui".into()),
        Some(n)
            if (n == "/ui" || n.starts_with("/ui/"))
                && !n.contains("//")
                && !n.contains('\\')
                && n.chars().all(|c| c.is_ascii_graphic()) =>
        {
            Some(n.to_string())
        }
        Some(_) => None,
    }
}

/// `POST /v1/ui/links`: a one-time link that logs a browser in with the
/// calling token. Answers `{ "path": "/ui/link/…", "expires_in_secs": … }`.
pub(super) async fn create_link(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    raw: axum::body::Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), AppError> {
    allow(&s, &caller, Access::List).await?;
    let req: NewLink = if raw.is_empty() {
        NewLink { next: None }
    } else {
        super::body(&raw)?
    };
    let next = safe_next(req.next.as_deref()).ok_or_else(|| {
        AppError::bad_request(
            Some("next".into()),
            format!(
                "next {:?} is not a dashboard page (it must start with /ui/)",
                req.next.unwrap_or_default()
            ),
        )
    })?;
    let secret = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
        .ok_or_else(AppError::unauthorized)?;
    let id =
        crate::signing::new_token().map_err(|e| AppError::from(crate::hub::HubError::Keys(e)))?;
    let now = s.hub.now();
    s.links
        .insert(id.clone(), secret, now.saturating_add(LINK_SECS), now);
    tracing::info!(token = %caller.name, "dashboard login link made");
    let sep = if next.contains('?') { '&' } else { '?' };
    let path = if next == "/ui" {
        format!("/ui/link/{id}")
    } else {
        format!("/ui/link/{id}{sep}next={}", pages_encode(&next))
    };
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "path": path, "expires_in_secs": LINK_SECS })),
    ))
}

fn pages_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[derive(Deserialize)]
struct LinkQuery {
    next: Option<String>,
}

async fn follow_link(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<LinkQuery>,
) -> Response {
    let now = s.hub.now();
    let Some(secret) = s.links.take(&id, now) else {
        tracing::warn!("dashboard login link unknown, used or expired");
        return html(
            StatusCode::UNAUTHORIZED,
            pages::login(Some(
                "that login link is unknown, was used already or expired; make another with `outpost-hub dashboard`",
            )),
        );
    };
    let next = safe_next(q.next.as_deref()).unwrap_or_else(|| "/ui".into());
    logged_in(&s, &secret, &next)
}

async fn overview(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    let caller = match session(&s, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let v = viewer(&caller);
    if let Err(e) = allow(&s, &caller, Access::List).await {
        return error_page(Some(&v), e);
    }
    let store = s.hub.store.clone();
    let now = s.hub.now();
    let rows = tokio::task::spawn_blocking(move || -> Result<Vec<DeviceSummary>, AppError> {
        let metas = store.manifest_metas()?;
        let statuses = store.statuses()?;
        Ok(store
            .devices()?
            .iter()
            .filter(|d| caller.sees_device(&d.labels))
            .map(|d| {
                DeviceSummary::new(
                    d,
                    metas.get(d.id.as_str()),
                    statuses.get(d.id.as_str()),
                    now,
                )
            })
            .collect())
    })
    .await;
    match rows {
        Ok(Ok(rows)) => html(StatusCode::OK, pages::overview(&v, &rows, now)),
        Ok(Err(e)) => error_page(Some(&v), e),
        Err(e) => error_page(Some(&v), internal(e)),
    }
}

async fn device(State(s): State<ApiState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let caller = match session(&s, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let v = viewer(&caller);
    let page = async {
        let id = super::device_id(&id)?;
        let rec = super::readable_device(&s, &caller, &id).await?;
        let meta = s.hub.store.manifest_meta(&id)?;
        let status = s.hub.store.status(&id)?;
        let now = s.hub.now();
        let detail = DeviceDetail::new(&rec, meta, status, now);
        // The latest 50 events: find the newest seq, then read back from it.
        let all = s.hub.store.events(&id, 0, 10_000)?;
        let from = all.len().saturating_sub(50);
        let config = s.hub.device_config(id.clone()).await;
        let config = match &config {
            Ok(c) => Ok(c.apps.as_slice()),
            Err(e) => Err(format!("configuration unavailable: {e}")),
        };
        Ok::<_, AppError>(pages::device(&v, &detail, config, &all[from..], now))
    }
    .await;
    match page {
        Ok(p) => html(StatusCode::OK, p),
        Err(e) => error_page(Some(&v), e),
    }
}

async fn deployments(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    let caller = match session(&s, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let v = viewer(&caller);
    let page = async {
        allow(&s, &caller, Access::List).await?;
        let mut deps = s.hub.store.deployments()?;
        deps.retain(|d| caller.sees_deployment(&d.spec.selector));
        let store = s.hub.store.clone();
        let now = s.hub.now();
        let views = tokio::task::spawn_blocking(move || crate::hub::rollouts::views(&store, now))
            .await
            .map_err(internal)??;
        let rows: Vec<RolloutRow> = views
            .into_iter()
            .filter_map(|view| {
                let selector = &deps
                    .iter()
                    .find(|d| d.spec.name == view.deployment)?
                    .spec
                    .selector;
                // Buttons only for what this token may do (no audit entry
                // for not showing one: nothing was asked).
                let commands = pages::commands_for(&view.phase)
                    .into_iter()
                    .filter(|c| {
                        access::decide(
                            &caller,
                            &Access::RolloutCommand {
                                name: &view.deployment,
                                command: c,
                                selector,
                            },
                        )
                        .is_ok()
                    })
                    .collect();
                Some(RolloutRow { view, commands })
            })
            .collect();
        Ok::<_, AppError>(pages::deployments(&v, &deps, &rows, now))
    }
    .await;
    match page {
        Ok(p) => html(StatusCode::OK, p),
        Err(e) => error_page(Some(&v), e),
    }
}

async fn rollout_command(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((name, command)): Path<(String, String)>,
) -> Response {
    let caller = match session(&s, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let v = viewer(&caller);
    if !same_origin(&headers) {
        tracing::warn!(token = %caller.name, deployment = %name, %command, "dashboard form from another origin refused");
        return error_page(
            Some(&v),
            AppError::bad_request(None, "the form came from another site; refused"),
        );
    }
    let done = async {
        super::run_rollout_command(&s, &caller, &name, &command).await?;
        tracing::info!(token = %caller.name, deployment = %name, %command, "rollout command from the dashboard");
        Ok(())
    }
    .await;
    match done {
        Ok(()) => Redirect::to("/ui/deployments").into_response(),
        Err(e) => error_page(Some(&v), e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; outpost_session=s3cret; b=2")]);
        assert_eq!(session_secret(&h).as_deref(), Some("s3cret"));
        assert_eq!(session_secret(&headers(&[("cookie", "a=1")])), None);
        assert_eq!(
            session_secret(&headers(&[("cookie", "outpost_session=")])),
            None
        );
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_over_tls() {
        let c = set_cookie(Some("s"), true);
        for part in [
            "outpost_session=s",
            "HttpOnly",
            "SameSite=Strict",
            "Path=/ui",
            "Secure",
        ] {
            assert!(c.contains(part), "{part}: {c}");
        }
        assert!(!set_cookie(Some("s"), false).contains("Secure"));
        assert!(set_cookie(None, true).contains("Max-Age=0"));
    }

    #[test]
    fn forms_from_another_origin_are_refused() {
        let ok = headers(&[("host", "hub:8480"), ("origin", "https://hub:8480")]);
        assert!(same_origin(&ok));
        let evil = headers(&[("host", "hub:8480"), ("origin", "https://evil.example")]);
        assert!(!same_origin(&evil));
        assert!(same_origin(&headers(&[("host", "hub:8480")])));
    }

    #[test]
    fn login_links_lead_only_to_dashboard_pages() {
        assert_eq!(safe_next(None).as_deref(), Some("/ui"));
        assert_eq!(
            safe_next(Some("/ui/devices/a")).as_deref(),
            Some("/ui/devices/a")
        );
        for bad in [
            "https://evil.example",
            "//evil.example",
            "/v1/tokens",
            "/ui//x",
            "/uix",
        ] {
            assert_eq!(safe_next(Some(bad)), None, "{bad}");
        }
    }

    #[test]
    fn a_link_works_once_and_not_after_it_expired() {
        let links = Links::default();
        links.insert("a".into(), "s".into(), 100, 0);
        assert_eq!(links.take("a", 50).as_deref(), Some("s"));
        assert_eq!(links.take("a", 50), None);
        links.insert("b".into(), "s".into(), 100, 0);
        assert_eq!(links.take("b", 100), None);
    }
}
