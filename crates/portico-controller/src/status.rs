//! Leader work: Ingress status and Events, from the *committed* routing table.
//!
//! * `status.loadBalancer.ingress` of every Ingress the committed table accepts is set to
//!   the configured addresses (`publish_status_addresses`, else the status of the
//!   `publish_service` LoadBalancer Service). The worker looks only at tables the replica
//!   has applied after a proposal committed, so an address is never published for a route
//!   that is not yet replicated.
//! * Writes are skipped when the Ingress already shows the wanted addresses, and when our
//!   own previous write has not come back through the watch yet.
//! * Status is never cleared because leadership changed or a replica restarted: a new
//!   leader starts from an empty memory and only ever *sets* addresses for accepted
//!   Ingresses. It is cleared only for an Ingress the table says is not ours (left our
//!   class) or rejected, and only when the addresses it shows are ours (the configured
//!   ones, or ones this leader wrote), so another controller's status is left alone.
//! * Every write runs [`while_leading`]: only while the Lease is valid by our monotonic
//!   clock ([`crate::LeaseValidity`]), and abandoned, with every retry the kube client would
//!   still make of it (it retries 429/503/504 on its own), the moment the lease runs out: no
//!   request of ours leaves after that. A status write also carries the resourceVersion we
//!   last saw as a precondition, so one that arrives after the Ingress changed (a newer
//!   leader's write, a new spec) is refused with 409 instead of overwriting it.
//! * Problems of our Ingresses become Kubernetes Events (reason = the problem's reason,
//!   note naming the field) and a log line, each time an Ingress's problem set changes
//!   (so once per problem per leadership).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};
use portico_model::{IngressVerdict, ObjectKey, Problem, RoutingTable};
use portico_raft::Replica;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, ReasonLabel};
use crate::{ControllerConfig, LeaseValidity, reconcile};

/// One entry of `status.loadBalancer.ingress`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LbAddress {
    pub ip: Option<String>,
    pub hostname: Option<String>,
}

impl LbAddress {
    /// An address from `--publish-status-address`: an IP if it parses as one, else a hostname.
    pub fn parse(text: &str) -> Self {
        if text.parse::<std::net::IpAddr>().is_ok() {
            Self {
                ip: Some(text.to_owned()),
                hostname: None,
            }
        } else {
            Self {
                ip: None,
                hostname: Some(text.to_owned()),
            }
        }
    }
}

/// What the watchers say about status: each Ingress's current addresses, and the publish
/// Service's. Persistent maps, so handing a copy to the worker costs O(1).
#[derive(Clone, Default, Debug)]
pub(crate) struct StatusInputs {
    pub ingress_status: imbl::HashMap<ObjectKey, Vec<LbAddress>>,
    /// Each Ingress's UID, for the Events that point at it.
    pub ingress_uids: imbl::HashMap<ObjectKey, Option<String>>,
    /// Each Ingress's resourceVersion as last seen: the precondition of a status write.
    pub ingress_versions: imbl::HashMap<ObjectKey, Option<String>>,
    pub publish_service_addresses: Option<Vec<LbAddress>>,
}

#[derive(Debug)]
pub(crate) enum StatusWork {
    /// A proposal committed at `version`; `scope` names the Ingresses it touched (None: all).
    Committed {
        version: u64,
        scope: Option<BTreeSet<ObjectKey>>,
    },
    /// The watchers saw a status change (`changed`, or the publish Service when None).
    Observed {
        inputs: StatusInputs,
        changed: Option<ObjectKey>,
    },
}

pub(crate) struct StatusContext {
    pub client: Client,
    pub replica: Replica,
    pub config: Arc<ControllerConfig>,
    pub metrics: Metrics,
    pub lease: LeaseValidity,
    pub token: CancellationToken,
}

const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Why a leader's API call was not made or has no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LeaderCallError {
    #[error("the lease is no longer valid")]
    LeaseExpired,
    #[error("no answer within {CALL_TIMEOUT:?}")]
    TimedOut,
    #[error(transparent)]
    Api(#[from] kube::Error),
}

