//! One kind watched in several namespaces (`--watch-namespace`), seen by leader work as one
//! watcher: a namespaced Role permits only namespaced lists, so each namespace has its own
//! watcher, and their events are merged here.
//!
//! Leader work replaces a kind's objects with what a (re)list delivered between `Listing` and
//! `ListDone`, so a relist of one namespace must not drop the others. Each namespace's objects
//! are kept here (the converted `Seen`s, which share their `Arc`s with the leader's store);
//! when any namespace (re)lists, the merged list restarts with everything the other namespaces
//! hold, and is done only when no namespace is listing. A delete elsewhere during a merged list
//! restarts it too (a list cannot take an object back); an update is simply listed.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use portico_model::{ObjectKey, ResourceKind};

use super::{Observation, ObservationStream, Seen};

/// The watchers of one kind, one per namespace, as one stream.
pub(super) fn merged(kind: ResourceKind, watchers: Vec<ObservationStream>) -> ObservationStream {
    let tagged = watchers
        .into_iter()
        .enumerate()
        .map(|(scope, watcher)| watcher.map(move |o| (scope, o)).boxed());
    let merge = Merge::new(kind, tagged.len());
    futures_util::stream::select_all(tagged)
        .scan(merge, |merge, (scope, observation)| {
            let out = merge.observe(scope, observation);
            std::future::ready(Some(futures_util::stream::iter(out)))
        })
        .flatten()
        .boxed()
}

#[derive(Default)]
struct Scope {
    /// Its last complete list, with the events since.
    current: BTreeMap<ObjectKey, Seen>,
    /// While it (re)lists: what it has listed so far. Every scope starts listing.
    listing: Option<BTreeMap<ObjectKey, Seen>>,
}

struct Merge {
    kind: ResourceKind,
    scopes: Vec<Scope>,
}

impl Merge {
    fn new(kind: ResourceKind, scopes: usize) -> Self {
        let scopes = (0..scopes)
            .map(|_| Scope {
                current: BTreeMap::new(),
                listing: Some(BTreeMap::new()),
            })
            .collect();
        Self { kind, scopes }
    }

    fn listing(&self) -> bool {
        self.scopes.iter().any(|s| s.listing.is_some())
    }

    /// What leader work sees of `observation` from watcher `scope`.
    fn observe(&mut self, scope: usize, observation: Observation) -> Vec<Observation> {
        match observation {
            Observation::Listing(_) => {
                self.scopes[scope].listing = Some(BTreeMap::new());
                self.restart()
            }
            Observation::Listed(seen) => {
                let key = seen.resource.key().clone();
                self.scopes[scope]
                    .listing
                    .get_or_insert_default()
                    .insert(key, seen.clone());
                vec![Observation::Listed(seen)]
            }
            Observation::ListDone(_) => {
                let state = &mut self.scopes[scope];
                state.current = state.listing.take().unwrap_or_default();
                if self.listing() {
                    Vec::new()
                } else {
                    vec![Observation::ListDone(self.kind)]
                }
            }
            Observation::Applied(seen) => {
                let key = seen.resource.key().clone();
                self.scopes[scope].current.insert(key, seen.clone());
                if self.listing() {
                    vec![Observation::Listed(seen)]
                } else {
                    vec![Observation::Applied(seen)]
                }
            }
            Observation::Deleted(seen) => {
                self.scopes[scope].current.remove(seen.resource.key());
                if self.listing() {
                    self.restart()
                } else {
                    vec![Observation::Deleted(seen)]
                }
            }
        }
    }

