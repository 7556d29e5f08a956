//! TLS listeners: a TCP accept loop that hands each connection its own task for the
//! handshake (a slow or silent client never holds up the others) and passes finished TLS
//! streams on, to axum (REST, as an `axum::serve::Listener`) or tonic (gRPC, as a stream).
//!
//! A client speaking plain HTTP to a TLS port gets a plain answer saying so (REST: a JSON
//! 400 `tls_required`, like Go's "client sent an HTTP request to an HTTPS server"), rather
//! than a connection reset it cannot explain.

use super::Tls;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, Instrument};

/// How long a client may take to start and finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Why a connection that closed without a byte was dropped.
const CLOSED_EARLY: &str = "closed before the handshake";
/// First byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// The plain-text answer of the REST port to a plain-HTTP request.
pub const REST_PLAIN_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: 101\r\n\r\n{\"error\":{\"code\":\"tls_required\",\"message\":\"this port speaks HTTPS: use https:// and the cluster CA\"}}";

/// Which port: picks the server config and the answer to plain text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// REST API.
    Rest,
    /// Agents' gRPC.
    Grpc,
}

/// Accepts on `listener` until `shutdown`, handshakes each connection with the current
/// material of `tls`, and yields the streams.
pub fn accept(
    listener: TcpListener,
    tls: Arc<Tls>,
    port: Port,
    shutdown: CancellationToken,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    let (tx, rx) = mpsc::channel(64);
    let span = tracing::info_span!("tls_accept", port = ?port);
    tokio::spawn(
        async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    got = listener.accept() => match got {
                        Ok(c) => c,
                        Err(e) => {
                            // Out of file descriptors and the like: wait, do not spin.
                            debug!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let _ = tcp.set_nodelay(true);
                let (tx, tls) = (tx.clone(), tls.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(tcp, &tls, port)).await
                    {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        // A port probe (a readiness check connecting and leaving).
                        Ok(Err(why)) if why == CLOSED_EARLY => {
                            debug!(peer = %peer, "connection closed before the handshake")
                        }
                        Ok(Err(why)) => {
                            info!(peer = %peer, reason = %why, "TLS connection refused")
                        }
                        Err(_) => debug!(peer = %peer, "TLS handshake timed out"),
                    }
                });
            }
        }
        .instrument(span),
    );
    rx
}

async fn handshake(tcp: TcpStream, tls: &Tls, port: Port) -> Result<TlsStream<TcpStream>, String> {
    let mut first = [0u8; 1];
    let n = tcp.peek(&mut first).await.map_err(|e| e.to_string())?;
    if n == 0 {
        return Err(CLOSED_EARLY.into());
    }
    if first[0] != TLS_HANDSHAKE {
        let mut tcp = tcp;
        if port == Port::Rest {
            let _ = tcp.write_all(REST_PLAIN_ANSWER).await;
        }
        let _ = tcp.shutdown().await;
        return Err("plain text on a TLS port (the client must use TLS)".into());
    }
    let material = tls.current();
    let config = match port {
        Port::Rest => material.rest.clone(),
        Port::Grpc => material.grpc.clone(),
    };
    tokio_rustls::TlsAcceptor::from(config)
        .accept(tcp)
        .await
        .map_err(
            |e| match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                Some(r) => mofang_common::tls::explain(r),
                None => e.to_string(),
            },
        )
}

/// The REST side: finished TLS streams as an axum listener.
pub struct RestListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl RestListener {
    /// Wraps the streams of [`accept`] for a listener bound at `local`.
    pub fn new(rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>, local: SocketAddr) -> Self {
        RestListener { rx, local }
    }
}

impl axum::serve::Listener for RestListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop stopped (shutdown): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The gRPC side: finished TLS streams for `serve_with_incoming`.
pub fn grpc_incoming(
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
) -> impl tokio_stream::Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::ReceiverStream::new(rx).map(|(s, _)| Ok(s))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_plain_answer_has_the_right_length() {
        let text = std::str::from_utf8(super::REST_PLAIN_ANSWER).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "tls_required");
    }
}
