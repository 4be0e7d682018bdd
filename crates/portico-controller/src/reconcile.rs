//! Leader work: watch the API server and turn what it says into committed routing changes.
//!
//! One kube-runtime watcher per kind (Ingresses, IngressClasses, Services, EndpointSlices,
//! TLS Secrets) feeds one loop that keeps the converted objects (`Resource`s, not the API
//! objects: this is the controller's reflector store, holding only what routing needs).
//!
//! * Only the TLS Secrets that Ingresses of our class name (and the default certificate)
//!   are proposed ([`crate::secrets`]); the others are held in memory only.
//! * Every object change becomes a `Change::Upsert` or `Change::Delete`; changes arriving
//!   within `debounce` of the first are proposed together as one `Change::Batch`, one at a
//!   time and in order, so the log has them in the order the API server sent them.
//! * When leader work starts, and whenever a watcher (re)lists (a 410 Gone, a dropped watch
//!   that cannot resume), deltas are held back until every kind has a complete list; then
//!   one `Change::Resync` replaces every input, so the table matches the API server
//!   exactly, whatever the previous leader did or missed.
//! * A proposal that is refused for a stale epoch ends leader work (we were deposed); one
//!   that cannot commit is retried with the same content while we lead (changes are whole
//!   objects, so a retry of a change that did commit is harmless).
//! * After each commit the status worker ([`crate::status`]) is told which Ingresses to
//!   look at in the committed table.
//!
//! # RBAC
//! The controller's ServiceAccount needs (deploy/base/rbac.yaml): `list`, `watch` on
//! `ingresses`, `ingressclasses` (networking.k8s.io), `services`, `secrets` (core),
//! `endpointslices` (discovery.k8s.io); `patch` on `ingresses/status`; `create`, `patch` on
//! `events` (events.k8s.io); and in its own namespace `get`, `update` on its Lease and
//! `create` on `leases` (coordination.k8s.io). Secrets are listed with the field selector
//! `type=kubernetes.io/tls`, so only TLS Secrets are held in memory (RBAC cannot narrow
//! by type: the role still grants `list` on all Secrets).
//!
//! With `ControllerConfig::watch_namespaces` every namespaced kind is watched in those
//! namespaces only ([`merge`]), so all of the above but `ingressclasses` (cluster-scoped) can
//! be Roles there (deploy/overlays/namespaced). The publish Service and the default
//! certificate, when outside them, are watched alone with a `metadata.name` field selector,
//! which a Role with `resourceNames` permits.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use portico_model::{
    Change, EndpointSliceSource, IngressClassSource, IngressSource, ObjectKey, Resource,
    ResourceKind, SECRET_TYPE_TLS, SecretSource, ServiceSource,
};
use portico_raft::{ProposeError, Replica};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::metrics::{KindLabel, Metrics};
use crate::secrets::{self, SecretFilter};
use crate::status::{LbAddress, StatusInputs, StatusWork};
use crate::{ControllerConfig, LeaderWorkError};

mod merge;

const KINDS: [ResourceKind; 5] = [
    ResourceKind::Ingress,
    ResourceKind::IngressClass,
    ResourceKind::Service,
    ResourceKind::EndpointSlice,
    ResourceKind::Secret,
];

/// An object as a watcher delivers it: its routing input and the load-balancer status we
/// care about (an Ingress's current status; a Service's, for `publish_service`).
#[derive(Clone, Debug)]
struct Seen {
    resource: Resource,
    load_balancer: Vec<LbAddress>,
    /// An Ingress's resourceVersion: the precondition of our status writes.
    resource_version: Option<String>,
}

#[derive(Debug)]
enum Observation {
    /// The watcher starts a (re)list of this kind.
    Listing(ResourceKind),
    Listed(Seen),
    /// The (re)list of this kind is complete.
    ListDone(ResourceKind),
    Applied(Seen),
    Deleted(Seen),
}

