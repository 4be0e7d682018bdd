//! The faults, the schedules that order them, and how each is injected and healed.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// One fault. "Leader" and "follower" are resolved when the fault starts, from the replicas'
/// own accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// SIGKILL the leader; start it again after a while.
    KillLeader,
    /// SIGKILL a follower; start it again after a while.
    KillFollower,
    /// SIGSTOP the leader for longer than the lease duration, then SIGCONT.
    FreezeLeader,
    /// The leader cannot reach its peers (Raft) but still reaches the API server.
    LeaderCutFromPeers,
    /// The leader cannot reach the API server but still reaches its peers.
    LeaderCutFromApi,
    /// One follower cut off from everything (peers, API server, clients).
    IsolateFollower,
    /// The API server answers 503 to everything for a while.
    ApiUnavailable,
    /// Every watch stream ends at once.
    DropWatches,
    /// Watches are dropped and the next one gets 410 Expired (clients must relist).
    Force410,
    /// All three replicas restarted one at a time (SIGTERM, start, wait until ready).
    RollingRestart,
    /// A follower SIGKILLed and started again with its data directory wiped.
    WipeFollower,
}

impl Fault {
    pub const ALL: [Fault; 11] = [
        Fault::KillLeader,
        Fault::KillFollower,
        Fault::FreezeLeader,
        Fault::LeaderCutFromPeers,
        Fault::LeaderCutFromApi,
        Fault::IsolateFollower,
        Fault::ApiUnavailable,
        Fault::DropWatches,
        Fault::Force410,
        Fault::RollingRestart,
        Fault::WipeFollower,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "kill-leader",
            Fault::KillFollower => "kill-follower",
            Fault::FreezeLeader => "freeze-leader",
            Fault::LeaderCutFromPeers => "leader-cut-from-peers",
            Fault::LeaderCutFromApi => "leader-cut-from-api",
            Fault::IsolateFollower => "isolate-follower",
            Fault::ApiUnavailable => "api-unavailable",
            Fault::DropWatches => "drop-watches",
            Fault::Force410 => "force-410",
            Fault::RollingRestart => "rolling-restart",
            Fault::WipeFollower => "wipe-follower",
        }
    }

    /// Whether it targets the leader (and so must be followed by a new leader).
    pub fn targets_leader(self) -> bool {
        matches!(
            self,
            Fault::KillLeader
                | Fault::FreezeLeader
                | Fault::LeaderCutFromPeers
                | Fault::LeaderCutFromApi
        )
    }
}

/// How long faults last, derived from the controller's lease timing.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Timing {
    pub lease_duration: Duration,
    pub retry_period: Duration,
    /// How long a killed replica stays down.
    pub down: Duration,
    /// How long partitions and API outages last: longer than the lease, so leadership moves.
    pub cut: Duration,
    /// Quiet time between faults.
    pub quiet: Duration,
    /// Longest wait for the cluster to converge after a heal.
    pub converge_timeout: Duration,
}

impl Timing {
    /// portico-controller's defaults: lease 15 s, renew deadline 10 s, retry 2 s.
    pub fn for_lease(lease_duration: Duration, retry_period: Duration) -> Self {
        Timing {
            lease_duration,
            retry_period,
            down: Duration::from_secs(5),
            cut: lease_duration + Duration::from_secs(5),
            quiet: Duration::from_secs(3),
            converge_timeout: Duration::from_secs(90),
        }
    }
}

/// A run's faults in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Every fault once, in a fixed order.
    Short,
    /// Random faults until the duration is spent.
    Long,
}

/// The schedule: the short profile's fixed list, or a seeded random draw for the long one
/// (`count` faults; the runner stops early when the time is spent).
pub fn schedule(profile: Profile, seed: u64, count: usize) -> Vec<Fault> {
    match profile {
        Profile::Short => Fault::ALL.to_vec(),
        Profile::Long => {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            (0..count)
                .map(|_| Fault::ALL[rng.random_range(0..Fault::ALL.len())])
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_profile_has_every_fault_once() {
        let s = schedule(Profile::Short, 0, 0);
        assert_eq!(s.len(), Fault::ALL.len());
        let names: std::collections::BTreeSet<_> = s.iter().map(|f| f.name()).collect();
        assert_eq!(names.len(), Fault::ALL.len());
    }

    #[test]
    fn long_profile_is_reproducible_from_its_seed() {
        let a = schedule(Profile::Long, 42, 200);
        assert_eq!(a, schedule(Profile::Long, 42, 200));
        assert_ne!(a, schedule(Profile::Long, 43, 200));
        let kinds: std::collections::BTreeSet<_> = a.iter().map(|f| f.name()).collect();
        assert_eq!(kinds.len(), Fault::ALL.len(), "200 draws cover every fault");
    }
}
