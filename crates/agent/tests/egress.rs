//! The network policy, proven from processes the agent starts (its bash tool, inside the real
//! bubblewrap sandbox): with an allow-list a host on it answers through the proxy (plain HTTP
//! and CONNECT) and another does not; with the policy off neither does.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use jarvis_agent::egress::{EgressProxy, NetworkPolicy, ProxyConfig, ProxyEgress};
use jarvis_agent::sandbox::{Limits, Sandbox};
use jarvis_agent::tools::{ToolBox, ToolOutput};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A loopback HTTP server answering every request with `body`.
async fn http_server(body: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    port
}

async fn bash(t: &ToolBox, command: &str) -> ToolOutput {
    t.run(
        "bash",
        &serde_json::json!({ "command": command }),
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
}

fn sandbox_or_skip() -> Option<Sandbox> {
    match Sandbox::probe_bubblewrap(&Limits::default()) {
        Ok(()) => Some(Sandbox::bubblewrap(Limits::default())),
        Err(e) => {
            eprintln!("skipping: {e}");
            None
        }
    }
}

fn toolbox(ws: &Path, sandbox: &Sandbox, socket: Option<PathBuf>) -> ToolBox {
    let hook = ProxyEgress {
        forwarder: PathBuf::from(env!("CARGO_BIN_EXE_jarvis-egress-forward")),
        proxy_for: Arc::new(move |_ws: &Path| Ok(socket.clone())),
    };
    let mut t = ToolBox::new(ws);
    t.sandbox = sandbox.clone().with_egress(Arc::new(hook));
    t
}

#[tokio::test]
async fn the_allow_list_lets_listed_hosts_through_and_nothing_else() {
    let Some(sandbox) = sandbox_or_skip() else {
        return;
    };
    let listed = http_server("listed-host-answered").await;
    let other = http_server("other-host-answered").await;
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    let mut config = ProxyConfig::new(NetworkPolicy::Allow(vec!["pkg.test".into()]));
    // Both names reach loopback servers (a test-only pin); only one is on the list.
    config.test_resolve.insert(
        "pkg.test".into(),
        format!("127.0.0.1:{listed}").parse().unwrap(),
    );
    config.test_resolve.insert(
        "other.test".into(),
        format!("127.0.0.1:{other}").parse().unwrap(),
    );
    let proxy = EgressProxy::start(dir.path().join("egress/ws.sock"), config).unwrap();
    let t = toolbox(&ws, &sandbox, Some(proxy.socket().to_owned()));

    let plain = bash(&t, "curl -sS http://pkg.test/ ; echo").await;
    assert!(plain.content.contains("listed-host-answered"), "{plain:?}");
    // CONNECT (what HTTPS uses), tunnelled through the proxy.
    let tunnel = bash(&t, "curl -sS -p http://pkg.test:80/ ; echo").await;
    assert!(
        tunnel.content.contains("listed-host-answered"),
        "{tunnel:?}"
    );

    let refused = bash(
        &t,
        "curl -sS http://other.test/ ; echo; curl -sS -p http://other.test/ ; echo done",
    )
    .await;
    assert!(
        refused.content.contains("not allowed") && !refused.content.contains("other-host-answered"),
        "{refused:?}"
    );
    // Straight to the host's loopback (no proxy): the namespace has no route there.
    let direct = bash(
        &t,
        &format!("curl -sS --noproxy '*' --max-time 5 http://127.0.0.1:{listed}/ ; echo done"),
    )
    .await;
    assert!(
        !direct.content.contains("listed-host-answered"),
        "{direct:?}"
    );

    // The policy changes: from now on nothing is listed.
    proxy.set_config(ProxyConfig::new(NetworkPolicy::Allow(vec![])));
    let after = bash(&t, "curl -sS http://pkg.test/ ; echo done").await;
    assert!(!after.content.contains("listed-host-answered"), "{after:?}");
}

#[tokio::test]
async fn with_the_policy_off_nothing_answers() {
    let Some(sandbox) = sandbox_or_skip() else {
        return;
    };
    let listed = http_server("listed-host-answered").await;
    let other = http_server("other-host-answered").await;
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    // Off: no proxy is routed in at all.
    let t = toolbox(&ws, &sandbox, None);
    let out = bash(
        &t,
        &format!(
            "env | grep -ci proxy; for u in http://pkg.test/ http://other.test/ http://127.0.0.1:{listed}/ http://127.0.0.1:{other}/; do curl -sS --max-time 5 $u; echo; done; echo done"
        ),
    )
    .await;
    assert!(out.content.contains("done"), "{out:?}");
    assert!(
        !out.content.contains("answered"),
        "a host answered with the policy off: {out:?}"
    );
}