/// What leader work needs; built by the controller when it acquires the Lease.
pub(crate) struct LeaderContext {
    pub client: Client,
    pub replica: Replica,
    pub epoch: u64,
    pub config: Arc<ControllerConfig>,
    pub metrics: Metrics,
    pub token: CancellationToken,
    /// Checked before every proposal: a leader past its renew deadline may be deposed.
    pub lease: crate::LeaseValidity,
}

/// Runs leader work until `ctx.token` is cancelled (Ok) or it fails.
pub(crate) async fn run(
    ctx: LeaderContext,
    status: mpsc::UnboundedSender<StatusWork>,
) -> Result<(), LeaderWorkError> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _watchers = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(watch_all(
        ctx.client.clone(),
        ctx.config.clone(),
        tx,
    )));
    let mut state = State::new(&ctx.config);
    let mut flush_at: Option<tokio::time::Instant> = None;
    loop {
        let due =
            flush_at.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            biased;
            () = ctx.token.cancelled() => return Ok(()),
            observation = rx.recv() => {
                let Some(observation) = observation else {
                    return Err(LeaderWorkError::WatchersEnded);
                };
                let mut observations = vec![observation];
                while let Ok(more) = rx.try_recv() {
                    observations.push(more);
                }
                for observation in observations {
                    state.observe(observation, &status);
                }
                if state.has_work() && flush_at.is_none() {
                    flush_at = Some(tokio::time::Instant::now() + ctx.config.debounce);
                }
            }
            () = tokio::time::sleep_until(due), if flush_at.is_some() => {
                flush_at = None;
                if let Some((change, scope)) = state.take_proposal(&ctx.config) {
                    let span = tracing::info_span!("reconcile", epoch = ctx.epoch, kind = scope.label());
                    let version = propose(&ctx, change, scope.label()).instrument(span).await?;
                    ctx.metrics.reconciles.inc();
                    let _ = status.send(StatusWork::Committed {
                        version,
                        scope: scope.into_status_scope(),
                    });
                }
            }
        }
    }
}

/// Proposes `change`, retrying while it cannot commit; a stale epoch ends leader work. A
/// batch refused as a whole (too large for one log entry) is split in halves, proposed in
/// order.
async fn propose(ctx: &LeaderContext, change: Change, kind: &str) -> Result<u64, LeaderWorkError> {
    let mut stack = vec![change];
    let mut version = 0;
    while let Some(change) = stack.pop() {
        match propose_one(ctx, change, kind).await? {
            Proposed::Committed(v) => version = v,
            Proposed::Refused(Change::Batch(mut changes), _) if changes.len() > 1 => {
                let second = changes.split_off(changes.len() / 2);
                stack.push(Change::Batch(second));
                stack.push(Change::Batch(changes));
            }
            Proposed::Refused(_, why) => return Err(LeaderWorkError::Refused(why)),
        }
    }
    Ok(version)
}

enum Proposed {
    Committed(u64),
    /// Refused for a reason retrying cannot fix (for example too large for one entry).
    Refused(Change, String),
}

