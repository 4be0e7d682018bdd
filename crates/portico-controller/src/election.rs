//! Lease leader election, following client-go's `leaderelection` algorithm.
//!
//! One attempt ([`Elector::try_acquire_or_renew`]) is client-go's `tryAcquireOrRenew`:
//!
//! 1. GET the Lease; when it is absent, POST a new one naming us (a lost race is a 409).
//! 2. If its record (holder, renewTime, resourceVersion) differs from the last one we saw,
//!    remember it together with the *local monotonic* time we saw it. Expiry is judged only
//!    from that instant plus our lease duration, never by comparing the Lease's timestamps
//!    with our wall clock (clocks of different nodes disagree).
//! 3. Held by someone else and not expired: give up this round.
//! 4. PUT the Lease back with the resourceVersion we read, so a concurrent writer makes us
//!    lose with a 409. Taking it over from someone else (or from nobody, after a release)
//!    increments `leaseTransitions`.
//!
//! **Fencing epoch.** `leaseTransitions` after our acquisition is the epoch carried by every
//! proposal. If the Lease was deleted and recreated, its counter restarts; so the acquiring
//! write sets it to at least `min_epoch` (Raft's highest applied epoch + 1), and epochs only
//! ever grow. A Lease that still names us with an epoch below `min_epoch` (our own earlier
//! leadership, already claimed in Raft) is taken anew with a higher epoch, never reused. An
//! epoch above `portico_raft::MAX_EPOCH` (the largest `leaseTransitions`) is an error, never
//! saturated into a reused one.
//!
//! **Validity.** A holder treats its own lease as valid until `renew_deadline` after the
//! start of its last successful renew request. Others wait `lease_duration` (> renew
//! deadline + retry period) from when they *saw* that renew, so the old holder stops acting
//! before anyone else can take over.
//!
//! **Release** (client-go's `ReleaseOnCancel`): only if we still hold it, PUT a record with
//! no holder and a one-second duration, keeping `leaseTransitions`; others acquire at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;

/// Why one election attempt failed (the next one retries).
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("the Lease API call failed: {0}")]
    Api(#[from] kube::Error),
    #[error("the Lease API call timed out")]
    Timeout,
    #[error("lost a race for the Lease (409 Conflict)")]
    Conflict,
    /// The next epoch would not fit in `leaseTransitions`: someone set it near `i32::MAX`.
    /// Delete the Lease (and, if Raft holds such epochs, see SECURITY.md) to recover.
    #[error("the next fencing epoch {epoch} is above the largest allowed")]
    EpochExhausted { epoch: u64 },
}

/// The outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the Lease; `epoch` is its `leaseTransitions`.
    Held { epoch: u64, acquired: bool },
    /// Someone else holds a lease that has not expired by our clock.
    HeldByOther { holder: String },
}

/// What we last saw of the Lease, and when (monotonic).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
    resource_version: Option<String>,
}

/// One replica's side of the election.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
    /// Bound on each API call, so an API server that hangs cannot wedge the leader.
    call_timeout: Duration,
    observed: Option<(Observed, Instant)>,
}

impl Elector {
    pub fn new(
        api: Api<Lease>,
        name: String,
        identity: String,
        lease_duration: Duration,
        call_timeout: Duration,
    ) -> Self {
        Self {
            api,
            name,
            identity,
            lease_duration,
            call_timeout,
            observed: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    async fn call<T>(
        &self,
        timeout: Duration,
        fut: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, ElectionError> {
        match tokio::time::timeout(timeout.min(self.call_timeout), fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(kube::Error::Api(e))) if e.code == 409 => Err(ElectionError::Conflict),
            Ok(Err(e)) => Err(ElectionError::Api(e)),
            Err(_) => Err(ElectionError::Timeout),
        }
    }

    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// client-go's `tryAcquireOrRenew`. `min_epoch` is the smallest epoch an acquisition
    /// may take (Raft's highest applied epoch + 1). `budget` bounds the whole attempt.
    pub async fn try_acquire_or_renew(
        &mut self,
        min_epoch: u64,
        budget: Duration,
    ) -> Result<Attempt, ElectionError> {
        let started = Instant::now();
        let now = MicroTime(Timestamp::now());
        let current = self.call(budget, self.api.get_opt(&self.name)).await?;
        let Some(mut lease) = current else {
            let epoch = bounded(min_epoch)?;
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.lease_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(to_i32(epoch)),
                    ..Default::default()
                }),
            };
            let left = budget.saturating_sub(started.elapsed());
            let created = self
                .call(left, self.api.create(&PostParams::default(), &lease))
                .await?;
            self.remember(&created, Instant::now());
            return Ok(Attempt::Held {
                epoch,
                acquired: true,
            });
        };

