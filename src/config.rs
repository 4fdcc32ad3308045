//! Configuration: TOML -> raw sections (serde, `deny_unknown_fields`, documented
//! defaults) -> a validated [`Config`].
//!
//! Every key has a default, so an empty file is a valid configuration for a
//! local broker. Unknown keys are rejected: a typo must never silently fall
//! back to a default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::domain::Rules;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("failed to read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the wrong type.
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value is out of its allowed range.
    #[error("invalid config value `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where receipts come from and where outputs go.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// The embedded store.
    #[serde(default)]
    pub store: StoreConfig,
    /// Batching of work.
    #[serde(default)]
    pub processing: ProcessingConfig,
    /// The game's rules.
    #[serde(default)]
    pub rules: Rules,
    /// The query API and metrics endpoint.
    #[serde(default)]
    pub http: HttpConfig,
    // The game's top-level sections: moved into `rules.game` by `parse`, where the fold
    // reads them.
    #[serde(default)]
    store_categories: BTreeMap<String, String>,
    #[serde(default)]
    campaigns: Vec<crate::domain::game::Campaign>,
    #[serde(default)]
    missions: Vec<crate::domain::game::Mission>,
    #[serde(default)]
    streaks: crate::domain::game::Streaks,
    #[serde(default)]
    badges: Vec<crate::domain::game::Badge>,
    #[serde(default)]
    expiry: Option<crate::domain::Expiry>,
    #[serde(default)]
    tiers: Option<crate::domain::Tiers>,
}

/// `[http]`: the query API, health checks and `/metrics`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Bearer token required on `/v1/*` when set; off by default.
    #[serde(default)]
    pub token: Option<String>,
    /// Longest time a request may take, slow clients included, in milliseconds.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Connections served at once; more are closed on accept.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// The `host:port` other instances reach this one's API at, to forward queries.
    /// Default: `listen`, with an unspecified host (`0.0.0.0`) replaced by the host name.
    #[serde(default)]
    pub advertise: Option<String>,
    /// How long a query forwarded to another instance may take, in milliseconds.
    #[serde(default = "default_forward_timeout_ms")]
    pub forward_timeout_ms: u64,
}

const fn default_forward_timeout_ms() -> u64 {
    2_000
}

impl HttpConfig {
    /// Where other instances reach this one's API.
    pub fn advertised(&self) -> String {
        if let Some(a) = &self.advertise {
            return a.clone();
        }
        match self.listen.rsplit_once(':') {
            Some(("0.0.0.0" | "[::]" | "::", port)) => {
                let host = std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| "localhost".into());
                format!("{host}:{port}")
            }
            _ => self.listen.clone(),
        }
    }
}

const fn default_max_connections() -> usize {
    crate::http::MAX_CONNECTIONS
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
const fn default_request_timeout_ms() -> u64 {
    5_000
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            token: None,
            request_timeout_ms: default_request_timeout_ms(),
            max_connections: default_max_connections(),
            advertise: None,
            forward_timeout_ms: default_forward_timeout_ms(),
        }
    }
}

/// `[kafka]`: broker, group and topic names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, comma separated.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Consumer group; the group's committed offsets are only for lag monitoring.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Topic of receipt events (key = user_id).
    #[serde(default = "default_receipts_topic")]
    pub receipts_topic: String,
    /// Compacted topic of projections (key = user_id), the latest state per user.
    #[serde(default = "default_projections_topic")]
    pub projections_topic: String,
    /// Topic of gamification events (level-ups).
    #[serde(default = "default_events_topic")]
    pub events_topic: String,
    /// Dead-letter topic: rejected receipts with their reason in headers.
    #[serde(default = "default_dlq_topic")]
    pub dlq_topic: String,
    /// Compacted topic of each partition's state (users, ledger within the dedup window,
    /// position), partitioned like the receipts topic: a partition that moves to another
    /// instance is restored from it. Default: `<group_id>-changelog`.
    #[serde(default)]
    pub changelog_topic: Option<String>,
    /// Compacted topic where each instance announces its query API's address and the
    /// partitions it holds, so that any instance can answer any query. Default:
    /// `<group_id>-members`.
    #[serde(default)]
    pub members_topic: Option<String>,
    /// How partitions are obtained: `group` (subscribe; the group spreads partitions over
    /// instances) or `manual` (this one instance takes every partition at start, with no
    /// group membership: a restart resumes at once, never waiting for a rebalance).
    #[serde(default)]
    pub assignment: Assignment,
    /// Static group membership (`group.instance.id`): a name unique to this instance and
    /// stable across its restarts (the pod or host name). A restarted instance then takes
    /// its partitions back at once instead of waiting for a rebalance; without it, a killed
    /// member's partitions wait for its session timeout (6 s). Group assignment only.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// librdkafka settings passed through to every client (security.protocol, sasl.*, ssl.*).
    /// They override mallquest's own client defaults.
    #[serde(default)]
    pub client: BTreeMap<String, String>,
}