/// Runs `call` (not yet polled, so nothing is sent before the check) only while `lease` is
/// valid, bounded by [`CALL_TIMEOUT`] and by the lease's end: dropping the future at that
/// instant also drops the retries the kube client would otherwise keep sending.
pub(crate) async fn while_leading<T>(
    lease: &LeaseValidity,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, LeaderCallError> {
    let until = lease.valid_until().ok_or(LeaderCallError::LeaseExpired)?;
    let deadline = until.min(std::time::Instant::now() + CALL_TIMEOUT);
    match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), call).await {
        Ok(result) => Ok(result?),
        Err(_) if deadline == until => Err(LeaderCallError::LeaseExpired),
        Err(_) => Err(LeaderCallError::TimedOut),
    }
}

/// Runs until `ctx.token` is cancelled.
pub(crate) async fn run(ctx: StatusContext, mut rx: mpsc::UnboundedReceiver<StatusWork>) {
    let recorder = Recorder::new(
        ctx.client.clone(),
        Reporter {
            controller: "portico-controller".into(),
            instance: Some(ctx.config.identity.clone()),
        },
    );
    let mut configured: Vec<LbAddress> = ctx
        .config
        .publish_status_addresses
        .iter()
        .map(|a| LbAddress::parse(a))
        .collect();
    configured.sort();
    configured.dedup();
    let mut worker = Worker {
        ctx: &ctx,
        recorder,
        configured,
        inputs: StatusInputs::default(),
        committed: None,
        dirty: BTreeSet::new(),
        all_dirty: true,
        written: HashMap::new(),
        reported: HashMap::new(),
    };
    loop {
        let retry = !worker.dirty.is_empty() || worker.all_dirty;
        tokio::select! {
            biased;
            () = ctx.token.cancelled() => return,
            work = rx.recv() => {
                let Some(work) = work else { return };
                worker.take(work);
                while let Ok(more) = rx.try_recv() {
                    worker.take(more);
                }
            }
            () = tokio::time::sleep(RETRY_AFTER), if retry => {}
        }
        worker.process().await;
    }
}

struct Worker<'a> {
    ctx: &'a StatusContext,
    recorder: Recorder,
    configured: Vec<LbAddress>,
    inputs: StatusInputs,
    /// The highest committed version we know of; nothing is written before the first.
    committed: Option<u64>,
    dirty: BTreeSet<ObjectKey>,
    all_dirty: bool,
    /// Our writes: (what we wrote, what the Ingress showed before), until the watch echoes them.
    written: HashMap<ObjectKey, (Vec<LbAddress>, Vec<LbAddress>)>,
    /// The problems last reported per Ingress.
    reported: HashMap<ObjectKey, Vec<Problem>>,
}

