//! Answers gathered from the other instances of the group: one [`gather`] that asks every
//! peer at once and types what they answer, the coverage check that says whether every
//! partition was answered for, and the pure merges of the partial answers (a board's
//! entries, the kept periods, rank counts, freshness headers).

use std::collections::HashSet;

use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use super::forward::{self, Answer, ForwardError};
use super::{ApiError, AppState};

/// Why a peer's answer is not part of a gathered answer.
#[derive(Debug, thiserror::Error)]
pub(super) enum PeerError {
    /// The peer could not be asked.
    #[error("instance {member}: {source}")]
    Unreachable {
        /// The peer's member name.
        member: String,
        /// What went wrong.
        #[source]
        source: ForwardError,
    },
    /// The peer answered with an unexpected status.
    #[error("an instance answered {0}")]
    Status(StatusCode),
    /// The peer's body is not what the route answers.
    #[error("a malformed answer: {0}")]
    Malformed(serde_json::Error),
    /// The task asking it failed.
    #[error("asking an instance failed: {0}")]
    Task(String),
}

/// Asks every other instance that holds partitions for `path`, at once; their answers in
/// the order of the peers, or why not.
pub(super) async fn gather(state: &AppState, path: &str) -> Vec<Result<Answer, PeerError>> {
    let tasks: Vec<_> = state
        .status
        .peers()
        .into_iter()
        .map(|m| {
            let (path, token, timeout) =
                (path.to_owned(), state.token.clone(), state.forward_timeout);
            tokio::spawn(async move {
                forward::get(&m.http, &path, token.as_deref(), timeout)
                    .await
                    .map_err(|source| PeerError::Unreachable {
                        member: m.member.clone(),
                        source,
                    })
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(
            t.await
                .unwrap_or_else(|e| Err(PeerError::Task(e.to_string()))),
        );
    }
    out
}

/// One peer's decoded answer.
pub(super) struct Reply<T> {
    /// The body, decoded.
    pub(super) value: T,
    /// Its headers (freshness, periods).
    pub(super) headers: HeaderMap,
}

/// The peers' answers to one query, sorted: the decoded 200s, the partitions they cover,
/// and the rest.
pub(super) struct Replies<T> {
    pub(super) ok: Vec<Reply<T>>,
    pub(super) covered: Vec<i32>,
    pub(super) failed: Vec<PeerError>,
}

/// What a peer's 404 means to a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NotFound {
    /// The thing is not in the peer's partitions: they are answered for (a user).
    Covers,
    /// Nothing: another peer has it (the owner of a user's score).
    Ignored,
    /// The peer failed to answer (a part of a board every owner must give).
    Fails,
}

impl<T> Replies<T> {
    /// Why the peers that gave nothing gave nothing, for a message.
    pub(super) fn why(&self) -> String {
        why(&self.failed)
    }
}

impl<T: DeserializeOwned> Replies<T> {
    /// Sorts `answers`, their 404s as `not_found` says.
    pub(super) fn sort(answers: Vec<Result<Answer, PeerError>>, not_found: NotFound) -> Self {
        let mut r = Replies {
            ok: Vec::new(),
            covered: Vec::new(),
            failed: Vec::new(),
        };
        for a in answers {
            match a {
                Ok(a) if a.status == StatusCode::OK => match serde_json::from_slice::<T>(&a.body) {
                    Ok(value) => {
                        r.covered.extend(a.partitions());
                        r.ok.push(Reply {
                            value,
                            headers: a.headers,
                        });
                    }
                    Err(e) => r.failed.push(PeerError::Malformed(e)),
                },
                Ok(a) if a.status == StatusCode::NOT_FOUND && not_found == NotFound::Covers => {
                    r.covered.extend(a.partitions());
                }
                Ok(a) if a.status == StatusCode::NOT_FOUND && not_found == NotFound::Ignored => {}
                Ok(a) => r.failed.push(PeerError::Status(a.status)),
                Err(e) => r.failed.push(e),
            }
        }
        r
    }
}

/// `failed` as one clause: ` (a; b)`, or nothing.
pub(super) fn why(failed: &[PeerError]) -> String {
    if failed.is_empty() {
        String::new()
    } else {
        let all: Vec<String> = failed.iter().map(ToString::to_string).collect();
        format!(" ({})", all.join("; "))
    }
}

/// Which partitions are served from here, read once per request so that what is read
/// here and what counts as covered agree: those held now; or, standalone (`serve`,
/// `demo`), every partition in the store. An instance of a group that was assigned nothing
/// yet holds nothing: what its store has may have moved on elsewhere while it was down.
pub(super) struct Held {
    owned: Option<Vec<i32>>,
    standalone: bool,
}

impl Held {
    pub(super) fn now(state: &AppState) -> Self {
        Held {
            owned: state.status.owned(),
            standalone: !state.status.in_group(),
        }
    }

    /// Whether partition `p` is served from here.
    pub(super) fn has(&self, p: i32) -> bool {
        self.owned
            .as_ref()
            .map_or(self.standalone, |o| o.contains(&p))
    }

    /// The partitions of the receipts topic covered neither here nor by `covered`. With
    /// no group at all (`serve`, `demo`: nothing assigned and no other instance), none;
    /// with a group but the topic's partitions not known yet, all of them are (`[-1]`).
    pub(super) fn uncovered(&self, state: &AppState, covered: &[i32]) -> Vec<i32> {
        let here: &[i32] = self.owned.as_deref().unwrap_or_default();
        match state.status.partition_count() {
            Some(n) => (0..n as i32)
                .filter(|p| !covered.contains(p) && !here.contains(p))
                .collect(),
            None if self.standalone => Vec::new(),
            None => vec![-1],
        }
    }
}

/// The 503 of an answer that needs every partition's owner (`what` needs them) when
/// `missing` partitions have none that answered; `failed` says why others did not.
pub(super) fn owners_missing(what: &str, missing: &[i32], failed: &[PeerError]) -> ApiError {
    ApiError::unavailable(
        "partition_moving",
        format!(
            "{what} needs every partition's owner: {missing:?} have none that answered (moving between instances?){}; try again",
            why(failed)
        ),
    )
}

/// The top `limit` of every owner's top `limit`, merged: highest score first, ties by
/// user id ascending, each user once (an entry answered twice by a moving partition's old
/// and new owner counts once).
pub(super) fn merge_top<E>(
    mut entries: Vec<E>,
    limit: usize,
    score: impl Fn(&E) -> Option<i64>,
    user: impl Fn(&E) -> &str,
) -> Vec<E> {
    entries.sort_by(|a, b| score(b).cmp(&score(a)).then_with(|| user(a).cmp(user(b))));
    let mut seen = HashSet::new();
    entries.retain(|e| seen.insert(user(e).to_owned()));
    entries.truncate(limit);
    entries
}

/// The periods kept by any instance, oldest first, at most `most` of them (the latest).
pub(super) fn kept_periods(mut kept: Vec<String>, most: usize) -> Vec<String> {
    kept.sort();
    kept.dedup();
    let excess = kept.len().saturating_sub(most);
    kept.drain(..excess);
    kept
}

/// A comma-separated header's values over every answer (`x-mallquest-offsets`,
/// `x-mallquest-periods`), this instance's first; empty ones left out.
pub(super) fn joined_header<T>(mine: String, replies: &[Reply<T>], name: &str) -> String {
    std::iter::once(mine)
        .chain(replies.iter().filter_map(|r| {
            r.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        }))
        .filter(|o| !o.is_empty())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_merged_top_is_by_score_then_user_once_each() {
        let entries = vec![("b", 5), ("a", 5), ("c", 9), ("a", 5), ("d", 1), ("e", 7)];
        let top = merge_top(entries, 3, |e| Some(e.1), |e| e.0);
        assert_eq!(top, vec![("c", 9), ("e", 7), ("a", 5)]);
    }

    #[test]
    fn kept_periods_are_the_latest_few_once_each() {
        let kept = ["2026-W49", "2026-W47", "2026-W48", "2026-W49", "2026-W46"]
            .map(String::from)
            .to_vec();
        assert_eq!(kept_periods(kept, 3), ["2026-W47", "2026-W48", "2026-W49"]);
        assert!(kept_periods(Vec::new(), 3).is_empty());
    }
}
