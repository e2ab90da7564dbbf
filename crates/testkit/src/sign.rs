//! Signatures and keys as a sender makes them, computed by tools independent of the server's
//! code.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// GitHub's `X-Hub-Signature-256` for `body`: `sha256=<hex HMAC-SHA256>`, computed by the
/// `openssl` CLI so a mistake in the server's HMAC cannot hide behind the same mistake here.
pub fn github_signature(body: &[u8], secret: &str) -> String {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let f = dir.path().join("body");
    std::fs::write(&f, body).unwrap_or_else(|e| panic!("writing the body: {e}"));
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", secret, "-hex"])
        .arg(&f)
        .output()
        .unwrap_or_else(|e| panic!("running openssl: {e}"));
    assert!(out.status.success(), "openssl dgst failed");
    let s = String::from_utf8_lossy(&out.stdout);
    let hex = s.trim().rsplit(' ').next().unwrap_or_default();
    format!("sha256={hex}")
}

/// `x-amz-date` (`20261130T120000Z`, UTC) as a time, to re-sign a recorded request.
pub fn amz_date(s: &str) -> SystemTime {
    let n = |a: usize, b: usize| {
        s.get(a..b)
            .and_then(|d| d.parse::<i64>().ok())
            .unwrap_or_else(|| panic!("not an x-amz-date: {s:?}"))
    };
    let (y, m, d) = (n(0, 4), n(4, 6), n(6, 8));
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + n(9, 11) * 3600 + n(11, 13) * 60 + n(13, 15);
    UNIX_EPOCH + Duration::from_secs(secs as u64)
}

/// A fresh 2048-bit RSA key written to `path` by `openssl genpkey` (a service account's key);
/// answers (private key PEM, public key PEM).
pub fn rsa_key(path: &Path) -> (String, String) {
    let ok = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(path)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("openssl is needed (scripts/install-deps.sh installs it): {e}"));
    assert!(ok.success(), "openssl genpkey failed");
    let out = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("openssl pkey: {e}"));
    let private =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    (private, String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_date_reads_utc() {
        let t = amz_date("20261130T120000Z");
        assert_eq!(
            t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).ok(),
            Some(1_796_040_000)
        );
    }

    #[test]
    fn matches_the_rfc_4231_vector() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            github_signature(b"what do ya want for nothing?", "Jefe"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
