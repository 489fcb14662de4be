//! Why a receiver could not be built: the error every receiver's
//! constructor returns. A leaf module, so that the receivers and the
//! registry that builds them both depend on it and not on each other.

/// Why a receiver could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    /// Its settings are invalid (what the receiver's `check` reports).
    #[error("receiver {name}: {}", problems.join("; "))]
    Invalid {
        /// The receiver's name.
        name: String,
        /// Every problem, each naming its field.
        problems: Vec<String>,
    },
    /// A secret could not be read.
    #[error("receiver {name}: {field}: {message}")]
    Secret {
        /// The receiver's name.
        name: String,
        /// The setting, e.g. `routing_key`.
        field: String,
        /// Why, e.g. `environment variable PD_KEY is not set`.
        message: String,
    },
    /// The HTTP client or SMTP transport could not be built.
    #[error("receiver {name}: cannot build the client: {message}")]
    Client {
        /// The receiver's name.
        name: String,
        /// Why.
        message: String,
    },
}
