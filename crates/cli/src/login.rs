//! `jarvis login`: the hub and this device's token, kept in a file readable only by the user
//! (no OS keychain support in the CLI yet; the desktop app uses the keychain).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Login {
    pub hub: String,
    pub token: String,
}

fn login_path(home: &Path) -> PathBuf {
    home.join("login.json")
}

pub fn login(home: &Path, hub: &str, token: &str) -> Result<()> {
    let hub = hub.trim_end_matches('/');
    anyhow::ensure!(
        hub.starts_with("http://") || hub.starts_with("https://"),
        "the hub address must start with http:// or https://"
    );
    anyhow::ensure!(!token.trim().is_empty(), "the token is empty");
    let path = login_path(home);
    let json = serde_json::to_vec_pretty(&Login {
        hub: hub.to_owned(),
        token: token.trim().to_owned(),
    })?;
    jarvis_sync::paths::atomic_write(&path, &json, Some(0o600))
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "logged in to {hub}; the token is stored in {} (file mode 0600, not the OS keychain)",
        path.display()
    );
    Ok(())
}

pub fn read_login(home: &Path) -> Result<Login> {
    let path = login_path(home);
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "not logged in ({} missing): run `jarvis login <hub> --token …`",
            path.display()
        )
    })?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is malformed", path.display()))
}

/// `jarvis login` without a token: shows the code, waits for its approval, and stores the
/// token it brings.
pub async fn pair(home: &Path, hub: &str, name: &str) -> Result<()> {
    let pairing = jarvis_device::pairing::Pairing::start(hub, name)
        .await
        .with_context(|| format!("asking {hub} for a pairing code"))?;
    println!(
        "To pair this device, approve code {} in My Jarvis (Devices → Pair) within {} minutes.",
        pairing.code,
        pairing.expires_in / 60
    );
    let paired = pairing.wait().await.context("pairing failed")?;
    login(home, hub, &paired.token)?;
    println!("paired as device {}", paired.device);
    Ok(())
}
