//! kproxy's in-suite list/watch API server, run inside a node namespace so that a kproxy
//! there reaches it on the node's loopback (`--master` or a kubeconfig's server).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kproxy::source::kube::test_server::{Collection, TestApiServer};

use crate::netns::Netns;

/// The API server, serving from a thread inside the node namespace (its own runtime);
/// stopped on drop.
pub struct NodeApiServer {
    /// The server, to add, change and delete objects.
    pub server: Arc<TestApiServer>,
    /// Its URL (on the node's loopback).
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl NodeApiServer {
    /// Starts an empty server in `node`.
    pub fn start(node: &Netns) -> anyhow::Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = node.spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let server = Arc::new(TestApiServer::start().await);
                let _ = ready_tx.send(server.clone());
                let _ = stop_rx.await;
            });
            Ok(())
        })?;
        let server = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("the API server did not start")?;
        Ok(NodeApiServer {
            url: server.url(),
            server,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Adds or replaces an object given as a YAML manifest.
    pub fn apply_yaml(&self, collection: Collection, yaml: &str) -> anyhow::Result<()> {
        let value: serde_json::Value =
            serde_saphyr::from_str(yaml).context("test manifest is YAML")?;
        self.server.apply(collection, value);
        Ok(())
    }
}

impl Drop for NodeApiServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
