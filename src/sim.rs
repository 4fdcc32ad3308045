//! A seeded POS simulator: realistic receipt events for `demo`, tests and benchmarks.
//!
//! Users are picked with a skew (a few shoppers buy a lot), amounts spread from 1.00 to
//! 500.00, and a configurable share of events are refunds, exact duplicates and bad
//! events. The same seed always gives the same stream.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One simulated Kafka record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimEvent {
    /// The Kafka key (the user_id, except for deliberately mis-keyed events).
    pub key: String,
    /// The JSON value (or deliberately broken bytes).
    pub payload: Vec<u8>,
}

/// Shares of each kind of event, in per mille.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    /// Refunds of a recent purchase.
    pub refunds: u32,
    /// Exact re-sends of a recent event.
    pub duplicates: u32,
    /// Events that must be rejected.
    pub bad: u32,
    /// Redemptions of 10 to 300 coins (some for more than the shopper holds).
    pub redemptions: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Self {
            refunds: 50,
            duplicates: 20,
            bad: 10,
            redemptions: 0,
        }
    }
}

struct Recent {
    user: u64,
    receipt_id: String,
    amount: i64,
    event: SimEvent,
}

/// The simulator.
pub struct Simulator {
    rng: ChaCha8Rng,
    users: u64,
    stores: u32,
    mix: Mix,
    seq: u64,
    /// A bounded ring of recent purchases: refunds and duplicates pick from it, so the
    /// simulator's memory does not grow with the stream.
    recent: Vec<Recent>,
    base_secs: i64,
    /// Users not yet picked in order (see [`Simulator::every_user_first`]).
    in_order: u64,
    picked: u64,
    /// Event time between two events, in milliseconds.
    step_ms: u64,
}

const RECENT: usize = 4096;

