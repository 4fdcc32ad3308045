//! The changelog: what a partition's fold needs, as records of a compacted topic
//! partitioned like the receipts topic, so that a partition's state can move to another
//! instance (ARCHITECTURE.md, "Ownership, restore and fencing").
//!
//! Keys (ids never contain control characters, so 0x00 separates):
//! - `u 0x00 user_id` -> the user's [`UserState`];
//! - `l 0x00 user_id 0x00 receipt_id` -> its [`LedgerEntry`];
//! - `m` -> the partition's [`Meta`]: the next receipt offset and the event-time mark the
//!   records before it add up to. Every committed batch ends with one.
//!
//! A ledger entry that left the dedup window is deleted by a tombstone (its key, no
//! value), so that compaction removes it and the changelog grows with the users and the
//! window, not with every receipt ever folded.
//!
//! Values begin with a format byte, so that a later layout can be told apart: users and
//! ledger entries are the store's own value encoding ([`value::FORMAT`], 2: binary, see
//! `store::value`), the meta is [`FORMAT`] (1) then JSON. Users and ledger entries in
//! format 1 (then JSON), as builds before the binary encoding wrote them, are still read.

use serde::{Deserialize, Serialize};

use crate::domain::{LedgerEntry, UserState};
use crate::store::value;

/// The format of the meta record: JSON after this byte. Users and ledger entries were
/// written so too before the binary encoding, and are still read so.
pub const FORMAT: u8 = 1;

/// A partition's position, as of the changelog records before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The receipts topic.
    pub topic: String,
    /// Next receipt offset to fold.
    pub next_offset: i64,
    /// The event-time mark (seconds), if any receipt was applied.
    pub mark: Option<i64>,
    /// The mark's nanoseconds (absent from records of builds before the time rules).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mark_nanos: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// One changelog record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A user's state (boxed: it is most of the enum's size).
    User(Box<UserState>),
    /// A ledger entry of a user's receipt.
    Ledger {
        user_id: String,
        receipt_id: String,
        entry: LedgerEntry,
    },
    /// The partition's position.
    Meta(Meta),
    /// A ledger entry that left the dedup window: a tombstone.
    LedgerExpired { user_id: String, receipt_id: String },
}

/// Why a changelog record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ChangelogError {
    /// The key is none of `u`, `l`, `m`.
    #[error("unknown changelog key {0:?}")]
    Key(String),
    /// The value is missing, of another format, or not the JSON its key says.
    #[error("bad changelog value for key {key:?}: {detail}")]
    Value { key: String, detail: String },
}

/// One changelog record to write, borrowing what it holds from the batch it comes from
/// (a commit publishes every changed user and ledger entry: copying each first cost the
/// fold's thread about 3% of a drain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryRef<'a> {
    /// A user's state.
    User(&'a UserState),
    /// A ledger entry of a user's receipt.
    Ledger {
        user_id: &'a str,
        receipt_id: &'a str,
        entry: &'a LedgerEntry,
    },
    /// The partition's position.
    Meta(Meta),
    /// A ledger entry that left the dedup window: a tombstone.
    LedgerExpired {
        user_id: &'a str,
        receipt_id: &'a str,
    },
}

impl EntryRef<'_> {
    /// The record's key.
    pub fn key(&self) -> Vec<u8> {
        match self {
            EntryRef::User(u) => [b"u\0", u.user_id.as_bytes()].concat(),
            EntryRef::Ledger {
                user_id,
                receipt_id,
                ..
            }
            | EntryRef::LedgerExpired {
                user_id,
                receipt_id,
            } => [b"l\0", user_id.as_bytes(), b"\0", receipt_id.as_bytes()].concat(),
            EntryRef::Meta(_) => b"m".to_vec(),
        }
    }

    /// The record's value (`None`: a tombstone).
    pub fn value(&self) -> Option<Vec<u8>> {
        match self {
            EntryRef::User(u) => Some(value::encode_user(u)),
            EntryRef::Ledger { entry, .. } => Some(value::encode_ledger(entry)),
            EntryRef::Meta(m) => {
                let mut v = vec![FORMAT];
                // A plain struct of strings and integers always serialises.
                let _ = serde_json::to_writer(&mut v, m);
                Some(v)
            }
            EntryRef::LedgerExpired { .. } => None,
        }
    }

    /// The record as an [`Entry`] of its own.
    pub fn to_entry(&self) -> Entry {
        match self {
            EntryRef::User(u) => Entry::User(Box::new((*u).clone())),
            EntryRef::Ledger {
                user_id,
                receipt_id,
                entry,
            } => Entry::Ledger {
                user_id: (*user_id).to_owned(),
                receipt_id: (*receipt_id).to_owned(),
                entry: (*entry).clone(),
            },
            EntryRef::Meta(m) => Entry::Meta(m.clone()),
            EntryRef::LedgerExpired {
                user_id,
                receipt_id,
            } => Entry::LedgerExpired {
                user_id: (*user_id).to_owned(),
                receipt_id: (*receipt_id).to_owned(),
            },
        }
    }
}