async fn propose_one(
    ctx: &LeaderContext,
    change: Change,
    kind: &str,
) -> Result<Proposed, LeaderWorkError> {
    let mut pause = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        ctx.metrics
            .proposals
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
        // Woken after a freeze, this task may run before the loop sees the deadline passed.
        if !ctx.lease.is_valid() {
            return Err(LeaderWorkError::LeaseExpired);
        }
        let outcome = tokio::select! {
            () = ctx.token.cancelled() => return Err(LeaderWorkError::Cancelled),
            outcome = ctx.replica.propose(ctx.epoch, change.clone()) => outcome,
        };
        match outcome {
            Ok(committed) => {
                ctx.metrics
                    .commit_latency
                    .observe(started.elapsed().as_secs_f64());
                tracing::debug!(version = committed.version, "committed");
                return Ok(Proposed::Committed(committed.version));
            }

            Err(ProposeError::StaleEpoch {
                epoch,
                highest_epoch,
            }) => {
                ctx.metrics.proposal_errors.inc();
                return Err(LeaderWorkError::Fenced {
                    epoch,
                    highest_epoch,
                });
            }
            Err(ProposeError::ShuttingDown) => {
                ctx.metrics.proposal_errors.inc();
                return Err(LeaderWorkError::ReplicaShuttingDown);
            }
            Err(ProposeError::Unavailable(why)) => {
                ctx.metrics.proposal_errors.inc();
                ctx.metrics.reconcile_errors.inc();
                tracing::warn!(error = %why, "proposal did not commit; retrying");
                tokio::select! {
                    () = ctx.token.cancelled() => return Err(LeaderWorkError::Cancelled),
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            // Any other refusal (portico-raft refuses a change too large for one log
            // entry): split a batch, else give up leader work with the reason.
            #[allow(unreachable_patterns)]
            Err(other) => {
                ctx.metrics.proposal_errors.inc();
                tracing::warn!(error = %other, "proposal refused");
                return Ok(Proposed::Refused(change, other.to_string()));
            }
        }
    }
}

/// What a proposal covers, for the status worker.
enum Scope {
    Resync,
    /// The Ingresses changed; `everything` when a change can alter other Ingresses'
    /// verdicts or problems (classes, Services, Secrets).
    Delta {
        ingresses: BTreeSet<ObjectKey>,
        everything: bool,
    },
}

impl Scope {
    fn label(&self) -> &'static str {
        match self {
            Scope::Resync => "resync",
            Scope::Delta { .. } => "delta",
        }
    }

    fn into_status_scope(self) -> Option<BTreeSet<ObjectKey>> {
        match self {
            Scope::Resync
            | Scope::Delta {
                everything: true, ..
            } => None,
            Scope::Delta { ingresses, .. } => Some(ingresses),
        }
    }
}

/// The controller's view of the API server, and what is still to be proposed.
struct State {
    objects: BTreeMap<ResourceKind, BTreeMap<ObjectKey, Resource>>,
    /// Kinds whose current list is complete.
    listed: BTreeSet<ResourceKind>,
    /// Objects of a kind being relisted, replacing `objects[kind]` when the list completes.
    relisting: BTreeMap<ResourceKind, BTreeMap<ObjectKey, Resource>>,
    resync_needed: bool,
    pending: Vec<Change>,
    pending_scope: (BTreeSet<ObjectKey>, bool),
    publish_service: Option<ObjectKey>,
    inputs: StatusInputs,
    /// Which TLS Secrets go into the table; the others stay in `objects` only.
    secrets: SecretFilter,
}

impl State {
    fn new(config: &ControllerConfig) -> Self {
        Self {
            objects: BTreeMap::new(),
            listed: BTreeSet::new(),
            relisting: BTreeMap::new(),
            resync_needed: true,
            pending: Vec::new(),
            pending_scope: (BTreeSet::new(), false),
            publish_service: config
                .publish_service
                .as_ref()
                .map(|(ns, name)| ObjectKey::new(ns.as_str(), name.as_str())),
            inputs: StatusInputs::default(),
            secrets: SecretFilter::new(config.settings.clone()),
        }
    }

    fn has_work(&self) -> bool {
        if self.resync_needed {
            self.listed.len() == KINDS.len()
        } else {
            !self.pending.is_empty()
        }
    }