impl Worker<'_> {
    fn take(&mut self, work: StatusWork) {
        match work {
            StatusWork::Committed { version, scope } => {
                self.committed = Some(self.committed.unwrap_or(0).max(version));
                match scope {
                    None => self.all_dirty = true,
                    Some(keys) => self.dirty.extend(keys),
                }
            }
            StatusWork::Observed {
                inputs, changed, ..
            } => {
                self.inputs = inputs;
                match changed {
                    Some(key) => {
                        self.dirty.insert(key);
                    }
                    None => self.all_dirty = true,
                }
            }
        }
    }

    /// The addresses accepted Ingresses should show; None while they are not known yet.
    fn wanted(&self) -> Option<Vec<LbAddress>> {
        if !self.configured.is_empty() {
            return Some(self.configured.clone());
        }
        self.ctx.config.publish_service.as_ref()?;
        let mut addresses = self.inputs.publish_service_addresses.clone()?;
        addresses.sort();
        addresses.dedup();
        Some(addresses)
    }

    async fn process(&mut self) {
        let Some(version) = self.committed else {
            return;
        };
        let Ok(_) = self
            .ctx
            .replica
            .wait_for_version(version, Duration::from_secs(5))
            .await
        else {
            return; // retried on the next tick
        };
        let table: Arc<RoutingTable> = self.ctx.replica.table().borrow().clone();
        let keys: Vec<ObjectKey> = if std::mem::take(&mut self.all_dirty) {
            self.dirty.clear();
            let mut keys: BTreeSet<ObjectKey> = table.ingresses().map(|(k, _)| k.clone()).collect();
            keys.extend(self.inputs.ingress_status.keys().cloned());
            keys.into_iter().collect()
        } else {
            std::mem::take(&mut self.dirty).into_iter().collect()
        };
        let wanted = self.wanted();
        let mut problems_changed = false;
        for key in keys {
            if self.ctx.token.is_cancelled() {
                return;
            }
            let verdict = table.ingress_verdict(&key);
            problems_changed |= self.report_problems(&table, &key, verdict).await;
            if let Some(wanted) = &wanted
                && !self.write_status(&key, verdict, wanted).await
            {
                self.dirty.insert(key);
            }
        }
        if problems_changed {
            self.count_invalid();
        }
    }

    /// Brings one Ingress's status to what the table says; false to retry it later.
    async fn write_status(
        &mut self,
        key: &ObjectKey,
        verdict: Option<IngressVerdict>,
        wanted: &[LbAddress],
    ) -> bool {
        let Some(current) = self.inputs.ingress_status.get(key).cloned() else {
            return true; // not (or no longer) in the API server
        };
        let target = match verdict {
            Some(IngressVerdict::Accepted) => wanted.to_vec(),
            Some(IngressVerdict::NotOurs | IngressVerdict::Rejected) => {
                let ours = !current.is_empty()
                    && (sorted(&current) == wanted
                        || self.written.get(key).is_some_and(|(w, _)| *w == current));
                if !ours {
                    return true;
                }
                Vec::new()
            }
            None => return true, // not in the committed table yet
        };
        if sorted(&current) == sorted(&target) {
            self.written.remove(key);
            return true;
        }
        if self
            .written
            .get(key)
            .is_some_and(|(w, before)| *w == target && *before == current)
        {
            return true; // our write has not come back through the watch yet
        }
        let api: Api<Ingress> = Api::namespaced(self.ctx.client.clone(), &key.namespace);
        let version = self.inputs.ingress_versions.get(key).cloned().flatten();
        let patch = reconcile::status_patch(&target, version.as_deref());
        let params = PatchParams::default();
        let patch = Patch::Merge(&patch);
        let call = api.patch_status(&key.name, &params, &patch);
        match while_leading(&self.ctx.lease, call).await {
            Ok(_) => {
                tracing::info!(ingress = %key, addresses = ?target, "status written");
                self.ctx.metrics.status_writes.inc();
                self.written.insert(key.clone(), (target, current));
                true
            }
            Err(LeaderCallError::Api(kube::Error::Api(e))) if e.code == 404 => true,
            Err(LeaderCallError::LeaseExpired) => {
                tracing::warn!(ingress = %key, "not writing status: the lease is no longer valid");
                false
            }
            Err(LeaderCallError::Api(kube::Error::Api(e))) if e.code == 409 => {
                // Retried once the watch shows the Ingress as it is now.
                tracing::info!(ingress = %key, "status write refused: the Ingress changed since we read it");
                self.ctx.metrics.status_write_errors.inc();
                false
            }
            Err(e) => {
                tracing::warn!(ingress = %key, error = %e, "status write failed; will retry");
                self.ctx.metrics.status_write_errors.inc();
                false
            }
        }
    }

    /// Records Events for an Ingress whose problems changed; true if they did.
    async fn report_problems(
        &mut self,
        table: &RoutingTable,
        key: &ObjectKey,
        verdict: Option<IngressVerdict>,
    ) -> bool {
        let problems = match verdict {
            Some(IngressVerdict::Accepted | IngressVerdict::Rejected) => {
                table.problems(key, unix_now())
            }
            _ => Vec::new(),
        };
        let previous = self.reported.get(key).cloned().unwrap_or_default();
        if previous == problems {
            return false;
        }
        let uid = self.inputs.ingress_uids.get(key).cloned().flatten();
        for problem in problems.iter().filter(|p| !previous.contains(p)) {
            tracing::warn!(
                ingress = %key,
                reason = problem.reason.as_str(),
                field = %problem.field,
                "{}",
                problem.message
            );
            let event = Event {
                type_: EventType::Warning,
                reason: problem.reason.as_str().to_owned(),
                note: Some(truncate(&problem.to_string(), 1000)),
                action: "Validate".into(),
                secondary: None,
            };
            let reference = ObjectReference {
                api_version: Some("networking.k8s.io/v1".into()),
                kind: Some("Ingress".into()),
                namespace: Some(key.namespace.to_string()),
                name: Some(key.name.to_string()),
                uid: uid.clone(),
                ..Default::default()
            };
            match while_leading(&self.ctx.lease, self.recorder.publish(&event, &reference)).await {
                Ok(()) => {
                    self.ctx.metrics.events_emitted.inc();
                }
                Err(LeaderCallError::LeaseExpired) => {}
                Err(e) => {
                    tracing::warn!(ingress = %key, error = %e, "recording an Event failed")
                }
            }
        }
        if problems.is_empty() {
            self.reported.remove(key);
        } else {
            self.reported.insert(key.clone(), problems);
        }
        true
    }

    fn count_invalid(&self) {
        let family = &self.ctx.metrics.invalid_ingresses;
        family.clear();
        for problems in self.reported.values() {
            if let Some(first) = problems.first() {
                family
                    .get_or_create(&ReasonLabel {
                        reason: first.reason.as_str().to_owned(),
                    })
                    .inc();
            }
        }
    }
}

