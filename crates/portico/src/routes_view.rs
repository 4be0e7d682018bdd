//! The committed routing table as JSON, for `/debug/routes` and `portico routes`.
//!
//! Only names, paths, addresses and certificate metadata (Secret, DNS names, validity):
//! never key material.

use portico_model::{BackendTarget, RoutingTable, Unavailable};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct TableView {
    pub version: u64,
    pub routes: Vec<RouteView>,
    pub ingresses: Vec<IngressView>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct RouteView {
    pub ingress: String,
    /// `None`: the rule has no host (or this is the default backend).
    pub host: Option<String>,
    /// `Exact:/p`, `Prefix:/p` or `Regex:pattern`.
    pub path: String,
    pub service: String,
    pub port: String,
    /// `host:port` of each endpoint, `external:NAME:PORT`, or empty.
    pub endpoints: Vec<String>,
    /// Why the backend cannot take requests, when it cannot.
    pub unavailable: Option<String>,
    pub rewrite_target: Option<String>,
    pub redirect_to_https: bool,
    pub tls: Option<CertificateView>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct CertificateView {
    pub secret: String,
    pub dns_names: Vec<String>,
    pub not_after: i64,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct IngressView {
    pub ingress: String,
    /// `Accepted`, `Rejected` or `NotOurs`.
    pub verdict: String,
}

impl TableView {
    pub fn of(table: &RoutingTable) -> Self {
        let routes = table
            .routes()
            .map(|route| {
                let backend = table.backend(&route.backend);
                let (endpoints, unavailable) = match backend.map(|b| &b.target) {
                    Some(BackendTarget::Endpoints(endpoints)) => (
                        endpoints.iter().map(|e| e.addr.to_string()).collect(),
                        endpoints
                            .is_empty()
                            .then(|| "no ready endpoints".to_owned()),
                    ),
                    Some(BackendTarget::ExternalName { host, port }) => {
                        (vec![format!("external:{host}:{port}")], None)
                    }
                    Some(BackendTarget::Unavailable(Unavailable::ServiceNotFound)) | None => {
                        (Vec::new(), Some("service not found".to_owned()))
                    }
                    Some(BackendTarget::Unavailable(Unavailable::PortNotFound)) => {
                        (Vec::new(), Some("service port not found".to_owned()))
                    }
                    Some(BackendTarget::Unavailable(Unavailable::ExternalNameNotAllowed)) => {
                        (Vec::new(), Some("ExternalName not allowed".to_owned()))
                    }
                };
                let tls = route
                    .host
                    .as_deref()
                    .and_then(|host| table.certificate_for(Some(host)))
                    .map(|cert| CertificateView {
                        secret: cert.secret.to_string(),
                        dns_names: cert.dns_names.iter().map(|n| n.to_string()).collect(),
                        not_after: cert.not_after,
                    });
                RouteView {
                    ingress: route.ingress.to_string(),
                    host: route.host.as_deref().map(str::to_owned),
                    path: route.path.to_string(),
                    service: route.backend.service.to_string(),
                    port: route.backend.port.to_string(),
                    endpoints,
                    unavailable,
                    rewrite_target: route
                        .policy
                        .rewrite_target
                        .as_ref()
                        .map(|r| r.as_written().to_owned()),
                    redirect_to_https: route.redirect_to_https,
                    tls,
                }
            })
            .collect();
        let ingresses = table
            .ingresses()
            .map(|(key, verdict)| IngressView {
                ingress: key.to_string(),
                verdict: format!("{verdict:?}"),
            })
            .collect();
        Self {
            version: table.version(),
            routes,
            ingresses,
        }
    }

    /// A human-readable table, one route a line.
    pub fn render(&self) -> String {
        let mut rows = vec![[
            "HOST".to_owned(),
            "PATH".to_owned(),
            "BACKEND".to_owned(),
            "ENDPOINTS".to_owned(),
            "TLS".to_owned(),
            "INGRESS".to_owned(),
        ]];
        for r in &self.routes {
            let endpoints = match &r.unavailable {
                Some(why) if r.endpoints.is_empty() => format!("({why})"),
                _ => r.endpoints.join(","),
            };
            let mut path = r.path.clone();
            if let Some(target) = &r.rewrite_target {
                path.push_str(&format!(" -> {target}"));
            }
            rows.push([
                r.host.clone().unwrap_or_else(|| "*".to_owned()),
                path,
                format!("{}:{}", r.service, r.port),
                endpoints,
                r.tls
                    .as_ref()
                    .map(|c| c.secret.clone())
                    .unwrap_or_else(|| "-".to_owned()),
                r.ingress.clone(),
            ]);
        }
        let widths: Vec<usize> = (0..6)
            .map(|i| {
                rows.iter()
                    .map(|row| row[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = format!("routing table version {}\n", self.version);
        for row in &rows {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        let rejected: Vec<&str> = self
            .ingresses
            .iter()
            .filter(|i| i.verdict == "Rejected")
            .map(|i| i.ingress.as_str())
            .collect();
        if !rejected.is_empty() {
            out.push_str(&format!("rejected Ingresses: {}\n", rejected.join(", ")));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_model::{Settings, convert};

    const MANIFEST: &str = r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: portico}
spec: {controller: portico.dev/ingress-controller}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: minimal-ingress
  namespace: default
  annotations: {nginx.ingress.kubernetes.io/rewrite-target: /}
spec:
  ingressClassName: portico
  rules:
  - http:
      paths:
      - {path: /testpath, pathType: Prefix, backend: {service: {name: test, port: {number: 80}}}}
"#;

    #[test]
    fn a_route_without_its_service_is_shown_as_unavailable() {
        let resources = convert::resources_from_yaml(MANIFEST).unwrap();
        let mut table = RoutingTable::compile(Settings::default(), Vec::new());
        let resync = portico_model::Change::Resync {
            settings: Settings::default(),
            resources,
        };
        table.apply(7, &resync);
        let view = TableView::of(&table);
        assert_eq!(view.version, 7);
        assert_eq!(view.routes.len(), 1);
        let route = &view.routes[0];
        assert_eq!(route.ingress, "default/minimal-ingress");
        assert_eq!(route.path, "Prefix:/testpath");
        assert_eq!(route.rewrite_target.as_deref(), Some("/"));
        assert_eq!(route.unavailable.as_deref(), Some("service not found"));
        let text = view.render();
        assert!(text.contains("routing table version 7"), "{text}");
        assert!(
            text.contains("Prefix:/testpath -> /") && text.contains("(service not found)"),
            "{text}"
        );
        let json = serde_json::to_string(&view).unwrap();
        assert_eq!(serde_json::from_str::<TableView>(&json).unwrap(), view);
    }
}
