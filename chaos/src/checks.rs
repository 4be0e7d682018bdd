//! The verdict's checks, as pure functions over [`Observations`], so each is unit-tested on
//! hand-made histories.
//!
//! Leadership is judged by each replica's *own* accounting (its `is_leader` and `epoch`
//! metrics), sampled: an interval runs from the first to the last sample that says "leader",
//! so two replicas overlapping means both said so at sampled instants that interleave.

use serde::{Deserialize, Serialize};

use crate::record::{BUCKET_MS, Counts, FaultWindow, Observations, Sample};

/// One replica's leadership, by its own accounting.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Leadership {
    pub replica: usize,
    pub epoch: u64,
    /// First and last sample that said "leader": certainly leader in between.
    pub start: f64,
    pub end: f64,
    /// The samples just before and after (or the last one plus [`UNSAMPLED_TAIL`]): it may
    /// have been leader that early or that late, as far as sampling can tell.
    pub earliest_start: f64,
    pub latest_end: f64,
}

/// How long after its last sample a replica that was never sampled again (killed) may
/// still have acted.
pub const UNSAMPLED_TAIL: f64 = 0.5;

/// Leadership intervals from the samples: consecutive leader samples of one replica in one
/// epoch form one interval. Overlaps are judged on the certain part (`start..end`), writes
/// outside leadership on the possible part (`earliest_start..latest_end`), so sampling never
/// makes up a violation.
pub fn leaderships(samples: &[Sample]) -> Vec<Leadership> {
    let mut by_replica: std::collections::BTreeMap<usize, Vec<&Sample>> = Default::default();
    for s in samples {
        by_replica.entry(s.replica).or_default().push(s);
    }
    let mut out = Vec::new();
    for (replica, mut list) in by_replica {
        list.sort_by(|a, b| a.t.total_cmp(&b.t));
        let mut open: Option<Leadership> = None;
        let mut previous: Option<f64> = None;
        for s in list {
            match (&mut open, s.is_leader) {
                (Some(l), true) if l.epoch == s.epoch => l.end = s.t,
                (_, true) => {
                    if let Some(mut l) = open.take() {
                        l.latest_end = s.t;
                        out.push(l);
                    }
                    open = Some(Leadership {
                        replica,
                        epoch: s.epoch,
                        start: s.t,
                        end: s.t,
                        earliest_start: previous.unwrap_or(0.0),
                        latest_end: s.t,
                    });
                }
                (_, false) => {
                    if let Some(mut l) = open.take() {
                        l.latest_end = s.t;
                        out.push(l);
                    }
                }
            }
            previous = Some(s.t);
        }
        if let Some(mut l) = open {
            l.latest_end = l.end + UNSAMPLED_TAIL;
            out.push(l);
        }
    }
    out.sort_by(|a, b| a.start.total_cmp(&b.start));
    out
}

/// Pairs of leaderships of different replicas that overlap in time, or that share an epoch.
pub fn one_writer_violations(leaderships: &[Leadership]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, a) in leaderships.iter().enumerate() {
        for b in &leaderships[i + 1..] {
            if a.replica == b.replica {
                continue;
            }
            if a.start <= b.end && b.start <= a.end {
                out.push(format!(
                    "replica {} (epoch {}, {:.2}s..{:.2}s) and replica {} (epoch {}, {:.2}s..{:.2}s) both led",
                    a.replica, a.epoch, a.start, a.end, b.replica, b.epoch, b.start, b.end
                ));
            } else if a.epoch == b.epoch {
                out.push(format!(
                    "replicas {} and {} both led in epoch {}",
                    a.replica, b.replica, a.epoch
                ));
            }
        }
    }
    // Epochs must grow with time across successive leaderships.
    for w in leaderships.windows(2) {
        if w[1].epoch < w[0].epoch && w[0].replica != w[1].replica {
            out.push(format!(
                "epoch went back from {} (replica {}) to {} (replica {})",
                w[0].epoch, w[0].replica, w[1].epoch, w[1].replica
            ));
        }
    }
    out
}

