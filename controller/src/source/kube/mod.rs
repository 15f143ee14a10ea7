//! The Kubernetes API source: list+watch of Services, EndpointSlices and this Node.
//!
//! [`KubeSource`] owns three watch tasks (module `watch`) that keep kube-runtime reflector
//! stores equal to the API server's objects, and offers the shape of the
//! [`super::ManifestWatcher`]: [`KubeSource::poll`] returns a freshly validated
//! [`Loaded`] whenever a store changed since the last poll, so the sync loop can use either
//! source. Objects go through the same `validate_*` functions as manifests; an invalid
//! object becomes a [`ManifestProblem`] naming it (`kubernetes API: Service default/web:
//! ...`) and never stops the others.
//!
//! As kube-proxy, Services and EndpointSlices are selected with
//! `!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless` (objects
//! handed to another proxy, and the slices of headless Services, are never transferred),
//! and the Node with the field selector `metadata.name=<node>`.

pub mod events;
mod rate_limit;
mod snapshot;
mod watch;

#[cfg(any(test, feature = "test-api-server"))]
pub mod test_server;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;

use ::kube::Api;
use ::kube::Client;
use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::runtime::reflector::{self, Store};
use ::kube::runtime::watcher;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;

pub use self::snapshot::API_LOCATION;
use self::snapshot::{Lookup, ValidationCache};
use self::watch::Progress;
use super::manifests::{Loaded, SourceUpdate};
use super::problem::ObjectKind;
use crate::model::{ObjectKey, SERVICE_PROXY_NAME_LABEL};

/// The label the EndpointSlice controller puts on the slices of headless Services.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// The label selector of the Service and EndpointSlice watches (kube-proxy's).
pub fn proxy_label_selector() -> String {
    format!("!{SERVICE_PROXY_NAME_LABEL},!{HEADLESS_LABEL}")
}

/// How to reach the API server.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnectOptions {
    /// `--kubeconfig`: a kubeconfig file (its current context is used). Unset: the
    /// `KUBECONFIG` variable, `~/.kube/config`, then the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// `--master`: the API server's URL, overriding the kubeconfig's server.
    pub master: Option<String>,
    /// Requests per second (`clientConnection.qps`; not positive: no limit).
    pub qps: f32,
    /// Requests above `qps` in a burst (`clientConnection.burst`).
    pub burst: u32,
}

/// Why the API source cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The kubeconfig file cannot be read or used.
    #[error("kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        source: ::kube::config::KubeconfigError,
    },
    /// No kubeconfig and no in-cluster configuration was found.
    #[error(
        "no Kubernetes API configuration (give --kubeconfig, set KUBECONFIG, or run in a pod): {0}"
    )]
    Infer(#[source] ::kube::config::InferConfigError),
    /// `--master` is not a URL.
    #[error("--master {url:?} is not a URL: {message}")]
    Master {
        /// The value given.
        url: String,
        /// Why it does not parse.
        message: String,
    },
    /// The client cannot be built from the configuration (TLS material, auth plugin...).
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[source] ::kube::Error),
}

/// The client configuration for `options`.
pub async fn client_config(options: &ConnectOptions) -> Result<::kube::Config, ConnectError> {
    let mut config = match (&options.kubeconfig, &options.master) {
        (Some(path), _) => {
            let wrap = |source| ConnectError::Kubeconfig {
                path: path.clone(),
                source,
            };
            let file = Kubeconfig::read_from(path).map_err(wrap)?;
            ::kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(wrap)?
        }
        (None, Some(master)) => ::kube::Config::new(parse_master(master)?),
        (None, None) => ::kube::Config::infer().await.map_err(ConnectError::Infer)?,
    };
    if let Some(master) = &options.master {
        config.cluster_url = parse_master(master)?;
    }
    Ok(config)
}

fn parse_master(master: &str) -> Result<axum::http::Uri, ConnectError> {
    master
        .parse()
        .map_err(|e: axum::http::uri::InvalidUri| ConnectError::Master {
            url: master.to_string(),
            message: e.to_string(),
        })
}

