//! A minimal device: syncs one document's Y.Text with a hub, optionally appends to it, and
//! optionally waits until it contains a string. Used by the JS interop tests as the Rust peer.
//!
//! `sync_text <ws-url> <token> <doc> [--field NAME] [--append TEXT] [--expect TEXT]`

use std::sync::Arc;
use std::time::Duration;

use jarvis_sync::client::{ClientConfig, SyncClient};
use jarvis_sync::store::MemoryStore;
use yrs::{GetString, Text, Transact};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage =
        "usage: sync_text <ws-url> <token> <doc> [--field NAME] [--append TEXT] [--expect TEXT]";
    let (url, token, name) = match (args.next(), args.next(), args.next()) {
        (Some(u), Some(t), Some(d)) => (u, t, d),
        _ => return Err(usage.into()),
    };
    let (mut field, mut append, mut expect) = ("content".to_owned(), None, None);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(usage)?;
        match flag.as_str() {
            "--field" => field = value,
            "--append" => append = Some(value),
            "--expect" => expect = Some(value),
            _ => return Err(usage.into()),
        }
    }
    let timeout = Duration::from_secs(20);
    let client = SyncClient::start(ClientConfig::new(url, token), Arc::new(MemoryStore::new()));
    let doc = client.open(&name).await?;
    client.wait_synced(&name, timeout).await?;
    let text = doc.get_or_insert_text(field.as_str());
    if let Some(s) = append {
        let mut txn = doc.transact_mut();
        let len = text.len(&txn);
        text.insert(&mut txn, len, &s);
        drop(txn);
        client.flush(&name, timeout).await?;
    }
    if let Some(s) = expect {
        let deadline = tokio::time::Instant::now() + timeout;
        while !text.get_string(&doc.transact()).contains(&s) {
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "timed out waiting for {s:?}; document has {:?}",
                    text.get_string(&doc.transact())
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    println!("{}", text.get_string(&doc.transact()));
    Ok(())
}
