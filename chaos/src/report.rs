//! The verdict: every check's result, per-fault figures, and the run's observations, as a
//! terminal summary and a JSON file.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::checks::{self, Availability, Leadership};
use crate::record::{Counts, Observations};

/// Seconds after a fault's convergence during which clients may still fail on its target:
/// the load generator's QUIC idle timeout (5 s) plus one attempt timeout (2 s) and a second.
pub const CLIENT_SETTLE: f64 = 8.0;

/// One check and what failed it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub details: Vec<String>,
}

impl Check {
    pub fn from_violations(name: &str, violations: Vec<String>) -> Check {
        Check {
            name: name.to_string(),
            passed: violations.is_empty(),
            details: violations,
        }
    }
}

/// Figures for one fault window (from injection to convergence).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultFigures {
    pub name: String,
    pub targets: Vec<usize>,
    pub start: f64,
    pub duration: f64,
    pub requests: Counts,
    pub failures_per_replica: Vec<u64>,
    pub success_rate_per_replica: Vec<f64>,
    pub longest_client_gap: f64,
    pub leader_changes: usize,
    /// Seconds from injection to the first new leadership (faults on the leader).
    pub new_leader_after: Option<f64>,
    /// Seconds from heal until every replica served the same version.
    pub converged_after: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub passed: bool,
    pub profile: String,
    /// Which API server: `real` (kube-apiserver and etcd) or `in-process`.
    #[serde(default)]
    pub api: String,
    pub seed: u64,
    pub duration: f64,
    pub lease_duration: f64,
    pub retry_period: f64,
    pub checks: Vec<Check>,
    pub faults: Vec<FaultFigures>,
    pub overall: Availability,
    pub success_rate_per_replica: Vec<f64>,
    pub client_success_rate: f64,
    pub propagation_p50: Option<f64>,
    pub propagation_p99: Option<f64>,
    pub propagation_samples: usize,
    pub changes: usize,
    pub leaderships: Vec<Leadership>,
    pub observations: Observations,
}

/// Propagation times to replicas no fault targeted while the change travelled.
pub fn propagation_times(obs: &Observations) -> Vec<f64> {
    let mut out = Vec::new();
    for c in &obs.changes {
        // A delete whose creation a replica never served shows nothing to propagate there.
        let created = c.what.strip_prefix("delete Ingress ").and_then(|name| {
            let what = format!("create Ingress {name}");
            obs.changes.iter().find(|x| x.what == what)
        });
        for (r, seen) in c.seen_after.iter().enumerate() {
            let Some(after) = seen else { continue };
            if created.is_some_and(|x| x.seen_after[r].is_none()) {
                continue;
            }
            let (from, to) = (c.written_at, c.written_at + after);
            let disturbed = obs.faults.iter().any(|f| {
                (f.targets.contains(&r) || f.targets.is_empty())
                    && f.start <= to
                    && from <= f.end + f.converged_after.unwrap_or(0.0)
            });
            if !disturbed {
                out.push(*after);
            }
        }
    }
    out
}

