//! What the consumer loop tells the HTTP API: assignment, readiness and how fresh the
//! stored state is.

use std::collections::BTreeMap;
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

/// Shared between the consumer thread and the HTTP handlers.
#[derive(Debug, Default)]
pub struct Status {
    inner: RwLock<Inner>,
    /// The instances of the group (this one too), as they last announced themselves,
    /// with when that announcement was read.
    members: RwLock<BTreeMap<String, (Member, Instant)>>,
}

/// An instance of the group as it last announced itself (the membership topic).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// Its name (`[kafka] instance_id`, or the id kept in its store's directory).
    pub member: String,
    /// Where its query API answers (`host:port`).
    pub http: String,
    /// The receipts partitions it holds (empty while it holds none, or stopped).
    pub partitions: Vec<i32>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Partitions held, once the group assigned them and they were positioned at the
    /// store's offsets; `None` before the first assignment.
    assigned: Option<Vec<i32>>,
    /// The last commit's failure, cleared by the next success.
    commit_error: Option<String>,
    /// Failed commits since start.
    commit_failures: u64,
    /// Why no broker answers, while none does.
    broker_error: Option<String>,
    /// Partitions being restored from the changelog, while a restore runs.
    restoring: Option<Vec<i32>>,
    /// Next offsets of the state the store holds, `topic/partition=offset` joined by `,`.
    offsets: String,
    /// This instance's name in the group.
    me: Option<String>,
    /// Whether this process is an instance of a consumer group (`run`), known before its
    /// name is.
    grouped: bool,
    /// Partitions of the receipts topic, once known.
    partition_count: Option<usize>,
}

/// Why the processor is not ready.
pub type NotReady = String;

impl Inner {
    /// The state served now reflects `offsets` (merged into those it reflected).
    fn serve(&mut self, offsets: &BTreeMap<(String, i32), i64>) {
        if offsets.is_empty() {
            return;
        }
        let mut all: BTreeMap<(String, i32), i64> = parse_offsets(&self.offsets);
        all.extend(offsets.iter().map(|(k, v)| (k.clone(), *v)));
        self.offsets = all
            .iter()
            .map(|((t, p), o)| format!("{t}/{p}={o}"))
            .collect::<Vec<_>>()
            .join(",");
    }
}

impl Status {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The partitions held changed to `partitions` (assigned and positioned at the
    /// store's offsets): the offsets served stop naming the ones given up, whose state
    /// another instance serves now.
    pub fn assigned(&self, partitions: Vec<i32>) {
        let mut w = self.write();
        let kept: Vec<String> = w
            .offsets
            .split(',')
            .filter(|part| {
                part.split_once('=')
                    .and_then(|(tp, _)| tp.rsplit_once('/'))
                    .and_then(|(_, p)| p.parse::<i32>().ok())
                    .is_some_and(|p| partitions.contains(&p))
            })
            .map(str::to_owned)
            .collect();
        w.offsets = kept.join(",");
        w.assigned = Some(partitions);
    }

    /// Partitions are being restored from the changelog.
    pub fn restoring(&self, partitions: Vec<i32>) {
        self.write().restoring = Some(partitions);
    }

    /// The restore finished.
    pub fn restored(&self) {
        self.write().restoring = None;
    }

    /// The partitions held now (`None` before the first assignment).
    pub fn owned(&self) -> Option<Vec<i32>> {
        self.read().assigned.clone()
    }

    /// This instance's name in the group.
    pub fn set_name(&self, me: String) {
        self.write().me = Some(me);
    }

    /// Whether this process is an instance of a consumer group (`run`), not a standalone
    /// API over a store (`serve`, `demo`, tests).
    pub fn in_group(&self) -> bool {
        let r = self.read();
        r.grouped || r.me.is_some()
    }

    /// This process is an instance of a consumer group: from now on, until partitions are
    /// assigned, it holds none (its API forwards, or answers 503), even before the
    /// consumer is up and has a name.
    pub fn set_grouped(&self) {
        self.write().grouped = true;
    }

    /// How many partitions the receipts topic has.
    pub fn set_partition_count(&self, n: usize) {
        self.write().partition_count = Some(n);
    }

    /// Partitions of the receipts topic, once known.
    pub fn partition_count(&self) -> Option<usize> {
        self.read().partition_count
    }

    /// An instance announced itself.
    pub fn member(&self, m: Member) {
        self.members
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(m.member.clone(), (m, Instant::now()));
    }

    /// The other instances that hold partitions, as last announced.
    pub fn peers(&self) -> Vec<Member> {
        let me = self.read().me.clone();
        self.members
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|(m, _)| m)
            .filter(|m| Some(&m.member) != me.as_ref() && !m.partitions.is_empty())
            .cloned()
            .collect()
    }

