//! The registry API's media type, shared by the server, its access guard and the client.

/// `Content-Type` and `Accept` of every Schema Registry request and answer.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";
