//! Leader work: watch the API server and turn what it says into committed routing changes.
//!
//! One kube-runtime watcher per kind (Ingresses, IngressClasses, Services, EndpointSlices,
//! TLS Secrets) feeds one loop that keeps the converted objects (`Resource`s, not the API
//! objects: this is the controller's reflector store, holding only what routing needs).
//!
//! * Only the TLS Secrets that Ingresses of our class name (and the default certificate)
//!   are proposed ([`crate::secrets`]); the others are held in memory only.
//! * Limits per object and per namespace (`portico_model::limits`) keep what one tenant puts
//!   into the table bounded; a refused object is treated as absent (deleted from the table
//!   if it was there), and gets a log line and an Event ([`refusals`]).
//! * What is proposed is the difference between what the API server holds (within those
//!   rules) and the committed table's inputs, which this replica, the Raft leader, has
//!   applied: an upsert for each object that differs, a delete for each that is gone.
//!   Changes arriving within `debounce` of the first are compared together, so an object
//!   rewritten many times costs one change, and a change undone within the window none.
//! * When leader work starts, and whenever a watcher (re)lists (a 410 Gone, a dropped watch
//!   that cannot resume), nothing is proposed until every kind has a complete list; then
//!   every object is compared (and the settings), so the table matches the API server
//!   exactly, whatever the previous leader did or missed. A table that already matches
//!   costs one entry holding no object (a marker, so every resync shows in the log).
//! * The changes of one flush go in order (settings; classes, Services, EndpointSlices and
//!   Secrets; Ingresses; then the deletes of what Ingresses pointed at) into `Change::Batch`
//!   entries of at most `MAX_ENTRY_BYTES` (1 MiB) each, proposed one after another. Each
//!   leaves a valid table; the status worker hears of a flush only once all have committed.
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
use portico_model::limits::{self, Candidate, Refusal};
use portico_model::{
    Change, EndpointSliceSource, IngressClassSource, IngressSource, Limits, MAX_ENTRY_BYTES,
    ObjectKey, Resource, ResourceKind, RoutingTable, SECRET_TYPE_TLS, SecretSource, ServiceSource,
    Settings, UnixSeconds,
};
use portico_raft::backoff::{self, Backoff};
use portico_raft::{ProposeError, Replica};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::metrics::{KindLabel, Metrics};
use crate::secrets;
use crate::status::{LbAddress, StatusInputs, StatusWork};
use crate::{ControllerConfig, LeaderWorkError};

mod merge;
mod refusals;

use refusals::Refused;

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
    /// `metadata.creationTimestamp` and `uid`, filled in by [`watch_kind`] for every kind.
    created: Option<UnixSeconds>,
    uid: Option<String>,
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
    let (refusals_tx, refusals_rx) = mpsc::unbounded_channel();
    let _refusals = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(refusals::run(
        refusals::ReporterContext {
            client: ctx.client.clone(),
            identity: ctx.config.identity.clone(),
            lease: ctx.lease.clone(),
            metrics: ctx.metrics.clone(),
        },
        refusals_rx,
    )));
    let mut state = State::new(&ctx.config);
    let mut flush_at: Option<tokio::time::Instant> = None;
    // The version of our last commit: the table a flush compares with must include it.
    let mut committed = 0;
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
                let table = committed_table(&ctx, committed).await?;
                let Some(plan) = state.take_proposal(&table) else { continue };
                for refused in plan.refused {
                    let _ = refusals_tx.send(refused);
                }
                if plan.entries.is_empty() {
                    continue;
                }
                let span = tracing::info_span!("reconcile", epoch = ctx.epoch, kind = plan.scope.label());
                let mut version = table.version();
                for entry in plan.entries {
                    version = propose(&ctx, entry, plan.scope.label()).instrument(span.clone()).await?;
                }
                committed = committed.max(version);
                ctx.metrics.reconciles.inc();
                // Only now, with every entry of a resync committed, may status follow it.
                let _ = status.send(StatusWork::Committed {
                    version,
                    scope: plan.scope.into_status_scope(),
                });
            }
        }
    }
}

