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

/// The health and metrics servers, running; dropping this stops both.
#[derive(Debug)]
pub struct Servers {
    /// The health server (`/healthz`, `/livez`), unless disabled.
    pub health: Option<ServerHandle>,
    /// The metrics server (`/metrics`, `/proxyMode`, `/configz`, ...), unless disabled.
    pub metrics: Option<ServerHandle>,
}

/// Starts the health server on `healthz_addr` and the metrics server on `metrics_addr`
/// (`None` disables one, as an empty address does for kube-proxy). `configz` is the
/// effective configuration `/configz` shows. Must be called within a tokio runtime.
pub fn start(
    healthz_addr: Option<std::net::SocketAddr>,
    metrics_addr: Option<std::net::SocketAddr>,
    health: &ProxyHealth,
    metrics: &Metrics,
    configz: serde_json::Value,
) -> Result<Servers, BindError> {
    let health_server = healthz_addr
        .map(|addr| {
            let router = health::router(health.clone(), Some(metrics.clone()));
            serve("healthz-bind-address", addr, router)
        })
        .transpose()?;
    let metrics_server = metrics_addr
        .map(|addr| {
            let router = metrics::router(metrics.clone(), configz);
            serve("metrics-bind-address", addr, router)
        })
        .transpose()?;
    Ok(Servers {
        health: health_server,
        metrics: metrics_server,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ProxyMode;
    use std::time::Duration;

    #[tokio::test(flavor = "current_thread")]
    async fn starts_both_servers_on_their_addresses() {
        let health = ProxyHealth::new(Duration::from_secs(30));
        let metrics = Metrics::new(ProxyMode::Nftables);
        let any = "127.0.0.1:0".parse().ok();
        let servers = start(any, any, &health, &metrics, serde_json::json!({})).expect("bind");
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

        let none = start(None, None, &health, &metrics, serde_json::json!({})).expect("no-op");
        assert!(none.health.is_none() && none.metrics.is_none());
    }
}
