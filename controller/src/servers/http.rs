//! Serving a router on a flag's address: binding (with an error that names the flag and
//! the address), running the server as a task, and stopping it when its handle goes away.

use std::net::SocketAddr;

use axum::Router;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A server could not listen on the address a flag asked for.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (--{flag}): {source}")]
pub struct BindError {
    /// The flag that chose the address, without the leading dashes.
    pub flag: &'static str,
    /// The address.
    pub addr: SocketAddr,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// A running server. Dropping it (or [`ServerHandle::abort`]) stops the server at once;
/// [`ServerHandle::shutdown`] lets requests in progress finish first.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl ServerHandle {
    /// The address the server listens on (the real port when the flag asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections, waits for requests in progress, and returns.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Stops the server at once, dropping connections in progress.
    pub fn abort(&self) {
        self.task.abort();
    }

    /// Whether the server task has ended (it only ends when stopped or on an I/O error).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` (chosen by `--{flag}`) and serves `router` on it in a new task. Must be
/// called from within a tokio runtime. The listening socket is open when this returns.
pub fn serve(
    flag: &'static str,
    addr: SocketAddr,
    router: Router,
) -> Result<ServerHandle, BindError> {
    let bind_error = |source| BindError { flag, addr, source };
    let std_listener = std::net::TcpListener::bind(addr).map_err(bind_error)?;
    std_listener.set_nonblocking(true).map_err(bind_error)?;
    let local_addr = std_listener.local_addr().map_err(bind_error)?;
    let listener = tokio::net::TcpListener::from_std(std_listener).map_err(bind_error)?;
    let (stop, stopped) = oneshot::channel::<()>();
    tracing::info!(flag, addr = %local_addr, "serving HTTP");
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(err) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(flag, addr = %local_addr, %err, "HTTP server stopped");
        }
    });
    Ok(ServerHandle {
        local_addr,
        stop: Some(stop),
        task,
    })
}

/// Test helpers: one HTTP/1.1 request over a fresh connection.
#[cfg(test)]
pub(crate) mod testing {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// A parsed response.
    #[derive(Debug)]
    pub(crate) struct Response {
        pub(crate) status: u16,
        pub(crate) headers: Vec<(String, String)>,
        pub(crate) body: String,
    }

    impl Response {
        /// The value of a header (name case-insensitive).
        pub(crate) fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// `GET path` with `Connection: close`; reads the whole response.
    pub(crate) async fn get(addr: SocketAddr, path: &str) -> Response {
        get_with(addr, path, &[]).await
    }

    /// `GET path` with extra request headers.
    pub(crate) async fn get_with(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Response {
        let mut conn = TcpStream::connect(addr).await.expect("connect");
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{extra}\r\n");
        conn.write_all(request.as_bytes()).await.expect("send");
        let mut raw = String::new();
        conn.read_to_string(&mut raw).await.expect("read");
        let (head, body) = raw.split_once("\r\n\r\n").expect("response head");
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Response {
            status,
            headers,
            body: body.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    #[tokio::test(flavor = "current_thread")]
    async fn serves_and_stops_when_dropped() {
        let router = Router::new().route("/x", get(|| async { "hello" }));
        let server = serve(
            "test-bind-address",
            "127.0.0.1:0".parse().expect("addr"),
            router,
        )
        .expect("bind");
        let addr = server.local_addr();
        let response = testing::get(addr, "/x").await;
        assert_eq!(response.status, 200);
        assert_eq!(response.body, "hello");
        drop(server);
        tokio::task::yield_now().await;
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "the listener is closed once the handle is dropped"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn graceful_shutdown_finishes_requests_in_progress_then_closes() {
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let started = std::sync::Mutex::new(Some(started_tx));
        let started = std::sync::Arc::new(started);
        let router = Router::new().route(
            "/slow",
            get(move || {
                let started = started.clone();
                async move {
                    if let Some(tx) = started.lock().ok().and_then(|mut s| s.take()) {
                        let _ = tx.send(());
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    "done"
                }
            }),
        );
        let server = serve(
            "test-bind-address",
            "127.0.0.1:0".parse().expect("addr"),
            router,
        )
        .expect("bind");
        let addr = server.local_addr();
        let request = tokio::spawn(async move { testing::get(addr, "/slow").await });
        started_rx.await.expect("the request reached the handler");
        let bound = std::time::Duration::from_secs(5);
        tokio::time::timeout(bound, server.shutdown())
            .await
            .expect("shutdown returns within 5 s");
        let response = request.await.expect("request task");
        assert_eq!(response.status, 200, "the request in progress was answered");
        assert_eq!(response.body, "done");
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "the listener is closed after shutdown"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bind_error_names_the_flag_and_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let err = serve("metrics-bind-address", addr, Router::new()).expect_err("port in use");
        let text = err.to_string();
        assert!(text.contains("--metrics-bind-address"), "{text}");
        assert!(text.contains(&addr.to_string()), "{text}");
    }
}