impl Simulator {
    /// A simulator over `users` shoppers and `stores` stores.
    pub fn new(seed: u64, users: u64, stores: u32, mix: Mix) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            users: users.max(1),
            stores: stores.max(1),
            mix,
            seq: 0,
            recent: Vec::with_capacity(RECENT),
            // 2026-11-01T00:00:00Z
            base_secs: 1_793_491_200,
            in_order: 0,
            picked: 0,
            step_ms: 50,
        }
    }

    /// Picks every user once, in order, before the usual skewed picks: a stream of at
    /// least `users` purchases then holds every user (for scale benchmarks).
    pub fn every_user_first(mut self) -> Self {
        self.in_order = self.users;
        self
    }

    /// The user_id of user number `n`.
    /// Spreads `events` over `days` of event time (default: 50 ms apart), so that a
    /// shorter run still spans days and weeks (streaks, missions, period boards).
    pub fn spread_over(mut self, days: u64, events: u64) -> Self {
        self.step_ms = (days * 86_400_000 / events.max(1)).max(1);
        self
    }

    pub fn user_id(n: u64) -> String {
        format!("u-{n:08}")
    }

    fn now(&self) -> String {
        let ms = self.seq * self.step_ms;
        let secs = self.base_secs + (ms / 1000) as i64;
        let t = crate::domain::Timestamp {
            secs,
            nanos: ((ms % 1000) * 1_000_000) as u32,
        };
        t.to_rfc3339()
    }

    fn pick_user(&mut self) -> u64 {
        if self.picked < self.in_order {
            self.picked += 1;
            return self.picked - 1;
        }
        // Squaring a uniform value skews picks towards low user numbers.
        let u: f64 = self.rng.gen();
        ((u * u) * self.users as f64) as u64 % self.users
    }

    /// The next event.
    pub fn next_event(&mut self) -> SimEvent {
        self.seq += 1;
        let roll = self.rng.gen_range(0..1000);
        let m = self.mix;
        if roll < m.bad {
            return self.bad_event();
        }
        if roll < m.bad + m.duplicates && !self.recent.is_empty() {
            let i = self.rng.gen_range(0..self.recent.len());
            return self.recent[i].event.clone();
        }
        let redeem_from = m.bad + m.duplicates + m.refunds;
        if (redeem_from..redeem_from + m.redemptions).contains(&roll) {
            let user = self.pick_user();
            let coins = self.rng.gen_range(10..=300);
            let user_id = Self::user_id(user);
            let v = serde_json::json!({
                "receipt_id": format!("x-{}", self.seq),
                "user_id": user_id,
                "store_id": "s-desk",
                "type": "redemption",
                "coins": coins,
                "issued_at": self.now(),
            });
            return SimEvent {
                key: user_id,
                payload: serde_json::to_vec(&v).unwrap_or_default(),
            };
        }
        if roll < m.bad + m.duplicates + m.refunds && !self.recent.is_empty() {
            let i = self.rng.gen_range(0..self.recent.len());
            let (user, of, max) = {
                let r = &self.recent[i];
                (r.user, r.receipt_id.clone(), r.amount)
            };
            let amount = self.rng.gen_range(1..=max.max(1) / 2 + 1);
            return self.receipt(user, Some(&of), amount);
        }
        let user = self.pick_user();
        let amount = self.rng.gen_range(100..=50_000);
        let event = self.receipt(user, None, amount);
        let recent = Recent {
            user,
            receipt_id: format!("r-{}", self.seq),
            amount,
            event: event.clone(),
        };
        if self.recent.len() < RECENT {
            self.recent.push(recent);
        } else {
            let i = self.rng.gen_range(0..RECENT);
            self.recent[i] = recent;
        }
        event
    }

    fn receipt(&mut self, user: u64, refund_of: Option<&str>, amount: i64) -> SimEvent {
        let user_id = Self::user_id(user);
        let store = self.rng.gen_range(0..self.stores);
        let amount = crate::domain::money::format_minor(amount);
        let mut v = serde_json::json!({
            "receipt_id": format!("r-{}", self.seq),
            "user_id": user_id,
            "store_id": format!("s-{store:03}"),
            "amount": amount,
            "issued_at": self.now(),
            "currency": "AED",
        });
        if let Some(of) = refund_of {
            v["type"] = "refund".into();
            v["refund_of"] = of.into();
        }
        SimEvent {
            key: user_id,
            payload: serde_json::to_vec(&v).unwrap_or_default(),
        }
    }

    fn bad_event(&mut self) -> SimEvent {
        let user = self.pick_user();
        let good = self.receipt(user, None, 1000);
        let text = String::from_utf8(good.payload.clone()).unwrap_or_default();
        let payload = match self.rng.gen_range(0..6) {
            0 => b"{not json".to_vec(),
            1 => text.replace("\"user_id\"", "\"uid\"").into_bytes(),
            2 => text.replace("\"10.00\"", "\"10.001\"").into_bytes(),
            3 => text.replace("\"AED\"", "\"USD\"").into_bytes(),
            4 => {
                return SimEvent {
                    key: Self::user_id(user + 1),
                    payload: good.payload,
                }
            }
            _ => text
                .replace(
                    "\"currency\"",
                    "\"type\":\"refund\",\"refund_of\":\"r-none\",\"currency\"",
                )
                .into_bytes(),
        };
        SimEvent {
            key: good.key,
            payload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let mut a = Simulator::new(7, 100, 5, Mix::default());
        let mut b = Simulator::new(7, 100, 5, Mix::default());
        for _ in 0..1000 {
            assert_eq!(a.next_event(), b.next_event());
        }
    }

    #[test]
    fn stream_mixes_good_and_bad_events() {
        let rules = crate::domain::Rules::default();
        let mut s = Simulator::new(1, 50, 5, Mix::default());
        let (mut ok, mut bad) = (0, 0);
        for _ in 0..5000 {
            let e = s.next_event();
            match crate::codec::decode_receipt(Some(e.key.as_bytes()), Some(&e.payload), &rules) {
                Ok(_) => ok += 1,
                Err(_) => bad += 1,
            }
        }
        assert!(ok > 4500, "{ok}");
        assert!(bad > 10, "{bad}");
    }
}
