//! Secrets (the hub token, a provider key) in the OS keychain through `keyring`: Secret Service
//! on Linux, Keychain on macOS, Credential Manager on Windows.
//!
//! Never: a plaintext fallback. When no keychain answers, every call fails with
//! [`SecretError::Unavailable`] and a message that says what to do; the app keeps working for
//! local sessions with provider keys from the environment, and says why it cannot sign in.

use serde::Serialize;

/// The keychain service name every entry is stored under.
pub const SERVICE: &str = "app.myjarvis.desktop";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "no OS keychain is available ({0}). My Jarvis keeps tokens and keys only in the keychain, \
         never in plain files: on Linux start a Secret Service provider (GNOME Keyring or \
         KWallet) and unlock it, then try again"
    )]
    Unavailable(String),
    #[error("the keychain refused the request: {0}")]
    Refused(String),
}

impl SecretError {
    pub fn code(&self) -> &'static str {
        match self {
            SecretError::Unavailable(_) => "keychain_unavailable",
            SecretError::Refused(_) => "keychain_refused",
        }
    }
}

fn classify(e: keyring::Error) -> SecretError {
    match e {
        keyring::Error::NoStorageAccess(inner) => SecretError::Unavailable(inner.to_string()),
        keyring::Error::PlatformFailure(inner) => SecretError::Unavailable(inner.to_string()),
        other => SecretError::Refused(other.to_string()),
    }
}

/// Which secrets exist (never their values), for the status shown in the UI.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KeychainStatus {
    pub available: bool,
    pub message: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Secrets {
    service: String,
}

impl Secrets {
    pub fn new(service: &str) -> Self {
        Secrets {
            service: service.to_owned(),
        }
    }

    fn entry(&self, name: &str) -> Result<keyring::Entry, SecretError> {
        keyring::Entry::new(&self.service, name).map_err(classify)
    }

    pub fn set(&self, name: &str, value: &str) -> Result<(), SecretError> {
        self.entry(name)?.set_password(value).map_err(classify)
    }

    /// `Ok(None)` when the keychain works and holds no such secret.
    pub fn get(&self, name: &str) -> Result<Option<String>, SecretError> {
        match self.entry(name)?.get_password() {
            Ok(v) => Ok(Some(v)),
            Err(keyring::Error::NoEntry) => Ok(None),
            Err(e) => Err(classify(e)),
        }
    }

    pub fn delete(&self, name: &str) -> Result<(), SecretError> {
        match self.entry(name)?.delete_credential() {
            Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
            Err(e) => Err(classify(e)),
        }
    }

    /// Probes the keychain with a read (which needs no unlock prompt for a missing entry).
    pub fn status(&self) -> KeychainStatus {
        match self.get("probe") {
            Ok(_) => KeychainStatus {
                available: true,
                message: None,
            },
            Err(e) => KeychainStatus {
                available: false,
                message: Some(e.to_string()),
            },
        }
    }
}
