//! A desktop that comes back loses nothing: the desktop core (no window) mirrors a folder; the
//! core is dropped with its whole runtime — as when the app is killed — while another device
//! (`jarvis sync`) changes the same files and the folder changes too; a new core on the same
//! data dir must bring both sides' work to both folders (the scenario in
//! tests/src/comeback.rs). The core keeps its token in the keychain, so the core's half runs
//! in a private D-Bus session with an unlocked GNOME Keyring (as tests/attention.rs does).
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jarvis_desktop::core::{CoreConfig, CoreEvent, DesktopCore};
use jarvis_testkit::comeback;
use jarvis_testkit::device::{SyncDevice, converge, converge_folders};

const NAME: &str = "a_desktop_core_restarted_on_its_data_dir_loses_nothing";
const CHILD: &str = "JARVIS_COMEBACK_CHILD";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desktop_core_restarted_on_its_data_dir_loses_nothing() {
    if std::env::var(CHILD).is_ok() {
        return child().await;
    }
    let (_tmp, agent, hub, token, home) = support::hub_with_workspace("dana", "notes").await;
    support::rerun_in_keyring_session(NAME, CHILD, &hub, &token, &home).await;
    drop(agent);
}

/// A core on `data_dir` in a runtime of its own, mirroring `folder`; it runs until `stop` is
/// sent, then is dropped and its runtime torn down with every task in it.
fn run_core(
    data_dir: PathBuf,
    folder: PathBuf,
    sign_in: Option<(String, String)>,
) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let core = rt.block_on(async {
            let core = DesktopCore::start(
                CoreConfig {
                    data_dir,
                    keychain_service: "app.myjarvis.desktop.test".into(),
                    env: HashMap::new(),
                    model: "fake-model".into(),
                },
                Arc::new(|_: CoreEvent| {}),
            )
            .await
            .unwrap();
            if let Some((hub, token)) = sign_in {
                core.sign_in(&hub, &token).await.unwrap();
                core.open_folder(folder.to_str().unwrap()).await.unwrap();
            }
            core
        });
        // Blocks this thread only; the runtime's workers keep the core going.
        let _ = stop_rx.recv();
        drop(core);
        rt.shutdown_background();
    });
    (stop_tx, thread)
}

async fn child() {
    let hub = std::env::var("JARVIS_TEST_HUB").unwrap();
    let token = std::env::var("JARVIS_TEST_TOKEN").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("device");
    // The core names the workspace after the folder.
    let folder = tmp.path().join("notes");
    std::fs::create_dir_all(&folder).unwrap();
    let folder = folder.canonicalize().unwrap();
    comeback::seed(&folder).unwrap();
    let (stop, core) = run_core(
        data_dir.clone(),
        folder.clone(),
        Some((hub.clone(), token.clone())),
    );
    let mut other = SyncDevice::new("other", tmp.path(), &hub, &token, "notes").unwrap();
    other.start().unwrap();
    let both = |other: &SyncDevice| -> Vec<(&'static str, PathBuf)> {
        vec![("desktop", folder.clone()), ("other", other.dir.clone())]
    };
    let pairs = both(&other);
    let refs: Vec<(&str, &Path)> = pairs.iter().map(|(n, p)| (*n, p.as_path())).collect();
    if let Err(e) = converge_folders(&refs, Duration::from_secs(60), comeback::seeded).await {
        panic!("{e}\n{}", other.log());
    }

    // The app dies. The other device changes the same files, and the hub has it: a fresh
    // device receives all of it.
    stop.send(()).unwrap();
    core.join().unwrap();
    comeback::edit_elsewhere(&other.dir).unwrap();
    let mut fresh = SyncDevice::new("fresh", tmp.path(), &hub, &token, "notes").unwrap();
    fresh.start().unwrap();
    if let Err(e) = converge(
        &[&other, &fresh],
        Duration::from_secs(60),
        comeback::has_elsewhere,
    )
    .await
    {
        panic!("{e}\n{}", other.log());
    }

    // The folder changes while the app is not running; then the app starts again on the same
    // data dir (signed in from its settings and the keychain, the folder remembered).
    comeback::edit_offline(&folder).unwrap();
    let (stop, core) = run_core(data_dir, folder.clone(), None);
    let mut three = both(&other);
    three.push(("fresh", fresh.dir.clone()));
    let refs: Vec<(&str, &Path)> = three.iter().map(|(n, p)| (*n, p.as_path())).collect();
    let all = match converge_folders(&refs, Duration::from_secs(60), comeback::merged).await {
        Ok(s) => s,
        Err(e) => panic!("{e}\n{}", other.log()),
    };
    comeback::check(&all, Some(1)).unwrap();
    stop.send(()).unwrap();
    core.join().unwrap();
}