/// The Kubernetes API source. Dropping it stops its watch tasks.
pub struct KubeSource {
    client: Client,
    node_name: String,
    services: Store<Service>,
    endpoint_slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    service_cidrs: Store<ServiceCIDR>,
    progress: Arc<Progress>,
    /// The change count at the last load, `None` before the first.
    last: Option<u64>,
    cache: ValidationCache,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("node_name", &self.node_name)
            .field("synced", &self.synced())
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl KubeSource {
    /// The API client (for the Events kproxy posts).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Connects as `options` says and starts watching (see [`KubeSource::start`]).
    pub async fn connect(options: &ConnectOptions, node_name: &str) -> Result<Self, ConnectError> {
        let config = client_config(options).await?;
        tracing::info!(server = %config.cluster_url, node = node_name, "watching the Kubernetes API");
        let client = ::kube::client::ClientBuilder::try_from(config)
            .map_err(ConnectError::Client)?
            .with_layer(&rate_limit::RateLimitLayer::new(options.qps, options.burst))
            .build();
        Ok(Self::start(client, node_name))
    }

    /// Starts the watches of Services and EndpointSlices (all namespaces, kube-proxy's
    /// label selector), of ServiceCIDRs and of the Node `node_name`, as tasks on the current tokio runtime
    /// (it may be a current-thread one). Must be called from within that runtime.
    pub fn start(client: Client, node_name: &str) -> Self {
        let progress = Arc::new(Progress::default());
        let selected = watcher::Config::default().labels(&proxy_label_selector());
        let (services, services_writer) = reflector::store();
        let (endpoint_slices, slices_writer) = reflector::store();
        let (nodes, nodes_writer) = reflector::store();
        let (service_cidrs, service_cidrs_writer) = reflector::store();
        let node_config = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
        let tasks = vec![
            watch::spawn(
                Api::<Service>::all(client.clone()),
                selected.clone(),
                ObjectKind::Service,
                services_writer,
                progress.clone(),
            ),
            watch::spawn(
                Api::<EndpointSlice>::all(client.clone()),
                selected.clone(),
                ObjectKind::EndpointSlice,
                slices_writer,
                progress.clone(),
            ),
            watch::spawn(
                Api::<Node>::all(client.clone()),
                node_config,
                ObjectKind::Node,
                nodes_writer,
                progress.clone(),
            ),
            // As upstream, through the same label selector (its shared informer factory).
            watch::spawn(
                Api::<ServiceCIDR>::all(client.clone()),
                selected,
                ObjectKind::ServiceCidr,
                service_cidrs_writer,
                progress.clone(),
            ),
        ];
        KubeSource {
            client,
            node_name: node_name.to_string(),
            services,
            endpoint_slices,
            nodes,
            service_cidrs,
            progress,
            last: None,
            cache: ValidationCache::default(),
            tasks,
        }
    }

    /// The node whose Node object is watched.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Whether this node's Node object has a `deletionTimestamp` (upstream's `/healthz`
    /// then answers 503 so that load balancers drain the node). False while it is unknown.
    pub fn node_being_deleted(&self) -> bool {
        self.nodes.state().iter().any(|n| {
            n.metadata.name.as_deref() == Some(self.node_name.as_str())
                && n.metadata.deletion_timestamp.is_some()
        })
    }

    /// Whether the first list of every kind has completed. Before that [`Self::poll`]
    /// returns `None`: the sync loop must not program rules from a partial view.
    pub fn synced(&self) -> bool {
        self.progress.all_synced()
    }

    /// Resolves when a watch delivered something (a change, or the end of a list).
    pub async fn changed(&self) {
        self.progress.wait().await
    }

    /// The changes since the last poll (everything on the first) if the stores are synced
    /// and changed; `None` otherwise. Never blocks.
    pub fn poll(&mut self) -> Option<SourceUpdate> {
        if !self.synced() {
            return None;
        }
        // Read the counter and what was delivered before the stores: a change racing
        // with this poll counts again.
        let changes = self.progress.changes();
        if self.last == Some(changes) {
            return None;
        }
        let first = self.last.is_none();
        self.last = Some(changes);
        let delivered = self.progress.take_delivered();
        if first || delivered.relisted {
            return Some(self.cache.update(
                &self.services.state(),
                &self.endpoint_slices.state(),
                &self.nodes.state(),
                &self.service_cidrs.state(),
            ));
        }
        let lookup = Lookup {
            service: &|k| self.services.get(&namespaced(k)),
            slice: &|k| self.endpoint_slices.get(&namespaced(k)),
            node: &|k| self.nodes.get(&reflector::ObjectRef::new(&k.name)),
            service_cidr: &|k| self.service_cidrs.get(&reflector::ObjectRef::new(&k.name)),
        };
        Some(self.cache.update_objects(delivered.objects, &lookup))
    }

    /// Everything the stores hold now, validated (for commands that sync once).
    pub fn load(&mut self) -> Loaded {
        self.last = None;
        self.cache = ValidationCache::default();
        self.poll().unwrap_or_default().into_loaded()
    }
}

/// The store key of a namespaced object.
fn namespaced<K>(key: &ObjectKey) -> reflector::ObjectRef<K>
where
    K: ::kube::Resource<DynamicType = ()>,
{
    reflector::ObjectRef::new(&key.name).within(&key.namespace)
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