    fn observe(&mut self, observation: Observation, status: &mpsc::UnboundedSender<StatusWork>) {
        match observation {
            Observation::Listing(kind) => {
                tracing::info!(%kind, "listing");
                self.listed.remove(&kind);
                self.relisting.insert(kind, BTreeMap::new());
                self.resync_needed = true;
            }
            Observation::Listed(seen) => {
                self.note_status(&seen, status);
                let kind = seen.resource.kind();
                let key = seen.resource.key().clone();
                self.relisting
                    .entry(kind)
                    .or_default()
                    .insert(key, seen.resource);
            }
            Observation::ListDone(kind) => {
                let objects = self.relisting.remove(&kind).unwrap_or_default();
                tracing::info!(%kind, count = objects.len(), "listed");
                if kind == ResourceKind::Ingress {
                    let keep: BTreeSet<&ObjectKey> = objects.keys().collect();
                    self.inputs
                        .ingress_status
                        .retain(|key, _| keep.contains(key));
                    self.inputs.ingress_uids.retain(|key, _| keep.contains(key));
                    self.inputs
                        .ingress_versions
                        .retain(|key, _| keep.contains(key));
                }
                self.objects.insert(kind, objects);
                self.listed.insert(kind);
                self.resync_needed = true;
            }
            Observation::Applied(seen) => {
                self.note_status(&seen, status);
                let kind = seen.resource.kind();
                let key = seen.resource.key().clone();
                let objects = self.objects.entry(kind).or_default();
                if objects.get(&key) == Some(&seen.resource) {
                    return; // only the status (or something routing ignores) changed
                }
                let previous = objects.insert(key.clone(), seen.resource.clone());
                if kind == ResourceKind::Secret {
                    if let Some(change) = self.secrets.applied(&seen.resource) {
                        self.push(change, kind, key);
                    }
                    return;
                }
                let references =
                    secrets::may_change_references(previous.as_ref(), Some(&seen.resource));
                self.push(Change::Upsert(seen.resource), kind, key);
                self.after_references(kind, references);
            }
            Observation::Deleted(seen) => {
                let kind = seen.resource.kind();
                let key = seen.resource.key().clone();
                if kind == ResourceKind::Ingress {
                    self.inputs.ingress_status.remove(&key);
                    self.inputs.ingress_uids.remove(&key);
                    self.inputs.ingress_versions.remove(&key);
                }
                let Some(previous) = self.objects.entry(kind).or_default().remove(&key) else {
                    return;
                };
                if kind == ResourceKind::Secret {
                    if let Some(change) = self.secrets.deleted(&key) {
                        self.push(change, kind, key);
                    }
                    return;
                }
                let references = secrets::may_change_references(Some(&previous), None);
                self.push(
                    Change::Delete {
                        kind,
                        key: key.clone(),
                    },
                    kind,
                    key,
                );
                self.after_references(kind, references);
            }
        }
    }

    /// After an Ingress or IngressClass change that may change which Secrets are needed:
    /// proposes the Secrets that became needed and deletes those no longer needed.
    fn after_references(&mut self, kind: ResourceKind, ingress_changed: bool) {
        if kind != ResourceKind::IngressClass && !ingress_changed {
            return;
        }
        for change in self.secrets.references_changed(&self.objects) {
            let key = match &change {
                Change::Upsert(r) => r.key().clone(),
                Change::Delete { key, .. } => key.clone(),
                _ => continue,
            };
            self.push(change, ResourceKind::Secret, key);
        }
    }

    /// Records an Ingress's current status, or the publish Service's addresses; a change
    /// made by someone else is checked again by the status worker.
    fn note_status(&mut self, seen: &Seen, status: &mpsc::UnboundedSender<StatusWork>) {
        let key = seen.resource.key();
        match seen.resource.kind() {
            ResourceKind::Ingress => {
                if let Resource::Ingress(ingress) = &seen.resource {
                    self.inputs
                        .ingress_uids
                        .insert(key.clone(), ingress.uid.clone());
                }
                let previous = self
                    .inputs
                    .ingress_status
                    .insert(key.clone(), seen.load_balancer.clone());
                let previous_version = self
                    .inputs
                    .ingress_versions
                    .insert(key.clone(), seen.resource_version.clone());
                // A new resourceVersion alone matters too: it is the precondition of the
                // next status write, and a write refused with 409 waits for it.
                if previous.as_ref() != Some(&seen.load_balancer)
                    || previous_version.as_ref() != Some(&seen.resource_version)
                {
                    let _ = status.send(StatusWork::Observed {
                        inputs: self.inputs.clone(),
                        changed: Some(key.clone()),
                    });
                }
            }
            ResourceKind::Service
                if self.publish_service.as_ref() == Some(key)
                    && self.inputs.publish_service_addresses.as_ref()
                        != Some(&seen.load_balancer) =>
            {
                self.inputs.publish_service_addresses = Some(seen.load_balancer.clone());
                let _ = status.send(StatusWork::Observed {
                    inputs: self.inputs.clone(),
                    changed: None,
                });
            }
            _ => {}
        }
    }

