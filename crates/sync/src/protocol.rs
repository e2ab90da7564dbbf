//! The Hocuspocus wire protocol, sans IO: bytes in, typed frames out, and back.
//!
//! A frame is `varString address, varUint message type, payload`; the address is a document
//! name, optionally followed by `\0` and a provider session id (Hocuspocus "routing keys"), and
//! replies must echo the address unchanged. The payloads are the y-protocols sync and awareness
//! messages, Hocuspocus' auth sub-protocol, and a few small control messages. Two connection-level
//! frames carry no address at all: a lone `Ping` (9) or `Pong` (10) byte.
//!
//! This module never touches a socket, a document or the clock, and never panics on input:
//! every malformed frame is a [`DecodeError`] value.

use std::fmt;

/// Message type numbers as Hocuspocus assigns them.
pub mod message_type {
    pub const SYNC: u64 = 0;
    pub const AWARENESS: u64 = 1;
    pub const AUTH: u64 = 2;
    pub const QUERY_AWARENESS: u64 = 3;
    pub const SYNC_REPLY: u64 = 4;
    pub const STATELESS: u64 = 5;
    pub const BROADCAST_STATELESS: u64 = 6;
    pub const CLOSE: u64 = 7;
    pub const SYNC_STATUS: u64 = 8;
    pub const PING: u64 = 9;
    pub const PONG: u64 = 10;
}

const SYNC_STEP1: u64 = 0;
const SYNC_STEP2: u64 = 1;
const SYNC_UPDATE: u64 = 2;

const AUTH_TOKEN: u64 = 0;
const AUTH_PERMISSION_DENIED: u64 = 1;
const AUTH_AUTHENTICATED: u64 = 2;

/// Bounds applied while decoding, so a hostile peer cannot make us allocate without limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest whole frame accepted.
    pub max_frame_bytes: usize,
    /// Largest address (document name plus routing suffix).
    pub max_address_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 16 * 1024 * 1024,
            max_address_bytes: 512,
        }
    }
}

/// The y-protocols sync sub-messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncMessage {
    /// The sender's state vector (v1 encoding): "send me what I am missing".
    Step1(Vec<u8>),
    /// A v1 update answering a `Step1`.
    Step2(Vec<u8>),
    /// A v1 update made after the handshake.
    Update(Vec<u8>),
}

/// Hocuspocus' authentication sub-messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMessage {
    /// Client → server. Newer providers append their version string.
    Token {
        token: String,
        provider_version: Option<String>,
    },
    /// Server → client: access refused for this document, with a reason.
    PermissionDenied { reason: String },
    /// Server → client: access granted; scope is `read-write` or `readonly`.
    Authenticated { scope: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Sync(SyncMessage),
    /// Same payload as `Sync`; Hocuspocus uses it for server-to-server replies.
    SyncReply(SyncMessage),
    /// An encoded awareness update, relayed opaquely.
    Awareness(Vec<u8>),
    Auth(AuthMessage),
    QueryAwareness,
    Stateless(String),
    BroadcastStateless(String),
    Close {
        reason: String,
    },
    /// Server → client acknowledgement of one `Step2` or `Update`: true when it was applied and
    /// (for our hub) durably committed.
    SyncStatus(bool),
}

impl Message {
    /// The message type number, for logs and metrics.
    pub fn type_number(&self) -> u64 {
        use message_type::*;
        match self {
            Message::Sync(_) => SYNC,
            Message::SyncReply(_) => SYNC_REPLY,
            Message::Awareness(_) => AWARENESS,
            Message::Auth(_) => AUTH,
            Message::QueryAwareness => QUERY_AWARENESS,
            Message::Stateless(_) => STATELESS,
            Message::BroadcastStateless(_) => BROADCAST_STATELESS,
            Message::Close { .. } => CLOSE,
            Message::SyncStatus(_) => SYNC_STATUS,
        }
    }
}

