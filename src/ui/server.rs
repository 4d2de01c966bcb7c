//! The page's HTTP/1.1 server: the embedded assets, `/api/state` (the
//! newest snapshot) and `/api/events` (Server-Sent Events: each new
//! snapshot as it is published). Read-only: GET and HEAD only.
//!
//! Requests whose `Host` does not name a loopback address are
//! refused (unless serving beyond loopback was asked for), so a web page
//! of another site cannot read the state by pointing its own name at
//! 127.0.0.1 (DNS rebinding). Served beyond loopback, every request needs
//! the login token `weft ui` printed: in the URL (`/?token=…`, which also
//! sets it as an HttpOnly cookie for the page's own requests) or in that
//! cookie.

use std::convert::Infallible;

use futures::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio_stream::wrappers::WatchStream;

use super::assets;
use super::watch::Published;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// What every connection shares.
#[derive(Clone)]
pub struct Site {
    /// The newest snapshot.
    pub state: Published,
    /// Any `Host` is taken (--insecure-listen).
    pub any_host: bool,
    /// The login token every request must carry (--insecure-listen).
    pub token: Option<String>,
}

/// The cookie holding the login token.
const COOKIE: &str = "weft_ui";

/// Serves `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, site: Site) {
    crate::http1::serve(listener, "weft ui", move |req| handle(&site, req)).await;
}

