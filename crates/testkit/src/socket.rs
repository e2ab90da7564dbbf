//! The sync socket spoken by hand, for tests that play a peer the real client never would
//! (forged presence, bad auth, floods).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use jarvis_sync::protocol::{AuthMessage, Frame, Limits, Message};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::CloudAgent;

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket to the agent's `/sync`, nothing sent yet.
pub async fn connect(agent: &CloudAgent) -> Socket {
    tokio_tungstenite::connect_async(agent.sync_url())
        .await
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", agent.sync_url()))
        .0
}

/// The socket message carrying `m` for document `doc`.
pub fn frame(doc: &str, m: Message) -> WsMessage {
    WsMessage::Binary(Frame::doc(doc, m).encode().into())
}

/// The auth message for `doc` with `token`.
pub fn auth(doc: &str, token: &str) -> WsMessage {
    frame(
        doc,
        Message::Auth(AuthMessage::Token {
            token: token.into(),
            provider_version: None,
        }),
    )
}

/// Sends `m` for `doc`.
pub async fn send(ws: &mut Socket, doc: &str, m: Message) {
    ws.send(frame(doc, m))
        .await
        .unwrap_or_else(|e| panic!("sending to {doc}: {e}"));
}

/// The next frame, or how the socket ended: `Some((code, reason))` for a close frame, `None`
/// for an end without one. Panics when nothing comes within `timeout`.
pub async fn next_frame(
    ws: &mut Socket,
    timeout: Duration,
) -> Result<Frame, Option<(u16, String)>> {
    loop {
        match tokio::time::timeout(timeout, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no answer from the hub within {timeout:?}"))
        {
            Some(Ok(WsMessage::Binary(b))) => {
                let frame = Frame::decode(&b, &Limits::default())
                    .unwrap_or_else(|e| panic!("the hub sent a frame that does not decode: {e}"));
                return Ok(frame);
            }
            Some(Ok(WsMessage::Close(f))) => {
                return Err(f.map(|f| (u16::from(f.code), f.reason.to_string())));
            }
            Some(Ok(_)) => continue,
            _ => return Err(None),
        }
    }
}
