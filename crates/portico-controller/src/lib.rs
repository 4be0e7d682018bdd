//! Portico's controller: exactly one replica at a time watches the API server, turns what it
//! sees into routing-table changes committed through Raft, and writes Ingress status.
//!
//! # Modules
//! * [`election`]: Lease leader election, client-go's algorithm (GET, then PUT with the
//!   resourceVersion; POST when absent; expiry by the local monotonic clock).
//! * `reconcile` (leader work): kube-runtime watchers → the difference from the committed
//!   table, debounced, within the limits, in log entries of at most 1 MiB; every (re)list
//!   compares every object. Its module docs list the RBAC the controller needs.
//! * `status` (leader work): Ingress `status.loadBalancer` and Events, from the committed
//!   table only.
//! * [`metrics`]: Prometheus metrics.
//!
//! # Leadership, coupled with Raft
//! [`Controller::run`] alternates two phases:
//!
//! * **Follower.** Every `retry_period`, *if this replica is the Raft leader and a quorum
//!   acknowledged it recently*, try to acquire the Lease. Only the Raft leader campaigns,
//!   so the Lease holder is the replica whose proposals commit without a forwarding hop,
//!   and a replica cut off from its peers never takes the Lease. Raft leadership is polled
//!   every 100 ms, so a new Raft leader takes a released Lease at once; replicas that are
//!   not Raft leader still read the Lease twice per retry period, so their expiry clock for
//!   the current holder is already running when they become leader, and a candidate that
//!   finds the Lease held tries again the moment it expires by that clock.
//! * **Leader.** The fencing epoch is the Lease's `leaseTransitions` after acquisition
//!   (raised above Raft's highest applied epoch if the Lease was recreated), carried by
//!   every proposal; the state machine refuses older epochs. Leader work (reconcile and
//!   status) runs under a `CancellationToken`. Every `retry_period` the Lease is renewed;
//!   the leader steps down when it has not renewed within `renew_deadline` of its last
//!   successful renew (even if the API server cannot be reached), when it stops being the
//!   Raft leader or loses its quorum acknowledgement, when someone else holds the Lease, or
//!   when leader work dies (the reason is kept in [`ControllerStatus::last_error`]).
//!   Stepping down cancels leader work first, then releases the Lease (holder cleared) so
//!   the next Raft leader takes over at once; meanwhile it hands Raft leadership to another
//!   replica ([`Replica::step_down`]), since only the Raft leader may campaign. A Raft
//!   leader that cannot reach the API server to take the Lease for a whole
//!   `lease_duration` hands Raft leadership on too, so a replica cut off from the API
//!   server does not keep everyone from leading.
//!
//! Status writes check [`LeaseValidity`] (valid until `renew_deadline` after the start of
//! the last successful renew, by the monotonic clock) just before each write, and a write
//! (with every retry the kube client makes of it) is abandoned when the lease runs out, so
//! no request leaves after that instant. Others wait `lease_duration` from when they saw
//! that renew, and `retry_period + renew_deadline < lease_duration` is enforced, so a
//! deposed leader's last request was sent at least `lease_duration - renew_deadline`
//! before anyone else may start. Each status write also carries the Ingress's
//! resourceVersion as a precondition: a write that arrives after anyone else changed the
//! Ingress (a newer leader's status, a new spec) is refused with 409.
//!
//! A handover (SIGTERM, or a Lease lost) takes about one Raft leader lease (the maximum
//! election timeout): followers refuse to elect anyone before it has run out. Every replica
//! keeps serving the last committed table meanwhile.

mod claim;
pub mod election;
pub mod metrics;
mod reconcile;
mod secrets;
mod status;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::{Api, Client};
use portico_raft::Replica;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::election::{Attempt, Elector};
use crate::metrics::Metrics;

pub use crate::election::boot_identity;
pub use crate::status::LbAddress;

