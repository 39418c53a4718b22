//! How the codes of cutover's peers become an [`ErrorKind`]: SQLSTATE classes for PostgreSQL,
//! librdkafka error codes for Kafka. Pure tables, unit-tested here; `retry::policy` turns the
//! kind into a decision.

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use super::ErrorKind;

/// Map a five-character SQLSTATE to an [`ErrorKind`].
pub fn sqlstate(code: &str) -> ErrorKind {
    match code {
        // serialization_failure, deadlock_detected, lock_not_available
        "40001" | "40P01" | "55P03" => ErrorKind::Unavailable,
        // admin_shutdown, crash_shutdown, cannot_connect_now
        "57P01" | "57P02" | "57P03" => ErrorKind::Connection,
        // query_canceled (statement_timeout)
        "57014" => ErrorKind::Timeout,
        // too_many_connections, out of memory/disk
        "53300" | "53100" | "53200" => ErrorKind::Unavailable,
        // invalid_authorization_specification, invalid_password, insufficient_privilege
        "28000" | "28P01" | "42501" => ErrorKind::Auth,
        // undefined_table, undefined_column, undefined_object, undefined_function
        "42P01" | "42703" | "42704" | "42883" => ErrorKind::NotFound,
        // object_in_use (slot active elsewhere) — someone else holds it, may free up
        "55006" => ErrorKind::Unavailable,
        _ => match &code[..2.min(code.len())] {
            "08" => ErrorKind::Connection,
            "22" | "23" => ErrorKind::Data,
            "42" => ErrorKind::Schema,
            "3D" => ErrorKind::NotFound,
            "55" => ErrorKind::Environment,
            _ => ErrorKind::Internal,
        },
    }
}

/// The kind of a server error while a connection is being set up. The only inputs then are
/// the connection's own parameters (user, database, the URL's `options`), so an invalid value
/// (class 22, e.g. 22023 for a `-c` setting's value) or an unknown setting (class 42, e.g.
/// 42704 for an unrecognized `-c` name) is the configuration's fault, not the data's or the
/// schema's. 42501 (insufficient privilege) stays an authorization failure.
pub fn connect_sqlstate(code: &str) -> ErrorKind {
    match &code[..2.min(code.len())] {
        "22" => ErrorKind::Config,
        "42" if code != "42501" => ErrorKind::Config,
        _ => sqlstate(code),
    }
}

/// The kind of a replication connection failure: the server's SQLSTATE when it sent one
/// (28xxx authentication is fatal), failed authentication or a refused certificate as
/// [`ErrorKind::Auth`] (retrying cannot fix either), anything else a connection error.
pub fn replication(e: &pgwire_replication::PgWireError) -> ErrorKind {
    use pgwire_replication::PgWireError as P;
    match e {
        P::Auth(_) => ErrorKind::Auth,
        P::Tls(m) if certificate_failure(m) => ErrorKind::Auth,
        P::Server(m) => match m.rsplit_once("(SQLSTATE ") {
            Some((_, code)) => sqlstate(code.trim_end_matches(')')),
            None => ErrorKind::Connection,
        },
        _ => ErrorKind::Connection,
    }
}

/// A TLS failure that retrying cannot fix: the server's certificate is not trusted or not
/// for this host (OpenSSL's and rustls's wording), or the client certificate was refused.
pub fn certificate_failure(message: &str) -> bool {
    const SIGNS: [&str; 9] = [
        "certificate verify failed",
        "invalid peer certificate",
        "UnknownIssuer",
        "NotValidForName",
        "certificate is not valid",
        "hostname mismatch",
        "unknown ca",
        "certificate required",
        // The peer refused our certificate (a Kafka broker requiring mutual TLS).
        "alert bad certificate",
    ];
    SIGNS.iter().any(|s| message.contains(s))
}

/// The kind of a Kafka client error (what `retry::policy` decides on).
pub fn kafka(err: &KafkaError) -> ErrorKind {
    match err.rdkafka_error_code() {
        Some(code) => kafka_code(code),
        None => match err {
            // rust-rdkafka does not expose the code of admin errors through
            // rdkafka_error_code(); it is in the variant.
            KafkaError::AdminOp(code) => kafka_code(*code),
            KafkaError::ClientCreation(_) | KafkaError::ClientConfig(..) => ErrorKind::Config,
            KafkaError::Canceled => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        },
    }
}

