//! What goes wrong in the desktop core, as the window gets it: `{code, message}` (plus the
//! hub's HTTP status for a hub's refusal). A hub's code is kept as the hub said it, so a lease
//! held elsewhere is `conflict` and the window offers its own way to take the session.

use jarvis_device::DeviceError;
use serde::Serialize;
use serde_json::json;

use crate::secrets::SecretError;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("sign in to a cloud agent first")]
    NotSignedIn,
    #[error("the cloud agent is not reachable right now; local sessions keep working")]
    Offline,
    #[error(transparent)]
    Keychain(#[from] SecretError),
    #[error("{0}")]
    Invalid(String),
    #[error("open the folder of workspace {0:?} first")]
    NoFolder(String),
    #[error("{message}")]
    Hub {
        status: u16,
        code: String,
        message: String,
    },
    #[error("{0:#}")]
    Internal(anyhow::Error),
}

impl CoreError {
    pub fn code(&self) -> &str {
        match self {
            CoreError::NotSignedIn => "not_signed_in",
            CoreError::Offline => "offline",
            CoreError::Keychain(e) => e.code(),
            CoreError::Invalid(_) => "invalid",
            CoreError::NoFolder(_) => "no_folder",
            CoreError::Hub { code, .. } => code,
            CoreError::Internal(_) => "internal",
        }
    }
}

impl From<DeviceError> for CoreError {
    /// The hub's refusal keeps its code (a lease held elsewhere is `conflict`) and its own
    /// words; the window says what to do about it (a button, never a shell command).
    fn from(e: DeviceError) -> Self {
        match e {
            DeviceError::Hub {
                status,
                code,
                message,
            } => CoreError::Hub {
                status,
                code: code.map_or("error", |c| c.as_str()).to_owned(),
                message,
            },
            DeviceError::Unreachable { .. } => CoreError::Offline,
            DeviceError::Invalid(m) => CoreError::Invalid(m),
            other => CoreError::Internal(other.into()),
        }
    }
}

/// What the window gets for an error: `{code, message}`.
impl Serialize for CoreError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut v = json!({"code": self.code(), "message": self.to_string()});
        // The hub's HTTP status too, so the window can tell a 401 from a 404.
        if let CoreError::Hub { status, .. } = self {
            v["status"] = json!(status);
        }
        v.serialize(s)
    }
}

pub type CoreResult<T> = Result<T, CoreError>;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn errors_reach_the_window_as_code_and_message() {
        let v = serde_json::to_value(CoreError::NoFolder("notes".into())).unwrap();
        assert_eq!(v["code"], "no_folder");
        assert_eq!(v["message"], "open the folder of workspace \"notes\" first");
        let v = serde_json::to_value(CoreError::Keychain(SecretError::Unavailable(
            "no D-Bus".into(),
        )))
        .unwrap();
        assert_eq!(v["code"], "keychain_unavailable");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("never in plain files")
        );
    }
}