    fn push(&mut self, change: Change, kind: ResourceKind, key: ObjectKey) {
        if self.resync_needed {
            return; // the coming resync carries it
        }
        match kind {
            ResourceKind::Ingress => {
                self.pending_scope.0.insert(key);
            }
            ResourceKind::EndpointSlice => {}
            _ => self.pending_scope.1 = true,
        }
        self.pending.push(change);
    }

    fn take_proposal(&mut self, config: &ControllerConfig) -> Option<(Change, Scope)> {
        if self.resync_needed {
            if self.listed.len() < KINDS.len() {
                return None;
            }
            self.resync_needed = false;
            self.pending.clear();
            self.pending_scope = (BTreeSet::new(), false);
            // Every object but the Secrets, and of those only the ones Ingresses use.
            let mut resources: Vec<Resource> = self
                .objects
                .iter()
                .filter(|(kind, _)| **kind != ResourceKind::Secret)
                .flat_map(|(_, objects)| objects.values().cloned())
                .collect();
            resources.extend(self.secrets.resync(&self.objects));
            tracing::info!(objects = resources.len(), "proposing a full resync");
            return Some((
                Change::Resync {
                    settings: config.settings.clone(),
                    resources,
                },
                Scope::Resync,
            ));
        }
        if self.pending.is_empty() {
            return None;
        }
        let mut changes = latest_per_object(std::mem::take(&mut self.pending));
        let (ingresses, everything) = std::mem::take(&mut self.pending_scope);
        let change = if changes.len() == 1 {
            changes.pop().expect("one change")
        } else {
            Change::Batch(changes)
        };
        Some((
            change,
            Scope::Delta {
                ingresses,
                everything,
            },
        ))
    }
}

/// Keeps only the last change of each object in a burst, in its place: changes carry whole
/// objects, so the last one is the object's state, and an object rewritten many times within
/// one debounce window costs one entry's worth of log, not one per write. (A Secret version
/// replaced within the window is never applied, so it never becomes the last good one.)
fn latest_per_object(changes: Vec<Change>) -> Vec<Change> {
    fn object(change: &Change) -> Option<(ResourceKind, &ObjectKey)> {
        match change {
            Change::Upsert(resource) => Some((resource.kind(), resource.key())),
            Change::Delete { kind, key } => Some((*kind, key)),
            _ => None,
        }
    }
    let mut last = BTreeMap::new();
    for (i, change) in changes.iter().enumerate() {
        if let Some(object) = object(change) {
            last.insert(object, i);
        }
    }
    let keep: BTreeSet<usize> = last.into_values().collect();
    let kept: Vec<bool> = changes
        .iter()
        .enumerate()
        .map(|(i, change)| object(change).is_none() || keep.contains(&i))
        .collect();
    changes
        .into_iter()
        .zip(kept)
        .filter_map(|(change, kept)| kept.then_some(change))
        .collect()
}

