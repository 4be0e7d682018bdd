//! H2 (SSRF through `ExternalName`): a tenant's Ingress points at an `ExternalName` Service
//! named `localhost`, with the port of something only the replica itself should reach (its
//! admin port). What must hold, over real sockets with curl: by default the route answers
//! 503 and nothing is dialled; with `ExternalName` Services allowed, the name is resolved and
//! refused because it is this host, so the answer is 502 and still nothing is dialled.

use std::sync::Arc;
use std::time::Duration;

use portico_model::Settings;
use portico_proxy::{Proxy, ProxyConfig, table_file};
use tokio::net::TcpListener;

use crate::common::curl_status;

fn manifest(port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: admin, namespace: default}}\n\
         spec: {{type: ExternalName, externalName: localhost}}\n\
         ---\napiVersion: networking.k8s.io/v1\nkind: Ingress\n\
         metadata: {{name: ssrf, namespace: default}}\nspec:\n  rules:\n  - host: ssrf.test\n    http:\n      paths:\n\
         \x20     - {{path: /, pathType: Prefix, backend: {{service: {{name: admin, port: {{number: {port}}}}}}}}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_name_to_this_host_is_never_dialled() {
    // Stands for the admin port: nothing may connect to it through the proxy.
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = admin.local_addr().unwrap().port();
    for (allowed, expected) in [(false, 503), (true, 502)] {
        let settings = Settings {
            watch_ingress_without_class: true,
            allow_external_name_services: allowed,
            ..Settings::default()
        };
        let table = table_file::from_yaml(&manifest(port), settings).unwrap();
        let config = ProxyConfig {
            http: vec!["127.0.0.1:0".parse().unwrap()],
            https: Vec::new(),
            h3: Vec::new(),
            ..Default::default()
        };
        let mut proxy = Proxy::new(config, Arc::new(table)).unwrap();
        let addrs = proxy.spawn_listeners().unwrap();
        let url = format!("http://127.0.0.1:{}/debug/routes", addrs.http[0].port());
        let status = curl_status(&["-H", "Host: ssrf.test", &url]).await;
        assert_eq!(status, expected, "ExternalName allowed: {allowed}");
    }
    let accepted = tokio::time::timeout(Duration::from_millis(300), admin.accept()).await;
    assert!(accepted.is_err(), "no connection reached the admin port");
}
