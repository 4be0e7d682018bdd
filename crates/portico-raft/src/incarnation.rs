//! Incarnations: telling a replica's own restart from a restored or cloned volume (M6).
//!
//! Raft is safe only if a node never forgets its vote or the entries it acknowledged. A
//! volume restored from a backup, or cloned from a live replica, keeps the node ID but holds
//! an older vote and log: a peer that counted its old acknowledgements could count it again
//! for a different outcome. So every start of a replica draws a new *incarnation* and stores
//! it in the volume before it answers any RPC: a counter one above the stored one, and a
//! random nonce. The volume keeps the nonces of its last [`CHAIN`] incarnations (the
//! *chain*, newest first), and every RPC carries the sender's chain.
//!
//! Each replica remembers, durably, the latest incarnation it accepted from every node ID.
//! A new one is accepted only when it *descends* from that one (the remembered nonce sits
//! at the right place in its chain) and is a later start. A volume restored from a copy
//! taken before the node's last start seen by this peer cannot show that nonce: the nonces
//! drawn after the copy are not in it, and restarting it again only lengthens the wrong
//! chain. It is refused for good, and told so.
//!
//! A clone started while the original still runs does descend from it. It is told apart by
//! time: a successor is accepted only after its predecessor has been silent here for
//! `quiet` (a process cannot restart onto its own volume while it still runs; redb locks
//! the file), and a follower that hears from a live leader takes no successor at all (the
//! leader vouches for who is alive). When the predecessor speaks again after a successor
//! showed up, the successor is a clone: its nonce is banned, with every chain that holds
//! it.
//!
//! Each Raft RPC also names what the sender knows of the target (`known`): a replica whose
//! own chain does not hold that is itself the stale copy, and stops taking part.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::store::{Db, KEY_INCARNATION, KEY_PEER_INCARNATIONS, StoreError};
use crate::types::NodeId;

/// How many past incarnations a volume remembers (and every RPC carries): a peer that missed
/// more than this many restarts of a node refuses it as unproven.
pub(crate) const CHAIN: usize = 32;

/// How many nonces of clones a record keeps.
const MAX_BANNED: usize = 16;

/// One start of one node: its counter and the nonces of it and its predecessors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Incarnation {
    pub(crate) counter: u64,
    /// `chain[i]` is the nonce of incarnation `counter - i`; never empty.
    pub(crate) chain: Vec<u64>,
}

impl Incarnation {
    pub(crate) fn nonce(&self) -> u64 {
        self.chain[0]
    }

    /// Whether incarnation `counter` with `nonce` is this one or one of its ancestors.
    pub(crate) fn descends_from(&self, counter: u64, nonce: u64) -> bool {
        self.counter
            .checked_sub(counter)
            .and_then(|back| self.chain.get(back as usize))
            == Some(&nonce)
    }

    /// `<node>.<counter>.<nonce>-<nonce>-…` (nonces in hex, newest first).
    pub(crate) fn header(&self, node: NodeId) -> String {
        let chain: Vec<String> = self.chain.iter().map(|n| format!("{n:x}")).collect();
        format!("{node}.{}.{}", self.counter, chain.join("-"))
    }

    pub(crate) fn parse_header(value: &str) -> Result<(NodeId, Self), HeaderError> {
        let mut parts = value.split('.');
        let (Some(node), Some(counter), Some(chain), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(HeaderError);
        };
        let node = node.parse().map_err(|_| HeaderError)?;
        let counter: u64 = counter.parse().map_err(|_| HeaderError)?;
        let chain = chain
            .split('-')
            .map(|n| u64::from_str_radix(n, 16).map_err(|_| HeaderError))
            .collect::<Result<Vec<u64>, _>>()?;
        if chain.is_empty() || chain.len() > CHAIN || chain.len() as u64 > counter {
            return Err(HeaderError);
        }
        Ok((node, Self { counter, chain }))
    }

    /// `<counter>.<nonce>`: what a sender knows of the target.
    pub(crate) fn known_header(counter: u64, nonce: u64) -> String {
        format!("{counter}.{nonce:x}")
    }