pub fn kafka_code(code: RDKafkaErrorCode) -> ErrorKind {
    use RDKafkaErrorCode as C;
    match code {
        C::BrokerTransportFailure
        | C::AllBrokersDown
        | C::Resolve
        | C::NetworkException
        | C::BrokerNotAvailable => ErrorKind::Connection,
        C::MessageTimedOut | C::OperationTimedOut | C::RequestTimedOut | C::TimedOutQueue => {
            ErrorKind::Timeout
        }
        C::QueueFull
        | C::LeaderNotAvailable
        | C::NotLeaderForPartition
        | C::ReplicaNotAvailable
        | C::NotEnoughReplicas
        | C::NotEnoughReplicasAfterAppend
        | C::CoordinatorLoadInProgress
        | C::CoordinatorNotAvailable
        | C::NotCoordinator
        | C::RebalanceInProgress
        | C::WaitingForCoordinator
        | C::KafkaStorageError
        | C::ThrottlingQuotaExceeded
        | C::FencedLeaderEpoch
        | C::UnknownLeaderEpoch
        | C::OffsetNotAvailable
        | C::PreferredLeaderNotAvailable
        | C::Retry
        | C::InProgress
        | C::UnknownTopicOrPartition => ErrorKind::Unavailable,
        // KIP-848 static membership: the instance id is still held by a member that died
        // without leaving (SIGKILL); the broker releases it when that member's session expires
        // (group.consumer.session.timeout.ms). librdkafka makes it a fatal consumer error, so
        // the sink is rebuilt with a new consumer after a backoff and joins once it is free.
        C::UnreleasedInstanceId => ErrorKind::Unavailable,
        // Another *live* member uses this instance id: two instances share an --instance-id.
        C::FencedInstanceId => ErrorKind::Config,
        C::Authentication
        | C::SaslAuthenticationFailed
        | C::TopicAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::UnsupportedSASLMechanism
        | C::IllegalSASLState
        | C::SSL => ErrorKind::Auth,
        C::MessageSizeTooLarge
        | C::InvalidMessage
        | C::InvalidMessageSize
        | C::BadMessage
        | C::InvalidRecord
        | C::KeySerialization
        | C::ValueSerialization
        | C::KeyDeserialization
        | C::ValueDeserialization => ErrorKind::Data,
        C::TopicAlreadyExists => ErrorKind::Conflict,
        C::UnknownTopic | C::UnknownPartition | C::UnknownGroup | C::GroupIdNotFound => {
            ErrorKind::NotFound
        }
        C::InvalidConfig
        | C::InvalidReplicationFactor
        | C::InvalidPartitions
        | C::InvalidTopic
        | C::InvalidArgument
        | C::NotConfigured => ErrorKind::Config,
        _ => ErrorKind::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_connection_parameter_is_a_config_error() {
        // invalid_parameter_value (`-c lock_timeout=abc`), undefined_object (`-c no_such=1`)
        assert_eq!(connect_sqlstate("22023"), ErrorKind::Config);
        assert_eq!(connect_sqlstate("42704"), ErrorKind::Config);
        assert_eq!(connect_sqlstate("42501"), ErrorKind::Auth);
        assert_eq!(connect_sqlstate("28P01"), ErrorKind::Auth);
        assert_eq!(connect_sqlstate("57P03"), ErrorKind::Connection);
        assert_eq!(connect_sqlstate("3D000"), ErrorKind::NotFound);
    }

    #[test]
    fn sqlstate_classes_map_to_kinds() {
        assert_eq!(sqlstate("40001"), ErrorKind::Unavailable);
        assert_eq!(sqlstate("40P01"), ErrorKind::Unavailable);
        assert_eq!(sqlstate("08006"), ErrorKind::Connection);
        assert_eq!(sqlstate("23505"), ErrorKind::Data);
        assert_eq!(sqlstate("22P02"), ErrorKind::Data);
        assert_eq!(sqlstate("42501"), ErrorKind::Auth);
        assert_eq!(sqlstate("42P01"), ErrorKind::NotFound);
        assert_eq!(sqlstate("3D000"), ErrorKind::NotFound);
        assert_eq!(sqlstate("XX000"), ErrorKind::Internal);
    }
}
