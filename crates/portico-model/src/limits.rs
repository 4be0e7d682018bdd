//! What one object and one namespace may put into the routing table (and so into the Raft
//! log, every snapshot and every replica's memory): review finding C2.
//!
//! Pure: the controller gives each candidate object's namespace, creation time and encoded
//! size, and gets back which are refused and why. Per namespace, the oldest objects are
//! kept (creationTimestamp, then kind and name) and the newest over the budget refused, so
//! a flood of new objects cannot evict what a tenant already had; and each namespace has
//! its own budget, so one namespace's objects never count against another's.
//! Cluster-scoped objects (IngressClasses, which tenants cannot write) have only the
//! per-object limit. Regex paths have their own per-namespace limits (`plan`, `table`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::change::MAX_ENTRY_BYTES;
use crate::key::ObjectKey;
use crate::source::{Resource, ResourceKind, UnixSeconds};

/// The limits; [`Limits::default`] is what `portico run` uses unless told otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest object, encoded as it travels in the log. Default 96 KiB: a TLS Secret holds
    /// at most 64 KiB of data, an EndpointSlice at most 1,000 endpoints (about 50 KiB), and
    /// an Ingress of a thousand paths about 80 KiB (its annotations count too).
    pub max_object_bytes: usize,
    /// Most bytes one namespace's objects may take in the table. Default 32 MiB.
    pub max_namespace_bytes: usize,
    /// Most objects one namespace may have in the table. Default 20,000 (Ingresses,
    /// Services, EndpointSlices and referenced TLS Secrets together): the benchmarks' whole
    /// cluster (13,000 objects) fits in one namespace.
    pub max_namespace_objects: usize,
}

/// The largest `max_object_bytes` allowed: one object, in a batch, must fit in one log entry.
pub const MAX_OBJECT_BYTES_CEILING: usize = MAX_ENTRY_BYTES - (16 << 10);

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_object_bytes: 96 << 10,
            max_namespace_bytes: 32 << 20,
            max_namespace_objects: 20_000,
        }
    }
}

/// A bad [`Limits`] value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitsError {
    #[error(
        "the per-object limit must be between 1 and {MAX_OBJECT_BYTES_CEILING} bytes (one log entry), not {0}"
    )]
    ObjectBytes(usize),
    #[error(
        "the per-namespace limits must be positive and the byte budget at least the per-object limit"
    )]
    Namespace,
}

impl Limits {
    pub fn validate(&self) -> Result<(), LimitsError> {
        if self.max_object_bytes == 0 || self.max_object_bytes > MAX_OBJECT_BYTES_CEILING {
            return Err(LimitsError::ObjectBytes(self.max_object_bytes));
        }
        if self.max_namespace_objects == 0 || self.max_namespace_bytes < self.max_object_bytes {
            return Err(LimitsError::Namespace);
        }
        Ok(())
    }
}

/// The size an object counts for: its encoding in the log.
pub fn encoded_size(resource: &Resource) -> usize {
    postcard::experimental::serialized_size(resource)
        .expect("measuring a Resource in memory cannot fail")
}

/// An object that would enter the table.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub kind: ResourceKind,
    pub key: ObjectKey,
    /// `metadata.creationTimestamp`; an object without one counts as the newest.
    pub created: Option<UnixSeconds>,
    /// [`encoded_size`] of the object.
    pub bytes: usize,
}

/// Why an object is kept out of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    ObjectTooLarge { bytes: usize, limit: usize },
    NamespaceQuotaExceeded { what: QuotaKind, limit: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaKind {
    Bytes,
    Objects,
}

impl Refusal {
    /// The CamelCase reason for a Kubernetes Event.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::ObjectTooLarge { .. } => "ObjectTooLarge",
            Refusal::NamespaceQuotaExceeded { .. } => "NamespaceQuotaExceeded",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::ObjectTooLarge { bytes, limit } => write!(
                f,
                "the object is {bytes} bytes for routing, over the limit of {limit} (portico run --max-object-bytes); it is not routed"
            ),
            Refusal::NamespaceQuotaExceeded {
                what: QuotaKind::Bytes,
                limit,
            } => write!(
                f,
                "the namespace's objects would exceed {limit} bytes (portico run --max-namespace-bytes); the newest are not routed"
            ),
            Refusal::NamespaceQuotaExceeded {
                what: QuotaKind::Objects,
                limit,
            } => write!(
                f,
                "the namespace would have more than {limit} objects (portico run --max-namespace-objects); the newest are not routed"
            ),
        }
    }
}

