//! The updater for real: a signed release published into a real `jarvis-cloud` (its own
//! `update publish` command), checked and downloaded by the app's update code through the
//! Tauri updater plugin — accepted when the signature matches the app's public key, refused
//! when the artifact, the announced version or the key is not the one that was signed.
#![allow(clippy::unwrap_used)]

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use jarvis_desktop::updates;
use serde_json::json;

fn cloud_bin() -> PathBuf {
    jarvis_testkit::binary("jarvis-cloud")
}

/// Tauri's key format: base64 of the minisign public key file.
fn tauri_pubkey(kp: &minisign::KeyPair) -> String {
    B64.encode(kp.pk.to_box().unwrap().to_string())
}

/// What `tauri signer sign --app-version` writes: base64 of the minisign signature file, with
/// the version in the trusted comment.
fn sign(kp: &minisign::KeyPair, data: &[u8], file: &str, version: &str) -> String {
    let trusted = format!("timestamp:1764100000\tfile:{file}\tversion:{version}");
    let sig = minisign::sign(
        Some(&kp.pk),
        &kp.sk,
        Cursor::new(data),
        Some(&trusted),
        Some("signature from tauri secret key"),
    )
    .unwrap();
    B64.encode(sig.to_string())
}

fn publish(data: &Path, version: &str, artifact: &Path, signature: &str) {
    std::fs::write(artifact.with_extension("deb.sig"), signature).unwrap();
    let out = Command::new(cloud_bin())
        .args(["update", "publish", "--data-dir"])
        .arg(data)
        .args(["--version", version, "--platform", &platform(), "--file"])
        .arg(artifact)
        .args(["--notes", "Faster handoff."])
        .output()
        .unwrap();
    assert!(out.status.success(), "publish: {out:?}");
}

/// The platform key the updater asks for on this machine.
fn platform() -> String {
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    };
    format!("{os}-{}", std::env::consts::ARCH)
}

fn app(pubkey: &str) -> tauri::App<tauri::test::MockRuntime> {
    let mut ctx = tauri::test::mock_context(tauri::test::noop_assets());
    ctx.config_mut()
        .plugins
        .0
        .insert("updater".into(), json!({"pubkey": pubkey, "endpoints": []}));
    tauri::test::mock_builder()
        .plugin(tauri_plugin_updater::Builder::new().build())
        .build(ctx)
        .unwrap()
}

#[tokio::test]
async fn a_signed_update_is_accepted_and_a_tampered_one_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("hub");
    let release = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let app = app(&tauri_pubkey(&release));
    let handle = app.handle();
    let agent = jarvis_testkit::CloudAgent::start(&data, 0).unwrap();
    let cloud = agent.http_url("");

    // Nothing published: no update.
    let v = updates::check(handle, &cloud, None).await.unwrap();
    assert_eq!(v["available"], false);

    // A genuine release (the mock app is 0.1.0).
    let artifact = tmp.path().join("my-jarvis_0.2.0_amd64.deb");
    let bytes = b"!<arch>\ndebian-binary   the new version".to_vec();
    std::fs::write(&artifact, &bytes).unwrap();
    publish(
        &data,
        "0.2.0",
        &artifact,
        &sign(&release, &bytes, "my-jarvis_0.2.0_amd64.deb", "0.2.0"),
    );
    let v = updates::check(handle, &cloud, None).await.unwrap();
    assert_eq!(v["available"], true, "{v}");
    assert_eq!(v["version"], "0.2.0");
    assert_eq!(v["notes"], "Faster handoff.");
    let got = updates::download_verified(handle, &cloud, None)
        .await
        .unwrap()
        .expect("an update");
    assert_eq!(got, bytes);

    // The artifact changed on the server after signing: refused.
    let served = data.join("updates/files/my-jarvis_0.2.0_amd64.deb");
    let mut evil = bytes.clone();
    evil.extend_from_slice(b" plus a backdoor");
    std::fs::write(&served, &evil).unwrap();
    let err = updates::download_verified(handle, &cloud, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "update_failed", "{err}");
    assert!(
        err.to_string().to_lowercase().contains("signature"),
        "{err}"
    );

    // A newer version number announced with an older, genuinely signed package: refused.
    std::fs::write(&artifact, &bytes).unwrap();
    publish(
        &data,
        "0.3.0",
        &artifact,
        &sign(&release, &bytes, "my-jarvis_0.2.0_amd64.deb", "0.2.0"),
    );
    let err = updates::download_verified(handle, &cloud, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("0.2.0"), "{err}");

    // Signed, but by another key than the app's: refused.
    let stranger = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    publish(
        &data,
        "0.4.0",
        &artifact,
        &sign(&stranger, &bytes, "my-jarvis_0.2.0_amd64.deb", "0.4.0"),
    );
    let err = updates::download_verified(handle, &cloud, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "update_failed", "{err}");

    // And the app's own key accepts a proper 0.4.0 again.
    publish(
        &data,
        "0.4.0",
        &artifact,
        &sign(&release, &bytes, "my-jarvis_0.2.0_amd64.deb", "0.4.0"),
    );
    let got = updates::download_verified(handle, &cloud, None)
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some(&bytes[..]));
}