        let seen = observed(&lease);
        let seen_at = match &self.observed {
            Some((previous, at)) if *previous == seen => *at,
            _ => {
                let at = Instant::now();
                self.observed = Some((seen.clone(), at));
                at
            }
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        if let Some(other) = holder.as_ref().filter(|_| !ours)
            && seen_at.elapsed() < self.lease_duration
        {
            return Ok(Attempt::HeldByOther {
                holder: other.clone(),
            });
        }

        let transitions = u64::try_from(spec.lease_transitions.unwrap_or(0)).unwrap_or(0);
        let renewal = ours && transitions >= min_epoch;
        let (epoch, acquire_time) = if renewal {
            (transitions, spec.acquire_time.clone().or(Some(now.clone())))
        } else {
            (
                bounded(transitions.saturating_add(1).max(min_epoch))?,
                Some(now.clone()),
            )
        };
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.lease_seconds()),
            acquire_time,
            renew_time: Some(now),
            lease_transitions: Some(to_i32(epoch)),
            ..spec
        });
        let left = budget.saturating_sub(started.elapsed());
        let updated = self
            .call(
                left,
                self.api.replace(&self.name, &PostParams::default(), &lease),
            )
            .await?;
        self.remember(&updated, Instant::now());
        Ok(Attempt::Held {
            epoch,
            acquired: !renewal,
        })
    }

    /// Gives the Lease up if we still hold it (holder cleared, one-second duration, the
    /// transition count kept), so another replica acquires it at once.
    pub async fn release(&mut self, budget: Duration) -> Result<bool, ElectionError> {
        let started = Instant::now();
        let Some(mut lease) = self.call(budget, self.api.get_opt(&self.name)).await? else {
            return Ok(false);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(false);
        }
        let now = MicroTime(Timestamp::now());
        lease.spec = Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            ..spec
        });
        let left = budget.saturating_sub(started.elapsed());
        let updated = self
            .call(
                left,
                self.api.replace(&self.name, &PostParams::default(), &lease),
            )
            .await?;
        self.remember(&updated, Instant::now());
        Ok(true)
    }

    /// When the lease of another holder runs out by our clock, if another holder is known:
    /// a candidate tries again at that moment rather than on its next retry tick.
    pub fn other_holder_expires_at(&self) -> Option<Instant> {
        let (seen, at) = self.observed.as_ref()?;
        let holder = seen.holder.as_deref().filter(|h| !h.is_empty())?;
        (holder != self.identity).then(|| *at + self.lease_duration)
    }

    fn remember(&mut self, lease: &Lease, at: Instant) {
        self.observed = Some((observed(lease), at));
    }

    /// Reads the Lease only, so the expiry clock of its current holder already runs when
    /// this replica becomes a candidate (client-go candidates poll the same way).
    pub async fn watch_holder(&mut self, budget: Duration) -> Result<(), ElectionError> {
        let Some(lease) = self.call(budget, self.api.get_opt(&self.name)).await? else {
            return Ok(());
        };
        let seen = observed(&lease);
        if self
            .observed
            .as_ref()
            .is_none_or(|(previous, _)| *previous != seen)
        {
            self.observed = Some((seen, Instant::now()));
        }
        Ok(())
    }
}

fn observed(lease: &Lease) -> Observed {
    let spec = lease.spec.as_ref();
    Observed {
        holder: spec.and_then(|s| s.holder_identity.clone()),
        renew_time: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
        resource_version: lease.metadata.resource_version.clone(),
    }
}

fn bounded(epoch: u64) -> Result<u64, ElectionError> {
    if epoch > portico_raft::MAX_EPOCH {
        return Err(ElectionError::EpochExhausted { epoch });
    }
    Ok(epoch)
}

/// `epoch` as `leaseTransitions`; every epoch we write went through [`bounded`].
fn to_i32(epoch: u64) -> i32 {
    i32::try_from(epoch).unwrap_or(i32::MAX)
}

/// A per-boot identity: the pod name plus a suffix that differs on every start, so a
/// restarted pod never mistakes its predecessor's Lease for its own.
pub fn boot_identity(pod_name: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.write_u32(std::process::id());
    format!("{pod_name}_{:016x}", hasher.finish())
}