/// Successful Ingress status writes made by a replica outside its own leadership (widened by
/// `slack` seconds for sampling), and writes by two replicas interleaving
/// (A, B, A within one overlapping stretch).
pub fn status_write_violations(
    obs: &Observations,
    leaderships: &[Leadership],
    slack: f64,
) -> Vec<String> {
    let mut out = Vec::new();
    let writes: Vec<_> = obs
        .api_writes
        .iter()
        .filter(|w| w.is_status_write() && w.succeeded())
        .filter_map(|w| w.replica.map(|r| (w.t, r, &w.path)))
        .collect();
    for &(t, r, path) in &writes {
        let inside = leaderships
            .iter()
            .any(|l| l.replica == r && l.earliest_start - slack <= t && t <= l.latest_end + slack);
        if !inside {
            out.push(format!(
                "replica {r} wrote {path} at {t:.2}s while not leader by its own accounting"
            ));
        }
    }
    // Interleaving: once a replica's run of writes is followed by another's, it may write again
    // only after a leadership of its own that starts after that other run began.
    let mut runs: Vec<(usize, f64, f64)> = Vec::new();
    for &(t, r, _) in &writes {
        match runs.last_mut() {
            Some(last) if last.0 == r => last.2 = t,
            _ => runs.push((r, t, t)),
        }
    }
    for w in runs.windows(3) {
        let (a, _, _) = w[0];
        let (b, b_start, _) = w[1];
        let (c, c_start, _) = w[2];
        if a == c && a != b {
            let new_term = leaderships.iter().any(|l| {
                l.replica == c && l.start >= b_start - slack && l.earliest_start <= c_start + slack
            });
            if !new_term {
                out.push(format!(
                    "status writes interleave: replica {a}, then {b} at {b_start:.2}s, then {c} again at {c_start:.2}s in the same leadership"
                ));
            }
        }
    }
    out
}

/// Times a replica's applied version went down. A wiped data directory starts a new baseline
/// (it legitimately starts from 0 and catches up); a plain restart must not lose anything.
pub fn version_regressions(samples: &[Sample]) -> Vec<String> {
    regressions(samples, "version", |s| s.version)
}

/// Times the highest fencing epoch a replica's state machine applied went down: entries are
/// accepted from one epoch at a time, in growing order (same baseline rule as versions).
pub fn epoch_regressions(samples: &[Sample]) -> Vec<String> {
    regressions(samples, "applied epoch", |s| s.highest_epoch)
}

fn regressions(samples: &[Sample], what: &str, value: impl Fn(&Sample) -> u64) -> Vec<String> {
    let mut out = Vec::new();
    let mut by_replica: std::collections::BTreeMap<usize, Vec<&Sample>> = Default::default();
    for s in samples {
        by_replica.entry(s.replica).or_default().push(s);
    }
    for (replica, mut list) in by_replica {
        list.sort_by(|a, b| a.t.total_cmp(&b.t));
        let mut high = 0u64;
        let mut incarnation = None;
        for s in list {
            if incarnation != Some(s.incarnation) {
                incarnation = Some(s.incarnation);
                if s.wiped {
                    high = 0;
                }
            }
            let v = value(s);
            if v < high {
                out.push(format!(
                    "replica {replica} went back from {what} {high} to {v} at {:.2}s (incarnation {})",
                    s.t, s.incarnation
                ));
            }
            high = high.max(v);
        }
    }
    out
}

/// Availability within one window of time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Availability {
    pub per_replica: Vec<Counts>,
    pub client: Counts,
    /// Longest stretch without a successful client request, in seconds.
    pub longest_client_gap: f64,
    /// Per replica, the longest stretch of buckets with attempts but no success.
    pub longest_replica_gap: Vec<f64>,
}

impl Availability {
    pub fn success_rate(c: Counts) -> f64 {
        if c.total() == 0 {
            1.0
        } else {
            c.ok as f64 / c.total() as f64
        }
    }
}