    pub(crate) fn parse_known(value: &str) -> Result<(u64, u64), HeaderError> {
        let (counter, nonce) = value.split_once('.').ok_or(HeaderError)?;
        Ok((
            counter.parse().map_err(|_| HeaderError)?,
            u64::from_str_radix(nonce, 16).map_err(|_| HeaderError)?,
        ))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("malformed incarnation header")]
pub(crate) struct HeaderError;

#[derive(Debug, thiserror::Error)]
pub enum IncarnationError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the system random number generator failed")]
    Random,
}

/// Draws this start's incarnation and stores it (fsynced) before anything is answered.
pub(crate) async fn begin(db: &Db) -> Result<Incarnation, IncarnationError> {
    let mut bytes = [0u8; 8];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| IncarnationError::Random)?;
    let nonce = u64::from_le_bytes(bytes);
    Ok(db
        .blocking(move |db| {
            let previous: Option<Incarnation> = Db::read_meta(db, KEY_INCARNATION)?;
            let next = match previous {
                Some(mut p) => {
                    p.chain.insert(0, nonce);
                    p.chain.truncate(CHAIN);
                    Incarnation {
                        counter: p.counter.saturating_add(1),
                        chain: p.chain,
                    }
                }
                None => Incarnation {
                    counter: 1,
                    chain: vec![nonce],
                },
            };
            Db::write_meta(db, KEY_INCARNATION, &next)?;
            Ok(next)
        })
        .await?)
}

/// What this replica has accepted from one node, durably.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Record {
    counter: u64,
    nonce: u64,
    /// Nonces of clones of this node: refused, with every incarnation descending from them.
    banned: Vec<u64>,
}

/// What this replica knows of one node in memory only.
#[derive(Default)]
struct Live {
    /// When the accepted incarnation was last heard from here.
    last_heard: Option<Instant>,
    /// A successor that showed up while the accepted incarnation was still heard from.
    pending: Option<(u64, u64, Instant)>,
}

/// Why an incarnation was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// For good: the sender's volume is a stale copy (restored, or a clone).
    #[error(
        "node {node} incarnation {counter} is refused: {why}; its Raft volume is a stale copy \
         (restored or cloned). Delete that replica's data directory and restart it: it rejoins \
         under a new node ID"
    )]
    Stale {
        node: NodeId,
        counter: u64,
        why: String,
    },
    /// For now: the predecessor was heard from too recently (a restart is retried).
    #[error("node {node} incarnation {counter} is not taken yet: {why}")]
    NotYet {
        node: NodeId,
        counter: u64,
        why: String,
    },
}

/// The incarnations this replica has accepted from every node.
pub(crate) struct Ledger {
    db: Db,
    quiet: Duration,
    records: tokio::sync::Mutex<(BTreeMap<NodeId, Record>, BTreeMap<NodeId, Live>)>,
}

impl Ledger {
    pub(crate) async fn open(db: Db, quiet: Duration) -> Result<Self, StoreError> {
        let records: BTreeMap<NodeId, Record> = db
            .blocking(|db| Db::read_meta(db, KEY_PEER_INCARNATIONS))
            .await?
            .unwrap_or_default();
        Ok(Self {
            db,
            quiet,
            records: tokio::sync::Mutex::new((records, BTreeMap::new())),
        })
    }

    /// The incarnation of `node` accepted here, as `(counter, nonce)`.
    pub(crate) async fn known(&self, node: NodeId) -> Option<(u64, u64)> {
        let records = self.records.lock().await;
        records.0.get(&node).map(|r| (r.counter, r.nonce))
    }

