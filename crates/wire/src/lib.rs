//! The hub's HTTP contract, shared by the server (`jarvis-cloud`) and every device
//! (`jarvis-device`): one place says what travels and what each error code means.
//!
//! Every error response is `{code, message}` with [`ErrorCode`] as its code. Codes are part of
//! the contract: clients branch on them (a `conflict` lease is fenced, `rate_limited` waits,
//! `authorization_pending` keeps polling), so a code is never renamed, only added.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod api;
pub mod device;

/// What went wrong, for a program to act on. The message beside it is for a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No token, or one that is unknown, revoked or expired (HTTP 401).
    Unauthorized,
    /// The token is valid but may not do this (HTTP 403).
    Forbidden,
    /// No such thing, or the caller may not know it exists (HTTP 404).
    NotFound,
    /// The state moved on (a lease another device holds, a stale epoch) (HTTP 409).
    Conflict,
    /// The request is malformed or a value is out of range (HTTP 400).
    InvalidRequest,
    /// The body is larger than the route accepts (HTTP 413).
    TooLarge,
    /// Too many requests; `Retry-After` says when to try again (HTTP 429).
    RateLimited,
    /// A device-login or pairing code nobody has approved yet (HTTP 428).
    AuthorizationPending,
    /// Configuration that runs code waits for an owner's approval (HTTP 428).
    ApprovalRequired,
    /// An uploaded blob does not match its hash (HTTP 400).
    BadHash,
    /// The request took too long (HTTP 408).
    Timeout,
    /// A dependency (the document hub, the provider) is not available now (HTTP 503).
    Unavailable,
    /// The server's storage failed; nothing was changed (HTTP 500).
    Storage,
    /// A bug or an unexpected failure on the server (HTTP 500).
    Internal,
    /// The one-time setup code is wrong (HTTP 403).
    WrongSetupCode,
    /// The setup code expired or was used up; restart the server for a new one (HTTP 410).
    SetupCodeExpired,
    /// The server already has an owner (HTTP 409).
    AlreadySetUp,
    /// An invitation link that is unknown, used or expired (HTTP 410).
    InviteNotValid,
    /// Retry of a session that has not failed (HTTP 409).
    NotFailed,
    /// The model provider refused the key (HTTP 502).
    ProviderKeyRefused,
    /// The model provider is overloaded or limiting the key; try again later (HTTP 502).
    ProviderBusy,
    /// The model provider answered 404 (address or model name) (HTTP 502).
    ProviderNotFound,
    /// The model provider cannot be reached from the server (HTTP 502).
    ProviderUnreachable,
    /// The provider settings are incomplete (HTTP 400).
    ProviderConfig,
    /// The model provider failed otherwise (HTTP 502).
    ProviderFailed,
    /// A git URL whose host the server may not reach (HTTP 403).
    GitHostRefused,
    /// A git host that does not resolve or answer (HTTP 422).
    GitUnreachable,
    /// A git clone that took too long (HTTP 422).
    GitTimeout,
    /// git failed (bad URL, token or repository) (HTTP 422).
    GitFailed,
    /// A repository larger than the server takes (HTTP 413).
    GitTooLarge,
    /// git is not installed on the server (HTTP 503).
    GitMissing,
}

impl ErrorCode {
    /// Every code, for documentation and exhaustive tests.
    pub const ALL: [ErrorCode; 31] = [
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::InvalidRequest,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::AuthorizationPending,
        ErrorCode::ApprovalRequired,
        ErrorCode::BadHash,
        ErrorCode::Timeout,
        ErrorCode::Unavailable,
        ErrorCode::Storage,
        ErrorCode::Internal,
        ErrorCode::WrongSetupCode,
        ErrorCode::SetupCodeExpired,
        ErrorCode::AlreadySetUp,
        ErrorCode::InviteNotValid,
        ErrorCode::NotFailed,
        ErrorCode::ProviderKeyRefused,
        ErrorCode::ProviderBusy,
        ErrorCode::ProviderNotFound,
        ErrorCode::ProviderUnreachable,
        ErrorCode::ProviderConfig,
        ErrorCode::ProviderFailed,
        ErrorCode::GitHostRefused,
        ErrorCode::GitUnreachable,
        ErrorCode::GitTimeout,
        ErrorCode::GitFailed,
        ErrorCode::GitTooLarge,
        ErrorCode::GitMissing,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::AuthorizationPending => "authorization_pending",
            ErrorCode::ApprovalRequired => "approval_required",
            ErrorCode::BadHash => "bad_hash",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Storage => "storage",
            ErrorCode::Internal => "internal",
            ErrorCode::WrongSetupCode => "wrong_setup_code",
            ErrorCode::SetupCodeExpired => "setup_code_expired",
            ErrorCode::AlreadySetUp => "already_set_up",
            ErrorCode::InviteNotValid => "invite_not_valid",
            ErrorCode::NotFailed => "not_failed",
            ErrorCode::ProviderKeyRefused => "provider_key_refused",
            ErrorCode::ProviderBusy => "provider_busy",
            ErrorCode::ProviderNotFound => "provider_not_found",
            ErrorCode::ProviderUnreachable => "provider_unreachable",
            ErrorCode::ProviderConfig => "provider_config",
            ErrorCode::ProviderFailed => "provider_failed",
            ErrorCode::GitHostRefused => "git_host_refused",
            ErrorCode::GitUnreachable => "git_unreachable",
            ErrorCode::GitTimeout => "git_timeout",
            ErrorCode::GitFailed => "git_failed",
            ErrorCode::GitTooLarge => "git_too_large",
            ErrorCode::GitMissing => "git_missing",
        }
    }

    /// The HTTP status the server answers with.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::InvalidRequest | ErrorCode::BadHash => 400,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::AuthorizationPending | ErrorCode::ApprovalRequired => 428,
            ErrorCode::Timeout => 408,
            ErrorCode::Unavailable => 503,
            ErrorCode::Storage | ErrorCode::Internal => 500,
            ErrorCode::WrongSetupCode | ErrorCode::GitHostRefused => 403,
            ErrorCode::SetupCodeExpired | ErrorCode::InviteNotValid => 410,
            ErrorCode::AlreadySetUp | ErrorCode::NotFailed => 409,
            ErrorCode::ProviderKeyRefused
            | ErrorCode::ProviderBusy
            | ErrorCode::ProviderNotFound
            | ErrorCode::ProviderUnreachable
            | ErrorCode::ProviderFailed => 502,
            ErrorCode::ProviderConfig => 400,
            ErrorCode::GitUnreachable | ErrorCode::GitTimeout | ErrorCode::GitFailed => 422,
            ErrorCode::GitTooLarge => 413,
            ErrorCode::GitMissing => 503,
        }
    }

    /// Reads a code from the wire; an unknown one (a newer server) is `None`.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_serde_and_as_str() {
        for c in ErrorCode::ALL {
            let json = serde_json::to_string(&c).expect("serialize");
            assert_eq!(json, format!("\"{}\"", c.as_str()));
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
            assert!(
                (400..600).contains(&c.status()),
                "{c} has status {}",
                c.status()
            );
        }
        assert_eq!(ErrorCode::parse("invalid"), None);
    }
}