/// Availability between `start` and `end` seconds.
pub fn availability(obs: &Observations, start: f64, end: f64) -> Availability {
    let bucket = BUCKET_MS as f64 / 1000.0;
    let first = (start / bucket).floor() as usize;
    let last = ((end / bucket).ceil() as usize).min(obs.requests.len());
    let mut a = Availability {
        per_replica: vec![Counts::default(); obs.replicas],
        longest_replica_gap: vec![0.0; obs.replicas],
        ..Default::default()
    };
    let mut client_gap = 0usize;
    let mut replica_gap = vec![0usize; obs.replicas];
    for b in first..last {
        let c = obs.client[b];
        a.client.add(c);
        if c.ok > 0 {
            client_gap = 0;
        } else if c.failed > 0 || client_gap > 0 {
            client_gap += 1;
        }
        a.longest_client_gap = a.longest_client_gap.max(client_gap as f64 * bucket);
        for (r, c) in obs.requests[b].iter().enumerate() {
            a.per_replica[r].add(*c);
            if c.ok > 0 {
                replica_gap[r] = 0;
            } else if c.failed > 0 {
                replica_gap[r] += 1;
            }
            a.longest_replica_gap[r] = a.longest_replica_gap[r].max(replica_gap[r] as f64 * bucket);
        }
    }
    a
}

/// Failed attempts on replicas that no fault was targeting at that moment. API server
/// faults target no replica (a replica must keep serving through them). A fault's effect
/// lasts until the cluster converged after its heal plus `settle` seconds: the time a
/// client needs to find out that a connection to a restarted or cut-off replica is dead
/// (a QUIC connection to a process that no longer exists ends only at its idle timeout).
pub fn failures_on_untargeted(obs: &Observations, settle: f64) -> Vec<String> {
    let bucket = BUCKET_MS as f64 / 1000.0;
    let mut out = Vec::new();
    for (b, row) in obs.requests.iter().enumerate() {
        let t = b as f64 * bucket;
        for (r, c) in row.iter().enumerate() {
            if c.failed == 0 {
                continue;
            }
            let targeted = obs.faults.iter().any(|f: &FaultWindow| {
                f.targets.contains(&r)
                    && f.start - bucket <= t
                    && t <= f.end + f.converged_after.unwrap_or(0.0) + settle
            });
            if !targeted {
                out.push(format!(
                    "replica {r}: {} failed requests at {t:.1}s while not faulted",
                    c.failed
                ));
            }
        }
    }
    out
}

/// The first leadership starting after `t` (by any replica other than `except`), in seconds
/// after `t`.
pub fn new_leader_after(leaderships: &[Leadership], t: f64, except: Option<usize>) -> Option<f64> {
    leaderships
        .iter()
        .filter(|l| l.start >= t && Some(l.replica) != except)
        .map(|l| l.start - t)
        .min_by(f64::total_cmp)
}

/// Changes that some replica never showed (and no later change undid), each with the fault
/// windows it was written in or that began while its probes still waited.
pub fn unseen_changes(obs: &Observations) -> Vec<String> {
    obs.changes
        .iter()
        .filter(|c| !c.superseded && c.seen_after.iter().any(Option::is_none))
        .map(|c| {
            let replicas: Vec<usize> = c
                .seen_after
                .iter()
                .enumerate()
                .filter(|(_, s)| s.is_none())
                .map(|(r, _)| r)
                .collect();
            let faults: Vec<String> = obs
                .faults
                .iter()
                .filter(|f| {
                    let healed = f.end + f.converged_after.unwrap_or(0.0);
                    f.start <= c.written_at + PROBE_PATIENCE && c.written_at <= healed
                })
                .map(|f| format!("{} {:.1}s-{:.1}s", f.name, f.start, f.end))
                .collect();
            format!(
                "change {} ({}, written at {:.1}s) never seen on replicas {replicas:?}; faults: {}",
                c.id,
                c.what,
                c.written_at,
                if faults.is_empty() {
                    "none".to_string()
                } else {
                    faults.join(", ")
                }
            )
        })
        .collect()
}

/// How long the writer's probes wait for a change to show on a replica.
pub const PROBE_PATIENCE: f64 = 120.0;