/// The candidates refused. Each namespace is judged alone: oldest first, an object is
/// kept while it fits in what the older kept ones left of the budget (a newer, smaller one
/// may still fit after a larger one was refused).
pub fn refusals(
    limits: &Limits,
    candidates: impl IntoIterator<Item = Candidate>,
) -> BTreeMap<(ResourceKind, ObjectKey), Refusal> {
    let mut refused = BTreeMap::new();
    let mut by_namespace: BTreeMap<Arc<str>, Vec<Candidate>> = BTreeMap::new();
    for candidate in candidates {
        if candidate.bytes > limits.max_object_bytes {
            refused.insert(
                (candidate.kind, candidate.key),
                Refusal::ObjectTooLarge {
                    bytes: candidate.bytes,
                    limit: limits.max_object_bytes,
                },
            );
        } else if !candidate.key.namespace.is_empty() {
            by_namespace
                .entry(candidate.key.namespace.clone())
                .or_default()
                .push(candidate);
        }
    }
    for mut objects in by_namespace.into_values() {
        // None (no timestamp) sorts after every time: the newest.
        objects.sort_by(|a, b| {
            (a.created.is_none(), a.created, a.kind, &a.key).cmp(&(
                b.created.is_none(),
                b.created,
                b.kind,
                &b.key,
            ))
        });
        let (mut count, mut bytes) = (0usize, 0usize);
        for object in objects {
            let refusal = if count >= limits.max_namespace_objects {
                Some(QuotaKind::Objects)
            } else if bytes + object.bytes > limits.max_namespace_bytes {
                Some(QuotaKind::Bytes)
            } else {
                None
            };
            match refusal {
                None => {
                    count += 1;
                    bytes += object.bytes;
                }
                Some(what) => {
                    let limit = match what {
                        QuotaKind::Objects => limits.max_namespace_objects,
                        QuotaKind::Bytes => limits.max_namespace_bytes,
                    };
                    refused.insert(
                        (object.kind, object.key),
                        Refusal::NamespaceQuotaExceeded { what, limit },
                    );
                }
            }
        }
    }
    refused
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(ns: &str, name: &str, created: Option<i64>, bytes: usize) -> Candidate {
        Candidate {
            kind: ResourceKind::Ingress,
            key: ObjectKey::new(ns, name),
            created,
            bytes,
        }
    }

    fn names(refused: &BTreeMap<(ResourceKind, ObjectKey), Refusal>) -> Vec<String> {
        refused.keys().map(|(_, k)| k.to_string()).collect()
    }

    const SMALL: Limits = Limits {
        max_object_bytes: 100,
        max_namespace_bytes: 250,
        max_namespace_objects: 3,
    };

    #[test]
    fn an_object_over_the_limit_is_refused_and_counts_for_nothing() {
        let refused = refusals(
            &SMALL,
            [
                candidate("a", "big", Some(1), 101),
                candidate("a", "x", Some(2), 100),
                candidate("a", "y", Some(3), 100),
            ],
        );
        assert_eq!(names(&refused), ["a/big"]);
        assert_eq!(refused.values().next().unwrap().reason(), "ObjectTooLarge");
    }

    #[test]
    fn the_newest_over_the_budget_are_refused_whatever_the_order_given() {
        let objects = vec![
            candidate("a", "new", Some(30), 90),
            candidate("a", "old", Some(10), 90),
            candidate("a", "mid", Some(20), 90),
            candidate("a", "small", Some(40), 10),
            candidate("a", "untimed", None, 1),
        ];
        let refused = refusals(&SMALL, objects.clone());
        // old + mid = 180; new (90) would pass 250; small (10) fits; untimed is the 4th.
        assert_eq!(names(&refused), ["a/new", "a/untimed"]);
        assert_eq!(
            refused[&(ResourceKind::Ingress, ObjectKey::new("a", "untimed"))],
            Refusal::NamespaceQuotaExceeded {
                what: QuotaKind::Objects,
                limit: 3
            }
        );
        let mut reversed = objects;
        reversed.reverse();
        assert_eq!(refusals(&SMALL, reversed), refused);
    }

    #[test]
    fn one_namespace_never_counts_against_another() {
        let mut objects: Vec<Candidate> = (0..50)
            .map(|i| candidate("flood", &format!("f{i}"), Some(i), 100))
            .collect();
        objects.push(candidate("quiet", "web", Some(1000), 100));
        objects.push(candidate("", "class", Some(1000), 100));
        let refused = refusals(&SMALL, objects);
        assert_eq!(refused.len(), 48);
        assert!(refused.keys().all(|(_, key)| &*key.namespace == "flood"));
    }

    #[test]
    fn limits_must_let_one_object_fit_in_an_entry() {
        assert_eq!(Limits::default().validate(), Ok(()));
        let huge = Limits {
            max_object_bytes: MAX_ENTRY_BYTES,
            ..Limits::default()
        };
        assert!(huge.validate().is_err());
        let tight = Limits {
            max_namespace_bytes: 10,
            ..Limits::default()
        };
        assert_eq!(tight.validate(), Err(LimitsError::Namespace));
    }
}
