//! Configuration input: the kinds rudder reads, how text becomes typed objects, validation, the store and the
//! sources that feed it.

pub mod istio;
pub mod kind;
pub mod legacy;
pub mod mesh;
pub mod parse;
pub mod source;
pub mod store;
pub mod validate;

use std::fmt;

use serde::Serialize;

pub use kind::{HasMeta, IstioObject, Kind, Object, ObjectKey};

/// How serious a reported problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The object is accepted; the problem is worth knowing (unknown field, deprecated form).
    Warning,
    /// The object is refused and never reaches a proxy.
    Error,
}

/// One problem with one object, printed as `Kind namespace/name: spec.field.path: what is wrong`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    /// `Kind namespace/name`, or `file: document N` when the document has no usable identity.
    pub subject: String,
    /// The object this concerns, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<ObjectKey>,
    /// Dotted field path (`spec.http[0].route`); empty for whole-document problems.
    pub path: String,
    pub message: String,
    pub severity: Severity,
}

impl ConfigError {
    /// An error about something that is not (yet) an identified object.
    pub fn new(
        subject: impl Into<String>,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            subject: subject.into(),
            key: None,
            path: path.into(),
            message: message.into(),
            severity: Severity::Error,
        }
    }

    /// An error about an identified object.
    pub fn for_key(key: &ObjectKey, path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: Some(key.clone()),
            ..ConfigError::new(key.to_string(), path, message)
        }
    }

    /// The same problem at another severity.
    pub fn severity(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.subject, self.message)
        } else {
            write!(f, "{}: {}: {}", self.subject, self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}