/// How long a flush waits for this replica to apply our own last commit. Leader work runs
/// on the Raft leader, which applies a change before its proposal returns, so this is
/// only reached when leadership moved away (and leader work is about to end anyway).
const TABLE_WAIT: Duration = Duration::from_secs(5);

/// The committed table with every change of ours applied (`version`): what a flush
/// compares the API server's objects with, so it proposes only what differs.
async fn committed_table(
    ctx: &LeaderContext,
    version: u64,
) -> Result<Arc<RoutingTable>, LeaderWorkError> {
    if version > 0 {
        ctx.replica
            .wait_for_version(version, TABLE_WAIT)
            .await
            .map_err(|applied| LeaderWorkError::TableBehind { version, applied })?;
    }
    Ok(ctx.replica.table().borrow().clone())
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
    Refused(Change, ProposeError),
}

async fn propose_one(
    ctx: &LeaderContext,
    change: Change,
    kind: &str,
) -> Result<Proposed, LeaderWorkError> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
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
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
            // This replica's volume is a stale copy: it takes no part, so no leader work.
            Err(e @ ProposeError::StaleVolume) => {
                ctx.metrics.proposal_errors.inc();
                return Err(LeaderWorkError::Refused(e));
            }
            // Refused outright (a change too large for one log entry, above all): split a
            // batch, else give up leader work with the reason.
            Err(
                e @ (ProposeError::TooLarge { .. }
                | ProposeError::EpochOutOfRange { .. }
                | ProposeError::Refused(_)),
            ) => {
                ctx.metrics.proposal_errors.inc();
                tracing::warn!(error = %e, "proposal refused");
                return Ok(Proposed::Refused(change, e));
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

/// An object as the watchers last showed it, with what the limits judge it by.
#[derive(Clone, Debug)]
pub(crate) struct Held {
    pub resource: Resource,
    /// `metadata.creationTimestamp`: the oldest objects of a namespace are kept.
    pub created: Option<UnixSeconds>,
    pub uid: Option<String>,
    /// [`limits::encoded_size`], measured once when the object arrives.
    pub bytes: usize,
}

impl Held {
    fn new(seen: &Seen) -> Self {
        Self {
            bytes: limits::encoded_size(&seen.resource),
            resource: seen.resource.clone(),
            created: seen.created,
            uid: seen.uid.clone(),
        }
    }
}

/// The controller's view of the API server: every object, by kind.
pub(crate) type Objects = BTreeMap<ResourceKind, BTreeMap<ObjectKey, Held>>;

type Object = (ResourceKind, ObjectKey);

/// One flush: the log entries to propose in order (each at most [`MAX_ENTRY_BYTES`]), what
/// they cover, and the objects newly refused by the limits.
struct Plan {
    entries: Vec<Change>,
    scope: Scope,
    refused: Vec<Refused>,
}

/// The controller's view of the API server, and what changed since the last proposal.
struct State {
    objects: Objects,
    /// Kinds whose current list is complete.
    listed: BTreeSet<ResourceKind>,
    /// Objects of a kind being relisted, replacing `objects[kind]` when the list completes.
    relisting: BTreeMap<ResourceKind, BTreeMap<ObjectKey, Held>>,
    resync_needed: bool,
    /// Objects changed since the last proposal.
    dirty: BTreeSet<Object>,
    /// An Ingress's TLS Secrets or class, or an IngressClass, changed since the last
    /// proposal: which Secrets the table needs may have changed.
    references_dirty: bool,
    publish_service: Option<ObjectKey>,
    inputs: StatusInputs,
    settings: Settings,
    limits: Limits,
    /// The TLS Secrets the table needs ([`secrets::referenced`]); the others stay here only.
    referenced: BTreeSet<ObjectKey>,
    /// Objects the limits keep out of the table, and why (reported once each).
    refused: BTreeMap<Object, Refusal>,
}

impl State {
    fn new(config: &ControllerConfig) -> Self {
        Self {
            objects: BTreeMap::new(),
            listed: BTreeSet::new(),
            relisting: BTreeMap::new(),
            resync_needed: true,
            dirty: BTreeSet::new(),
            references_dirty: false,
            publish_service: config
                .publish_service
                .as_ref()
                .map(|(ns, name)| ObjectKey::new(ns.as_str(), name.as_str())),
            inputs: StatusInputs::default(),
            settings: config.settings.clone(),
            limits: config.limits,
            referenced: BTreeSet::new(),
            refused: BTreeMap::new(),
        }
    }

    fn has_work(&self) -> bool {
        if self.resync_needed {
            self.listed.len() == KINDS.len()
        } else {
            !self.dirty.is_empty() || self.references_dirty
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
                    .insert(key, Held::new(&seen));
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
                if objects.get(&key).map(|h| &h.resource) == Some(&seen.resource) {
                    return; // only the status (or something routing ignores) changed
                }
                let previous = objects.insert(key.clone(), Held::new(&seen));
                self.references_dirty |= kind == ResourceKind::IngressClass
                    || secrets::may_change_references(
                        previous.as_ref().map(|h| &h.resource),
                        Some(&seen.resource),
                    );
                self.dirty.insert((kind, key));
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
                self.references_dirty |= kind == ResourceKind::IngressClass
                    || secrets::may_change_references(Some(&previous.resource), None);
                self.dirty.insert((kind, key));
            }
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

    /// What the table should hold for `kind`/`key`: the object, unless it is an unreferenced
    /// Secret or refused by the limits.
    fn desired(&self, kind: ResourceKind, key: &ObjectKey) -> Option<&Resource> {
        if kind == ResourceKind::Secret && !self.referenced.contains(key) {
            return None;
        }
        if self.refused.contains_key(&(kind, key.clone())) {
            return None;
        }
        self.objects.get(&kind)?.get(key).map(|h| &h.resource)
    }

    /// The next flush, against `table` (the committed table, with every change of ours
    /// applied): the difference between what the API server holds (within the limits) and
    /// the table's inputs, for the objects changed since the last flush, or for every object
    /// after a (re)list. `None` while a list is incomplete or nothing changed.
    fn take_proposal(&mut self, table: &RoutingTable) -> Option<Plan> {
        let full = self.resync_needed;
        if full {
            if self.listed.len() < KINDS.len() {
                return None;
            }
            self.resync_needed = false;
        } else if self.dirty.is_empty() && !self.references_dirty {
            return None;
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        if std::mem::take(&mut self.references_dirty) || full {
            let referenced = secrets::referenced(&self.settings, &self.objects);
            for key in referenced.symmetric_difference(&self.referenced) {
                dirty.insert((ResourceKind::Secret, key.clone()));
            }
            self.referenced = referenced;
        }
        let refused = self.judge_limits(full, &mut dirty);

        let keys: BTreeSet<Object> = if full {
            let held = self
                .objects
                .iter()
                .flat_map(|(kind, objects)| objects.keys().map(|key| (*kind, key.clone())));
            let committed = table.input_keys().map(|(kind, key)| (kind, key.clone()));
            held.chain(committed).collect()
        } else {
            dirty
        };
        let mut changes = Vec::new();
        if full && table.settings() != &self.settings {
            changes.push((0, Change::Settings(self.settings.clone())));
        }
        let (mut ingresses, mut everything) = (BTreeSet::new(), full);
        for (kind, key) in keys {
            let want = self.desired(kind, &key);
            let have = table.input(kind, &key);
            if want == have.as_ref() {
                continue;
            }
            match kind {
                ResourceKind::Ingress => drop(ingresses.insert(key.clone())),
                ResourceKind::EndpointSlice => {}
                _ => everything = true,
            }
            changes.push(match want {
                Some(resource) => (order(kind, true), Change::Upsert(resource.clone())),
                None => (order(kind, false), Change::Delete { kind, key }),
            });
        }
        // Stable: objects of one kind keep their key order.
        changes.sort_by_key(|(order, _)| *order);
        let changes: Vec<Change> = changes.into_iter().map(|(_, c)| c).collect();
        if full {
            tracing::info!(
                changes = changes.len(),
                bytes = changes.iter().map(Change::encoded_len).sum::<usize>(),
                refused = self.refused.len(),
                "resync: proposing the difference from the committed table"
            );
        }
        let entries = if full && changes.is_empty() {
            // A resync that finds the table matching still commits one entry, holding no
            // object: every resync is then visible in the log and in
            // `proposals_total{kind="resync"}`, which operators and tests watch for.
            vec![Change::Batch(Vec::new())]
        } else {
            portico_model::chunks(changes, MAX_ENTRY_BYTES)
        };
        Some(Plan {
            entries,
            scope: if full {
                Scope::Resync
            } else {
                Scope::Delta {
                    ingresses,
                    everything,
                }
            },
            refused,
        })
    }

    /// Judges the limits again for the namespaces of `dirty` (every namespace when `full`):
    /// objects whose admission changed join `dirty`; returns the refusals not reported yet.
    fn judge_limits(&mut self, full: bool, dirty: &mut BTreeSet<Object>) -> Vec<Refused> {
        let namespaces: BTreeSet<Arc<str>> =
            dirty.iter().map(|(_, key)| key.namespace.clone()).collect();
        let in_scope = |key: &ObjectKey| full || namespaces.contains(&key.namespace);
        let candidates = self
            .objects
            .iter()
            .flat_map(|(kind, objects)| objects.iter().map(move |(key, held)| (*kind, key, held)))
            .filter(|(kind, key, _)| {
                in_scope(key) && (*kind != ResourceKind::Secret || self.referenced.contains(*key))
            })
            .map(|(kind, key, held)| Candidate {
                kind,
                key: key.clone(),
                created: held.created,
                bytes: held.bytes,
            });
        let now = limits::refusals(&self.limits, candidates);
        let mut before = BTreeMap::new();
        self.refused.retain(|object, refusal| {
            if in_scope(&object.1) {
                before.insert(object.clone(), refusal.clone());
                false
            } else {
                true
            }
        });
        let mut reports = Vec::new();
        for (object, refusal) in &now {
            if before.get(object) != Some(refusal) {
                let uid = self
                    .objects
                    .get(&object.0)
                    .and_then(|o| o.get(&object.1))
                    .and_then(|h| h.uid.clone());
                reports.push(Refused {
                    kind: object.0,
                    key: object.1.clone(),
                    uid,
                    refusal: refusal.clone(),
                });
            }
        }
        for object in before.keys().chain(now.keys()) {
            if before.contains_key(object) != now.contains_key(object) {
                dirty.insert(object.clone());
            }
        }
        self.refused.extend(now);
        reports
    }
}

/// Where a change goes in a flush: settings first; then what Ingresses point at, so a new
/// Ingress finds its Services, endpoints and certificates already there; then Ingresses;
/// then the deletes of what they pointed at.
fn order(kind: ResourceKind, upsert: bool) -> u8 {
    let rank = match kind {
        ResourceKind::IngressClass => 0,
        ResourceKind::Service => 1,
        ResourceKind::EndpointSlice => 2,
        ResourceKind::Secret => 3,
        ResourceKind::Ingress => return 10,
    };
    if upsert { 1 + rank } else { 20 - rank }
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
                created: None,
                uid: None,
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
                created: None,
                uid: None,
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
                created: None,
                uid: None,
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
        .backoff(watch_backoff())
        .filter_map(move |event| async move {
            match event {
                Ok(Event::Init) => Some(Observation::Listing(kind)),
                Ok(Event::InitApply(object)) => Some(Observation::Listed(seen(&object, convert))),
                Ok(Event::InitDone) => Some(Observation::ListDone(kind)),
                Ok(Event::Apply(object)) => Some(Observation::Applied(seen(&object, convert))),
                Ok(Event::Delete(object)) => Some(Observation::Deleted(seen(&object, convert))),
                Err(e) => {
                    tracing::warn!(%kind, error = %e, "watch failed; retrying with backoff");
                    None
                }
            }
        })
        .boxed()
}

/// `object` converted, with the metadata the limits need.
fn seen<K: kube::Resource>(object: &K, convert: fn(&K) -> Seen) -> Seen {
    let meta = object.meta();
    Seen {
        created: meta.creation_timestamp.as_ref().map(|t| t.0.as_second()),
        uid: meta.uid.clone(),
        ..convert(object)
    }
}

/// Retry delays after a watch error: 100 ms doubling to 5 s, jittered, reset by the next
/// success. (kube's default starts at 800 ms and grows to 30 s, too slow for a routing
/// controller.)
fn watch_backoff() -> watcher::ExponentialBackoff {
    backoff::jittered(Duration::from_millis(100), Duration::from_secs(5)).into()
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
        created: None,
        uid: None,
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
        created: None,
        uid: None,
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

/// The routing model's benchmark cluster: 10,000 Ingresses, 1,000 Services with 30
/// endpoints each, 1,000 TLS Secrets, in one namespace.
#[cfg(test)]
#[path = "../../portico-model/benches/support/cluster.rs"]
mod cluster;

#[cfg(test)]
mod tests {
    use portico_model::{IngressTlsSource, SecretSource};

    use super::*;

    fn config(limits: Limits) -> ControllerConfig {
        let mut config = ControllerConfig::new("portico", "test");
        // No IngressClass in these tests: take Ingresses without class.
        config.settings.watch_ingress_without_class = true;
        config.limits = limits;
        config
    }

    fn seen(resource: Resource, created: i64) -> Seen {
        Seen {
            resource,
            load_balancer: Vec::new(),
            resource_version: None,
            created: Some(created),
            uid: None,
        }
    }

    fn secret(ns: &str, name: &str, bytes: usize) -> Resource {
        Resource::Secret(Arc::new(SecretSource {
            key: ObjectKey::new(ns, name),
            type_: Some(SECRET_TYPE_TLS.into()),
            tls_crt: Some(vec![b'c'; bytes]),
            tls_key: Some(b"key".to_vec()),
            oversize: None,
        }))
    }

    fn ingress(ns: &str, name: &str, secret: Option<&str>) -> Resource {
        Resource::Ingress(Arc::new(IngressSource {
            key: ObjectKey::new(ns, name),
            tls: secret
                .map(|s| IngressTlsSource {
                    hosts: vec![],
                    secret_name: Some(s.into()),
                })
                .into_iter()
                .collect(),
            ..Default::default()
        }))
    }

    /// A state that has listed `objects` (every kind, so a resync is due).
    fn listed(config: &ControllerConfig, objects: &[(Resource, i64)]) -> State {
        let (status, _) = mpsc::unbounded_channel();
        let mut state = State::new(config);
        for kind in KINDS {
            state.observe(Observation::Listing(kind), &status);
        }
        for (resource, created) in objects {
            state.observe(
                Observation::Listed(seen(resource.clone(), *created)),
                &status,
            );
        }
        for kind in KINDS {
            state.observe(Observation::ListDone(kind), &status);
        }
        state
    }

    fn apply_all(table: &mut RoutingTable, entries: &[Change]) {
        for entry in entries {
            table.apply(table.version() + 1, entry);
        }
    }

    fn flatten(entries: &[Change]) -> Vec<String> {
        let mut out = Vec::new();
        for entry in entries {
            match entry {
                Change::Batch(inner) => out.extend(flatten(inner)),
                Change::Upsert(r) => out.push(format!("upsert {} {}", r.kind(), r.key())),
                Change::Delete { kind, key } => out.push(format!("delete {kind} {key}")),
                Change::Settings(_) => out.push("settings".into()),
                Change::Resync { .. } => out.push("resync".into()),
            }
        }
        out
    }

    #[test]
    fn a_resync_is_the_difference_in_bounded_entries_and_nothing_when_it_matches() {
        let config = config(Limits::default());
        // 40 referenced Secrets of 60 KiB: 2.4 MiB, more than two entries.
        let mut objects = Vec::new();
        for i in 0..40 {
            let name = format!("s{i}");
            objects.push((secret("t", &name, 60 << 10), i));
            objects.push((ingress("t", &format!("i{i}"), Some(&name)), i));
        }
        objects.push((secret("t", "unused", 10), 0));
        let mut state = listed(&config, &objects);
        let mut table = RoutingTable::default();
        let plan = state.take_proposal(&table).expect("a resync");
        assert!(matches!(plan.scope, Scope::Resync));
        assert!(plan.entries.len() >= 3, "{} entries", plan.entries.len());
        for entry in &plan.entries {
            assert!(entry.encoded_len() <= MAX_ENTRY_BYTES);
        }
        let changes = flatten(&plan.entries);
        assert_eq!(changes[0], "settings");
        assert_eq!(changes.len(), 81, "settings, 40 Secrets, 40 Ingresses");
        assert!(!changes.iter().any(|c| c.contains("unused")));
        // Secrets before the Ingresses that name them.
        let last_secret = changes.iter().rposition(|c| c.contains("Secret")).unwrap();
        let first_ingress = changes.iter().position(|c| c.contains("Ingress")).unwrap();
        assert!(last_secret < first_ingress);
        apply_all(&mut table, &plan.entries);

        // A new leader over the same objects: the table matches, nothing to propose.
        let mut next = listed(&config, &objects);
        let plan = next.take_proposal(&table).expect("a resync");
        assert_eq!(
            plan.entries,
            [Change::Batch(Vec::new())],
            "an empty marker only"
        );

        // Only what changed while no one led: one Ingress gone, one Secret rewritten.
        objects.retain(|(r, _)| r.key().name.as_ref() != "i3");
        objects.push((secret("t", "s5", 100), 5));
        let mut next = listed(&config, &objects);
        let plan = next.take_proposal(&table).expect("a resync");
        assert_eq!(
            flatten(&plan.entries),
            [
                "upsert Secret t/s5",
                "delete Ingress t/i3",
                "delete Secret t/s3"
            ]
        );
    }

    /// Before: one `Resync` entry of the whole table. After: bounded entries, and a marker
    /// of a few bytes when a new leader finds the table matching. The figures:
    /// `cargo test -p portico-controller --lib ten_thousand -- --nocapture`.
    #[test]
    fn a_ten_thousand_ingress_resync_is_bounded_entries_and_a_matching_one_a_few_bytes() {
        let mut config = ControllerConfig::new("portico", "test");
        config.settings = Settings::default();
        let objects: Vec<(Resource, i64)> = cluster::large_cluster()
            .into_iter()
            .enumerate()
            .map(|(i, r)| (r, i as i64))
            .collect();
        let before = Change::Resync {
            settings: config.settings.clone(),
            resources: objects.iter().map(|(r, _)| r.clone()).collect(),
        }
        .encoded_len();
        let mut state = listed(&config, &objects);
        let mut table = RoutingTable::default();
        let plan = state.take_proposal(&table).unwrap();
        assert!(
            plan.refused.is_empty(),
            "the default limits refuse none of it"
        );
        let sizes: Vec<usize> = plan.entries.iter().map(Change::encoded_len).collect();
        let total: usize = sizes.iter().sum();
        let largest = *sizes.iter().max().unwrap();
        assert!(largest <= MAX_ENTRY_BYTES);
        // An Upsert's tag per object and a few bytes per entry, nothing more.
        assert!(
            total <= before + objects.len() + 16 * sizes.len(),
            "{total} vs {before}"
        );
        apply_all(&mut table, &plan.entries);
        let compiled = RoutingTable::compile(
            config.settings.clone(),
            objects.iter().map(|(r, _)| r.clone()).collect(),
        );
        let inputs = |t: &RoutingTable| {
            t.input_keys()
                .map(|(kind, key)| t.input(kind, key))
                .collect::<Vec<_>>()
        };
        assert!(
            inputs(&table) == inputs(&compiled),
            "the chunks build the same table"
        );
        assert_eq!(table.routes().count(), compiled.routes().count());
        let mut next = listed(&config, &objects);
        let again = next.take_proposal(&table).unwrap();
        let marker: usize = again.entries.iter().map(Change::encoded_len).sum();
        assert!(marker < 8, "{marker} bytes");
        println!(
            "10,000-Ingress resync: before one entry of {before} bytes; after {} entries, {total} bytes in all, the largest {largest} bytes; a new leader over the same table: {marker} bytes",
            sizes.len()
        );
    }

    #[test]
    fn a_burst_costs_one_change_per_object_and_an_undone_change_none() {
        let config = config(Limits::default());
        let objects = [
            (ingress("t", "web", Some("a")), 1),
            (secret("t", "a", 10), 1),
        ];
        let mut state = listed(&config, &objects);
        let mut table = RoutingTable::default();
        let first = state.take_proposal(&table).unwrap();
        apply_all(&mut table, &first.entries);
        let (status, _) = mpsc::unbounded_channel();
        for i in 0..1000 {
            let obs = Observation::Applied(seen(secret("t", "a", 20 + i % 7), 1));
            state.observe(obs, &status);
        }
        // A Secret no Ingress names, created and deleted within the window.
        state.observe(Observation::Applied(seen(secret("t", "b", 5), 2)), &status);
        state.observe(Observation::Deleted(seen(secret("t", "b", 5), 2)), &status);
        let plan = state.take_proposal(&table).unwrap();
        assert_eq!(flatten(&plan.entries), ["upsert Secret t/a"]);
    }

    #[test]
    fn over_limit_objects_are_refused_once_and_never_push_out_another_namespace() {
        let limits = Limits {
            max_object_bytes: 100 << 10,
            max_namespace_bytes: 1 << 20,
            max_namespace_objects: 10,
        };
        let config = config(limits);
        let mut objects = vec![
            (ingress("quiet", "web", Some("cert")), 100),
            (secret("quiet", "cert", 1000), 100),
        ];
        for i in 0..30 {
            objects.push((ingress("flood", &format!("i{i:02}"), None), i));
        }
        objects.push((ingress("flood", "huge", Some("big")), 0));
        objects.push((secret("flood", "big", 200 << 10), 0));
        let mut state = listed(&config, &objects);
        let mut table = RoutingTable::default();
        let plan = state.take_proposal(&table).unwrap();
        let refused: Vec<String> = plan
            .refused
            .iter()
            .map(|r| format!("{} {} {}", r.refusal.reason(), r.kind, r.key))
            .collect();
        assert!(refused.contains(&"ObjectTooLarge Secret flood/big".to_owned()));
        // huge (created 0) and i00..i08 fill flood's 10; i09.. are refused.
        assert_eq!(
            refused
                .iter()
                .filter(|r| r.starts_with("NamespaceQuotaExceeded"))
                .count(),
            21,
            "{refused:?}"
        );
        assert!(!refused.iter().any(|r| r.contains("quiet/")));
        apply_all(&mut table, &plan.entries);
        assert!(
            table
                .input(ResourceKind::Ingress, &ObjectKey::new("quiet", "web"))
                .is_some()
        );
        assert!(
            table
                .input(ResourceKind::Secret, &ObjectKey::new("quiet", "cert"))
                .is_some()
        );
        assert!(
            table
                .input(ResourceKind::Ingress, &ObjectKey::new("flood", "i08"))
                .is_some()
        );
        assert!(
            table
                .input(ResourceKind::Ingress, &ObjectKey::new("flood", "i09"))
                .is_none()
        );
        assert!(
            table
                .input(ResourceKind::Secret, &ObjectKey::new("flood", "big"))
                .is_none()
        );

        // The oldest flood Ingress goes: the next one takes its place, reported nowhere
        // again; the refusals already reported are not repeated.
        let (status, _) = mpsc::unbounded_channel();
        state.observe(
            Observation::Deleted(seen(ingress("flood", "i00", None), 0)),
            &status,
        );
        let plan = state.take_proposal(&table).unwrap();
        assert!(plan.refused.is_empty(), "{:?}", plan.refused);
        assert_eq!(
            flatten(&plan.entries),
            ["delete Ingress flood/i00", "upsert Ingress flood/i09"]
        );
    }
}
