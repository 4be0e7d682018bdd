//! Tenant attacks end to end: the controller and three Raft replicas against the in-process
//! API server, each attack made as a tenant would (objects written through the API), and
//! shown not to get through. One module per finding of `../shared/reviews/security.md`
//! (issue 14).

#[path = "../support/mod.rs"]
mod support;

mod c2_h1_unreferenced_secrets;
mod h3_host_ownership;

use std::time::{Duration, Instant};

use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::{Api, Client};

use support::PATIENCE;

/// Waits for an Event about the Ingress `name` in `namespace` with `reason`; returns its note.
pub async fn wait_event(client: &Client, namespace: &str, name: &str, reason: &str) -> String {
    let events = Api::<Event>::namespaced(client.clone(), namespace);
    let started = Instant::now();
    loop {
        let list = events.list(&ListParams::default()).await.unwrap();
        if let Some(event) = list.items.iter().find(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                && e.reason.as_deref() == Some(reason)
        }) {
            return event.note.clone().unwrap_or_default();
        }
        assert!(
            started.elapsed() < PATIENCE,
            "no {reason} Event for Ingress {namespace}/{name}: {:?}",
            list.items
                .iter()
                .map(|e| (&e.reason, &e.note))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates a namespace (a tenant's).
pub async fn namespace(client: &Client, name: &str) {
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    Api::all(client.clone())
        .create(&kube::api::PostParams::default(), &ns)
        .await
        .unwrap();
}

/// An Ingress of class `conformance` from JSON parts.
pub fn ingress(
    namespace: &str,
    name: &str,
    spec: serde_json::Value,
) -> k8s_openapi::api::networking::v1::Ingress {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }))
    .unwrap()
}