/// Starts the watchers of every kind (per namespace with `watch_namespaces`) and forwards
/// their events; ends only if every watcher does.
async fn watch_all(
    client: Client,
    config: Arc<ControllerConfig>,
    tx: mpsc::UnboundedSender<Observation>,
) {
    let tls_secrets = watcher::Config::default().fields(&format!("type={SECRET_TYPE_TLS}"));
    let default_certificate = config
        .settings
        .default_certificate
        .as_ref()
        .map(|key| (key.namespace.to_string(), key.name.to_string()));
    let streams = vec![
        watch_scoped::<Ingress>(
            &client,
            &config,
            watcher::Config::default(),
            None,
            ResourceKind::Ingress,
            seen_ingress,
        ),
        // Cluster-scoped: always every IngressClass.
        watch_kind::<IngressClass>(
            Api::all(client.clone()),
            watcher::Config::default(),
            ResourceKind::IngressClass,
            |c| Seen {
                resource: Resource::IngressClass(Arc::new(IngressClassSource::from(c))),
                load_balancer: Vec::new(),
                resource_version: None,
            },
        ),
        watch_scoped::<Service>(
            &client,
            &config,
            watcher::Config::default(),
            config.publish_service.as_ref(),
            ResourceKind::Service,
            seen_service,
        ),
        watch_scoped::<EndpointSlice>(
            &client,
            &config,
            watcher::Config::default(),
            None,
            ResourceKind::EndpointSlice,
            |s| Seen {
                resource: Resource::EndpointSlice(Arc::new(EndpointSliceSource::from(s))),
                load_balancer: Vec::new(),
                resource_version: None,
            },
        ),
        watch_scoped::<Secret>(
            &client,
            &config,
            tls_secrets,
            default_certificate.as_ref(),
            ResourceKind::Secret,
            |s| Seen {
                resource: Resource::Secret(Arc::new(SecretSource::from(s))),
                load_balancer: Vec::new(),
                resource_version: None,
            },
        ),
    ];
    let mut all = futures_util::stream::select_all(streams);
    while let Some(observation) = all.next().await {
        if tx.send(observation).is_err() {
            return;
        }
    }
}

/// A namespaced kind: watched in every namespace, or only in `watch_namespaces` (one watcher
/// each, merged), plus `named` (`(namespace, name)` of an object the configuration names)
/// alone by name when its namespace is not watched, so a Role limited to that name suffices.
fn watch_scoped<K>(
    client: &Client,
    config: &ControllerConfig,
    selector: watcher::Config,
    named: Option<&(String, String)>,
    kind: ResourceKind,
    convert: fn(&K) -> Seen,
) -> ObservationStream
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + Debug
        + Send
        + 'static,
    K::DynamicType: Default,
{
    if config.watch_namespaces.is_empty() {
        return watch_kind(Api::all(client.clone()), selector, kind, convert);
    }
    let mut watchers: Vec<ObservationStream> = config
        .watch_namespaces
        .iter()
        .map(|ns| {
            watch_kind(
                Api::namespaced(client.clone(), ns),
                selector.clone(),
                kind,
                convert,
            )
        })
        .collect();
    if let Some((ns, name)) = named.filter(|(ns, _)| !config.watch_namespaces.contains(ns)) {
        let by_name = match &selector.field_selector {
            Some(fields) => format!("{fields},metadata.name={name}"),
            None => format!("metadata.name={name}"),
        };
        watchers.push(watch_kind(
            Api::namespaced(client.clone(), ns),
            selector.clone().fields(&by_name),
            kind,
            convert,
        ));
    }
    merge::merged(kind, watchers)
}

type ObservationStream = futures_util::stream::BoxStream<'static, Observation>;

fn watch_kind<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: ResourceKind,
    convert: fn(&K) -> Seen,
) -> ObservationStream
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + Debug + Send + 'static,
{
    watcher::watcher(api, config)
        .backoff(WatchBackoff::default())
        .filter_map(move |event| async move {
            match event {
                Ok(Event::Init) => Some(Observation::Listing(kind)),
                Ok(Event::InitApply(object)) => Some(Observation::Listed(convert(&object))),
                Ok(Event::InitDone) => Some(Observation::ListDone(kind)),
                Ok(Event::Apply(object)) => Some(Observation::Applied(convert(&object))),
                Ok(Event::Delete(object)) => Some(Observation::Deleted(convert(&object))),
                Err(e) => {
                    tracing::warn!(%kind, error = %e, "watch failed; retrying with backoff");
                    None
                }
            }
        })
        .boxed()
}