    /// Every instance, this one included, that announced itself within `within` (each
    /// re-announces itself every few seconds while it runs), in name order.
    pub fn live_members(&self, within: Duration) -> Vec<Member> {
        self.members
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|(_, seen)| seen.elapsed() <= within)
            .map(|(m, _)| m.clone())
            .collect()
    }

    /// This instance's name in the group, once set.
    pub fn name(&self) -> Option<String> {
        self.read().me.clone()
    }

    /// A batch was committed: these are the store's offsets now.
    pub fn committed(&self, offsets: &BTreeMap<(String, i32), i64>) {
        let mut w = self.write();
        w.commit_error = None;
        w.serve(offsets);
    }

    /// Partitions were restored (or assigned) with these offsets in the store: the state
    /// served reflects them at once, before any commit.
    pub fn served(&self, offsets: &BTreeMap<(String, i32), i64>) {
        self.write().serve(offsets);
    }

    /// No broker answers: `why` names the addresses and the client's error.
    pub fn broker_unreachable(&self, why: String) {
        self.write().broker_error = Some(why);
    }

    /// A broker answered again.
    pub fn broker_reachable(&self) {
        let mut w = self.write();
        if w.broker_error.is_some() {
            w.broker_error = None;
        }
    }

    /// A commit failed.
    pub fn commit_failed(&self, why: String) {
        let mut w = self.write();
        w.commit_error = Some(why);
        w.commit_failures += 1;
    }

    /// Failed commits since start (each one dropped its batch for a replay).
    pub fn commit_failures(&self) -> u64 {
        self.read().commit_failures
    }

    /// `Ok` when partitions are held and the last commit succeeded.
    pub fn ready(&self) -> Result<(), NotReady> {
        let r = self.read();
        if let Some(e) = &r.broker_error {
            return Err(e.clone());
        }
        if let Some(e) = &r.commit_error {
            return Err(format!("last commit failed: {e}"));
        }
        if let Some(ps) = &r.restoring {
            return Err(format!("restoring partitions {ps:?} from the changelog"));
        }
        match &r.assigned {
            None => Err("no partitions assigned yet (joining the consumer group)".into()),
            Some(p) if p.is_empty() => Err("no partitions assigned".into()),
            Some(_) => Ok(()),
        }
    }

    /// The store's offsets as a header value (`receipts/0=120,receipts/1=98`).
    pub fn offsets_header(&self) -> String {
        self.read().offsets.clone()
    }
}

fn parse_offsets(s: &str) -> BTreeMap<(String, i32), i64> {
    s.split(',')
        .filter_map(|part| {
            let (tp, o) = part.split_once('=')?;
            let (t, p) = tp.rsplit_once('/')?;
            Some(((t.to_owned(), p.parse().ok()?), o.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_with_partitions_and_a_good_last_commit() {
        let s = Status::default();
        assert!(s.ready().is_err());
        s.assigned(vec![0, 1]);
        assert!(s.ready().is_ok());
        s.commit_failed("disk full".into());
        assert!(s.ready().unwrap_err().contains("disk full"));
        let mut o = BTreeMap::new();
        o.insert(("receipts".to_string(), 1), 98);
        s.committed(&o);
        assert!(s.ready().is_ok());
        o.clear();
        o.insert(("receipts".to_string(), 0), 120);
        s.committed(&o);
        assert_eq!(s.offsets_header(), "receipts/0=120,receipts/1=98");
        // A partition given up is no longer named: its state is served elsewhere.
        s.assigned(vec![0]);
        assert_eq!(s.offsets_header(), "receipts/0=120");
        s.assigned(Vec::new());
        assert!(s.ready().is_err());
        assert_eq!(s.offsets_header(), "");
        s.assigned(vec![0]);
        s.broker_unreachable("cannot reach the Kafka brokers at 127.0.0.1:9092: refused".into());
        assert!(s.ready().unwrap_err().contains("127.0.0.1:9092"));
        s.broker_reachable();
        assert!(s.ready().is_ok());
        s.restoring(vec![0]);
        assert!(s.ready().unwrap_err().contains("restoring partitions [0]"));
        s.restored();
        assert!(s.ready().is_ok());
    }
}
