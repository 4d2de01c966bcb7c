//! The accept loop of weft's small HTTP/1.1 servers (the daemon's
//! `/metrics`, `weft ui`'s page): one task per connection, each answer
//! computed from the request alone.

use std::convert::Infallible;

/// Serves `listener` with `answer` until the task is dropped; `what` names
/// the server in the log.
pub async fn serve<F, B>(listener: tokio::net::TcpListener, what: &'static str, answer: F)
where
    F: Fn(&hyper::Request<hyper::body::Incoming>) -> hyper::Response<B> + Clone + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            // Out of file descriptors and the like: the next accept may do.
            Err(e) => {
                tracing::warn!(error = %e, "{what}: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let r = answer(&req);
                async move { Ok::<_, Infallible>(r) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "{what}: connection ended");
            }
        });
    }
}