/// One decoded WebSocket binary message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A message for one document.
    Doc {
        address: String,
        message: Message,
    },
    /// Connection-level keep-alive.
    Ping,
    Pong,
}

impl Frame {
    pub fn doc(address: impl Into<String>, message: Message) -> Self {
        Frame::Doc {
            address: address.into(),
            message,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Ping => write_var_uint(out, message_type::PING),
            Frame::Pong => write_var_uint(out, message_type::PONG),
            Frame::Doc { address, message } => encode_doc_message(out, address, message),
        }
    }

    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Frame, DecodeError> {
        if bytes.len() > limits.max_frame_bytes {
            return Err(DecodeError::FrameTooLarge {
                size: bytes.len(),
                limit: limits.max_frame_bytes,
            });
        }
        // A one-byte frame cannot be a document frame (it needs at least an address length and
        // a type), so the connection-level keep-alives are unambiguous.
        if bytes.len() == 1 {
            return match u64::from(bytes[0]) {
                message_type::PING => Ok(Frame::Ping),
                message_type::PONG => Ok(Frame::Pong),
                other => Err(DecodeError::UnknownMessageType(other)),
            };
        }
        let mut r = Reader::new(bytes);
        let address = r.read_string(limits.max_address_bytes, "address")?;
        let message = decode_message(&mut r)?;
        Ok(Frame::Doc { address, message })
    }
}

/// The document name inside an address (the part before a `\0` routing suffix).
pub fn document_name(address: &str) -> &str {
    match address.find('\0') {
        Some(i) => &address[..i],
        None => address,
    }
}

/// Encodes a document frame without building a [`Frame`] first (used on the relay hot path).
pub fn encode_doc_message(out: &mut Vec<u8>, address: &str, message: &Message) {
    write_string(out, address);
    write_var_uint(out, message.type_number());
    match message {
        Message::Sync(sync) | Message::SyncReply(sync) => encode_sync(out, sync),
        Message::Awareness(update) => write_bytes(out, update),
        Message::Auth(auth) => match auth {
            AuthMessage::Token {
                token,
                provider_version,
            } => {
                write_var_uint(out, AUTH_TOKEN);
                write_string(out, token);
                if let Some(v) = provider_version {
                    write_string(out, v);
                }
            }
            AuthMessage::PermissionDenied { reason } => {
                write_var_uint(out, AUTH_PERMISSION_DENIED);
                write_string(out, reason);
            }
            AuthMessage::Authenticated { scope } => {
                write_var_uint(out, AUTH_AUTHENTICATED);
                write_string(out, scope);
            }
        },
        Message::QueryAwareness => {}
        Message::Stateless(s) | Message::BroadcastStateless(s) => write_string(out, s),
        Message::Close { reason } => write_string(out, reason),
        Message::SyncStatus(ok) => write_var_uint(out, u64::from(*ok)),
    }
}

/// Encodes a sync update frame straight from borrowed bytes.
pub fn encode_update_frame(address: &str, update: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(address.len() + update.len() + 8);
    write_string(&mut out, address);
    write_var_uint(&mut out, message_type::SYNC);
    write_var_uint(&mut out, SYNC_UPDATE);
    write_bytes(&mut out, update);
    out
}

fn encode_sync(out: &mut Vec<u8>, sync: &SyncMessage) {
    let (kind, payload) = match sync {
        SyncMessage::Step1(sv) => (SYNC_STEP1, sv),
        SyncMessage::Step2(u) => (SYNC_STEP2, u),
        SyncMessage::Update(u) => (SYNC_UPDATE, u),
    };
    write_var_uint(out, kind);
    write_bytes(out, payload);
}

