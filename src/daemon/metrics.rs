//! `weft daemon --metrics-addr`: the node's Prometheus metrics over HTTP
//! (`GET /metrics`, text format 0.0.4), as dockerd's `metrics-addr`. Off by
//! default; there is no authentication, so it belongs on loopback or a
//! private interface.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use http_body_util::Full;
use hyper::body::Bytes;
use prometheus_client::registry::Registry;

/// The registry of everything this daemon measures: its manager's (when it
/// runs one), its node's, its resolver's, and the build.
pub fn registry(
    slot: weft_manager::controlapi::CoreSlot,
    linux: Arc<weft_overlay::LinuxDataplane>,
) -> Registry {
    let mut r = Registry::default();
    let info = prometheus_client::metrics::info::Info::new(vec![(
        "version".to_string(),
        weft_worker::VERSION.to_string(),
    )]);
    r.register("weft_build", "This daemon's version", info);
    weft_manager::metrics::register(&mut r, slot);
    weft_worker::metrics::register(&mut r, Arc::new(move || linux.wg_state()));
    weft_overlay::dns::metrics::register(&mut r);
    r
}

/// Binds `addr` (an error names it: the daemon does not start without the
/// metrics it was asked for, as dockerd does not).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot serve metrics on {addr} (--metrics-addr)"))
}

/// Serves `registry` on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, registry: Registry) {
    let registry = Arc::new(registry);
    tracing::info!(addr = ?listener.local_addr().ok(), "metrics served at /metrics");
    crate::http1::serve(listener, "metrics", move |req| answer(&registry, req)).await;
}

fn answer<B>(registry: &Registry, req: &hyper::Request<B>) -> hyper::Response<Full<Bytes>> {
    let reply = |status: u16, ctype: &str, body: String| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts")
    };
    if req.uri().path() != "/metrics" {
        return reply(
            404,
            "text/plain",
            "not found: metrics are at /metrics\n".into(),
        );
    }
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return reply(405, "text/plain", "only GET\n".into());
    }
    let mut body = String::new();
    match prometheus_client::encoding::prometheus_text::encode(&mut body, registry) {
        Ok(()) => reply(200, "text/plain; version=0.0.4; charset=utf-8", body),
        Err(_) => reply(500, "text/plain", "cannot encode the metrics\n".into()),
    }
}
