//! Names the mirror gives things: this device, and conflict copies.

pub(super) fn device_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .take(32)
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "device".into())
}

/// `YYYY-MM-DD` for a Unix time in milliseconds (UTC).
pub(super) fn date(ms: u64) -> String {
    let days = (ms / 86_400_000) as i64;
    // Civil from days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `dir/name (conflict <device> <date>).ext`
pub(super) fn conflict_name(path: &str, device: &str, ms: u64) -> String {
    let (dir, file) = match path.rsplit_once('/') {
        Some((d, f)) => (format!("{d}/"), f),
        None => (String::new(), path),
    };
    let (stem, ext) = match file.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s, format!(".{e}")),
        _ => (file, String::new()),
    };
    format!("{dir}{stem} (conflict {device} {}){ext}", date(ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::check_relative;

    #[test]
    fn conflict_names() {
        // 2026-11-24 00:00 UTC
        let ms = 1_795_478_400_000;
        assert_eq!(date(ms), "2026-11-24");
        assert_eq!(
            conflict_name("img/logo.png", "laptop", ms),
            "img/logo (conflict laptop 2026-11-24).png"
        );
        assert_eq!(
            conflict_name("Makefile", "pc", ms),
            "Makefile (conflict pc 2026-11-24)"
        );
        assert_eq!(
            conflict_name(".env", "pc", ms),
            ".env (conflict pc 2026-11-24)"
        );
        check_relative(&conflict_name("a/b.tar.gz", "x", ms))
            .expect("conflict names are valid paths");
    }
}