    /// Checks (and on acceptance records) an incarnation `node` sent. `other_leader`: this
    /// replica follows a live leader that is neither itself nor `node`.
    pub(crate) async fn check(
        &self,
        node: NodeId,
        incarnation: &Incarnation,
        other_leader: bool,
    ) -> Result<(), Refusal> {
        let now = Instant::now();
        let mut guard = self.records.lock().await;
        let (records, live) = &mut *guard;
        let state = live.entry(node).or_default();
        let (counter, nonce) = (incarnation.counter, incarnation.nonce());
        let stale = |why: String| Refusal::Stale { node, counter, why };
        let Some(record) = records.get(&node).cloned() else {
            // First contact: nothing to compare with.
            self.store(
                records,
                node,
                Record {
                    counter,
                    nonce,
                    banned: Vec::new(),
                },
            )
            .await?;
            state.last_heard = Some(now);
            return Ok(());
        };
        if counter == record.counter && nonce == record.nonce {
            // The accepted incarnation speaks: a successor seen meanwhile is a clone.
            if let Some((c, n, since)) = state.pending
                && now.duration_since(since) >= self.quiet.min(Duration::from_millis(500))
            {
                tracing::error!(
                    node,
                    incarnation = c,
                    "a clone of node {node}'s Raft volume is running: incarnation {c} showed up \
                     while incarnation {counter} still runs; it is refused for good"
                );
                let mut banned = record.clone();
                banned.banned.push(n);
                let excess = banned.banned.len().saturating_sub(MAX_BANNED);
                banned.banned.drain(..excess);
                self.store(records, node, banned).await?;
                state.pending = None;
            }
            state.last_heard = Some(now);
            return Ok(());
        }
        if let Some(n) = record.banned.iter().find(|n| incarnation.chain.contains(n)) {
            return Err(stale(format!(
                "it descends from incarnation nonce {n:x}, a clone that ran beside the original"
            )));
        }
        if counter <= record.counter {
            return Err(stale(format!(
                "this replica has already seen incarnation {} of it",
                record.counter
            )));
        }
        if !incarnation.descends_from(record.counter, record.nonce) {
            return Err(stale(format!(
                "it does not descend from incarnation {}, the last one seen here",
                record.counter
            )));
        }
        // A later start of the same volume, or a clone of a live one.
        let heard_recently = state
            .last_heard
            .is_some_and(|at| now.duration_since(at) < self.quiet);
        if heard_recently || other_leader {
            let since = match state.pending {
                Some((c, n, since)) if c == counter && n == nonce => since,
                _ => now,
            };
            state.pending = Some((counter, nonce, since));
            return Err(Refusal::NotYet {
                node,
                counter,
                why: if heard_recently {
                    format!("incarnation {} was heard from moments ago", record.counter)
                } else {
                    "a live leader vouches for the running incarnation".into()
                },
            });
        }
        self.store(
            records,
            node,
            Record {
                counter,
                nonce,
                banned: record.banned,
            },
        )
        .await?;
        state.pending = None;
        state.last_heard = Some(now);
        tracing::info!(node, incarnation = counter, "a peer restarted");
        Ok(())
    }

    async fn store(
        &self,
        records: &mut BTreeMap<NodeId, Record>,
        node: NodeId,
        record: Record,
    ) -> Result<(), Refusal> {
        let mut next = records.clone();
        next.insert(node, record);
        let written = next.clone();
        let result = self
            .db
            .blocking(move |db| Db::write_meta(db, KEY_PEER_INCARNATIONS, &written))
            .await;
        match result {
            Ok(()) => {
                *records = next;
                Ok(())
            }
            // Not recorded, not accepted: the sender retries.
            Err(e) => Err(Refusal::NotYet {
                node,
                counter: 0,
                why: format!("recording its incarnation failed: {e}"),
            }),
        }
    }
}

/// This replica's side of it: its own incarnation, the ledger of everyone else's, and
/// whether it found its own volume to be a stale copy.
pub(crate) struct Incarnations {
    pub(crate) id: NodeId,
    pub(crate) own: Incarnation,
    header: http::HeaderValue,
    pub(crate) ledger: Ledger,
    data_dir: String,
    stale: tokio::sync::watch::Sender<Option<String>>,
    refused: AtomicU64,
    /// Refusals already logged (node, counter, nonce): a stale peer retries all the time.
    logged: Mutex<BTreeSet<(NodeId, u64, u64)>>,
}

