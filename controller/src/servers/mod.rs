//! kproxy's own HTTP servers, as kube-proxy's:
//!
//! - [`health`]: the proxy health state the sync loop reports to, served on
//!   `--healthz-bind-address` (`/healthz`, `/livez`);
//! - [`metrics`]: the Prometheus metrics the sync loop records, served on
//!   `--metrics-bind-address` with `/proxyMode` and `/configz`;
//! - [`exposition`]: the `/metrics` text formats;
//! - [`http`]: binding and running a server task; [`clock`]: the injectable clock.
//!
//! The per-Service health-check NodePorts are [`crate::healthcheck`]'s.

pub mod clock;
pub mod exposition;
pub mod health;
pub mod http;
pub mod metrics;

pub use health::ProxyHealth;
pub use http::{BindError, ServerHandle, serve};
pub use metrics::Metrics;

/// `--healthz-bind-address`'s default, as kube-proxy's.
pub const DEFAULT_HEALTHZ_BIND_ADDRESS: &str = "0.0.0.0:10256";

/// `--metrics-bind-address`'s default, as kube-proxy's.
pub const DEFAULT_METRICS_BIND_ADDRESS: &str = "127.0.0.1:10249";

/// How long a server that could not bind waits before trying again (upstream's 5 s).
pub const BIND_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// The health and metrics servers, running; dropping this stops both.
#[derive(Debug)]
pub struct Servers {
    /// The health server (`/healthz`, `/livez`), unless disabled or still retrying.
    pub health: Option<ServerHandle>,
    /// The metrics server (`/metrics`, `/proxyMode`, `/configz`, ...), unless disabled or
    /// still retrying.
    pub metrics: Option<ServerHandle>,
    /// Servers that could not bind and try again every [`BIND_RETRY`] (each task owns its
    /// server once bound); aborted on drop.
    retrying: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.retrying
            .iter()
            .for_each(tokio::task::JoinHandle::abort);
    }
}

/// Starts the health server on `healthz_addr` and the metrics server on `metrics_addr`
/// (`None` disables one, as an empty address does for kube-proxy). `configz` is the
/// effective configuration `/configz` shows, `explain` where `/explain` asks. A server that cannot bind is an error with
/// `hard_fail` (`bindAddressHardFail`), else it is logged and tried again every
/// [`BIND_RETRY`], as upstream. Must be called within a tokio runtime.
pub fn start(
    healthz_addr: Option<std::net::SocketAddr>,
    metrics_addr: Option<std::net::SocketAddr>,
    health: &ProxyHealth,
    metrics: &Metrics,
    configz: serde_json::Value,
    explain: Option<crate::explain::Asker>,
    hard_fail: bool,
) -> Result<Servers, BindError> {
    let mut servers = Servers {
        health: None,
        metrics: None,
        retrying: Vec::new(),
    };
    if let Some(addr) = healthz_addr {
        let router = health::router(health.clone(), Some(metrics.clone()));
        servers.health = servers.bind("healthz-bind-address", addr, router, hard_fail)?;
    }
    if let Some(addr) = metrics_addr {
        let router = metrics::router(metrics.clone(), configz, explain);
        servers.metrics = servers.bind("metrics-bind-address", addr, router, hard_fail)?;
    }
    Ok(servers)
}

impl Servers {
    /// Binds one server, or (without `hard_fail`) leaves a task retrying.
    fn bind(
        &mut self,
        flag: &'static str,
        addr: std::net::SocketAddr,
        router: axum::Router,
        hard_fail: bool,
    ) -> Result<Option<ServerHandle>, BindError> {
        match serve(flag, addr, router.clone()) {
            Ok(server) => Ok(Some(server)),
            Err(err) if hard_fail => Err(err),
            Err(err) => {
                tracing::error!(error = %err, "cannot serve; trying again every 5 s (bindAddressHardFail is false)");
                self.retrying.push(tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(BIND_RETRY).await;
                        if let Ok(server) = serve(flag, addr, router.clone()) {
                            // Owned here until the task is aborted.
                            let _server = server;
                            std::future::pending::<()>().await;
                        }
                    }
                }));
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ProxyMode;
    use std::time::Duration;

    /// [`start`] without a configuration to show or questions to answer.
    fn start_plain(
        healthz: Option<std::net::SocketAddr>,
        metrics_addr: Option<std::net::SocketAddr>,
        health: &ProxyHealth,
        metrics: &Metrics,
        hard_fail: bool,
    ) -> Result<Servers, BindError> {
        start(
            healthz,
            metrics_addr,
            health,
            metrics,
            serde_json::json!({}),
            None,
            hard_fail,
        )
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_taken_port_fails_only_with_hard_fail() {
        let health = ProxyHealth::new(Duration::from_secs(30));
        let metrics = Metrics::new(ProxyMode::Nftables);
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().ok();
        let err = start_plain(addr, None, &health, &metrics, true).expect_err("hard fail");
        assert!(err.to_string().contains("healthz-bind-address"), "{err}");
        let servers = start_plain(addr, None, &health, &metrics, false).expect("retries instead");
        assert!(servers.health.is_none());
        assert_eq!(servers.retrying.len(), 1, "a task keeps trying");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn starts_both_servers_on_their_addresses() {
        let health = ProxyHealth::new(Duration::from_secs(30));
        let metrics = Metrics::new(ProxyMode::Nftables);
        let any = "127.0.0.1:0".parse().ok();
        let servers = start_plain(any, any, &health, &metrics, true).expect("bind");
        let health_addr = servers.health.as_ref().map(ServerHandle::local_addr);
        let metrics_addr = servers.metrics.as_ref().map(ServerHandle::local_addr);
        let health_addr = health_addr.expect("health server");
        let metrics_addr = metrics_addr.expect("metrics server");
        let healthz = http::testing::get(health_addr, "/healthz").await;
        assert_eq!(healthz.status, 200, "{healthz:?}");
        let mode = http::testing::get(metrics_addr, "/proxyMode").await;
        assert_eq!(mode.body, "nftables");
        let text = http::testing::get(metrics_addr, "/metrics").await.body;
        assert!(
            text.contains(r#"kubeproxy_proxy_healthz_total{code="200"} 1"#),
            "{text}"
        );

        let none = start_plain(None, None, &health, &metrics, true).expect("no-op");
        assert!(none.health.is_none() && none.metrics.is_none());
    }
}
