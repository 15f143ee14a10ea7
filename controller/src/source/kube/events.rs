//! The Events kproxy posts about its Node, as kube-proxy: `Starting` when a run starts.

use ::kube::Client;
use ::kube::runtime::events::{Event, EventType, Recorder, Reporter};
use k8s_openapi::api::core::v1::ObjectReference;

/// The reporting component, as kube-proxy's (so tooling that filters on it keeps working).
pub const REPORTING_CONTROLLER: &str = "kube-proxy";

/// Posts the `Starting` Event (action `StartKubeProxy`) about Node `node`, as upstream's
/// `ProxyServer.Run` does. The Node is referenced as upstream does (its name as UID); the
/// Event lands in the `default` namespace.
pub async fn node_starting(client: Client, node: &str) -> Result<(), ::kube::Error> {
    let reporter = Reporter {
        controller: REPORTING_CONTROLLER.into(),
        instance: Some(node.into()),
    };
    let recorder = Recorder::new(client, reporter);
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(node.into()),
        uid: Some(node.into()),
        ..ObjectReference::default()
    };
    let event = Event {
        type_: EventType::Normal,
        reason: "Starting".into(),
        note: Some(format!("kproxy v{}", env!("CARGO_PKG_VERSION"))),
        action: "StartKubeProxy".into(),
        secondary: None,
    };
    recorder.publish(&event, &reference).await
}