/// `[kafka] assignment`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Assignment {
    /// Subscribe with the consumer group.
    #[default]
    Group,
    /// Assign every partition of the receipts topic to this instance.
    Manual,
}

/// `[store]`: the embedded key-value store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory of the store; created on first start.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// Committed user states kept in memory in front of the store (0 turns it off).
    #[serde(default = "default_hot_users")]
    pub hot_users: usize,
    /// The store's block cache, in MiB.
    #[serde(default = "default_cache_mb")]
    pub cache_mb: u64,
    /// The store's memtables, all keyspaces together, in MiB (at least 4).
    #[serde(default = "default_write_buffer_mb")]
    pub write_buffer_mb: u64,
    /// How often `run` gathers the ledger's segments that are at most half current into
    /// one, in minutes, so that the log on disk stays about the size of the dedup window
    /// (0: never).
    #[serde(default = "default_compact_every_minutes")]
    pub compact_every_minutes: u64,
    /// `run` stops folding (and resumes by itself) while the store's file system has less
    /// than this free, in MiB, so that a full disk never fails a write (0: no check).
    #[serde(default = "default_min_free_mb")]
    pub min_free_mb: u64,
}

const fn default_min_free_mb() -> u64 {
    256
}

const fn default_compact_every_minutes() -> u64 {
    60
}

const fn default_hot_users() -> usize {
    crate::pipeline::DEFAULT_HOT_USERS
}
const fn default_write_buffer_mb() -> u64 {
    crate::store::DEFAULT_WRITE_BUFFER >> 20
}
const fn default_cache_mb() -> u64 {
    256
}

/// `[processing]`: batching.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessingConfig {
    /// How often state and offsets are committed (one atomic batch, one durable persist), in milliseconds.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// When the source has nothing more in hand, a batch is committed once its first
    /// record has waited this long, in milliseconds, not only at `commit_interval_ms`:
    /// what bounds a projection's latency at a low rate (0: only at the interval).
    #[serde(default = "default_idle_commit_ms")]
    pub idle_commit_ms: u64,
    /// How far back, in days of event time, duplicates and refunds are checked; older
    /// receipts are rejected as `too_old` and older ledger entries are compacted away.
    #[serde(default = "default_dedup_window_days")]
    pub dedup_window_days: u32,
    /// How many of the latest days, weeks and months the period leaderboards keep.
    #[serde(default = "default_periods_kept")]
    pub periods_kept: usize,
    /// How many other instances keep a warm copy of each partition by tailing its
    /// changelog, so that a failover catches up only what the copy lacks (0: none).
    #[serde(default)]
    pub standby_replicas: u32,
    /// Most records in one batch, whatever the interval: a fold that runs behind (a
    /// rebuild, a backlog) commits batches this large, and memory grows with them.
    #[serde(default = "default_max_batch_records")]
    pub max_batch_records: u64,
}

fn default_brokers() -> String {
    "127.0.0.1:9092".into()
}
fn default_group_id() -> String {
    "mallquest".into()
}
fn default_receipts_topic() -> String {
    "receipts".into()
}
fn default_projections_topic() -> String {
    "user-projections".into()
}
fn default_events_topic() -> String {
    "gamification-events".into()
}
fn default_dlq_topic() -> String {
    "receipts-dlq".into()
}
fn default_store_path() -> PathBuf {
    PathBuf::from("data/mallquest")
}
const fn default_periods_kept() -> usize {
    crate::domain::game::DEFAULT_PERIODS_KEPT
}

