//! Errors of policy parsing: every message names the object and, when it comes from the
//! YAML, the field path and line.

/// Why a policy stream was rejected.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A document is not well-formed YAML.
    #[error("document {document}: {source}")]
    Syntax {
        /// 1-based document number in the stream.
        document: usize,
        /// The YAML error (with line and column).
        #[source]
        source: serde_yaml::Error,
    },
    /// A policy object is invalid; the YAML error carries the field path and line.
    #[error("{object}: {source}")]
    Invalid {
        /// "<kind> <namespace>/<name>" or "<kind> <name>".
        object: String,
        /// The error, e.g. "spec.ingress[0]: unknown field `form` ... at line 9 column 7".
        #[source]
        source: serde_yaml::Error,
    },
    /// A document is not a Kubernetes object (no apiVersion or kind).
    #[error("document {document}: {message}")]
    Document {
        /// 1-based document number in the stream.
        document: usize,
        /// What is wrong.
        message: String,
    },
}

impl PolicyError {
    /// 1-based (line, column) of the error in the input, when known.
    pub fn location(&self) -> Option<(usize, usize)> {
        match self {
            PolicyError::Syntax { source, .. } | PolicyError::Invalid { source, .. } => {
                source.location().map(|l| (l.line(), l.column()))
            }
            PolicyError::Document { .. } => None,
        }
    }
}