impl Report {
    /// Builds the per-fault figures and adds `extra` checks to the built-in ones.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        profile: &str,
        api: &str,
        seed: u64,
        lease_duration: f64,
        retry_period: f64,
        obs: Observations,
        mut extra: Vec<Check>,
    ) -> Report {
        let leaderships = checks::leaderships(&obs.samples);
        let mut list = vec![
            Check::from_violations(
                "one writer: leaderships never overlap, one epoch each",
                checks::one_writer_violations(&leaderships),
            ),
            Check::from_violations(
                "one writer: status writes only by the leader, never interleaved",
                checks::status_write_violations(&obs, &leaderships, 0.5),
            ),
            Check::from_violations(
                "never backwards: applied versions only grow",
                checks::version_regressions(&obs.samples),
            ),
            Check::from_violations(
                "one writer: Raft entries accepted from one epoch at a time, in growing order",
                checks::epoch_regressions(&obs.samples),
            ),
            Check::from_violations(
                "availability: no failed request on a replica no fault targeted",
                checks::failures_on_untargeted(&obs, CLIENT_SETTLE),
            ),
        ];
        // New leader within lease duration + one retry period after a fault on the leader
        // that removes it (SIGKILL, SIGSTOP).
        let bound = lease_duration + retry_period;
        let mut slow = Vec::new();
        let mut faults = Vec::new();
        for f in &obs.faults {
            let end = f.end + f.converged_after.unwrap_or(0.0);
            let a = checks::availability(&obs, f.start, end);
            let except = f.targets.first().copied();
            let new_leader = if f.leader_fault {
                checks::new_leader_after(&leaderships, f.start, except)
            } else {
                None
            };
            if f.leader_fault && (f.name == "kill-leader" || f.name == "freeze-leader") {
                match new_leader {
                    Some(t) if t <= bound + 1.0 => {}
                    Some(t) => slow.push(format!(
                        "{}: new leader after {t:.1}s (bound {bound:.1}s + 1s sampling)",
                        f.name
                    )),
                    None => slow.push(format!("{}: no new leader", f.name)),
                }
            }
            let changes = leaderships
                .iter()
                .filter(|l| l.start >= f.start && l.start <= end)
                .count();
            faults.push(FaultFigures {
                name: f.name.clone(),
                targets: f.targets.clone(),
                start: f.start,
                duration: f.end - f.start,
                requests: a.client,
                failures_per_replica: a.per_replica.iter().map(|c| c.failed).collect(),
                success_rate_per_replica: a
                    .per_replica
                    .iter()
                    .map(|c| Availability::success_rate(*c))
                    .collect(),
                longest_client_gap: a.longest_client_gap,
                leader_changes: changes,
                new_leader_after: new_leader,
                converged_after: f.converged_after,
            });
        }
        list.push(Check::from_violations(
            "availability: new leader within lease duration + one retry period",
            slow,
        ));
        let overall = checks::availability(&obs, 0.0, obs.duration());
        let client_failures = if overall.client.failed > 0 {
            vec![format!(
                "{} client requests found no replica to serve them",
                overall.client.failed
            )]
        } else {
            vec![]
        };
        list.push(Check::from_violations(
            "availability: every client request served by some replica",
            client_failures,
        ));
        let times = propagation_times(&obs);
        let unseen = checks::unseen_changes(&obs);
        list.push(Check::from_violations(
            "propagation: every change (Ingress and EndpointSlice) reached every replica",
            unseen,
        ));
        list.append(&mut extra);
        Report {
            passed: list.iter().all(|c| c.passed),
            profile: profile.to_string(),
            api: api.to_string(),
            seed,
            duration: obs.duration(),
            lease_duration,
            retry_period,
            checks: list,
            faults,
            success_rate_per_replica: overall
                .per_replica
                .iter()
                .map(|c| Availability::success_rate(*c))
                .collect(),
            client_success_rate: Availability::success_rate(overall.client),
            overall,
            propagation_p50: checks::percentile(&times, 50.0),
            propagation_p99: checks::percentile(&times, 99.0),
            propagation_samples: times.len(),
            changes: obs.changes.len(),
            leaderships,
            observations: obs,
        }
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }

    /// The terminal summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}s"));
        let _ = writeln!(
            s,
            "\nportico-chaos: profile {}, {} API server (seed {}), {:.0}s, lease {:.0}s + retry {:.0}s",
            self.profile,
            self.api,
            self.seed,
            self.duration,
            self.lease_duration,
            self.retry_period
        );
        let _ = writeln!(
            s,
            "{:<22} {:>7} {:>9} {:>14} {:>8} {:>10} {:>11} {:>10}",
            "FAULT",
            "DURATION",
            "REQUESTS",
            "FAILED r0/r1/r2",
            "LEADER Δ",
            "NEW LEADER",
            "CONVERGED",
            "CLIENT GAP"
        );
        for f in &self.faults {
            let failed: Vec<String> = f.failures_per_replica.iter().map(u64::to_string).collect();
            let _ = writeln!(
                s,
                "{:<22} {:>7.1}s {:>9} {:>14} {:>8} {:>10} {:>11} {:>9.1}s",
                f.name,
                f.duration,
                f.requests.total(),
                failed.join("/"),
                f.leader_changes,
                opt(f.new_leader_after),
                opt(f.converged_after),
                f.longest_client_gap
            );
        }
        let rates: Vec<String> = self
            .success_rate_per_replica
            .iter()
            .map(|r| format!("{:.4}", r))
            .collect();
        let _ = writeln!(
            s,
            "requests: {} client ({} failed), per replica success {}; h1/h2/h3 attempts {}/{}/{}",
            self.overall.client.total(),
            self.overall.client.failed,
            rates.join(" "),
            self.observations.by_protocol[0].total(),
            self.observations.by_protocol[1].total(),
            self.observations.by_protocol[2].total()
        );
        let _ = writeln!(
            s,
            "changes: {}; propagation p50 {} p99 {} ({} samples); leaderships {}",
            self.changes,
            opt(self.propagation_p50),
            opt(self.propagation_p99),
            self.propagation_samples,
            self.leaderships.len()
        );
        for c in &self.checks {
            let _ = writeln!(s, "[{}] {}", if c.passed { "PASS" } else { "FAIL" }, c.name);
            for d in c.details.iter().take(10) {
                let _ = writeln!(s, "       {d}");
            }
            if c.details.len() > 10 {
                let _ = writeln!(
                    s,
                    "       ... and {} more (see the JSON report)",
                    c.details.len() - 10
                );
            }
        }
        let _ = writeln!(s, "verdict: {}", if self.passed { "PASS" } else { "FAIL" });
        s
    }
}
