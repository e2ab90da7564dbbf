//! Cron occurrences in a time zone, and what to do about missed ones.

use chrono::TimeZone;

use crate::agents::Missed;

/// Runs on time within this grace are on time, not missed.
pub const ON_TIME_MS: u64 = 60_000;

/// Occurrences of `cron` in `tz` after `after_ms` up to and including `upto_ms`, at most `cap`.
pub fn occurrences(
    cron: &croner::Cron,
    tz: chrono_tz::Tz,
    after_ms: u64,
    upto_ms: u64,
    cap: usize,
) -> Vec<u64> {
    let mut out = Vec::new();
    let Some(mut t) = tz.timestamp_millis_opt(after_ms as i64).single() else {
        return out;
    };
    while out.len() < cap {
        let Ok(next) = cron.find_next_occurrence(&t, false) else {
            break;
        };
        let ms = next.timestamp_millis().max(0) as u64;
        if ms > upto_ms {
            break;
        }
        out.push(ms);
        t = next;
    }
    out
}

/// What to do with the occurrences found since the last look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Nothing,
    Run { scheduled_ms: u64, missed: usize },
    Skip { scheduled_ms: u64, late_ms: u64 },
}

pub fn decide(occurrences: &[u64], now_ms: u64, missed: Missed, catch_up_ms: u64) -> Decision {
    let Some(&latest) = occurrences.last() else {
        return Decision::Nothing;
    };
    let late = now_ms.saturating_sub(latest);
    let limit = match missed {
        Missed::RunOnce => catch_up_ms.max(ON_TIME_MS),
        Missed::Skip => ON_TIME_MS,
    };
    if late <= limit {
        Decision::Run {
            scheduled_ms: latest,
            missed: occurrences.len() - 1,
        }
    } else {
        Decision::Skip {
            scheduled_ms: latest,
            late_ms: late,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn ms(s: &str) -> u64 {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_millis() as u64
    }

    #[test]
    fn occurrences_follow_the_time_zone_across_daylight_saving() {
        let cron = croner::Cron::from_str("0 9 * * *").unwrap();
        let tz = chrono_tz::Tz::from_str("Europe/Berlin").unwrap();
        // 09:00 in Berlin is 07:00Z in summer and 08:00Z in winter (DST ends 2026-10-25).
        let got = occurrences(
            &cron,
            tz,
            ms("2026-10-23T12:00:00Z"),
            ms("2026-10-27T12:00:00Z"),
            10,
        );
        assert_eq!(
            got,
            vec![
                ms("2026-10-24T07:00:00Z"),
                ms("2026-10-25T08:00:00Z"),
                ms("2026-10-26T08:00:00Z"),
                ms("2026-10-27T08:00:00Z"),
            ]
        );
        // The bound is inclusive; the start is not.
        assert_eq!(
            occurrences(
                &cron,
                tz,
                ms("2026-10-24T07:00:00Z"),
                ms("2026-10-24T07:00:00Z"),
                10
            ),
            Vec::<u64>::new()
        );
    }

    #[test]
    fn missed_runs_follow_the_stated_policy() {
        let hour = 3_600_000;
        let t = ms("2026-11-25T09:00:00Z");
        assert_eq!(decide(&[], t, Missed::RunOnce, hour), Decision::Nothing);
        // On time.
        assert_eq!(
            decide(&[t], t + 500, Missed::Skip, hour),
            Decision::Run {
                scheduled_ms: t,
                missed: 0
            }
        );
        // Down for three occurrences, back 20 minutes after the last: run the last one once.
        assert_eq!(
            decide(
                &[t - 2 * hour, t - hour, t],
                t + 20 * 60_000,
                Missed::RunOnce,
                hour
            ),
            Decision::Run {
                scheduled_ms: t,
                missed: 2
            }
        );
        assert_eq!(
            decide(&[t], t + 20 * 60_000, Missed::Skip, hour),
            Decision::Skip {
                scheduled_ms: t,
                late_ms: 20 * 60_000
            }
        );
        assert_eq!(
            decide(&[t], t + 2 * hour, Missed::RunOnce, hour),
            Decision::Skip {
                scheduled_ms: t,
                late_ms: 2 * hour
            }
        );
    }
}
