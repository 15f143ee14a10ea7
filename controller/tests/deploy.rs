//! The manifests of `deploy/`: every document decodes into its k8s-openapi type without
//! losing a field (a typo would be dropped by the decoder and show as a difference), the
//! DaemonSet is upstream's kube-proxy addon in kproxy's name, and the ConfigMap's
//! configuration is the defaulted KubeProxyConfiguration kproxy accepts.

use std::path::PathBuf;

use clap::Parser;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kproxy::cli::Cli;
use kproxy::config::KubeProxyConfiguration;
use serde_json::Value;

fn deploy(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The documents of a multi-document YAML file, as JSON values.
fn documents(text: &str) -> Vec<Value> {
    text.split("\n---\n")
        .map(|doc| serde_saphyr::from_str::<Value>(doc).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// Decodes `value` as `T` and checks that encoding it again gives the same value.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(value: &Value) -> T {
    let object: T = serde_json::from_value(value.clone()).expect("decodes");
    let again = serde_json::to_value(&object).expect("encodes");
    assert_eq!(&again, value, "a field was lost in decoding");
    object
}

#[test]
fn every_manifest_decodes_without_losing_a_field() {
    let docs = documents(&deploy("kproxy.yaml"));
    let kinds: Vec<&str> = docs
        .iter()
        .map(|d| d["kind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet"
        ]
    );
    let account: ServiceAccount = typed(&docs[0]);
    let binding: ClusterRoleBinding = typed(&docs[1]);
    let config_map: ConfigMap = typed(&docs[2]);
    let daemon_set: DaemonSet = typed(&docs[3]);

    assert_eq!(binding.role_ref.name, "system:node-proxier");
    let subject = &binding.subjects.as_deref().unwrap_or_default()[0];
    assert_eq!(
        subject.name,
        account.metadata.name.clone().unwrap_or_default()
    );

    let spec = daemon_set
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod spec");
    assert_eq!(spec.host_network, Some(true));
    assert_eq!(
        spec.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert_eq!(spec.service_account_name, account.metadata.name);
    let tolerations = spec.tolerations.unwrap_or_default();
    assert_eq!(tolerations[0].operator.as_deref(), Some("Exists"));
    let container = &spec.containers[0];
    let command = container.command.clone().unwrap_or_default();
    assert_eq!(
        command,
        [
            "/usr/local/bin/kproxy",
            "--config=/var/lib/kproxy/config.conf",
            "--hostname-override=$(NODE_NAME)",
        ]
    );
    let privileged = container
        .security_context
        .as_ref()
        .and_then(|s| s.privileged);
    assert_eq!(privileged, Some(true));
    let probe = container
        .liveness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref());
    assert_eq!(probe.and_then(|h| h.path.as_deref()), Some("/livez"));
    let mounts: Vec<&str> = container
        .volume_mounts
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|m| m.mount_path.as_str())
        .collect();
    assert_eq!(
        mounts,
        ["/var/lib/kproxy", "/run/xtables.lock", "/lib/modules"]
    );

    let data = config_map.data.expect("data");
    assert!(data.contains_key("kubeconfig.conf"));
    let decoded = KubeProxyConfiguration::decode(&data["config.conf"]).expect("decodes");
    assert_eq!(decoded.unknown_fields, Vec::<String>::new());
    assert_eq!(
        decoded.config.client_connection.kubeconfig, "/var/lib/kproxy/kubeconfig.conf",
        "the kubeconfig of the same ConfigMap"
    );
}

#[test]
fn the_configmap_is_kproxys_effective_configuration() {
    // kproxy started as the DaemonSet starts it, on the ConfigMap's file.
    let docs = documents(&deploy("kproxy.yaml"));
    let config = docs[2]["data"]["config.conf"]
        .as_str()
        .expect("config.conf");
    let dir = std::env::temp_dir().join(format!("kproxy-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("config.conf");
    std::fs::write(&file, config).expect("write");
    let flag = format!("--config={}", file.display());
    let cli = Cli::try_parse_from(["kproxy", flag.as_str(), "--hostname-override=node-a"])
        .expect("the DaemonSet's flags");
    let settings = cli.proxy.settings();
    std::fs::remove_dir_all(&dir).ok();
    let settings = settings.expect("valid");
    assert!(settings.warnings.is_empty(), "{:?}", settings.warnings);
    // Writing it back gives the same configuration (it is the defaulted one).
    let mut defaulted = KubeProxyConfiguration::decode(config)
        .expect("decodes")
        .config;
    defaulted.set_defaults();
    defaulted.apply_platform_defaults();
    defaulted.hostname_override = "node-a".into();
    assert_eq!(settings.config, defaulted);
}

#[test]
fn the_systemd_unit_runs_kproxy_with_its_config() {
    let unit = deploy("kproxy.service");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    assert_eq!(
        exec,
        "/usr/local/bin/kproxy --config=/etc/kproxy/config.conf"
    );
    assert!(
        unit.contains("Restart=always"),
        "a changed config file ends the run"
    );
    assert!(unit.contains("WantedBy=multi-user.target"));
}