/// Percentile (0..=100) of `values` by nearest rank; `None` when empty.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{ApiWrite, Protocol};

    fn sample(t: f64, replica: usize, is_leader: bool, epoch: u64, version: u64) -> Sample {
        Sample {
            t,
            replica,
            incarnation: 0,
            wiped: false,
            is_leader,
            epoch,
            version,
            highest_epoch: epoch,
        }
    }

    #[test]
    fn clean_handover_has_no_violation() {
        let s = vec![
            sample(0.0, 0, true, 1, 1),
            sample(1.0, 0, true, 1, 2),
            sample(1.5, 0, false, 0, 2),
            sample(0.0, 1, false, 0, 1),
            sample(2.0, 1, true, 2, 3),
            sample(3.0, 1, true, 2, 4),
        ];
        let l = leaderships(&s);
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].replica, l[0].start, l[0].end), (0, 0.0, 1.0));
        assert_eq!((l[1].replica, l[1].epoch), (1, 2));
        assert!(one_writer_violations(&l).is_empty());
    }

    #[test]
    fn a_write_between_samples_at_the_start_of_a_leadership_is_its_leaders() {
        // Not leader at 1.0, leader from 1.6: a write at 1.3 may be the new leader's.
        let s = vec![
            sample(1.0, 0, false, 0, 1),
            sample(1.6, 0, true, 2, 1),
            sample(2.0, 0, true, 2, 1),
        ];
        let l = leaderships(&s);
        assert_eq!((l[0].earliest_start, l[0].start), (1.0, 1.6));
        let mut obs = Observations::new(1);
        obs.api_writes = vec![write(1.3, 0)];
        assert!(status_write_violations(&obs, &l, 0.0).is_empty());
        obs.api_writes = vec![write(0.9, 0)];
        assert_eq!(status_write_violations(&obs, &l, 0.0).len(), 1);
    }

    #[test]
    fn overlapping_leaders_are_reported() {
        let s = vec![
            sample(0.0, 0, true, 1, 1),
            sample(2.0, 0, true, 1, 1),
            sample(1.0, 1, true, 2, 1),
        ];
        let v = one_writer_violations(&leaderships(&s));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("both led"));
    }

    #[test]
    fn shared_or_decreasing_epochs_are_reported() {
        let s = vec![
            sample(0.0, 0, true, 3, 1),
            sample(1.0, 0, false, 0, 1),
            sample(2.0, 1, true, 3, 1),
            sample(3.0, 1, false, 0, 1),
            sample(4.0, 2, true, 2, 1),
        ];
        let v = one_writer_violations(&leaderships(&s));
        assert!(v.iter().any(|m| m.contains("both led in epoch 3")), "{v:?}");
        assert!(v.iter().any(|m| m.contains("went back")), "{v:?}");
    }

    fn lead(replica: usize, epoch: u64, start: f64, end: f64) -> Leadership {
        Leadership {
            replica,
            epoch,
            start,
            end,
            earliest_start: start - 0.2,
            latest_end: end + 0.2,
        }
    }

    fn write(t: f64, replica: usize) -> ApiWrite {
        ApiWrite {
            t,
            replica: Some(replica),
            method: "PATCH".into(),
            path: "/apis/networking.k8s.io/v1/namespaces/default/ingresses/a/status".into(),
            status: 200,
        }
    }

    #[test]
    fn status_writes_outside_leadership_or_interleaved_are_reported() {
        let leaders = vec![lead(0, 1, 0.0, 5.0), lead(1, 2, 6.0, 10.0)];
        let mut obs = Observations::new(3);
        obs.api_writes = vec![write(1.0, 0), write(7.0, 1)];
        assert!(status_write_violations(&obs, &leaders, 0.2).is_empty());

        obs.api_writes = vec![write(1.0, 0), write(7.0, 1), write(8.0, 0)];
        let v = status_write_violations(&obs, &leaders, 0.2);
        assert!(v.iter().any(|m| m.contains("while not leader")), "{v:?}");
        assert!(v.iter().any(|m| m.contains("interleave")), "{v:?}");

        // A failed write (e.g. fenced by resourceVersion) is not a write.
        let mut failed = write(8.0, 0);
        failed.status = 409;
        obs.api_writes = vec![write(1.0, 0), write(7.0, 1), failed];
        assert!(status_write_violations(&obs, &leaders, 0.2).is_empty());
    }

    #[test]
    fn versions_must_only_grow_except_after_a_wipe() {
        let mut s = vec![
            sample(0.0, 0, false, 0, 5),
            sample(1.0, 0, false, 0, 7),
            Sample {
                incarnation: 1,
                ..sample(2.0, 0, false, 0, 7)
            },
        ];
        assert!(version_regressions(&s).is_empty());
        s.push(Sample {
            incarnation: 2,
            ..sample(3.0, 0, false, 0, 2)
        });
        assert_eq!(version_regressions(&s).len(), 1);
        s.pop();
        s.push(Sample {
            incarnation: 2,
            wiped: true,
            ..sample(3.0, 0, false, 0, 0)
        });
        s.push(Sample {
            incarnation: 2,
            wiped: true,
            ..sample(4.0, 0, false, 0, 9)
        });
        assert!(version_regressions(&s).is_empty());
    }

    #[test]
    fn applied_epochs_must_only_grow() {
        let s = vec![sample(0.0, 0, false, 2, 1), sample(1.0, 0, false, 3, 2)];
        assert!(epoch_regressions(&s).is_empty());
        let s = vec![sample(0.0, 0, false, 3, 1), sample(1.0, 0, false, 2, 2)];
        assert_eq!(epoch_regressions(&s).len(), 1);
    }

    #[test]
    fn availability_counts_gaps_and_untargeted_failures() {
        let mut obs = Observations::new(2);
        for i in 0..50 {
            let t = i as f64 * 0.1;
            // Replica 1 is down between 1.0s and 2.0s; clients move on to replica 0.
            let down = (1.0..2.0).contains(&t);
            obs.attempt(t, 0, Protocol::H1, true);
            obs.attempt(t, 1, Protocol::H2, !down);
            obs.client_outcome(t, true);
        }
        let a = availability(&obs, 0.0, 5.0);
        assert_eq!(a.per_replica[0], Counts { ok: 50, failed: 0 });
        assert_eq!(a.per_replica[1].failed, 10);
        assert!((a.longest_replica_gap[1] - 1.0).abs() < 1e-9, "{a:?}");
        assert_eq!(a.longest_client_gap, 0.0);

        assert_eq!(failures_on_untargeted(&obs, 1.0).len(), 10);
        obs.faults.push(FaultWindow {
            name: "kill".into(),
            targets: vec![1],
            start: 1.0,
            end: 1.5,
            ..Default::default()
        });
        assert!(failures_on_untargeted(&obs, 1.0).is_empty());
    }

    #[test]
    fn unseen_changes_name_their_fault_windows() {
        use crate::record::ChangeRecord;
        let mut obs = Observations::new(3);
        obs.faults.push(FaultWindow {
            name: "wipe-follower".into(),
            targets: vec![1],
            start: 160.0,
            end: 161.0,
            converged_after: Some(1.0),
            ..Default::default()
        });
        let change = |id, what: &str, seen: Vec<Option<f64>>, superseded| ChangeRecord {
            id,
            what: what.into(),
            written_at: 161.5,
            seen_after: seen,
            superseded,
        };
        obs.changes = vec![
            change(
                1,
                "EndpointSlice echo-chaos lists backends [0, 1]",
                vec![None; 3],
                true,
            ),
            change(
                2,
                "EndpointSlice echo-chaos lists backends [0, 2]",
                vec![Some(0.1), None, Some(0.1)],
                false,
            ),
            change(3, "create Ingress w-3", vec![Some(0.1); 3], false),
        ];
        let v = unseen_changes(&obs);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("change 2") && v[0].contains("[1]"), "{v:?}");
        assert!(v[0].contains("wipe-follower 160.0s-161.0s"), "{v:?}");
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[3.0], 99.0), Some(3.0));
    }

    #[test]
    fn new_leader_is_measured_from_the_fault() {
        let l = vec![lead(0, 1, 0.0, 5.0), lead(2, 2, 7.5, 9.0)];
        assert_eq!(new_leader_after(&l, 5.0, Some(0)), Some(2.5));
        assert_eq!(new_leader_after(&l, 9.5, None), None);
    }
}