    /// A new merged list: every scope's objects (a listing scope's listed so far).
    fn restart(&self) -> Vec<Observation> {
        let mut out = vec![Observation::Listing(self.kind)];
        for scope in &self.scopes {
            let objects = scope.listing.as_ref().unwrap_or(&scope.current);
            out.extend(objects.values().cloned().map(Observation::Listed));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use portico_model::{Resource, ServiceSource};

    use super::*;

    fn service(namespace: &str, name: &str) -> Seen {
        Seen {
            resource: Resource::Service(Arc::new(ServiceSource {
                key: ObjectKey::new(namespace, name),
                ..ServiceSource::default()
            })),
            load_balancer: Vec::new(),
            resource_version: None,
            created: None,
            uid: None,
        }
    }

    const KIND: ResourceKind = ResourceKind::Service;

    /// What leader work's store holds after `observations`, as `ns/name` (the rule of
    /// `State::observe`: a list replaces the kind; events change it only outside a list).
    fn store(observations: &[Observation]) -> (Vec<String>, bool) {
        let mut objects = BTreeMap::new();
        let mut relisting: Option<BTreeMap<String, ()>> = None;
        let mut complete = false;
        for observation in observations {
            let name = |seen: &Seen| seen.resource.key().to_string();
            match observation {
                Observation::Listing(_) => relisting = Some(BTreeMap::new()),
                Observation::Listed(seen) => {
                    relisting
                        .as_mut()
                        .expect("listed outside a list")
                        .insert(name(seen), ());
                }
                Observation::ListDone(_) => {
                    objects = relisting.take().expect("done outside a list");
                    complete = true;
                }
                Observation::Applied(seen) => {
                    assert!(relisting.is_none(), "an event during a list is lost");
                    objects.insert(name(seen), ());
                }
                Observation::Deleted(seen) => {
                    assert!(relisting.is_none(), "an event during a list is lost");
                    objects.remove(&name(seen));
                }
            }
        }
        (
            objects.into_keys().collect(),
            complete && relisting.is_none(),
        )
    }

    fn run(merge: &mut Merge, events: Vec<(usize, Observation)>, out: &mut Vec<Observation>) {
        for (scope, observation) in events {
            out.extend(merge.observe(scope, observation));
        }
    }

    #[test]
    fn the_merged_list_is_done_only_when_every_namespace_has_listed() {
        let mut merge = Merge::new(KIND, 2);
        let mut out = Vec::new();
        run(
            &mut merge,
            vec![
                (0, Observation::Listing(KIND)),
                (0, Observation::Listed(service("a", "one"))),
                (0, Observation::ListDone(KIND)),
                (0, Observation::Applied(service("a", "two"))),
            ],
            &mut out,
        );
        assert!(!out.iter().any(|o| matches!(o, Observation::ListDone(_))));
        run(
            &mut merge,
            vec![
                (1, Observation::Listing(KIND)),
                (1, Observation::Listed(service("b", "one"))),
                (1, Observation::ListDone(KIND)),
            ],
            &mut out,
        );
        assert_eq!(
            store(&out),
            (vec!["a/one".into(), "a/two".into(), "b/one".into()], true)
        );
    }

    #[test]
    fn one_namespace_relisting_keeps_the_others_and_their_events() {
        let mut merge = Merge::new(KIND, 2);
        let mut out = Vec::new();
        run(
            &mut merge,
            vec![
                (0, Observation::Listing(KIND)),
                (1, Observation::Listing(KIND)),
                (0, Observation::Listed(service("a", "one"))),
                (1, Observation::Listed(service("b", "one"))),
                (1, Observation::Listed(service("b", "two"))),
                (0, Observation::ListDone(KIND)),
                (1, Observation::ListDone(KIND)),
                // a relists (410 Gone): its deleted object goes; b's stay, and b's events
                // during a's list are kept.
                (0, Observation::Listing(KIND)),
                (1, Observation::Applied(service("b", "three"))),
                (1, Observation::Deleted(service("b", "one"))),
                (0, Observation::ListDone(KIND)),
                (1, Observation::Applied(service("b", "four"))),
            ],
            &mut out,
        );
        assert_eq!(
            store(&out),
            (
                vec!["b/four".into(), "b/three".into(), "b/two".into()],
                true
            )
        );
    }

    #[test]
    fn a_second_namespace_relisting_during_a_merged_list_drops_its_old_objects() {
        let mut merge = Merge::new(KIND, 2);
        let mut out = Vec::new();
        run(
            &mut merge,
            vec![
                (0, Observation::Listing(KIND)),
                (1, Observation::Listing(KIND)),
                (0, Observation::Listed(service("a", "old"))),
                (1, Observation::Listed(service("b", "old"))),
                (0, Observation::ListDone(KIND)),
                (1, Observation::ListDone(KIND)),
                (0, Observation::Listing(KIND)),
                (0, Observation::Listed(service("a", "new"))),
                (1, Observation::Listing(KIND)),
                (1, Observation::Listed(service("b", "new"))),
                (0, Observation::ListDone(KIND)),
            ],
            &mut out,
        );
        // b still lists: not done.
        assert!(!store(&out).1);
        run(&mut merge, vec![(1, Observation::ListDone(KIND))], &mut out);
        assert_eq!(store(&out), (vec!["a/new".into(), "b/new".into()], true));
    }
}