fn decode_message(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    use message_type::*;
    let kind = r.read_var_uint("message type")?;
    // Trailing bytes after a known payload are tolerated, as Hocuspocus does, so newer peers
    // may append fields (the provider version after a token is one such field).
    let msg = match kind {
        SYNC => Message::Sync(decode_sync(r)?),
        SYNC_REPLY => Message::SyncReply(decode_sync(r)?),
        AWARENESS => Message::Awareness(r.read_bytes("awareness update")?.to_vec()),
        AUTH => Message::Auth(decode_auth(r)?),
        QUERY_AWARENESS => Message::QueryAwareness,
        STATELESS => Message::Stateless(r.read_string(usize::MAX, "stateless payload")?),
        BROADCAST_STATELESS => {
            Message::BroadcastStateless(r.read_string(usize::MAX, "stateless payload")?)
        }
        CLOSE => Message::Close {
            // Older providers send a bare close with no reason.
            reason: if r.is_empty() {
                String::new()
            } else {
                r.read_string(usize::MAX, "close reason")?
            },
        },
        SYNC_STATUS => Message::SyncStatus(r.read_var_int("sync status")? == 1),
        other => return Err(DecodeError::UnknownMessageType(other)),
    };
    Ok(msg)
}

fn decode_sync(r: &mut Reader<'_>) -> Result<SyncMessage, DecodeError> {
    let kind = r.read_var_uint("sync message type")?;
    let payload = r.read_bytes("sync payload")?.to_vec();
    match kind {
        SYNC_STEP1 => Ok(SyncMessage::Step1(payload)),
        SYNC_STEP2 => Ok(SyncMessage::Step2(payload)),
        SYNC_UPDATE => Ok(SyncMessage::Update(payload)),
        other => Err(DecodeError::UnknownSyncType(other)),
    }
}