/// How the controller runs. Build with [`ControllerConfig::new`] and adjust fields.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Namespace of the Lease (the controller's own namespace).
    pub namespace: String,
    /// Name of the Lease; default `portico-leader`.
    pub lease_name: String,
    /// This replica's holder identity: pod name plus a per-boot id ([`boot_identity`]).
    pub identity: String,
    /// How long others wait, from when they saw the last renew, before taking the Lease.
    pub lease_duration: Duration,
    /// The leader steps down if it has not renewed within this long.
    pub renew_deadline: Duration,
    /// Interval between election attempts and between renewals.
    pub retry_period: Duration,
    /// `(namespace, name)` of the LoadBalancer Service whose addresses go into Ingress status.
    pub publish_service: Option<(String, String)>,
    /// Fixed status addresses (IPs or hostnames); win over `publish_service`.
    pub publish_status_addresses: Vec<String>,
    pub settings: portico_model::Settings,
    /// Changes arriving within this long are proposed together.
    pub debounce: Duration,
    /// Watch Ingresses, Services, EndpointSlices and Secrets only in these namespaces, so
    /// Roles there are enough (IngressClasses are cluster-scoped: always all). Empty: every
    /// namespace.
    pub watch_namespaces: std::collections::BTreeSet<String>,
    /// What one object and one namespace may put into the table; the rest is refused with
    /// an Event (`ObjectTooLarge`, `NamespaceQuotaExceeded`).
    pub limits: portico_model::Limits,
}

impl ControllerConfig {
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            lease_name: "portico-leader".into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            publish_service: None,
            publish_status_addresses: Vec::new(),
            settings: portico_model::Settings::default(),
            debounce: Duration::from_millis(25),
            watch_namespaces: std::collections::BTreeSet::new(),
            limits: portico_model::Limits::default(),
        }
    }

    /// Checks the settings ([`Controller::run`] does too, so a caller may fail earlier).
    pub fn validate(&self) -> Result<(), ControllerError> {
        let bad = |m: &str| Err(ControllerError::InvalidConfig(m.to_owned()));
        if self.identity.is_empty() {
            return bad("identity must not be empty");
        }
        if self.namespace.is_empty() || self.lease_name.is_empty() {
            return bad("namespace and lease_name must not be empty");
        }
        if let Some(ns) = self
            .watch_namespaces
            .iter()
            .find(|ns| !portico_model::validate::is_dns1123_label(ns))
        {
            return bad(&format!("watch namespace {ns:?} is not a namespace name"));
        }
        if let Err(e) = self.limits.validate() {
            return bad(&e.to_string());
        }
        if self.retry_period.is_zero() {
            return bad("retry_period must be positive");
        }
        if self.retry_period + self.renew_deadline >= self.lease_duration {
            return bad(
                "retry_period + renew_deadline must be below lease_duration, so an old leader stops before a new one may start",
            );
        }
        Ok(())
    }

    /// How old Raft's last quorum acknowledgement may be for this replica to campaign or
    /// keep leading.
    fn quorum_ack_max_age(&self) -> Duration {
        (self.retry_period * 2).max(Duration::from_secs(1))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("invalid controller configuration: {0}")]
    InvalidConfig(String),
}

/// Why leader work ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LeaderWorkError {
    #[error("deposed: epoch {epoch} is older than epoch {highest_epoch} already applied")]
    Fenced { epoch: u64, highest_epoch: u64 },
    #[error("the Raft replica is shutting down")]
    ReplicaShuttingDown,
    /// The lease was no longer valid when a proposal was due (e.g. after a freeze).
    #[error("the lease ran out before a proposal")]
    LeaseExpired,
    /// A change Raft refused outright, e.g. a full resync larger than one log entry may be
    /// (raise the transport's `max_body_bytes`), or this replica's volume is a stale copy.
    /// Only the refusals retrying cannot fix: `TooLarge`, `EpochOutOfRange`, `Refused`,
    /// `StaleVolume`.
    #[error("a proposal was refused: {0}")]
    Refused(portico_raft::ProposeError),
    /// This replica had not applied our own last commit in time (Raft leadership moved).
    #[error("the table here is at version {applied}, behind our commit {version}")]
    TableBehind { version: u64, applied: u64 },
    #[error("every watcher ended")]
    WatchersEnded,
    #[error("cancelled")]
    Cancelled,
}