impl Entry {
    /// The record, borrowed.
    pub fn as_ref(&self) -> EntryRef<'_> {
        match self {
            Entry::User(u) => EntryRef::User(u),
            Entry::Ledger {
                user_id,
                receipt_id,
                entry,
            } => EntryRef::Ledger {
                user_id,
                receipt_id,
                entry,
            },
            Entry::Meta(m) => EntryRef::Meta(m.clone()),
            Entry::LedgerExpired {
                user_id,
                receipt_id,
            } => EntryRef::LedgerExpired {
                user_id,
                receipt_id,
            },
        }
    }

    /// The record's key.
    pub fn key(&self) -> Vec<u8> {
        self.as_ref().key()
    }

    /// The record's value (`None`: a tombstone).
    pub fn value(&self) -> Option<Vec<u8>> {
        self.as_ref().value()
    }

    /// Reads a record back.
    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<Entry, ChangelogError> {
        let shown = || String::from_utf8_lossy(key).into_owned();
        let bad = |detail: String| ChangelogError::Value {
            key: shown(),
            detail,
        };
        let text = std::str::from_utf8(key).map_err(|_| ChangelogError::Key(shown()))?;
        let value = match value {
            Some(v @ [FORMAT | value::FORMAT_2 | value::FORMAT, ..]) => v,
            Some([other, ..]) => {
                return Err(bad(format!(
                    "format {other}, expected {FORMAT} or {}",
                    value::FORMAT
                )))
            }
            None => {
                // Only a ledger entry is ever deleted.
                let ledger = text.strip_prefix("l\0").and_then(|r| r.split_once('\0'));
                return match ledger {
                    Some((user_id, receipt_id)) => Ok(Entry::LedgerExpired {
                        user_id: user_id.to_owned(),
                        receipt_id: receipt_id.to_owned(),
                    }),
                    None => Err(bad("no value".into())),
                };
            }
            Some([]) => return Err(bad("no value".into())),
        };
        // Format 1: JSON after the format byte.
        let json = value.strip_prefix(&[FORMAT]);
        if text == "m" {
            let Some(json) = json else {
                return Err(bad(format!("meta in format {}", value::FORMAT)));
            };
            return serde_json::from_slice(json)
                .map(Entry::Meta)
                .map_err(|e| bad(e.to_string()));
        }
        // A user or ledger entry of format 1 is the store's legacy JSON after the byte,
        // which the store's decoders read as they read format 2.
        let stored = match json {
            Some(json @ [b'{', ..]) => json,
            Some(_) => return Err(bad("format 1 holds no JSON object".into())),
            None => value,
        };
        match text.split_once('\0') {
            Some(("u", user_id)) => {
                let u = value::decode_user(stored).map_err(|e| bad(e.to_string()))?;
                if u.user_id != user_id {
                    return Err(bad(format!("holds user {:?}", u.user_id)));
                }
                Ok(Entry::User(Box::new(u)))
            }
            Some(("l", rest)) => {
                let (user_id, receipt_id) = rest
                    .split_once('\0')
                    .ok_or_else(|| ChangelogError::Key(shown()))?;
                Ok(Entry::Ledger {
                    user_id: user_id.to_owned(),
                    receipt_id: receipt_id.to_owned(),
                    entry: value::decode_ledger(stored).map_err(|e| bad(e.to_string()))?,
                })
            }
            _ => Err(ChangelogError::Key(shown())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ReceiptKind, Timestamp};

    #[test]
    fn every_entry_reads_back_and_bad_records_are_errors() {
        let mut u = UserState::new("u-1");
        u.coins = 7;
        let entry = LedgerEntry {
            kind: ReceiptKind::Purchase,
            store_id: "s-1".into(),
            amount: 1250,
            issued_at: Timestamp {
                secs: 1_700_000_000,
                nanos: 0,
            },
            earned_coins: 12,
            earned_xp: 22,
            refunded: 0,
            campaign_coins: vec![("opening-week".into(), 5)],
            tier_bonus: 0,
            taken: Vec::new(),
        };
        let all = [
            Entry::User(Box::new(u)),
            Entry::Ledger {
                user_id: "u-1".into(),
                receipt_id: "r-9".into(),
                entry,
            },
            Entry::Meta(Meta {
                topic: "receipts".into(),
                next_offset: 42,
                mark: Some(1_700_000_000),
                mark_nanos: 250_000_000,
            }),
        ];
        for e in &all {
            let back = Entry::decode(&e.key(), e.value().as_deref()).unwrap();
            assert_eq!(&back, e);
        }
        // Users and ledger entries as builds before the binary encoding wrote them.
        for e in &all[..2] {
            let mut v = vec![FORMAT];
            match e {
                Entry::User(u) => serde_json::to_writer(&mut v, u).unwrap(),
                Entry::Ledger { entry, .. } => serde_json::to_writer(&mut v, entry).unwrap(),
                _ => unreachable!(),
            }
            assert_eq!(&Entry::decode(&e.key(), Some(&v)).unwrap(), e);
        }
        assert_eq!(all[0].value().unwrap()[0], value::FORMAT);
        let gone = Entry::LedgerExpired {
            user_id: "u-1".into(),
            receipt_id: "r-9".into(),
        };
        assert_eq!(gone.value(), None);
        assert_eq!(gone.key(), b"l\0u-1\0r-9");
        assert_eq!(Entry::decode(&gone.key(), None).unwrap(), gone);
        assert!(Entry::decode(b"m", None).is_err());
        assert!(Entry::decode(b"l\0u-1", None).is_err());
        let user = Entry::User(Box::new(UserState::new("u-2")));
        let value = user.value().unwrap();
        assert!(Entry::decode(b"x\0u-2", Some(&value)).is_err());
        assert!(Entry::decode(b"u\0u-3", Some(&value)).is_err());
        assert!(Entry::decode(&user.key(), None).is_err());
        let mut other = value;
        other[0] = value::FORMAT + 1;
        let unknown = format!("format {}", value::FORMAT + 1);
        assert!(Entry::decode(&user.key(), Some(&other))
            .unwrap_err()
            .to_string()
            .contains(&unknown));
    }
}
