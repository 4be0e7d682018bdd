//! Which TLS Secrets leader work proposes: only those the routing table needs (named in
//! `spec.tls` of an Ingress of our class, and the default certificate). The rest stay in the
//! leader's memory, so the key of a Secret no Ingress of ours uses never reaches the Raft
//! log, a snapshot on disk or a peer; once an Ingress names it, it is proposed, and when no
//! Ingress names it any more it is deleted from the table (the reconcile loop proposes the
//! difference between what is needed and what the committed table holds).

use std::collections::BTreeSet;

use portico_model::{
    IngressClassSource, IngressSource, ObjectKey, Resource, ResourceKind, Settings,
};

use crate::reconcile::Objects;

/// Whether an Ingress change can change which Secrets are needed: its TLS Secrets or its
/// class differ.
pub(crate) fn may_change_references(old: Option<&Resource>, new: Option<&Resource>) -> bool {
    let facts = |r: Option<&Resource>| match r {
        Some(Resource::Ingress(i)) => Some((
            i.tls
                .iter()
                .map(|t| t.secret_name.clone())
                .collect::<Vec<_>>(),
            i.ingress_class_name.clone(),
            i.annotations
                .get(portico_model::INGRESS_CLASS_ANNOTATION)
                .cloned(),
        )),
        _ => None,
    };
    facts(old) != facts(new)
}

/// The Secrets the table needs, among every Ingress and IngressClass held.
pub(crate) fn referenced(settings: &Settings, objects: &Objects) -> BTreeSet<ObjectKey> {
    let classes = objects
        .get(&ResourceKind::IngressClass)
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(|h| match &h.resource {
            Resource::IngressClass(c) => Some(&**c as &IngressClassSource),
            _ => None,
        });
    let ingresses = objects
        .get(&ResourceKind::Ingress)
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(|h| match &h.resource {
            Resource::Ingress(i) => Some(&**i as &IngressSource),
            _ => None,
        });
    portico_model::referenced_secrets(settings, classes, ingresses)
}
