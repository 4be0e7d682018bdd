//! Which TLS Secrets leader work proposes: only those the routing table needs (named in
//! `spec.tls` of an Ingress of our class, and the default certificate). The rest stay in the
//! leader's memory, so the key of a Secret no Ingress of ours uses never reaches the Raft
//! log, a snapshot on disk or a peer; once an Ingress names it, it is proposed, and when no
//! Ingress names it any more it is deleted from the table.

use std::collections::{BTreeMap, BTreeSet};

use portico_model::{
    Change, IngressClassSource, IngressSource, ObjectKey, Resource, ResourceKind, Settings,
};

type Objects = BTreeMap<ResourceKind, BTreeMap<ObjectKey, Resource>>;

pub(crate) struct SecretFilter {
    settings: Settings,
    /// The Secrets needed by the Ingresses seen so far.
    referenced: BTreeSet<ObjectKey>,
    /// The Secrets leader work has put in the table (proposed, and not deleted since).
    proposed: BTreeSet<ObjectKey>,
}

impl SecretFilter {
    pub(crate) fn new(settings: Settings) -> Self {
        Self {
            settings,
            referenced: BTreeSet::new(),
            proposed: BTreeSet::new(),
        }
    }

    /// The Secrets a full resync carries: the referenced ones that exist.
    pub(crate) fn resync(&mut self, objects: &Objects) -> Vec<Resource> {
        self.referenced = referenced(&self.settings, objects);
        let secrets = objects.get(&ResourceKind::Secret);
        let chosen: Vec<Resource> = self
            .referenced
            .iter()
            .filter_map(|key| secrets.and_then(|s| s.get(key)).cloned())
            .collect();
        self.proposed = chosen.iter().map(|r| r.key().clone()).collect();
        chosen
    }

    /// A Secret was created or changed: the upsert to propose, if the table needs it.
    pub(crate) fn applied(&mut self, secret: &Resource) -> Option<Change> {
        let key = secret.key();
        if !self.referenced.contains(key) {
            return None;
        }
        self.proposed.insert(key.clone());
        Some(Change::Upsert(secret.clone()))
    }

    /// A Secret was deleted: the delete to propose, if the table has it.
    pub(crate) fn deleted(&mut self, key: &ObjectKey) -> Option<Change> {
        self.proposed.remove(key).then(|| Change::Delete {
            kind: ResourceKind::Secret,
            key: key.clone(),
        })
    }

    /// Ingresses or IngressClasses changed: the Secrets that became needed are upserted and
    /// those no longer needed deleted from the table.
    pub(crate) fn references_changed(&mut self, objects: &Objects) -> Vec<Change> {
        self.referenced = referenced(&self.settings, objects);
        let secrets = objects.get(&ResourceKind::Secret);
        let mut changes = Vec::new();
        for key in &self.referenced {
            if self.proposed.contains(key) {
                continue;
            }
            if let Some(secret) = secrets.and_then(|s| s.get(key)) {
                self.proposed.insert(key.clone());
                changes.push(Change::Upsert(secret.clone()));
            }
        }
        let unused: Vec<ObjectKey> = self
            .proposed
            .difference(&self.referenced)
            .cloned()
            .collect();
        for key in unused {
            self.proposed.remove(&key);
            changes.push(Change::Delete {
                kind: ResourceKind::Secret,
                key,
            });
        }
        changes
    }
}

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

fn referenced(settings: &Settings, objects: &Objects) -> BTreeSet<ObjectKey> {
    let classes = objects
        .get(&ResourceKind::IngressClass)
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(|r| match r {
            Resource::IngressClass(c) => Some(&**c as &IngressClassSource),
            _ => None,
        });
    let ingresses = objects
        .get(&ResourceKind::Ingress)
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(|r| match r {
            Resource::Ingress(i) => Some(&**i as &IngressSource),
            _ => None,
        });
    portico_model::referenced_secrets(settings, classes, ingresses)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use portico_model::{IngressTlsSource, SecretSource};

    use super::*;

    fn secret(name: &str) -> Resource {
        Resource::Secret(Arc::new(SecretSource {
            key: ObjectKey::new("ns", name),
            type_: Some(portico_model::SECRET_TYPE_TLS.into()),
            tls_crt: Some(b"crt".to_vec()),
            tls_key: Some(b"key".to_vec()),
            oversize: None,
        }))
    }

    fn ingress(secret: &str) -> Resource {
        Resource::Ingress(Arc::new(IngressSource {
            key: ObjectKey::new("ns", "web"),
            tls: vec![IngressTlsSource {
                hosts: vec![],
                secret_name: Some(secret.into()),
            }],
            ..Default::default()
        }))
    }

    fn objects(resources: &[Resource]) -> Objects {
        let mut objects = Objects::new();
        for r in resources {
            objects
                .entry(r.kind())
                .or_default()
                .insert(r.key().clone(), r.clone());
        }
        objects
    }

    fn keys(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::Upsert(r) => format!("upsert {}", r.key()),
                Change::Delete { key, .. } => format!("delete {key}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn only_referenced_secrets_are_proposed_and_unreferenced_ones_deleted() {
        // No class in the objects: take Ingresses without class.
        let settings = Settings {
            watch_ingress_without_class: true,
            ..Settings::default()
        };
        let mut filter = SecretFilter::new(settings);
        let all = objects(&[ingress("a"), secret("a"), secret("b")]);
        let resync: Vec<String> = filter
            .resync(&all)
            .iter()
            .map(|r| r.key().to_string())
            .collect();
        assert_eq!(resync, ["ns/a"]);
        assert!(filter.applied(&secret("b")).is_none(), "b is not proposed");
        assert!(filter.deleted(&ObjectKey::new("ns", "b")).is_none());
        assert!(filter.applied(&secret("a")).is_some());

        // The Ingress switches to b: b is upserted, a deleted from the table.
        let switched = objects(&[ingress("b"), secret("a"), secret("b")]);
        assert_eq!(
            keys(&filter.references_changed(&switched)),
            ["upsert ns/b", "delete ns/a"]
        );
        assert!(filter.applied(&secret("a")).is_none());
        assert_eq!(
            keys(&[filter.deleted(&ObjectKey::new("ns", "b")).unwrap()]),
            ["delete ns/b"]
        );
    }
}
