//! H3 end to end: a tenant in namespace `tenant-b` creates, with kubectl, an Ingress for a
//! host that an older Ingress in `tenant-a` serves, plus a Secret whose SAN names that host
//! (`kubectl create secret tls`). What must
//! hold: every replica keeps routing the host to tenant A's backend with tenant A's
//! certificate, and tenant B's Ingress gets a `HostOwnedByAnotherNamespace` Event.

use portico_model::{ObjectKey, ResourceKind};

use crate::support::*;
use crate::{Kubectl, ingress, namespace, wait_event};

fn shop(
    namespace: &str,
    name: &str,
    path: &str,
    secret: &str,
) -> k8s_openapi::api::networking::v1::Ingress {
    ingress(
        namespace,
        name,
        serde_json::json!({
            "ingressClassName": "conformance",
            "tls": [{"hosts": ["shop.example"], "secretName": secret}],
            "rules": [{"host": "shop.example", "http": {"paths": [{
                "path": path, "pathType": "Prefix",
                "backend": {"service": {"name": "svc", "port": {"number": 80}}}
            }]}}]
        }),
    )
}

fn secret_in(namespace: &str, name: &str) -> k8s_openapi::api::core::v1::Secret {
    let certified = rcgen::generate_simple_self_signed(vec!["shop.example".to_owned()]).unwrap();
    let mut secret = tls_secret(
        name,
        certified.cert.pem().as_bytes(),
        certified.signing_key.serialize_pem().as_bytes(),
    );
    secret.metadata.namespace = Some(namespace.to_owned());
    secret
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_namespace_cannot_take_over_a_host_or_its_certificate() {
    let cluster = Cluster::start().await;
    apply_class(&cluster.admin, "conformance").await;
    namespace(&cluster.admin, "tenant-a").await;
    namespace(&cluster.admin, "tenant-b").await;
    apply(&cluster.admin, &secret_in("tenant-a", "shop-tls")).await;
    apply(&cluster.admin, &shop("tenant-a", "shop", "/", "shop-tls")).await;
    let a = ObjectKey::new("tenant-a", "shop");
    cluster
        .wait_tables("tenant A's host", |t| {
            t.lookup("shop.example", "/")
                .is_some_and(|r| r.ingress == a)
        })
        .await;
    // creationTimestamp has a one-second resolution: B's Ingress must be created in a later
    // second than A's (the API server stamps with the wall clock; nothing to wait on but it).
    let created = kube::Api::<k8s_openapi::api::networking::v1::Ingress>::namespaced(
        cluster.admin.clone(),
        "tenant-a",
    )
    .get("shop")
    .await
    .unwrap()
    .metadata
    .creation_timestamp
    .unwrap()
    .0
    .as_second();
    let next_second = std::time::UNIX_EPOCH + std::time::Duration::from_secs(created as u64 + 1);
    if let Ok(wait) = next_second.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }

    // Tenant B, with kubectl: a certificate naming A's host, and an Ingress for it.
    let kubectl = Kubectl::start(&cluster.api).await;
    let certified = rcgen::generate_simple_self_signed(vec!["shop.example".to_owned()]).unwrap();
    kubectl
        .create_tls_secret(
            "tenant-b",
            "evil",
            certified.cert.pem().as_bytes(),
            certified.signing_key.serialize_pem().as_bytes(),
        )
        .await;
    let manifest = serde_json::to_string(&shop("tenant-b", "grab", "/checkout", "evil")).unwrap();
    kubectl
        .run(&["-n", "tenant-b", "apply", "-f", "-"], &manifest)
        .await;
    let note = wait_event(
        &cluster.admin,
        "tenant-b",
        "grab",
        "HostOwnedByAnotherNamespace",
    )
    .await;
    assert!(note.contains("shop.example"), "{note}");
    assert!(
        !note.contains("tenant-a"),
        "the owner is not disclosed: {note}"
    );
    let described = kubectl
        .run(&["-n", "tenant-b", "get", "events", "-o", "json"], "")
        .await;
    assert!(
        described.contains("HostOwnedByAnotherNamespace"),
        "the tenant sees why: {described}"
    );
    // The absence below holds after every replica has applied B's objects, not after some
    // time: the Secret, then the Ingress, then a marker Ingress applied after them (changes
    // commit in order).
    apply(
        &cluster.admin,
        &crate::support::ingress("marker", "marker.example", "/"),
    )
    .await;
    let (evil, grab) = (
        ObjectKey::new("tenant-b", "evil"),
        ObjectKey::new("tenant-b", "grab"),
    );
    cluster
        .wait_tables("tenant B's objects and the marker applied", |t| {
            t.ingress_verdict(&grab).is_some()
                && t.input(ResourceKind::Secret, &evil).is_some()
                && t.lookup("marker.example", "/").is_some()
        })
        .await;
    for (i, replica) in cluster.running() {
        let table = replica.table().borrow().clone();
        let route = table.lookup("shop.example", "/checkout/pay").unwrap();
        assert_eq!(route.ingress, a, "replica {i}: still tenant A's route");
        let cert = table.certificate_for(Some("shop.example")).unwrap();
        assert_eq!(
            cert.secret,
            ObjectKey::new("tenant-a", "shop-tls"),
            "replica {i}: still tenant A's certificate"
        );
    }
}
