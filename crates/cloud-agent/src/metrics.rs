//! The hub's counters as `/metrics` serves them, in the Prometheus text format. The `prometheus`
//! crate writes the text (HELP and TYPE lines, names, escaping); this module only says which
//! numbers there are. Read-only: it never changes a counter.

use std::sync::atomic::{AtomicU64, Ordering};

use jarvis_sync::hub::Hub;
use prometheus::{Encoder, IntCounter, IntGauge, Opts, Registry, TextEncoder};

/// Every metric is named `jarvis_hub_<name>`.
const PREFIX: &str = "jarvis_hub";

/// The `/metrics` body and its content type.
pub fn render(hub: &Hub) -> Result<(String, String), prometheus::Error> {
    let m = hub.metrics();
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    // A registry per scrape: the values are read from the hub's atomics at this moment, so there
    // is nothing to keep between scrapes.
    let registry = Registry::new_custom(Some(PREFIX.into()), None)?;
    let gauge = |name: &str, help: &str, value: u64| {
        let g = IntGauge::with_opts(Opts::new(name, help))?;
        g.set(i64::try_from(value).unwrap_or(i64::MAX));
        registry.register(Box::new(g))
    };
    let counter = |name: &str, help: &str, value: u64| {
        let c = IntCounter::with_opts(Opts::new(name, help))?;
        c.inc_by(value);
        registry.register(Box::new(c))
    };
    gauge(
        "connections_open",
        "Open sync sockets.",
        get(&m.connections_open),
    )?;
    counter(
        "connections_total",
        "Sync sockets accepted.",
        get(&m.connections_total),
    )?;
    gauge(
        "documents_in_memory",
        "Documents held in memory.",
        hub.loaded_documents() as u64,
    )?;
    counter(
        "documents_loaded_total",
        "Documents loaded from the store.",
        get(&m.documents_loaded),
    )?;
    counter(
        "updates_received_total",
        "Sync step 2 and update messages received.",
        get(&m.updates_received),
    )?;
    counter(
        "updates_committed_total",
        "Updates durably committed.",
        get(&m.updates_committed),
    )?;
    counter(
        "commit_batches_total",
        "Store transactions committed.",
        get(&m.commit_batches),
    )?;
    counter(
        "frames_relayed_total",
        "Frames relayed to other subscribers.",
        get(&m.frames_relayed),
    )?;
    counter(
        "auth_denied_total",
        "Document authentications refused.",
        get(&m.auth_denied),
    )?;
    counter(
        "compactions_total",
        "Document logs compacted.",
        get(&m.compactions),
    )?;
    counter(
        "store_errors_total",
        "Store operations that failed.",
        get(&m.store_errors),
    )?;
    counter(
        "slow_consumers_closed_total",
        "Connections closed for not keeping up.",
        get(&m.slow_consumers_closed),
    )?;
    let encoder = TextEncoder::new();
    let mut out = Vec::new();
    encoder.encode(&registry.gather(), &mut out)?;
    let text = String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))?;
    Ok((text, encoder.format_type().to_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use jarvis_sync::hub::{Access, Authorizer, HubConfig};
    use jarvis_sync::store::MemoryStore;

    use super::*;

    struct Anyone;
    impl Authorizer for Anyone {
        fn authorize(&self, _: &str, _: &str) -> Result<Access, String> {
            Ok(Access::ReadWrite)
        }
    }

    #[tokio::test]
    async fn every_counter_is_named_typed_and_valued() {
        let hub = Hub::new(
            Arc::new(MemoryStore::default()),
            Arc::new(Anyone),
            HubConfig::default(),
        );
        let _connection = hub.connect();
        hub.metrics().auth_denied.fetch_add(3, Ordering::Relaxed);
        let (text, content_type) = render(&hub).unwrap();
        assert_eq!(content_type, "text/plain; version=0.0.4");
        for line in [
            "# HELP jarvis_hub_connections_open Open sync sockets.",
            "# TYPE jarvis_hub_connections_open gauge",
            "jarvis_hub_connections_open 1",
            "# TYPE jarvis_hub_connections_total counter",
            "jarvis_hub_connections_total 1",
            "jarvis_hub_auth_denied_total 3",
            "jarvis_hub_documents_in_memory 0",
            "# TYPE jarvis_hub_slow_consumers_closed_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in:\n{text}"
            );
        }
        assert_eq!(text.lines().filter(|l| l.starts_with("# TYPE")).count(), 12);
        hub.shutdown().await;
    }
}