/// What the controller reports about itself (for readiness and the admin endpoint).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControllerStatus {
    /// This replica holds the Lease and runs leader work.
    pub is_leader: bool,
    /// The fencing epoch of the current leadership.
    pub epoch: Option<u64>,
    /// Why the last leadership ended abnormally (or why leader work cannot run).
    pub last_error: Option<String>,
}

/// Until when this replica's Lease is valid by its own monotonic clock.
#[derive(Clone, Default, Debug)]
pub struct LeaseValidity(Arc<Mutex<Option<Instant>>>);

impl LeaseValidity {
    fn set(&self, until: Option<Instant>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = until;
    }

    /// Whether the lease is still valid now.
    pub fn is_valid(&self) -> bool {
        self.valid_until().is_some()
    }

    /// Until when the lease is valid, if it is valid now: a leader's API call must be done
    /// (or abandoned) by then.
    pub fn valid_until(&self) -> Option<Instant> {
        let until = (*self.0.lock().unwrap_or_else(|e| e.into_inner()))?;
        (Instant::now() < until).then_some(until)
    }
}

pub struct Controller {
    config: Arc<ControllerConfig>,
    client: Client,
    replica: Replica,
    metrics: Metrics,
    status: watch::Sender<ControllerStatus>,
    lease: LeaseValidity,
}

/// How long a Raft step-down may take before this replica leads on (a few leader leases).
const STEP_DOWN_WITHIN: Duration = Duration::from_secs(6);

/// Why a leadership ended.
enum Exit {
    Shutdown,
    StepDown(String),
}