const fn default_dedup_window_days() -> u32 {
    90
}
const fn default_commit_interval_ms() -> u64 {
    100
}
const fn default_idle_commit_ms() -> u64 {
    25
}
const fn default_max_batch_records() -> u64 {
    crate::pipeline::DEFAULT_MAX_BATCH_RECORDS
}

impl ProcessingConfig {
    /// When batches are committed: every `commit_interval_ms`, or every
    /// `max_batch_records`, or `idle_commit_ms` after a batch's first record when the
    /// source is idle.
    pub fn cadence(&self) -> crate::pipeline::Cadence {
        let idle = (self.idle_commit_ms > 0)
            .then(|| std::time::Duration::from_millis(self.idle_commit_ms));
        crate::pipeline::Cadence::new(
            std::time::Duration::from_millis(self.commit_interval_ms),
            self.max_batch_records,
        )
        .committing_when_idle(idle)
    }
}

impl KafkaConfig {
    /// The changelog topic: `changelog_topic`, or `<group_id>-changelog`.
    pub fn changelog_topic(&self) -> String {
        self.changelog_topic
            .clone()
            .unwrap_or_else(|| format!("{}-changelog", self.group_id))
    }

    /// The membership topic: `members_topic`, or `<group_id>-members`.
    pub fn members_topic(&self) -> String {
        self.members_topic
            .clone()
            .unwrap_or_else(|| format!("{}-members", self.group_id))
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: default_brokers(),
            group_id: default_group_id(),
            receipts_topic: default_receipts_topic(),
            projections_topic: default_projections_topic(),
            events_topic: default_events_topic(),
            dlq_topic: default_dlq_topic(),
            changelog_topic: None,
            members_topic: None,
            assignment: Assignment::default(),
            instance_id: None,
            client: BTreeMap::new(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: default_store_path(),
            hot_users: default_hot_users(),
            cache_mb: default_cache_mb(),
            write_buffer_mb: default_write_buffer_mb(),
            compact_every_minutes: default_compact_every_minutes(),
            min_free_mb: default_min_free_mb(),
        }
    }
}

