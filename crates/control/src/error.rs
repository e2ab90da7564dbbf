//! The control plane's one error type. The HTTP layer turns it into `{code, message}` with
//! [`ControlError::error_code`]; nothing here knows about HTTP.

use jarvis_wire::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Pending(String),
    /// The SQLite store failed. (A second store would add its own variant; the HTTP layer
    /// treats every storage failure alike.)
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
}

impl ControlError {
    /// What a program acts on, from the one error-code enum of the HTTP contract.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            ControlError::Unauthorized(_) => ErrorCode::Unauthorized,
            ControlError::Forbidden(_) => ErrorCode::Forbidden,
            ControlError::NotFound(_) => ErrorCode::NotFound,
            ControlError::Conflict(_) => ErrorCode::Conflict,
            ControlError::Invalid(_) => ErrorCode::InvalidRequest,
            ControlError::Pending(_) => ErrorCode::AuthorizationPending,
            ControlError::Db(_) => ErrorCode::Storage,
        }
    }

    /// The code as it travels (`error_code().as_str()`).
    pub fn code(&self) -> &'static str {
        self.error_code().as_str()
    }
}

pub type Result<T, E = ControlError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_a_wire_code_with_its_status() {
        for (e, status) in [
            (ControlError::Unauthorized(String::new()), 401),
            (ControlError::Forbidden(String::new()), 403),
            (ControlError::NotFound(String::new()), 404),
            (ControlError::Conflict(String::new()), 409),
            (ControlError::Invalid(String::new()), 400),
            (ControlError::Pending(String::new()), 428),
            (ControlError::Db(rusqlite::Error::QueryReturnedNoRows), 500),
        ] {
            assert_eq!(e.error_code().status(), status, "{e:?}");
            assert_eq!(e.code(), e.error_code().as_str());
        }
    }
}