/// Retry delays after a watch error: 100 ms doubling to 5 s, reset by the next success.
/// (kube's default starts at 800 ms and grows to 30 s, too slow for a routing controller.)
struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self { next: Self::MIN }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(delay)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

/// Ingress and Service statuses list addresses in two types of the same shape.
fn lb_addresses<'a>(
    entries: impl Iterator<Item = (&'a Option<String>, &'a Option<String>)>,
) -> Vec<LbAddress> {
    entries
        .map(|(ip, hostname)| LbAddress {
            ip: ip.clone(),
            hostname: hostname.clone(),
        })
        .collect()
}

fn seen_ingress(ingress: &Ingress) -> Seen {
    let load_balancer = ingress
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|list| lb_addresses(list.iter().map(|i| (&i.ip, &i.hostname))))
        .unwrap_or_default();
    Seen {
        resource: Resource::Ingress(Arc::new(IngressSource::from(ingress))),
        load_balancer,
        resource_version: ingress.metadata.resource_version.clone(),
    }
}

fn seen_service(service: &Service) -> Seen {
    let load_balancer = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|list| lb_addresses(list.iter().map(|i| (&i.ip, &i.hostname))))
        .unwrap_or_default();
    Seen {
        resource: Resource::Service(Arc::new(ServiceSource::from(service))),
        load_balancer,
        resource_version: None,
    }
}

/// The JSON merge patch that sets (or clears, when empty) an Ingress's load-balancer status;
/// with `resource_version`, only if the Ingress still has that version (else 409).
pub(crate) fn status_patch(addresses: &[LbAddress], resource_version: Option<&str>) -> Value {
    let mut patch = load_balancer_patch(addresses);
    if let Some(version) = resource_version {
        patch["metadata"] = serde_json::json!({"resourceVersion": version});
    }
    patch
}

fn load_balancer_patch(addresses: &[LbAddress]) -> Value {
    if addresses.is_empty() {
        return serde_json::json!({"status": {"loadBalancer": {"ingress": null}}});
    }
    let list: Vec<Value> = addresses
        .iter()
        .map(|a| {
            let mut entry = serde_json::Map::new();
            if let Some(ip) = &a.ip {
                entry.insert("ip".into(), Value::String(ip.clone()));
            }
            if let Some(hostname) = &a.hostname {
                entry.insert("hostname".into(), Value::String(hostname.clone()));
            }
            Value::Object(entry)
        })
        .collect();
    serde_json::json!({"status": {"loadBalancer": {"ingress": list}}})
}

#[cfg(test)]
mod tests {
    use portico_model::SecretSource;

    use super::*;

    fn secret(name: &str, crt: &[u8]) -> Change {
        Change::Upsert(Resource::Secret(Arc::new(SecretSource {
            key: ObjectKey::new("ns", name),
            type_: Some(SECRET_TYPE_TLS.into()),
            tls_crt: Some(crt.to_vec()),
            tls_key: None,
            oversize: None,
        })))
    }

    #[test]
    fn a_burst_keeps_the_last_change_of_each_object_in_its_place() {
        let delete_b = Change::Delete {
            kind: ResourceKind::Secret,
            key: ObjectKey::new("ns", "b"),
        };
        let mut burst: Vec<Change> = (0..1000u32)
            .map(|i| secret("a", &i.to_be_bytes()))
            .collect();
        burst.insert(10, secret("b", b"1"));
        burst.insert(20, delete_b.clone());
        burst.push(secret("c", b"1"));
        let kept = latest_per_object(burst);
        assert_eq!(
            kept,
            [
                delete_b,
                secret("a", &999u32.to_be_bytes()),
                secret("c", b"1")
            ]
        );
    }
}