fn decode_auth(r: &mut Reader<'_>) -> Result<AuthMessage, DecodeError> {
    match r.read_var_uint("auth message type")? {
        AUTH_TOKEN => {
            let token = r.read_string(64 * 1024, "token")?;
            let provider_version = if r.is_empty() {
                None
            } else {
                Some(r.read_string(256, "provider version")?)
            };
            Ok(AuthMessage::Token {
                token,
                provider_version,
            })
        }
        AUTH_PERMISSION_DENIED => Ok(AuthMessage::PermissionDenied {
            reason: r.read_string(usize::MAX, "reason")?,
        }),
        AUTH_AUTHENTICATED => Ok(AuthMessage::Authenticated {
            scope: r.read_string(usize::MAX, "scope")?,
        }),
        other => Err(DecodeError::UnknownAuthType(other)),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge { size: usize, limit: usize },
    #[error("unexpected end of frame while reading {0}")]
    UnexpectedEnd(&'static str),
    #[error("variable-length integer in {0} is too long")]
    VarIntOverflow(&'static str),
    #[error("{what} of {size} bytes exceeds the limit of {limit} bytes")]
    FieldTooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("{0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
    #[error("unknown message type {0}")]
    UnknownMessageType(u64),
    #[error("unknown sync message type {0}")]
    UnknownSyncType(u64),
    #[error("unknown auth message type {0}")]
    UnknownAuthType(u64),
}

impl DecodeError {
    /// Whether the peer sent something we do not understand (as opposed to broken bytes); a
    /// server may choose to ignore such frames for forward compatibility.
    pub fn is_unknown_type(&self) -> bool {
        matches!(
            self,
            DecodeError::UnknownMessageType(_)
                | DecodeError::UnknownSyncType(_)
                | DecodeError::UnknownAuthType(_)
        )
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn read_u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(DecodeError::UnexpectedEnd(what))?;
        self.pos += 1;
        Ok(b)
    }

    /// lib0 varUint: little-endian base-128, at most 64 bits.
    fn read_var_uint(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let mut value: u64 = 0;
        let mut shift = 0u32;
        loop {
            let b = self.read_u8(what)?;
            let bits = u64::from(b & 0x7f);
            if shift >= 64 || (shift == 63 && bits > 1) {
                return Err(DecodeError::VarIntOverflow(what));
            }
            value |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
        }
    }

    /// lib0 varInt: the first byte holds a sign bit (0x40) and six value bits.
    fn read_var_int(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        let first = self.read_u8(what)?;
        let negative = first & 0x40 != 0;
        let mut value = u64::from(first & 0x3f);
        let mut shift = 6u32;
        let mut more = first & 0x80 != 0;
        while more {
            let b = self.read_u8(what)?;
            if shift >= 63 {
                return Err(DecodeError::VarIntOverflow(what));
            }
            value |= u64::from(b & 0x7f) << shift;
            shift += 7;
            more = b & 0x80 != 0;
        }
        let value = i64::try_from(value).map_err(|_| DecodeError::VarIntOverflow(what))?;
        Ok(if negative { -value } else { value })
    }

    fn read_bytes(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.read_var_uint(what)?;
        let remaining = self.buf.len() - self.pos;
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= remaining)
            .ok_or(DecodeError::UnexpectedEnd(what))?;
        let out = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(out)
    }

    fn read_string(&mut self, limit: usize, what: &'static str) -> Result<String, DecodeError> {
        let bytes = self.read_bytes(what)?;
        if bytes.len() > limit {
            return Err(DecodeError::FieldTooLarge {
                what,
                size: bytes.len(),
                limit,
            });
        }
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::InvalidUtf8(what))
    }
}

pub(crate) fn write_var_uint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_var_uint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    write_bytes(out, s.as_bytes());
}

impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Frame::Ping => f.write_str("ping"),
            Frame::Pong => f.write_str("pong"),
            Frame::Doc { address, message } => {
                write!(
                    f,
                    "{:?} type {}",
                    document_name(address),
                    message.type_number()
                )
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn all_messages() -> Vec<Message> {
        vec![
            Message::Sync(SyncMessage::Step1(vec![1, 2, 3])),
            Message::Sync(SyncMessage::Step2(vec![])),
            Message::Sync(SyncMessage::Update(vec![0; 300])),
            Message::SyncReply(SyncMessage::Step1(vec![9])),
            Message::Awareness(vec![1, 0, 0]),
            Message::Auth(AuthMessage::Token {
                token: "tok".into(),
                provider_version: None,
            }),
            Message::Auth(AuthMessage::Token {
                token: String::new(),
                provider_version: Some("4.8.0".into()),
            }),
            Message::Auth(AuthMessage::PermissionDenied {
                reason: "no".into(),
            }),
            Message::Auth(AuthMessage::Authenticated {
                scope: "read-write".into(),
            }),
            Message::QueryAwareness,
            Message::Stateless("{\"a\":1}".into()),
            Message::BroadcastStateless("x".into()),
            Message::Close {
                reason: "bye".into(),
            },
            Message::SyncStatus(true),
            Message::SyncStatus(false),
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in all_messages() {
            for address in ["session/a", "ws/w/file/f\0sess", ""] {
                let frame = Frame::doc(address, m.clone());
                let bytes = frame.encode();
                assert_eq!(Frame::decode(&bytes, &Limits::default()).unwrap(), frame);
            }
        }
        for f in [Frame::Ping, Frame::Pong] {
            assert_eq!(Frame::decode(&f.encode(), &Limits::default()).unwrap(), f);
        }
    }

    /// Bytes as lib0/y-protocols produce them, written out by hand from the JS encoders.
    #[test]
    fn matches_hocuspocus_bytes() {
        // "doc", Auth, Token "t", provider version "4.8.0"
        let auth = [
            3, b'd', b'o', b'c', 2, 0, 1, b't', 5, b'4', b'.', b'8', b'.', b'0',
        ];
        assert_eq!(
            Frame::decode(&auth, &Limits::default()).unwrap(),
            Frame::doc(
                "doc",
                Message::Auth(AuthMessage::Token {
                    token: "t".into(),
                    provider_version: Some("4.8.0".into())
                })
            )
        );
        // SyncStatus(true) as the server writes it: writeVarUint(8), writeVarUint(1).
        assert_eq!(
            Frame::doc("d", Message::SyncStatus(true)).encode(),
            vec![1, b'd', 8, 1]
        );
        // An empty-document state vector step 1: [0] inside a varUint8Array.
        assert_eq!(
            Frame::doc("d", Message::Sync(SyncMessage::Step1(vec![0]))).encode(),
            vec![1, b'd', 0, 0, 1, 0]
        );
        // Multi-byte varUint lengths: a 300-byte update.
        let bytes = Frame::doc("d", Message::Sync(SyncMessage::Update(vec![7; 300]))).encode();
        assert_eq!(&bytes[..6], &[1, b'd', 0, 2, 0xac, 0x02]);
    }

    #[test]
    fn document_name_strips_routing_suffix() {
        assert_eq!(document_name("session/x\0abc"), "session/x");
        assert_eq!(document_name("session/x"), "session/x");
    }

    #[test]
    fn malformed_frames_are_errors() {
        let limits = Limits::default();
        let cases: Vec<(&[u8], DecodeError)> = vec![
            (&[], DecodeError::UnexpectedEnd("address")),
            (&[7], DecodeError::UnknownMessageType(7)),
            (&[5, b'a'], DecodeError::UnexpectedEnd("address")),
            (&[1, b'a'], DecodeError::UnexpectedEnd("message type")),
            (&[1, b'a', 42], DecodeError::UnknownMessageType(42)),
            (&[1, b'a', 0, 9, 0], DecodeError::UnknownSyncType(9)),
            (
                &[1, b'a', 0, 2, 5, 1],
                DecodeError::UnexpectedEnd("sync payload"),
            ),
            (&[1, b'a', 2, 7], DecodeError::UnknownAuthType(7)),
            (&[1, 0xff, 0], DecodeError::InvalidUtf8("address")),
            (
                &[
                    1, b'a', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
                ],
                DecodeError::VarIntOverflow("message type"),
            ),
            (&[1, b'a', 8], DecodeError::UnexpectedEnd("sync status")),
        ];
        for (bytes, want) in cases {
            assert_eq!(Frame::decode(bytes, &limits), Err(want), "input {bytes:?}");
        }
    }

    #[test]
    fn limits_are_enforced() {
        let limits = Limits {
            max_frame_bytes: 64,
            max_address_bytes: 8,
        };
        let big = Frame::doc("d", Message::Sync(SyncMessage::Update(vec![0; 100]))).encode();
        assert!(matches!(
            Frame::decode(&big, &limits),
            Err(DecodeError::FrameTooLarge { .. })
        ));
        let long_name = Frame::doc("0123456789", Message::QueryAwareness).encode();
        assert!(matches!(
            Frame::decode(&long_name, &limits),
            Err(DecodeError::FieldTooLarge {
                what: "address",
                ..
            })
        ));
    }

    /// Every prefix and every single-byte corruption of valid frames decodes to a value or an
    /// error, never a panic; a cheap, deterministic stand-in for fuzzing that runs on every test.
    #[test]
    fn truncations_and_corruptions_never_panic() {
        let limits = Limits::default();
        for m in all_messages() {
            let bytes = Frame::doc("session/x", m).encode();
            for cut in 0..bytes.len() {
                let _ = Frame::decode(&bytes[..cut], &limits);
            }
            for i in 0..bytes.len() {
                for v in [0u8, 1, 0x7f, 0x80, 0xff] {
                    let mut b = bytes.clone();
                    b[i] = v;
                    let _ = Frame::decode(&b, &limits);
                }
            }
        }
    }

    #[test]
    fn var_int_sign_and_continuation() {
        // lib0 writeVarInt(-1) = [0x41]; writeVarInt(100) = [0x80 | 0x24, 0x01]
        let mut r = Reader::new(&[0x41]);
        assert_eq!(r.read_var_int("t").unwrap(), -1);
        let mut r = Reader::new(&[0xa4, 0x01]);
        assert_eq!(r.read_var_int("t").unwrap(), 100);
    }
}