impl Default for ProcessingConfig {
    fn default() -> Self {
        Self {
            commit_interval_ms: default_commit_interval_ms(),
            idle_commit_ms: default_idle_commit_ms(),
            dedup_window_days: default_dedup_window_days(),
            periods_kept: default_periods_kept(),
            max_batch_records: default_max_batch_records(),
            standby_replicas: 0,
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.message().to_owned(),
        })?;
        config.rules.game = crate::domain::Game {
            store_categories: std::mem::take(&mut config.store_categories),
            campaigns: std::mem::take(&mut config.campaigns),
            missions: std::mem::take(&mut config.missions),
            streaks: config.streaks,
            badges: std::mem::take(&mut config.badges),
            window_secs: Some(
                i64::from(config.processing.dedup_window_days) * crate::domain::game::SECS_PER_DAY,
            ),
            periods_kept: Some(config.processing.periods_kept),
            expiry: config.expiry.take(),
            tiers: config.tiers.take(),
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let k = &self.kafka;
        for (key, value) in [
            ("kafka.brokers", &k.brokers),
            ("kafka.group_id", &k.group_id),
            ("kafka.receipts_topic", &k.receipts_topic),
            ("kafka.projections_topic", &k.projections_topic),
            ("kafka.events_topic", &k.events_topic),
            ("kafka.dlq_topic", &k.dlq_topic),
            ("kafka.changelog_topic", &k.changelog_topic()),
            ("kafka.members_topic", &k.members_topic()),
        ] {
            if value.trim().is_empty() {
                return Err(ConfigError::Invalid {
                    key,
                    message: "must not be empty".into(),
                });
            }
        }
        if let Some(id) = &k.instance_id {
            if id.trim().is_empty() || id.len() > 249 {
                return Err(ConfigError::Invalid {
                    key: "kafka.instance_id",
                    message: "must be 1 to 249 characters when set".into(),
                });
            }
            if k.assignment == Assignment::Manual {
                return Err(ConfigError::Invalid {
                    key: "kafka.instance_id",
                    message: "is group membership: it has no meaning with assignment = \"manual\""
                        .into(),
                });
            }
        }
        if self.processing.commit_interval_ms == 0 || self.processing.commit_interval_ms > 60_000 {
            return Err(ConfigError::Invalid {
                key: "processing.commit_interval_ms",
                message: format!(
                    "must be between 1 and 60000, got {}",
                    self.processing.commit_interval_ms
                ),
            });
        }
        if self.processing.idle_commit_ms > self.processing.commit_interval_ms {
            return Err(ConfigError::Invalid {
                key: "processing.idle_commit_ms",
                message: format!(
                    "must be between 0 and commit_interval_ms ({}), got {}",
                    self.processing.commit_interval_ms, self.processing.idle_commit_ms
                ),
            });
        }
        if self.processing.standby_replicas > 8 {
            return Err(ConfigError::Invalid {
                key: "processing.standby_replicas",
                message: format!(
                    "must be between 0 and 8, got {}",
                    self.processing.standby_replicas
                ),
            });
        }
        if self.processing.standby_replicas > 0 && k.assignment == Assignment::Manual {
            return Err(ConfigError::Invalid {
                key: "processing.standby_replicas",
                message: "needs group assignment: with assignment = \"manual\" no partition moves"
                    .into(),
            });
        }
        if !(1..=36_500).contains(&self.processing.dedup_window_days) {
            return Err(ConfigError::Invalid {
                key: "processing.dedup_window_days",
                message: format!(
                    "must be between 1 and 36500, got {}",
                    self.processing.dedup_window_days
                ),
            });
        }
        if !(1_000..=1_000_000).contains(&self.processing.max_batch_records) {
            return Err(ConfigError::Invalid {
                key: "processing.max_batch_records",
                message: format!(
                    "must be between 1000 and 1000000, got {}",
                    self.processing.max_batch_records
                ),
            });
        }
        if self.processing.periods_kept > 100 {
            return Err(ConfigError::Invalid {
                key: "processing.periods_kept",
                message: format!(
                    "must be between 0 (no period boards) and 100, got {}",
                    self.processing.periods_kept
                ),
            });
        }
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::Invalid {
                key: "http.listen",
                message: format!("must be IP:PORT, got {:?}", self.http.listen),
            });
        }
        if self.http.token.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::Invalid {
                key: "http.token",
                message: "must not be empty (leave it out to turn auth off)".into(),
            });
        }
        if !(1..=600_000).contains(&self.http.request_timeout_ms) {
            return Err(ConfigError::Invalid {
                key: "http.request_timeout_ms",
                message: format!(
                    "must be between 1 and 600000, got {}",
                    self.http.request_timeout_ms
                ),
            });
        }
        self.rules
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid { key, message })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn game_sections_reach_the_rules_and_bad_ones_are_named() {
        let c = Config::parse(
            "[rules]\ntimezone = \"Europe/Berlin\"\n[store_categories]\n\"s-1\" = \"food\"\n\
             [[campaigns]]\nid = \"c\"\nstart = \"2026-01-01T00:00:00Z\"\nend = \"2026-02-01T00:00:00Z\"\nbonus_coins = 5\n",
        )
        .unwrap();
        assert_eq!(c.rules.game.campaigns.len(), 1);
        assert_eq!(c.rules.game.category("s-1"), Some("food"));
        assert_eq!(c.rules.game.window_secs, Some(90 * 86_400));
        let err = Config::parse("[rules]\ntimezone = \"Mars/Olympus\"\n").unwrap_err();
        assert!(err.to_string().contains("rules.timezone"), "{err}");
        let err = Config::parse("[[campaigns]]\nid = \"c\"\nstart = \"2026-01-01T00:00:00Z\"\nend = \"2026-02-01T00:00:00Z\"\nbonus = 5\n").unwrap_err();
        assert!(err.to_string().contains("bonus"), "{err}");
        let err = Config::parse(
            "[[rules.history]]\nuntil = \"2026-06-01T00:00:00Z\"\n[[rules.history]]\nuntil = \"2026-05-01T00:00:00Z\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("rules.history"), "{err}");
    }

    #[test]
    fn expiry_and_tiers_reach_the_rules_with_their_defaults_and_bad_ones_are_named() {
        use crate::domain::timers::{Basis, Downgrade};
        let c = Config::parse("").unwrap();
        assert!(c.rules.game.expiry.is_none() && c.rules.game.tiers.is_none());
        let c = Config::parse(
            "[expiry]\n[tiers]\n[[tiers.levels]]\nid = \"silver\"\nmin = \"1000.00\"\n\
             [[tiers.levels]]\nid = \"gold\"\nmin = \"5000.00\"\nbonus_percent = 25\n",
        )
        .unwrap();
        assert_eq!(c.rules.game.expiry.map(|x| x.months), Some(12));
        let t = c.rules.game.tiers.as_ref().unwrap();
        assert_eq!(
            (t.basis, t.window_months, t.downgrade),
            (Basis::Spend, 12, Downgrade::OneDown)
        );
        assert_eq!(
            t.levels
                .iter()
                .map(|l| (l.id.as_str(), l.min, l.bonus_percent))
                .collect::<Vec<_>>(),
            [("silver", 100_000, 0), ("gold", 500_000, 25)]
        );
        let c = Config::parse(
            "[tiers]\nbasis = \"xp\"\nwindow_months = 3\ndowngrade = \"to_qualified\"\n\
             [[tiers.levels]]\nid = \"a\"\nmin = 500\n",
        )
        .unwrap();
        let t = c.rules.game.tiers.as_ref().unwrap();
        assert_eq!(
            (t.basis, t.window_months, t.downgrade, t.levels[0].min),
            (Basis::Xp, 3, Downgrade::ToQualified, 500)
        );
        let level = |id: &str, min: &str| format!("[[tiers.levels]]\nid = \"{id}\"\nmin = {min}\n");
        for (text, named) in [
            ("[expiry]\nmonths = 0\n".to_owned(), "expiry.months"),
            ("[expiry]\nmonths = 121\n".to_owned(), "expiry.months"),
            ("[expiry]\nmonth = 3\n".to_owned(), "month"),
            ("[tiers]\n".to_owned(), "tiers.levels"),
            (
                format!("[tiers]\n{}", level("a", "100")),
                "tiers.levels.min",
            ),
            (
                format!("[tiers]\nbasis = \"xp\"\n{}", level("a", "\"1.00\"")),
                "tiers.levels.min",
            ),
            (
                format!(
                    "[tiers]\n{}{}",
                    level("a", "\"5.00\""),
                    level("a", "\"6.00\"")
                ),
                "tiers.levels.id",
            ),
            (
                format!(
                    "[tiers]\n{}{}",
                    level("a", "\"5.00\""),
                    level("b", "\"5.00\"")
                ),
                "tiers.levels.min",
            ),
            (
                format!("[tiers]\nwindow_months = 0\n{}", level("a", "\"5.00\"")),
                "tiers.window_months",
            ),
            (
                format!(
                    "[tiers]\ndowngrade = \"two_down\"\n{}",
                    level("a", "\"5.00\"")
                ),
                "two_down",
            ),
            (
                format!("[tiers]\n{}bonus = 3\n", level("a", "\"5.00\"")),
                "bonus",
            ),
            (
                format!("[tiers]\n{}bonus_percent = -1\n", level("a", "\"5.00\"")),
                "tiers.levels.bonus_percent",
            ),
        ] {
            let err = Config::parse(&text).unwrap_err().to_string();
            assert!(err.contains(named), "{text:?}: {err}");
        }
    }

    use super::*;

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(c.kafka.projections_topic, "user-projections");
        assert_eq!(c.store.path, PathBuf::from("data/mallquest"));
        assert_eq!(c.processing.commit_interval_ms, 100);
        assert_eq!(c.rules.currency, "AED");
        assert_eq!(c.rules.level_up_bonus_coins, 50);
    }

    #[test]
    fn periods_kept_is_0_to_100_and_reaches_the_rules() {
        let c = Config::parse("[processing]\nperiods_kept = 0\n").unwrap();
        assert_eq!(c.rules.game.periods_kept(), 0);
        let c = Config::parse("[processing]\nperiods_kept = 100\n").unwrap();
        assert_eq!(c.rules.game.periods_kept(), 100);
        let err = Config::parse("[processing]\nperiods_kept = 101\n").unwrap_err();
        assert!(err.to_string().contains("processing.periods_kept"), "{err}");
    }

    #[test]
    fn max_batch_records_defaults_to_50000_and_is_1000_to_1000000() {
        assert_eq!(
            Config::parse("").unwrap().processing.max_batch_records,
            50_000
        );
        let c = Config::parse("[processing]\nmax_batch_records = 20000\n").unwrap();
        assert_eq!(c.processing.max_batch_records, 20_000);
        for bad in [0, 999, 1_000_001] {
            let err =
                Config::parse(&format!("[processing]\nmax_batch_records = {bad}\n")).unwrap_err();
            assert!(
                err.to_string().contains("processing.max_batch_records"),
                "{err}"
            );
        }
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let err = Config::parse("[kafka]\nbrokerz = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("brokerz"), "{err}");
        let err = Config::parse("[nope]\n").unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn example_config_in_repo_parses() {
        let text = include_str!("../config/mallquest.toml");
        let c = Config::parse(text).unwrap();
        assert_eq!(c.rules.multiplier_pct("s-electronics-01"), 200);
        assert_eq!(c.rules.multiplier_pct("anything-else"), 100);
    }

    #[test]
    fn dedup_window_defaults_to_90_days_and_zero_is_rejected() {
        assert_eq!(Config::parse("").unwrap().processing.dedup_window_days, 90);
        let err = Config::parse("[processing]\ndedup_window_days = 0\n").unwrap_err();
        assert!(err.to_string().contains("dedup_window_days"));
    }

    #[test]
    fn assignment_is_group_by_default_and_manual_on_request() {
        assert_eq!(
            Config::parse("").unwrap().kafka.assignment,
            Assignment::Group
        );
        assert_eq!(Config::parse("").unwrap().kafka.instance_id, None);
        let c = Config::parse("[kafka]\ninstance_id = \"mall-a-1\"\n").unwrap();
        assert_eq!(c.kafka.instance_id.as_deref(), Some("mall-a-1"));
        assert!(Config::parse("[kafka]\ninstance_id = \" \"\n").is_err());
        assert!(Config::parse("[kafka]\nassignment = \"manual\"\ninstance_id = \"a\"\n").is_err());
        let c = Config::parse("[kafka]\nassignment = \"manual\"\n").unwrap();
        assert_eq!(c.kafka.assignment, Assignment::Manual);
        assert!(Config::parse("[kafka]\nassignment = \"static\"\n").is_err());
    }

    #[test]
    fn standby_replicas_default_to_none_and_need_group_assignment() {
        assert_eq!(Config::parse("").unwrap().processing.standby_replicas, 0);
        let c = Config::parse("[processing]\nstandby_replicas = 1\n").unwrap();
        assert_eq!(c.processing.standby_replicas, 1);
        let err = Config::parse("[processing]\nstandby_replicas = 9\n").unwrap_err();
        assert!(err.to_string().contains("standby_replicas"), "{err}");
        let err =
            Config::parse("[kafka]\nassignment = \"manual\"\n[processing]\nstandby_replicas = 1\n")
                .unwrap_err();
        assert!(err.to_string().contains("standby_replicas"), "{err}");
    }

    #[test]
    fn zero_commit_interval_is_rejected() {
        let err = Config::parse("[processing]\ncommit_interval_ms = 0\n").unwrap_err();
        assert!(err.to_string().contains("commit_interval_ms"));
    }

    #[test]
    fn client_settings_pass_through() {
        let c = Config::parse("[kafka.client]\n\"security.protocol\" = \"SASL_SSL\"\n").unwrap();
        assert_eq!(c.kafka.client["security.protocol"], "SASL_SSL");
    }
}
