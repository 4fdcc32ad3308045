//! What goes wrong talking to Kafka, typed. Whether trying again can help is a property
//! of the error ([`Error::retryable`]), never found by digging in a chain of causes.

use rdkafka::types::RDKafkaErrorCode;

use crate::changelog::ChangelogError;
use crate::store::StoreError;

/// An error of the Kafka adapters.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A librdkafka call failed (`what` says which): a broker, the network or a timeout.
    #[error("{what}: {source}")]
    Client {
        /// What was being done.
        what: String,
        /// What librdkafka said.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A broker answered an error code for one request (`what` says which).
    #[error("{what}: {code}")]
    Broker {
        /// What was asked.
        what: String,
        /// The broker's answer.
        code: RDKafkaErrorCode,
    },
    /// The store failed: no retry helps.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A changelog record cannot be read: no retry helps.
    #[error("{what}: {source}")]
    Changelog {
        /// Where it was read.
        what: String,
        /// Why it cannot be read.
        #[source]
        source: ChangelogError,
    },
    /// Outputs were not delivered, or a transaction's step did not return: the batch is
    /// folded again.
    #[error("{0}")]
    Delivery(String),
    /// The operator must act (a changelog too small, an empty store the group has
    /// offsets for): no retry helps.
    #[error("{0}")]
    Refused(String),
    /// A helper thread or runtime failed (`what` says which).
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// Whether trying again may help: a client, broker or internal failure may pass; a
    /// store error, an unreadable changelog record or a refusal will not.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Error::Client { .. } | Error::Broker { .. } | Error::Delivery(_) | Error::Internal(_)
        )
    }
}

/// `.kafka(what)`: a librdkafka result with what was being done.
pub(crate) trait Context<T> {
    /// The error as [`Error::Client`], with `what`.
    fn kafka(self, what: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T> Context<T> for Result<T, rdkafka::error::KafkaError> {
    fn kafka(self, what: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|source| Error::Client {
            what: what(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_changelog_and_refusal_errors_are_final_the_rest_retryable() {
        let client = Error::Client {
            what: "x".into(),
            source: rdkafka::error::KafkaError::MetadataFetch(
                RDKafkaErrorCode::BrokerTransportFailure,
            ),
        };
        assert!(client.retryable());
        assert!(Error::Internal("a panic".into()).retryable());
        assert!(!Error::Refused("act".into()).retryable());
        assert!(!Error::Store(StoreError::Poisoned).retryable());
        let changelog = Error::Changelog {
            what: "p0".into(),
            source: ChangelogError::Key("z".into()),
        };
        assert!(!changelog.retryable());
    }
}
