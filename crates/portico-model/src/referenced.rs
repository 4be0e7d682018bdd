//! Which TLS Secrets the routing table needs: those named in `spec.tls` of Ingresses of our
//! classes, and the default certificate. The controller proposes only these, so the key of
//! any other Secret in the cluster never reaches the Raft log, a snapshot or a peer.

use std::collections::BTreeSet;
use std::sync::Arc;

use imbl::OrdMap;

use crate::key::ObjectKey;
use crate::plan;
use crate::settings::Settings;
use crate::source::{IngressClassSource, IngressSource};

/// The Secrets the table needs, given every IngressClass and every Ingress.
pub fn referenced_secrets<'a>(
    settings: &Settings,
    classes: impl IntoIterator<Item = &'a IngressClassSource>,
    ingresses: impl IntoIterator<Item = &'a IngressSource>,
) -> BTreeSet<ObjectKey> {
    let classes: OrdMap<ObjectKey, Arc<IngressClassSource>> = classes
        .into_iter()
        .map(|c| (c.key.clone(), Arc::new(c.clone())))
        .collect();
    let mut secrets: BTreeSet<ObjectKey> = settings.default_certificate.iter().cloned().collect();
    for ingress in ingresses {
        if !plan::is_ours(&classes, settings, ingress) {
            continue;
        }
        secrets.extend(ingress.tls.iter().filter_map(|tls| {
            let name = tls.secret_name.as_deref().filter(|s| !s.is_empty())?;
            Some(ObjectKey::new(ingress.key.namespace.clone(), name))
        }));
    }
    secrets
}
