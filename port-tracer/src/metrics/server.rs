//! The HTTP side: `GET /metrics` on the tracer's tokio runtime (hyper, HTTP/1.1 only).

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use hyper::{
    body::Incoming, header, server::conn::http1, service::service_fn, Method, Request, Response,
    StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use super::encode;

/// A client that sends no complete request head within this long is dropped, so idle
/// connections cannot pile up.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound listener, not serving yet: binding comes first so that a bad address fails
/// before the kernel programs are loaded.
pub struct Listener {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Listener {
    /// Binds `addr`; the error names it.
    pub async fn bind(addr: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot serve metrics at {addr}"))?;
        let addr = listener
            .local_addr()
            .with_context(|| format!("cannot serve metrics at {addr}"))?;
        Ok(Listener { listener, addr })
    }

    /// The address bound (with the port chosen when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `registry` on the current runtime until the runtime ends.
    pub fn serve(self, registry: Registry) {
        let registry = Arc::new(registry);
        tokio::spawn(async move {
            loop {
                let stream = match self.listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        // Out of file descriptors or the like: wait rather than spin.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let registry = registry.clone();
                tokio::spawn(async move {
                    let service = service_fn(|req| respond(req, registry.clone()));
                    // A client that goes away mid-request is no concern of the tracer's.
                    let _ = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    }
}

/// `GET /metrics`: the exposition; anything else: 404 or 405.
async fn respond(
    req: Request<Incoming>,
    registry: Arc<Registry>,
) -> Result<Response<String>, Infallible> {
    let reply = |status: StatusCode, body: &str| {
        let mut r = Response::new(body.to_string());
        *r.status_mut() = status;
        r
    };
    let response = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => match encode::text(&registry) {
            Ok(text) => {
                let mut r = Response::new(text);
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(encode::CONTENT_TYPE),
                );
                r
            }
            Err(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
        },
        (_, "/metrics") => {
            let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            r
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        ),
    };
    Ok(response)
}