/// The answer to `req`.
fn handle<B>(site: &Site, req: &Request<B>) -> Response<Body> {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return text(StatusCode::METHOD_NOT_ALLOWED, "read-only: GET only\n");
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    if !site.any_host && !host_allowed(host) {
        return text(
            StatusCode::MISDIRECTED_REQUEST,
            "this server answers to its loopback address only (127.0.0.1, [::1], localhost)\n",
        );
    }
    let mut set_cookie = None;
    if let Some(token) = &site.token {
        match login(req, token) {
            Login::Refused => {
                return text(
                    StatusCode::UNAUTHORIZED,
                    "this page needs its login token: open the address weft ui printed \
                     (http://HOST:PORT/?token=...)\n",
                );
            }
            Login::ByUrl => set_cookie = Some(token),
            Login::ByCookie => {}
        }
    }
    let mut r = route(site, req);
    if let Some(token) = set_cookie
        && let Ok(v) = HeaderValue::from_str(&format!(
            "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
        ))
    {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// How a request proved it has the login token.
#[derive(Debug, PartialEq, Eq)]
enum Login {
    ByUrl,
    ByCookie,
    Refused,
}

/// Whether `req` carries `token`, in its query (`token=`) or its cookie.
fn login<B>(req: &Request<B>, token: &str) -> Login {
    let in_query = req.uri().query().is_some_and(|q| {
        q.split('&')
            .filter_map(|kv| kv.strip_prefix("token="))
            .any(|t| weft_proto::token::constant_time_eq(t.as_bytes(), token.as_bytes()))
    });
    if in_query {
        return Login::ByUrl;
    }
    let in_cookie = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .any(|t| weft_proto::token::constant_time_eq(t.as_bytes(), token.as_bytes()));
    if in_cookie {
        Login::ByCookie
    } else {
        Login::Refused
    }
}

/// The answer to an authorized `req`.
fn route<B>(site: &Site, req: &Request<B>) -> Response<Body> {
    match req.uri().path() {
        "/" | "/index.html" => asset("text/html; charset=utf-8", assets::INDEX_HTML),
        "/app.js" => asset("text/javascript; charset=utf-8", assets::APP_JS),
        "/app.css" => asset("text/css; charset=utf-8", assets::APP_CSS),
        "/api/state" => {
            let json = site.state.borrow().clone();
            respond(
                StatusCode::OK,
                "application/json",
                Full::new(Bytes::from(json.to_string())).boxed_unsync(),
            )
        }
        "/api/events" => events(site),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `/api/events`: the current snapshot at once, then each new one, as
/// `data:` lines of the event-stream format.
fn events(site: &Site) -> Response<Body> {
    let stream = WatchStream::new(site.state.clone()).map(|json| {
        let mut msg = String::with_capacity(json.len() + 16);
        msg.push_str("data: ");
        // JSON from serde_json has no raw newlines; the format would need
        // one `data:` per line otherwise.
        msg.push_str(&json);
        msg.push_str("\n\n");
        Ok::<_, Infallible>(Frame::data(Bytes::from(msg)))
    });
    let mut r = respond(
        StatusCode::OK,
        "text/event-stream",
        StreamBody::new(stream).boxed_unsync(),
    );
    r.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// Whether `host` (a `Host` header) names a loopback address. Any port:
/// a tunnel (`ssh -L 8080:127.0.0.1:4390`) changes it; the name is what a
/// rebinding site cannot forge.
pub fn host_allowed(host: Option<&str>) -> bool {
    let Some(host) = host else {
        return false;
    };
    let name = match host.rsplit_once(':') {
        Some((n, p)) if !p.contains(']') => n,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn asset(content_type: &'static str, body: &'static str) -> Response<Body> {
    respond(
        StatusCode::OK,
        content_type,
        Full::new(Bytes::from_static(body.as_bytes())).boxed_unsync(),
    )
}

fn text(status: StatusCode, msg: &'static str) -> Response<Body> {
    respond(
        status,
        "text/plain; charset=utf-8",
        Full::new(Bytes::from_static(msg.as_bytes())).boxed_unsync(),
    )
}

fn respond(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Nothing but its own files: no inline script, no other origin.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> Site {
        let (_tx, rx) = tokio::sync::watch::channel(std::sync::Arc::from("{\"nodes\":[]}"));
        Site {
            state: rx,
            any_host: false,
            token: None,
        }
    }

    fn get(site: &Site, path: &str, host: &str) -> Response<Body> {
        let req = Request::get(path).header("host", host).body(()).unwrap();
        handle(site, &req)
    }

    #[test]
    fn only_loopback_names_are_taken_as_host() {
        for ok in [
            "127.0.0.1:4390",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:4390",
            "[::1]",
            "127.1.2.3",
        ] {
            assert!(host_allowed(Some(ok)), "{ok}");
        }
        for bad in [
            "evil.example:4390",
            "192.168.1.5:4390",
            "localhost.evil.example:4390",
            "127.0.0.1.evil.example",
            "",
        ] {
            assert!(!host_allowed(Some(bad)), "{bad}");
        }
        assert!(!host_allowed(None));
    }

    #[test]
    fn routes_answer_with_their_types_and_refuse_the_rest() {
        let s = site();
        let ct = |r: &Response<Body>| {
            r.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .to_string()
        };
        let r = get(&s, "/", "127.0.0.1:4390");
        assert_eq!(r.status(), StatusCode::OK);
        assert!(ct(&r).starts_with("text/html"));
        assert!(ct(&get(&s, "/app.js", "localhost:4390")).starts_with("text/javascript"));
        assert!(ct(&get(&s, "/app.css", "localhost:4390")).starts_with("text/css"));
        assert_eq!(
            ct(&get(&s, "/api/state", "localhost:4390")),
            "application/json"
        );
        assert_eq!(
            ct(&get(&s, "/api/events", "localhost:4390")),
            "text/event-stream"
        );
        assert_eq!(
            get(&s, "/nope", "localhost:4390").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get(&s, "/api/state", "rebound.example:4390").status(),
            StatusCode::MISDIRECTED_REQUEST
        );
        let post = Request::post("/api/state")
            .header("host", "localhost:4390")
            .body(())
            .unwrap();
        assert_eq!(handle(&s, &post).status(), StatusCode::METHOD_NOT_ALLOWED);
        let any = Site {
            any_host: true,
            ..site()
        };
        assert_eq!(
            get(&any, "/api/state", "10.0.0.5:4390").status(),
            StatusCode::OK
        );
    }

    #[test]
    fn beyond_loopback_every_request_needs_the_token_by_url_or_cookie() {
        let s = Site {
            any_host: true,
            token: Some("t0k3n".into()),
            ..site()
        };
        let with = |path: &str, cookie: Option<&str>| {
            let mut b = Request::get(path).header("host", "10.0.0.5:4390");
            if let Some(c) = cookie {
                b = b.header("cookie", c);
            }
            handle(&s, &b.body(()).unwrap())
        };
        for (path, cookie) in [
            ("/", None),
            ("/api/state", None),
            ("/api/state?token=t0k3", None),
            ("/api/state?token=t0k3nn", None),
            ("/api/state", Some("weft_ui=wrong")),
            ("/api/state", Some("other=t0k3n")),
        ] {
            assert_eq!(
                with(path, cookie).status(),
                StatusCode::UNAUTHORIZED,
                "{path} {cookie:?}"
            );
        }
        let first = with("/?token=t0k3n", None);
        assert_eq!(first.status(), StatusCode::OK);
        let set = first.headers()[header::SET_COOKIE].to_str().unwrap();
        assert_eq!(set, "weft_ui=t0k3n; Path=/; HttpOnly; SameSite=Strict");
        let later = with("/api/events", Some("a=b; weft_ui=t0k3n"));
        assert_eq!(later.status(), StatusCode::OK);
        assert!(later.headers().get(header::SET_COOKIE).is_none());
    }
}
