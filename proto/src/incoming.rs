//! Accepted connections for the gRPC servers: TCP_NODELAY set, and only
//! once the client has sent its first bytes (the HTTP/2 preface or a TLS
//! hello), within [`FIRST_BYTES_TIMEOUT`]. A connection that says nothing
//! is closed instead of holding a file descriptor forever; waiting
//! happens in a task per connection, so it holds up nobody else.

use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;

/// How long a new connection has to send its first bytes.
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);

/// The connections of `listener` that speak, for
/// `tonic::transport::Server::serve_with_incoming*`.
pub fn speaking(listener: TcpListener) -> ReceiverStream<std::io::Result<TcpStream>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                // The server stopped: so does listening.
                _ = tx.closed() => return,
            };
            let tcp = match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Replies go out at once, not after the peer's delayed ACK
            // (Nagle held each reply about 40 ms).
            let _ = tcp.set_nodelay(true);
            let handed = tx.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                match tokio::time::timeout(FIRST_BYTES_TIMEOUT, tcp.peek(&mut first)).await {
                    Ok(Ok(n)) if n > 0 => {
                        let _ = handed.send(Ok(tcp)).await;
                    }
                    // Closed, failed, or silent: dropped.
                    _ => {}
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
