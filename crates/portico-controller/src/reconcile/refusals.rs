//! Objects the limits keep out of the routing table (`portico_model::limits`) are never
//! dropped silently: each refusal is a log line and a Warning Event on the object itself
//! (reason `ObjectTooLarge` or `NamespaceQuotaExceeded`), once per refusal per leadership.
//! Sent from their own task, so a slow API server never holds up proposals.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use portico_model::limits::Refusal;
use portico_model::{ObjectKey, ResourceKind};
use tokio::sync::mpsc;

use crate::LeaseValidity;
use crate::metrics::Metrics;
use crate::status::{LeaderCallError, while_leading};

/// One object newly refused.
#[derive(Debug)]
pub(crate) struct Refused {
    pub kind: ResourceKind,
    pub key: ObjectKey,
    pub uid: Option<String>,
    pub refusal: Refusal,
}

pub(crate) struct ReporterContext {
    pub client: Client,
    pub identity: String,
    pub lease: LeaseValidity,
    pub metrics: Metrics,
}

/// Logs and records an Event for each refusal received, until the sender goes.
pub(crate) async fn run(ctx: ReporterContext, mut rx: mpsc::UnboundedReceiver<Refused>) {
    let recorder = Recorder::new(
        ctx.client.clone(),
        Reporter {
            controller: "portico-controller".into(),
            instance: Some(ctx.identity.clone()),
        },
    );
    while let Some(refused) = rx.recv().await {
        let reason = refused.refusal.reason();
        tracing::warn!(
            kind = %refused.kind,
            object = %refused.key,
            reason,
            "refused: {}",
            refused.refusal
        );
        let event = Event {
            type_: EventType::Warning,
            reason: reason.to_owned(),
            note: Some(refused.refusal.to_string()),
            action: "Admit".into(),
            secondary: None,
        };
        let (api_version, kind) = api_kind(refused.kind);
        let reference = ObjectReference {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
            namespace: (!refused.key.namespace.is_empty())
                .then(|| refused.key.namespace.to_string()),
            name: Some(refused.key.name.to_string()),
            uid: refused.uid,
            ..Default::default()
        };
        match while_leading(&ctx.lease, recorder.publish(&event, &reference)).await {
            Ok(()) => {
                ctx.metrics.events_emitted.inc();
            }
            Err(LeaderCallError::LeaseExpired) => return,
            Err(e) => {
                tracing::warn!(object = %refused.key, error = %e, "recording an Event failed")
            }
        };
    }
}

fn api_kind(kind: ResourceKind) -> (&'static str, &'static str) {
    match kind {
        ResourceKind::Ingress => ("networking.k8s.io/v1", "Ingress"),
        ResourceKind::IngressClass => ("networking.k8s.io/v1", "IngressClass"),
        ResourceKind::Service => ("v1", "Service"),
        ResourceKind::EndpointSlice => ("discovery.k8s.io/v1", "EndpointSlice"),
        ResourceKind::Secret => ("v1", "Secret"),
    }
}