impl Incarnations {
    pub(crate) fn new(id: NodeId, own: Incarnation, ledger: Ledger, data_dir: &Path) -> Self {
        let header = http::HeaderValue::from_str(&own.header(id))
            .expect("digits, dots, dashes and hex are a valid header value");
        Self {
            id,
            own,
            header,
            ledger,
            data_dir: data_dir.display().to_string(),
            stale: tokio::sync::watch::Sender::new(None),
            refused: AtomicU64::new(0),
            logged: Mutex::new(BTreeSet::new()),
        }
    }

    pub(crate) fn header(&self) -> &http::HeaderValue {
        &self.header
    }

    /// What this replica has accepted of `target`, as a header value.
    pub(crate) async fn known_header(&self, target: NodeId) -> Option<http::HeaderValue> {
        let (counter, nonce) = self.ledger.known(target).await?;
        http::HeaderValue::from_str(&Incarnation::known_header(counter, nonce)).ok()
    }

    /// Why this replica's own volume is stale, once it knows.
    pub(crate) fn stale(&self) -> Option<String> {
        self.stale.borrow().clone()
    }

    pub(crate) fn watch_stale(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.stale.subscribe()
    }

    /// RPCs and answers refused for a stale or not-yet-taken incarnation, and Raft RPCs a
    /// stale peer declined.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Counts a Raft RPC declined by a peer that found its own volume stale (410).
    pub(crate) fn note_stale_peer(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks this replica's own volume as stale (for good): `why` is what a peer said.
    pub(crate) fn condemn(&self, why: &str) {
        let message = format!(
            "this replica's Raft volume is a stale copy (restored from a backup or cloned) and              takes no part in the cluster any more: {why}. Delete the data directory {} and              restart the replica: it rejoins under a new node ID",
            self.data_dir
        );
        let first = self.stale.send_if_modified(|stale| {
            if stale.is_some() {
                return false;
            }
            *stale = Some(message.clone());
            true
        });
        if first {
            tracing::error!(
                node_id = self.id,
                incarnation = self.own.counter,
                "{message}"
            );
        }
    }

    /// Whether a peer's record of this node, `(counter, nonce)`, is in this volume's chain;
    /// if not, this volume is the stale copy and is condemned.
    pub(crate) fn check_known(&self, counter: u64, nonce: u64) -> Result<(), String> {
        if self.own.descends_from(counter, nonce) {
            return Ok(());
        }
        self.condemn(&format!(
            "a peer has accepted incarnation {counter} of node {} that this volume never ran              (it is at incarnation {})",
            self.id, self.own.counter
        ));
        Err(self.stale().unwrap_or_default())
    }

    /// Checks a peer's incarnation (see [`Ledger::check`]), counting and logging refusals.
    pub(crate) async fn admit(
        &self,
        node: NodeId,
        incarnation: &Incarnation,
        other_leader: bool,
    ) -> Result<(), Refusal> {
        let result = self.ledger.check(node, incarnation, other_leader).await;
        if let Err(refusal) = &result {
            self.refused.fetch_add(1, Ordering::Relaxed);
            let first = matches!(refusal, Refusal::Stale { .. })
                && self.logged.lock().expect("logged lock poisoned").insert((
                    node,
                    incarnation.counter,
                    incarnation.nonce(),
                ));
            if first {
                tracing::warn!(node, incarnation = incarnation.counter, "{refusal}");
            } else {
                tracing::debug!(node, incarnation = incarnation.counter, "{refusal}");
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inc(counter: u64, chain: &[u64]) -> Incarnation {
        Incarnation {
            counter,
            chain: chain.to_vec(),
        }
    }

    async fn ledger(quiet: Duration) -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        (dir, Ledger::open(db, quiet).await.unwrap())
    }

    #[test]
    fn headers_round_trip_and_junk_is_refused() {
        let i = inc(3, &[0xabc, 2, 1]);
        let (node, parsed) = Incarnation::parse_header(&i.header(7)).unwrap();
        assert_eq!((node, &parsed), (7, &i));
        for junk in [
            "", "7", "7.3", "7.3.", "7.3.zz", "7.1.1-2", "x.1.1", "7.1.1.1",
        ] {
            assert!(Incarnation::parse_header(junk).is_err(), "{junk:?}");
        }
        let known = Incarnation::known_header(3, 0xabc);
        assert_eq!(Incarnation::parse_known(&known).unwrap(), (3, 0xabc));
    }

    #[tokio::test]
    async fn restarts_are_taken_and_restored_copies_are_not() {
        let (_dir, ledger) = ledger(Duration::ZERO).await;
        ledger.check(1, &inc(1, &[10]), false).await.unwrap();
        ledger.check(1, &inc(1, &[10]), false).await.unwrap();
        // Two restarts later (one never seen here), the chain still holds nonce 10.
        ledger
            .check(1, &inc(3, &[30, 20, 10]), false)
            .await
            .unwrap();
        // The volume copied at incarnation 1 and started: its chain lacks 30.
        let restored = ledger.check(1, &inc(2, &[21, 10]), false).await;
        assert!(
            matches!(restored, Err(Refusal::Stale { .. })),
            "{restored:?}"
        );
        // Restarting the copy again and again never gets past it.
        for c in 3..8 {
            let chain: Vec<u64> = (0..c).rev().map(|k| 100 + k).chain([21, 10]).collect();
            let again = ledger.check(1, &inc(c + 2, &chain[..]), false).await;
            assert!(matches!(again, Err(Refusal::Stale { .. })), "{again:?}");
        }
        // Equal counter, other nonce.
        assert!(
            ledger
                .check(1, &inc(3, &[31, 20, 10]), false)
                .await
                .is_err()
        );
        assert_eq!(ledger.known(1).await, Some((3, 30)));
    }

    #[tokio::test]
    async fn a_clone_beside_its_original_is_banned() {
        let (_dir, ledger) = ledger(Duration::from_millis(200)).await;
        ledger.check(1, &inc(5, &[50]), false).await.unwrap();
        // The clone starts while the original was just heard from: not yet.
        let clone = inc(6, &[60, 50]);
        assert!(matches!(
            ledger.check(1, &clone, false).await,
            Err(Refusal::NotYet { .. })
        ));
        // The original speaks on: the clone is banned, even once the original is quiet.
        tokio::time::sleep(Duration::from_millis(250)).await;
        ledger.check(1, &inc(5, &[50]), false).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(matches!(
            ledger.check(1, &clone, false).await,
            Err(Refusal::Stale { .. })
        ));
        assert!(matches!(
            ledger.check(1, &inc(7, &[70, 60, 50]), false).await,
            Err(Refusal::Stale { .. })
        ));
        // The original's own restart is taken once it has been quiet.
        ledger.check(1, &inc(6, &[61, 50]), false).await.unwrap();
    }

    #[tokio::test]
    async fn a_follower_of_a_live_leader_takes_no_successor() {
        let (_dir, ledger) = ledger(Duration::ZERO).await;
        ledger.check(1, &inc(1, &[10]), false).await.unwrap();
        assert!(matches!(
            ledger.check(1, &inc(2, &[20, 10]), true).await,
            Err(Refusal::NotYet { .. })
        ));
        ledger.check(1, &inc(2, &[20, 10]), false).await.unwrap();
    }

    #[tokio::test]
    async fn records_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let ledger = Ledger::open(db.clone(), Duration::ZERO).await.unwrap();
        ledger.check(4, &inc(2, &[20, 10]), false).await.unwrap();
        drop(ledger);
        let ledger = Ledger::open(db, Duration::ZERO).await.unwrap();
        assert_eq!(ledger.known(4).await, Some((2, 20)));
        assert!(ledger.check(4, &inc(2, &[21, 10]), false).await.is_err());
    }

    #[tokio::test]
    async fn each_start_is_a_new_incarnation_descending_from_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let first = begin(&db).await.unwrap();
        let second = begin(&db).await.unwrap();
        assert_eq!((first.counter, second.counter), (1, 2));
        assert!(second.descends_from(1, first.nonce()));
        for _ in 0..CHAIN + 5 {
            begin(&db).await.unwrap();
        }
        let last = begin(&db).await.unwrap();
        assert_eq!(last.chain.len(), CHAIN);
    }
}
