//! Standby replicas (`[processing] standby_replicas`): an instance keeps a warm copy of
//! partitions that other instances hold by tailing their changelog into its store, so that
//! when one of them moves here the assign-time catch-up reads only what the copy lacks,
//! not the whole changelog partition.
//!
//! Which instances keep which partition warm is derived, by every instance alike, from the
//! membership topic: the `k` live instances after a partition's holder in name order
//! (cyclically), skipping its holders. Each instance re-announces itself every few seconds,
//! so one that stopped announcing (killed) drops out of that order within
//! [`LIVE_WITHIN`].
//!
//! A standby never writes a partition the consumer loop holds: both take the lock of
//! [`Held`] before writing restored state, and the loop adds a partition to it before its
//! assign-time catch-up and folds it only after.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::members::Announcer;
use super::restore::{catch_up, Purpose};
use crate::config::KafkaConfig;
use crate::status::{Member, Status};
use crate::store::Store;
use crate::telemetry;

/// How often each instance announces itself again while it runs.
pub(super) const ANNOUNCE_EVERY: Duration = Duration::from_secs(3);

/// An instance that has not announced itself for this long is taken as gone.
pub(super) const LIVE_WITHIN: Duration = Duration::from_secs(10);

/// How often a standby reads the changelog of the partitions it keeps warm.
const ROUND_EVERY: Duration = Duration::from_millis(500);

/// The partitions the consumer loop holds. Whoever writes restored state (the assign-time
/// catch-up, a standby round) holds its lock while doing so.
#[derive(Debug, Default)]
pub(super) struct Held {
    held: Mutex<BTreeSet<i32>>,
    /// Set while the consumer loop waits for the lock: a standby round in progress stops
    /// at once (a rebalance callback must not wait out a long catch-up).
    waiting: AtomicBool,
}

impl Held {
    /// The lock, for a standby round.
    pub(super) fn lock(&self) -> MutexGuard<'_, BTreeSet<i32>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lock, for the consumer loop: a standby round that holds it gives it up first.
    pub(super) fn lock_first(&self) -> MutexGuard<'_, BTreeSet<i32>> {
        self.waiting.store(true, Ordering::SeqCst);
        let guard = self.lock();
        self.waiting.store(false, Ordering::SeqCst);
        guard
    }

    /// Whether the consumer loop waits for the lock.
    fn wanted(&self) -> bool {
        self.waiting.load(Ordering::SeqCst)
    }
}

/// The partitions `me` keeps warm for others, among `members` (name order): for every
/// partition some member holds, the `k` members after its first holder, cyclically, that
/// do not hold it themselves.
pub(super) fn standby_partitions(members: &[Member], me: &str, k: usize) -> BTreeSet<i32> {
    let mut mine = BTreeSet::new();
    let Some(my_index) = members.iter().position(|m| m.member == me) else {
        return mine;
    };
    let held: BTreeSet<i32> = members
        .iter()
        .flat_map(|m| m.partitions.iter().copied())
        .collect();
    for p in held {
        let holds = |i: usize| members[i].partitions.contains(&p);
        let Some(first) = (0..members.len()).find(|&i| holds(i)) else {
            continue;
        };
        let standbys = (1..members.len())
            .map(|step| (first + step) % members.len())
            .filter(|&i| !holds(i))
            .take(k);
        if standbys.into_iter().any(|i| i == my_index) {
            mine.insert(p);
        }
    }
    mine
}

/// Re-announces this instance and, with `k` > 0, keeps its standby partitions warm,
/// until `stop` is set.
pub(super) fn keep_warm(
    kafka: &KafkaConfig,
    store: &Store,
    status: &Status,
    held: &Held,
    announcer: &Announcer,
    k: usize,
    stop: &AtomicBool,
) {
    let mut announced = Instant::now();
    let mut warm: BTreeSet<i32> = BTreeSet::new();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(ROUND_EVERY);
        let lock = held;
        let held = lock.lock();
        if announced.elapsed() >= ANNOUNCE_EVERY {
            announcer.announce(&held.iter().copied().collect::<Vec<_>>());
            announced = Instant::now();
        }
        if k == 0 {
            continue;
        }
        let Some(me) = status.name() else {
            continue;
        };
        let wanted: BTreeSet<i32> = standby_partitions(&status.live_members(LIVE_WITHIN), &me, k)
            .difference(&held)
            .copied()
            .collect();
        if wanted != warm {
            info!(message = "Standby partitions changed.", partitions = ?wanted);
            telemetry::standby_partitions(wanted.len());
            warm = wanted;
        }
        if warm.is_empty() {
            continue;
        }
        let partitions: Vec<i32> = warm.iter().copied().collect();
        let interrupt = || lock.wanted() || stop.load(Ordering::Relaxed);
        if let Err(e) = catch_up(
            kafka,
            store,
            &partitions,
            status,
            Purpose::Standby,
            &interrupt,
        ) {
            warn!(message = "A standby round failed; retrying.", partitions = ?partitions, error = format!("{e:#}"));
        }
    }
}

/// Runs [`keep_warm`] on a thread of its own.
pub(super) fn spawn(
    kafka: KafkaConfig,
    store: Arc<Store>,
    status: Arc<Status>,
    held: Arc<Held>,
    announcer: Arc<Announcer>,
    k: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || keep_warm(&kafka, &store, &status, &held, &announcer, k, &stop))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, partitions: &[i32]) -> Member {
        Member {
            member: name.into(),
            http: String::new(),
            partitions: partitions.to_vec(),
        }
    }

    #[test]
    fn each_partition_is_kept_warm_by_the_next_k_members_after_its_holder() {
        let members = [m("a", &[0, 3]), m("b", &[1, 4]), m("c", &[2, 5])];
        let of = |me: &str, k| standby_partitions(&members, me, k);
        assert_eq!(of("a", 1), BTreeSet::from([2, 5]));
        assert_eq!(of("b", 1), BTreeSet::from([0, 3]));
        assert_eq!(of("c", 1), BTreeSet::from([1, 4]));
        // Two standbys: every member keeps warm what it does not hold.
        assert_eq!(of("a", 2), BTreeSet::from([1, 2, 4, 5]));
        // More standbys than other members: no more than every other member.
        assert_eq!(of("c", 5), BTreeSet::from([0, 1, 3, 4]));
        assert_eq!(of("a", 0), BTreeSet::new());
        // Not a member (not announced yet): nothing.
        assert_eq!(of("d", 1), BTreeSet::new());
    }

    #[test]
    fn an_idle_member_is_a_standby_and_a_partition_held_twice_skips_both_holders() {
        // "b" holds nothing (a fourth instance with no partition left for it).
        let members = [m("a", &[0, 1]), m("b", &[]), m("c", &[1, 2])];
        assert_eq!(standby_partitions(&members, "b", 1), BTreeSet::from([0, 1]));
        // Partition 1 is claimed by a and c during a move: its standby is b, not c.
        assert_eq!(standby_partitions(&members, "c", 1), BTreeSet::new());
        assert_eq!(standby_partitions(&members, "a", 1), BTreeSet::from([2]));
    }
}