fn sorted(addresses: &[LbAddress]) -> Vec<LbAddress> {
    let mut list = addresses.to_vec();
    list.sort();
    list
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use kube::client::retry::RetryPolicy;
    use portico_apiserver::{ApiServer, Availability};
    use tokio::time::Instant;
    use tower::ServiceBuilder;
    use tower::retry::RetryLayer;

    use super::*;

    /// Every request a leader's client sends for one status write, with when it arrived and
    /// its answer: through kube's retry layer as `portico run` builds its client, while the
    /// API server answers 503 (with `Retry-After: 1`, as kube-apiserver does) for 1.5 s and
    /// the lease runs out after 300 ms. `bounded`: the call runs in [`while_leading`]; else
    /// as before that existed, in a plain 5 s timeout after checking the lease once.
    async fn one_write_through_an_outage(bounded: bool) -> (Vec<(Instant, u16)>, Instant) {
        let api = ApiServer::builder().build().unwrap();
        let admin: Api<Ingress> = Api::namespaced(Client::new(api.service(), "default"), "default");
        let ingress: Ingress = serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "a", "namespace": "default"},
            "spec": {"defaultBackend": {"service": {"name": "s", "port": {"number": 80}}}},
        }))
        .unwrap();
        admin.create(&Default::default(), &ingress).await.unwrap();

        let arrivals: Arc<Mutex<Vec<(Instant, u16)>>> = Arc::default();
        let inner = api.service();
        let seen = arrivals.clone();
        let recording = tower::service_fn(move |request: http::Request<kube::client::Body>| {
            let mut inner = inner.clone();
            let seen = seen.clone();
            async move {
                let arrived = Instant::now();
                let response = tower::Service::call(&mut inner, request).await?;
                seen.lock()
                    .unwrap()
                    .push((arrived, response.status().as_u16()));
                Ok::<_, tower::BoxError>(response)
            }
        });
        let service = ServiceBuilder::new()
            .layer(RetryLayer::new(RetryPolicy::server_retry()))
            .service(recording);
        let leader: Api<Ingress> = Api::namespaced(Client::new(service, "default"), "default");

        let lease = LeaseValidity::default();
        let until = std::time::Instant::now() + Duration::from_millis(300);
        lease.set(Some(until));
        api.faults().set_availability(Availability::Unavailable);
        let faults = api.faults().clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            faults.set_availability(Availability::Up);
        });

        let patch = reconcile::status_patch(&[LbAddress::parse("203.0.113.7")], None);
        let params = PatchParams::default();
        let patch = Patch::Merge(&patch);
        let call = leader.patch_status("a", &params, &patch);
        if bounded {
            let outcome = while_leading(&lease, call).await;
            assert!(
                matches!(outcome, Err(LeaderCallError::LeaseExpired)),
                "{outcome:?}"
            );
        } else {
            assert!(lease.is_valid());
            let _ = tokio::time::timeout(CALL_TIMEOUT, call).await;
        }
        // Past the outage and the call's own timeout: whatever was going to arrive has.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let arrivals = arrivals.lock().unwrap().clone();
        (arrivals, Instant::from_std(until))
    }

    /// The chaos harness saw a status write land after its writer's lease had run out, at the
    /// end of an API-server outage: the kube client resends a 503'd request on its own, so
    /// a write checked while the lease was valid kept being resent and landed once the API
    /// server was back. Now no request leaves after the lease's end (give or take the
    /// timer's millisecond: the call is polled before its deadline in the same tick).
    /// Real time, as the lease is judged by the real monotonic clock.
    #[tokio::test]
    async fn no_status_write_leaves_after_the_lease_runs_out() {
        // The interleaving, as it was: a retry lands, successfully, after the lease ended.
        let (before, until) = one_write_through_an_outage(false).await;
        assert!(
            before
                .iter()
                .any(|(at, status)| *at > until && *status == 200),
            "the unbounded call should show the late write: {before:?}"
        );
        let (arrivals, until) = one_write_through_an_outage(true).await;
        let end = until + Duration::from_millis(20);
        assert!(
            arrivals
                .iter()
                .all(|(at, status)| *at <= end && *status == 503),
            "a request left after the lease ran out: {arrivals:?} (lease until {until:?})"
        );
    }

    /// A write computed from an Ingress as it was is refused once the Ingress changed (here
    /// by another writer's status), instead of overwriting the newer state.
    #[tokio::test]
    async fn a_status_write_from_a_stale_version_is_refused() {
        let api = ApiServer::builder().build().unwrap();
        let client = Client::new(api.service(), "default");
        let ingresses: Api<Ingress> = Api::namespaced(client, "default");
        let ingress: Ingress = serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "a", "namespace": "default"},
            "spec": {"defaultBackend": {"service": {"name": "s", "port": {"number": 80}}}},
        }))
        .unwrap();
        let created = ingresses
            .create(&Default::default(), &ingress)
            .await
            .unwrap();
        let seen = created.metadata.resource_version.as_deref();
        let newer = reconcile::status_patch(&[LbAddress::parse("198.51.100.1")], seen);
        ingresses
            .patch_status("a", &PatchParams::default(), &Patch::Merge(&newer))
            .await
            .unwrap();
        let stale = reconcile::status_patch(&[LbAddress::parse("203.0.113.7")], seen);
        let refused = ingresses
            .patch_status("a", &PatchParams::default(), &Patch::Merge(&stale))
            .await;
        assert!(
            matches!(&refused, Err(kube::Error::Api(e)) if e.code == 409),
            "{refused:?}"
        );
        let now = ingresses.get("a").await.unwrap();
        let ip = now.status.unwrap().load_balancer.unwrap().ingress.unwrap()[0]
            .ip
            .clone();
        assert_eq!(ip.as_deref(), Some("198.51.100.1"));
    }
}