impl Controller {
    pub fn new(
        config: ControllerConfig,
        client: Client,
        replica: Replica,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Self {
        let lease = LeaseValidity::default();
        Self {
            config: Arc::new(config),
            client,
            replica,
            metrics: Metrics::new(registry, lease.clone()),
            status: watch::channel(ControllerStatus::default()).0,
            lease,
        }
    }

    pub fn status(&self) -> watch::Receiver<ControllerStatus> {
        self.status.subscribe()
    }

    /// Whether this replica's own lease is valid now (true only on the leader).
    pub fn lease_validity(&self) -> LeaseValidity {
        self.lease.clone()
    }

    /// Campaigns, leads, and steps down, until `shutdown` is cancelled; then stops leader
    /// work and releases the Lease before returning.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ControllerError> {
        self.config.validate()?;
        let mut elector = Elector::new(
            Api::namespaced(self.client.clone(), &self.config.namespace),
            self.config.lease_name.clone(),
            self.config.identity.clone(),
            self.config.lease_duration,
            self.config.renew_deadline,
        );
        tracing::info!(identity = %self.config.identity, lease = %self.config.lease_name, "controller started");
        loop {
            let Some((epoch, renewed_at)) = self.campaign(&mut elector, &shutdown).await else {
                return Ok(());
            };
            match self.lead(&mut elector, epoch, renewed_at, &shutdown).await {
                Exit::Shutdown => return Ok(()),
                Exit::StepDown(why) => {
                    tracing::warn!(reason = %why, "stepped down");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(self.config.retry_period) => {}
                    }
                }
            }
        }
    }

    /// Whether this replica may lead: Raft leader with a recent quorum acknowledgement.
    fn raft_leader(&self) -> bool {
        let leadership = self.replica.leadership();
        leadership.is_leader
            && leadership
                .last_quorum_ack
                .is_some_and(|at| at.elapsed() < self.config.quorum_ack_max_age())
    }

    fn min_epoch(&self) -> u64 {
        self.replica.metrics().highest_epoch.saturating_add(1)
    }

    /// Tries to acquire the Lease every retry period while Raft leader; None on shutdown.
    async fn campaign(
        &self,
        elector: &mut Elector,
        shutdown: &CancellationToken,
    ) -> Option<(u64, Instant)> {
        // Raft leadership is checked often, so a new Raft leader takes a released Lease at
        // once; the Lease itself is tried every retry period.
        let poll = self.config.retry_period.min(Duration::from_millis(100));
        let mut next_attempt = Instant::now();
        let mut next_observe = Instant::now();
        // Since when the Lease could not be read or written (as Raft leader).
        let mut failing_since: Option<Instant> = None;
        loop {
            if shutdown.is_cancelled() {
                return None;
            }
            if failing_since.is_some_and(|since| since.elapsed() >= self.config.lease_duration) {
                failing_since = None;
                tracing::warn!(
                    "cannot reach the API server to take the Lease; handing Raft leadership on"
                );
                let outcome = tokio::select! {
                    () = shutdown.cancelled() => return None,
                    outcome = self.replica.step_down(STEP_DOWN_WITHIN) => outcome,
                };
                tracing::info!(?outcome, "Raft step-down");
            }
            if !self.raft_leader() {
                failing_since = None;
                if Instant::now() >= next_observe {
                    // Twice per retry period: the expiry clock starts when we first see a
                    // renew, so reading sooner after it lets a successor take over sooner.
                    next_observe = Instant::now() + self.config.retry_period / 2;
                    let budget = self.config.retry_period;
                    if let Err(e) = elector.watch_holder(budget).await {
                        tracing::debug!(error = %e, "could not read the Lease");
                    }
                }
                next_attempt = Instant::now();
            } else if Instant::now() >= next_attempt {
                next_attempt = Instant::now() + self.config.retry_period;
                let started = Instant::now();
                let attempt = tokio::select! {
                    () = shutdown.cancelled() => return None,
                    attempt = elector.try_acquire_or_renew(self.min_epoch(), self.config.renew_deadline) => attempt,
                };
                match attempt {
                    Ok(Attempt::Held { epoch, acquired }) => {
                        if acquired {
                            self.metrics.lease_transitions.inc();
                        }
                        tracing::info!(epoch, identity = %self.config.identity, "acquired the Lease");
                        return Some((epoch, started));
                    }
                    Ok(Attempt::HeldByOther { holder }) => {
                        failing_since = None;
                        tracing::debug!(%holder, "the Lease is held by another replica");
                        // Try again the moment it expires, not up to a retry period later.
                        if let Some(expiry) = elector.other_holder_expires_at() {
                            next_attempt = next_attempt.min(expiry + Duration::from_millis(10));
                        }
                    }
                    Err(e) => {
                        failing_since.get_or_insert(started);
                        tracing::info!(error = %e, "could not acquire the Lease")
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Leads until shutdown or step-down; always ends with leader work stopped and the
    /// Lease released (if we still hold it).
    async fn lead(
        &self,
        elector: &mut Elector,
        epoch: u64,
        mut renewed_at: Instant,
        shutdown: &CancellationToken,
    ) -> Exit {
        let config = &self.config;
        self.lease.set(Some(renewed_at + config.renew_deadline));
        self.metrics.is_leader.set(1);
        self.metrics
            .epoch
            .set(i64::try_from(epoch).unwrap_or(i64::MAX));
        self.status.send_modify(|s| {
            s.is_leader = true;
            s.epoch = Some(epoch);
            s.last_error = None;
        });

        let token = CancellationToken::new();
        let (status_tx, status_rx) = mpsc::unbounded_channel();
        let context = reconcile::LeaderContext {
            client: self.client.clone(),
            replica: self.replica.clone(),
            epoch,
            config: config.clone(),
            metrics: self.metrics.clone(),
            token: token.clone(),
            lease: self.lease.clone(),
        };
        let (replica, claim_token, lease) =
            (self.replica.clone(), token.clone(), self.lease.clone());
        let mut reconcile = tokio::spawn(async move {
            // Nothing is proposed before the epoch is ours alone.
            claim::claim_epoch(&replica, epoch, &lease, &claim_token).await?;
            reconcile::run(context, status_tx).await
        });
        let mut status = tokio::spawn(status::run(
            status::StatusContext {
                client: self.client.clone(),
                replica: self.replica.clone(),
                config: config.clone(),
                metrics: self.metrics.clone(),
                lease: self.lease.clone(),
                token: token.clone(),
            },
            status_rx,
        ));

        let mut next_renew = tokio::time::Instant::now() + config.retry_period;
        let exit = loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break Exit::Shutdown,
                ended = &mut reconcile => {
                    self.metrics.reconcile_errors.inc();
                    break Exit::StepDown(match ended {
                        Ok(Ok(())) => "leader work ended".to_owned(),
                        Ok(Err(e)) => format!("leader work failed: {e}"),
                        Err(e) => format!("leader work panicked: {e}"),
                    });
                }
                ended = &mut status => {
                    self.metrics.reconcile_errors.inc();
                    break Exit::StepDown(match ended {
                        Ok(()) => "the status worker ended".to_owned(),
                        Err(e) => format!("the status worker panicked: {e}"),
                    });
                }
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    // Checked on every tick, not only when renewing: a process frozen (SIGSTOP)
                    // past its deadline must see that first thing when it wakes.
                    if Instant::now() >= renewed_at + config.renew_deadline {
                        break Exit::StepDown("could not renew the Lease before the renew deadline".into());
                    }
                    if !self.raft_leader() {
                        break Exit::StepDown("no longer the Raft leader (or no recent quorum acknowledgement)".into());
                    }
                }
                () = tokio::time::sleep_until(next_renew) => {
                    let deadline = renewed_at + config.renew_deadline;
                    let started = Instant::now();
                    if started >= deadline {
                        break Exit::StepDown("could not renew the Lease before the renew deadline".into());
                    }
                    let attempt = tokio::select! {
                        () = shutdown.cancelled() => break Exit::Shutdown,
                        // Our own epoch: already claimed in Raft, so not below it.
                        attempt = elector.try_acquire_or_renew(epoch, deadline - started) => attempt,
                    };
                    match attempt {
                        Ok(Attempt::Held { epoch: now, acquired: false }) if now == epoch => {
                            renewed_at = started;
                            self.lease.set(Some(started + config.renew_deadline));
                        }
                        Ok(Attempt::Held { .. }) => {
                            break Exit::StepDown("the Lease changed hands while we held it".into());
                        }
                        Ok(Attempt::HeldByOther { holder }) => {
                            break Exit::StepDown(format!("the Lease is held by {holder}"));
                        }
                        Err(e) => {
                            self.metrics.renew_failures.inc();
                            tracing::warn!(error = %e, "renewing the Lease failed");
                        }
                    }
                    next_renew = tokio::time::Instant::now() + config.retry_period;
                }
            }
        };

        // Stop acting first, then give the Lease up. Leadership ends now by our own accounting
        // (status writes check `lease`; proposals are fenced), even while the workers wind down.
        self.lease.set(None);
        self.metrics.is_leader.set(0);
        self.metrics.epoch.set(0);
        self.status.send_modify(|s| {
            s.is_leader = false;
            s.epoch = None;
            if let Exit::StepDown(why) = &exit {
                s.last_error = Some(why.clone());
            }
        });
        token.cancel();
        // Raft leadership goes to another replica at the same time (it takes about a leader
        // lease); that replica cannot act before the Lease is released or has expired.
        let hand_over_raft = async {
            if matches!(exit, Exit::Shutdown) {
                // Without a controller this replica must not lead Raft again.
                self.replica.retire();
            }
            if self.replica.leadership().is_leader {
                let outcome = self.replica.step_down(STEP_DOWN_WITHIN).await;
                tracing::info!(?outcome, "Raft step-down");
            }
        };
        let stop_and_release = async {
            // (A handle already polled to completion in the loop must not be awaited again.)
            let stop = async {
                if !reconcile.is_finished() {
                    let _ = (&mut reconcile).await;
                }
                if !status.is_finished() {
                    let _ = (&mut status).await;
                }
            };
            if tokio::time::timeout(Duration::from_secs(2), stop)
                .await
                .is_err()
            {
                reconcile.abort();
                status.abort();
            }
            match elector
                .release(config.renew_deadline.min(Duration::from_secs(2)))
                .await
            {
                Ok(true) => tracing::info!(epoch, "released the Lease"),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "could not release the Lease"),
            }
        };
        tokio::join!(hand_over_raft, stop_and_release);
        exit
    }
}
