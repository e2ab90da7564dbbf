//! The one error type of being a device. A hub's refusal keeps the hub's [`ErrorCode`], so
//! every front end branches on the code (a `conflict` is fenced or offered as "take it"), never
//! on text.

use jarvis_wire::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The hub answered with an error body.
    #[error("{message} ({}, HTTP {status})", code.map_or("error", ErrorCode::as_str))]
    Hub {
        status: u16,
        /// The hub's code; None for a code this build does not know (a newer hub) or an
        /// answer without one.
        code: Option<ErrorCode>,
        message: String,
    },
    /// No answer: connection refused, timed out, or cut.
    #[error("the hub at {hub} is not reachable: {reason}")]
    Unreachable { hub: String, reason: String },
    /// The hub answered, but not with what the contract says.
    #[error("unexpected answer from the hub to {what}: {detail}")]
    Protocol { what: String, detail: String },
    /// Something this device was asked to do is malformed (a permission mode, a rule).
    #[error("{0}")]
    Invalid(String),
    /// The device's own documents, store or folder mirror failed.
    #[error("{what}: {source}")]
    Local {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl DeviceError {
    /// A refusal as the hub would say it (the cloud's own lease authority uses this too).
    pub fn hub(code: ErrorCode, message: impl Into<String>) -> DeviceError {
        DeviceError::Hub {
            status: code.status(),
            code: Some(code),
            message: message.into(),
        }
    }

    /// The hub's code, if it said one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            DeviceError::Hub { code, .. } => *code,
            _ => None,
        }
    }

    /// The hub's own words, without the code and status (for a window that shows the code
    /// separately).
    pub fn message(&self) -> String {
        match self {
            DeviceError::Hub { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }

    /// The state moved on: a lease held elsewhere or at a newer epoch.
    pub fn is_conflict(&self) -> bool {
        self.code() == Some(ErrorCode::Conflict)
    }

    /// The hub did not answer (the caller may keep working offline).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, DeviceError::Unreachable { .. })
    }

    /// Wraps a local failure with what the device was doing.
    pub fn local(
        what: impl Into<String>,
    ) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> DeviceError {
        let what = what.into();
        move |source| DeviceError::Local { what, source }
    }
}

/// `.local("what")` on any error-returning result of the sync crate or the file system.
pub trait LocalContext<T> {
    fn local(self, what: impl FnOnce() -> String) -> Result<T, DeviceError>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> LocalContext<T> for Result<T, E> {
    fn local(self, what: impl FnOnce() -> String) -> Result<T, DeviceError> {
        self.map_err(|e| DeviceError::Local {
            what: what(),
            source: Box::new(e),
        })
    }
}

pub type DeviceResult<T> = Result<T, DeviceError>;
