//! `jarvis-bench handoff`: Continue in cloud latency, from the device asking for the handoff to
//! the first token of the cloud's reply arriving back in the device's copy of the session.
//!
//! One real `jarvis-cloud` (release build) talks to a fake Anthropic server speaking real SSE on
//! loopback. The device is this process, running the code every device runs
//! (`jarvis_device::run_here`): it mirrors a generated workspace of `--files` files,
//! takes the session's lease and streams a long reply; mid-stream it asks for the handoff exactly
//! as `jarvis handoff <s> --to cloud` does. The clock stops when the cloud runner's first text
//! delta is in the device's session document, which is later than "first token in the cloud"
//! by one relay hop: the figure is an upper bound.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use jarvis_device::handoff::request_handoff;
use jarvis_device::{Device, RunOptions, RunOverrides, run_here};
use jarvis_sync::doc::{Role, SessionDoc, UpdateSignal};
use jarvis_sync::store::SqliteStore;
use jarvis_testkit::fake::{FakeResponse, FakeServer, reply};
use tokio_util::sync::CancellationToken;

#[derive(clap::Parser, Clone)]
pub struct HandoffArgs {
    #[arg(long, default_value = "target/release/jarvis-cloud")]
    pub jarvis_bin: PathBuf,
    /// Files in the workspace, all in sync before each handoff.
    #[arg(long, default_value_t = 1000)]
    pub files: usize,
    /// Total size of the workspace in MB.
    #[arg(long, default_value_t = 10)]
    pub megabytes: usize,
    /// Measured handoffs (one warm-up handoff runs first and is not counted).
    #[arg(long, default_value_t = 100)]
    pub handoffs: usize,
    /// Files the device edits just before each handoff (they must reach the cloud first).
    #[arg(long, default_value_t = 1)]
    pub edits: usize,
    /// Make the workspace a git repository with this many local commits (after one commit of
    /// every file): its git state travels with each handoff.
    #[arg(long, default_value_t = 0)]
    pub git_commits: usize,
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn git(dir: &std::path::Path, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@localhost")
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", "bench@localhost")
        .output()?;
    if !out.status.success() {
        bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until `cond` holds for the session document, re-checking on every update.
async fn until(
    doc: &SessionDoc,
    timeout: Duration,
    cond: impl Fn(&SessionDoc) -> bool,
) -> Result<()> {
    let changed = UpdateSignal::subscribe(doc.doc()).await;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond(doc) {
            return Ok(());
        }
        tokio::select! {
            _ = changed.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = tokio::time::sleep_until(deadline) => bail!("timed out after {timeout:?}"),
        }
    }
}

fn assistant_text_contains(doc: &SessionDoc, marker: &str) -> bool {
    doc.messages().iter().any(|m| {
        m.role == Role::Assistant
            && m.blocks.iter().any(|b| match b {
                jarvis_sync::doc::Block::Text { text } => text.contains(marker),
                _ => false,
            })
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub async fn run(args: HandoffArgs) -> Result<()> {
    if !args.jarvis_bin.exists() {
        bail!(
            "{} not found: cargo build --release -p jarvis-cloud",
            args.jarvis_bin.display()
        );
    }
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("hub");
    let dir = tmp.path().join("workspace");
    std::fs::create_dir_all(&dir)?;
    let bytes = crate::mirror::generate(&dir, args.files, args.megabytes)?;
    eprintln!(
        "workspace: {} files, {:.1} MB",
        args.files,
        bytes as f64 / 1e6
    );

    let mut git_bytes = None;
    if args.git_commits > 0 {
        git(&dir, &["init", "-q", "-b", "main"])?;
        git(&dir, &["add", "-A"])?;
        git(&dir, &["commit", "-qm", "all files"])?;
        for c in 0..args.git_commits {
            std::fs::write(
                dir.join(format!("commit-{}.txt", c % 10)),
                format!("change {c}\n"),
            )?;
            git(&dir, &["add", "-A"])?;
            git(&dir, &["commit", "-qm", &format!("local commit {c}")])?;
        }
        // What a handoff sends, captured exactly as the device does: the first time everything
        // reachable plus the index's tree.
        let captured = jarvis_sync::gitstate::capture(&dir, &[])?
            .context("the workspace is not a repository")?;
        // Later handoffs of the workspace leave out what its cloud copy already has.
        let later =
            jarvis_sync::gitstate::capture(&dir, std::slice::from_ref(&captured.state.head))?
                .context("the workspace is not a repository")?;
        git_bytes = Some((captured.bundle.len(), later.bundle.len()));
        eprintln!(
            "git: {} commits, bundle {:.1} KB the first time, {:.1} KB later",
            args.git_commits + 1,
            captured.bundle.len() as f64 / 1e3,
            later.bundle.len() as f64 / 1e3
        );
    }

    let fake = FakeServer::start(Vec::new()).await?;
    let fake_url = fake.url();
    let cloud = crate::start_cloud(
        &args.jarvis_bin,
        &data,
        &[
            ("ANTHROPIC_BASE_URL", fake_url.as_str()),
            ("ANTHROPIC_API_KEY", "bench"),
            ("JARVIS_SANDBOX", "limits"),
            // Unconfined by choice: this test is not about containment (see sandbox.rs).
            ("JARVIS_ALLOW_UNSANDBOXED", "1"),
        ],
    )?;
    let (port, token) = (cloud.port, cloud.token.clone());
    let hub = format!("http://127.0.0.1:{port}");

    let env: HashMap<String, String> = [
        ("ANTHROPIC_BASE_URL".to_owned(), fake.url()),
        ("ANTHROPIC_API_KEY".to_owned(), "bench".to_owned()),
    ]
    .into();
    let provider =
        jarvis_agent::providers::ProviderConfig::from_env(&env, |p| std::fs::read_to_string(p))
            .and_then(|c| c.build())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    let store = Arc::new(SqliteStore::open(&tmp.path().join("device.db"))?);
    let device = Device::connect(&hub, &token, store).await?;

    let mut total = Vec::new();
    let mut release = Vec::new();
    for i in 0..=args.handoffs {
        let session = format!("h{i}");
        // The device's reply streams for seconds; the handoff always cuts it.
        let device_marker = format!("DEVICE-{i}");
        let device_text = format!("{device_marker} ") + &"working through the files ".repeat(60);
        fake.push(
            FakeResponse::sse(&reply(&device_text, &[], (10, 5, 0, 0)), &[64])
                .with_delay(Duration::from_millis(20)),
        );
        let cloud_marker = format!("CLOUD-{i}");
        fake.push(FakeResponse::sse(
            &reply(&format!("{cloud_marker} finished."), &[], (10, 5, 0, 0)),
            &[4096],
        ));
        for e in 0..args.edits {
            let p = dir.join(format!("edited-{e}.txt"));
            let mut s = std::fs::read_to_string(&p).unwrap_or_default();
            s.push_str(&format!("edit before handoff {i}\n"));
            std::fs::write(&p, s)?;
        }
        let cancel = CancellationToken::new();
        let opts = RunOptions {
            prompt: "Work through the files.".into(),
            dir: dir.clone(),
            workspace: Some("bench".into()),
            session: Some(session.clone()),
            model: "fake-model".into(),
            overrides: RunOverrides {
                permission_mode: Some("allow-all".into()),
                ..RunOverrides::default()
            },
            mirror: None,
        };
        let runner = run_here(&device, provider.as_ref(), opts, None, None, cancel.clone());
        let measure = async {
            // Wait for the session to exist, then for the device to be streaming.
            // Open the document only once the device has registered the session: before
            // that the hub rightly refuses it.
            let opened = tokio::time::Instant::now();
            while device
                .api
                .get(&format!("/api/sessions/{session}"))
                .await
                .is_err()
            {
                if opened.elapsed() > Duration::from_secs(120) {
                    bail!("session {session} was never registered");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let doc = loop {
                match device.session(&session).await {
                    Ok(d) => break d,
                    Err(e) if opened.elapsed() > Duration::from_secs(120) => {
                        return Err(anyhow::Error::new(e).context("the session never appeared"));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            };
            until(&doc, Duration::from_secs(120), |d| {
                assistant_text_contains(d, &device_marker)
            })
            .await
            .context("the device never started streaming")?;
            let t0 = Instant::now();
            let granted = request_handoff(&device, &session, "cloud", None).await?;
            let t_granted = t0.elapsed();
            until(&doc, Duration::from_secs(60), |d| {
                assistant_text_contains(d, &cloud_marker)
            })
            .await
            .context("the cloud's first token never arrived")?;
            let t_first = t0.elapsed();
            until(&doc, Duration::from_secs(60), |d| {
                d.meta().status.as_str() == "done"
            })
            .await
            .context("the cloud did not finish")?;
            anyhow::Ok((t_granted, t_first, granted.is_some()))
        };
        tokio::pin!(runner, measure);
        let (report, measured) = tokio::select! {
            r = &mut runner => match r {
                Err(e) => return Err(anyhow::Error::new(e).context(format!("handoff {i}: the device's run failed"))),
                Ok(r) => (r, measure.await),
            },
            m = &mut measure => (runner.await?, m),
        };
        let (granted, first, _) = measured?;
        if let Some(w) = &report.git_warning {
            bail!("handoff {i}: {w}");
        }
        if report.handed_to.as_deref() != Some("cloud") {
            bail!("handoff {i}: the device handed to {:?}", report.handed_to);
        }
        if i == 0 {
            eprintln!(
                "warm-up: lease moved in {:.0} ms, first cloud token after {:.0} ms",
                granted.as_secs_f64() * 1e3,
                first.as_secs_f64() * 1e3
            );
            continue;
        }
        release.push(granted.as_secs_f64() * 1e3);
        total.push(first.as_secs_f64() * 1e3);
        if i % 10 == 0 {
            eprintln!("{i}/{} handoffs", args.handoffs);
        }
    }
    // Every file edit reached the cloud's materialised copy.
    let cloud_copy = data.join("workspaces").join("bench");
    for e in 0..args.edits {
        let name = format!("edited-{e}.txt");
        let mine = std::fs::read(dir.join(&name))?;
        let theirs = std::fs::read(cloud_copy.join(&name)).unwrap_or_default();
        if mine != theirs {
            bail!("{name} differs in the cloud's workspace");
        }
    }
    // The cloud's copy has the device's history under the agent's branch.
    if args.git_commits > 0 {
        let last = format!("jarvis/h{}", args.handoffs);
        let theirs = match git(&cloud_copy, &["log", "--format=%H", &last]) {
            Ok(t) => t,
            Err(e) => {
                // What the cloud said about the repository in that session.
                let doc = device.session(&format!("h{}", args.handoffs)).await?;
                let notes: Vec<String> = doc
                    .messages()
                    .iter()
                    .filter(|m| m.role == Role::System)
                    .flat_map(|m| m.blocks.iter())
                    .filter_map(|b| match b {
                        jarvis_sync::doc::Block::Text { text } => Some(text.clone()),
                        _ => None,
                    })
                    .collect();
                bail!("{e:#}\nthe session's notes: {notes:#?}");
            }
        };
        if theirs != git(&dir, &["log", "--format=%H", "main"])? {
            bail!("the cloud's git log differs from the device's");
        }
    }
    for v in [&mut total, &mut release] {
        v.sort_by(f64::total_cmp);
    }
    let mut out = format!(
        "Machine: {}. Command: `{}`.\n\n",
        crate::machine(),
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    out.push_str("| files | MB | git commits | git state sent KB | handoffs | lease moved p50 ms | p99 ms | first cloud token p50 ms | p99 ms | max ms |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    out.push_str(&format!(
        "| {} | {:.1} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
        args.files,
        bytes as f64 / 1e6,
        if args.git_commits > 0 {
            args.git_commits + 1
        } else {
            0
        },
        git_bytes.map_or_else(
            || "-".to_owned(),
            |(first, later)| format!(
                "{:.1} first, {:.1} later",
                first as f64 / 1e3,
                later as f64 / 1e3
            )
        ),
        total.len(),
        percentile(&release, 0.5),
        percentile(&release, 0.99),
        percentile(&total, 0.5),
        percentile(&total, 0.99),
        total.last().copied().unwrap_or(f64::NAN),
    ));
    println!("{out}");
    if let Some(path) = &args.out {
        std::fs::write(path, &out)?;
    }
    Ok(())
}
