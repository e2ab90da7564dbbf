//! The model table: for every model we know, its context window, maximum output, list prices
//! and end-of-life date, looked up by any of its spellings (Claude API id or alias, Amazon
//! Bedrock id with or without a region prefix, Vertex AI `name@date`). Costs, budgets, the
//! context meter and compaction all read this table, so a number is written down once.
//!
//! Sources: Anthropic's models overview and per-model pages (windows, output limits, prices)
//! and its model-deprecations page (retirement dates), as of 2026-11-30. The JS test
//! `tests/js/models.test.mjs` checks [`DEFAULT_MODEL`] against the deprecation table that ships
//! inside a pinned `@anthropic-ai/sdk`, so a default that the official SDK warns about fails CI.
//!
//! OpenAI-compatible models are not in the table: their limits come from configuration
//! ([`ModelInfo::custom`]); an unknown id falls back to [`ModelInfo::fallback`], which is
//! conservative (a small window, so compaction starts early rather than too late).

use serde::Serialize;

/// The model a new session uses when nobody chose one. Must not be deprecated (see module doc).
/// Kept in a file of its own so the JS check reads the same value the binaries use.
pub const DEFAULT_MODEL: &str = include_str!("../DEFAULT_MODEL");

/// List prices in US dollars per million tokens (so also micro-dollars per token).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Pricing {
    pub input: f64,
    pub output: f64,
    /// Writing the prompt cache with the default 5-minute lifetime.
    pub cache_write: f64,
    /// Writing the prompt cache with the 1-hour lifetime.
    pub cache_write_1h: f64,
    pub cache_read: f64,
}

impl Pricing {
    /// Anthropic's cache multipliers applied to an input and output price: 5-minute writes
    /// cost 1.25× input, 1-hour writes 2×, reads 0.1×.
    pub const fn anthropic(input: f64, output: f64) -> Pricing {
        Pricing {
            input,
            output,
            cache_write: input * 1.25,
            cache_write_1h: input * 2.0,
            cache_read: input * 0.1,
        }
    }

    pub fn cost_micros(&self, u: &jarvis_sync::doc::Usage) -> u64 {
        (u.input_tokens as f64 * self.input
            + u.output_tokens as f64 * self.output
            + u.cache_write_tokens as f64 * self.cache_write
            + u.cache_read_tokens as f64 * self.cache_read)
            .round() as u64
    }
}

impl Default for Pricing {
    /// The default model's prices.
    fn default() -> Self {
        ModelInfo::lookup(DEFAULT_MODEL)
            .map(|m| m.pricing)
            .unwrap_or(Pricing::anthropic(3.0, 15.0))
    }
}

/// What the runner needs to know about one model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelInfo {
    /// The Claude API id (the canonical spelling).
    pub id: String,
    /// Input tokens one request may carry (system + tools + messages).
    pub context_window: u64,
    /// The most output tokens one reply may have.
    pub max_output: u32,
    pub pricing: Pricing,
    /// Retirement date (`YYYY-MM-DD`) once the model is deprecated; requests fail from then on.
    pub end_of_life: Option<&'static str>,
    /// False for [`ModelInfo::fallback`]: the numbers are guesses.
    pub known: bool,
}

struct Row {
    ids: &'static [&'static str],
    window: u64,
    max_output: u32,
    input: f64,
    output: f64,
    end_of_life: Option<&'static str>,
}

const K: u64 = 1_000;
const M: u64 = 1_000_000;

/// The first id of each row is the Claude API id; the others are dated ids and aliases. Bedrock
/// and Vertex spellings are normalised to these by [`canonical`].
const TABLE: &[Row] = &[
    Row {
        ids: &["claude-sonnet-5-5"],
        window: M,
        max_output: 128 * K as u32,
        input: 2.0,
        output: 10.0,
        end_of_life: None,
    },
    Row {
        ids: &["claude-sonnet-5"],
        window: M,
        max_output: 128 * K as u32,
        input: 2.0,
        output: 10.0,
        end_of_life: None,
    },
    Row {
        ids: &["claude-opus-5-5"],
        window: M,
        max_output: 128 * K as u32,
        input: 4.0,
        output: 20.0,
        end_of_life: None,
    },
    Row {
        ids: &["claude-opus-5"],
        window: M,
        max_output: 128 * K as u32,
        input: 5.0,
        output: 25.0,
        end_of_life: None,
    },
    Row {
        ids: &["claude-fable-5-2"],
        window: M,
        max_output: 128 * K as u32,
        input: 8.0,
        output: 40.0,
        end_of_life: None,
    },
    Row {
        ids: &["claude-fable-5-1"],
        window: M,
        max_output: 128 * K as u32,
        input: 10.0,
        output: 50.0,
        end_of_life: None,
    },
    Row {
        ids: &["claude-opus-4-8"],
        window: M,
        max_output: 128 * K as u32,
        input: 5.0,
        output: 25.0,
        end_of_life: None,
    },
    Row {
        ids: &["claude-opus-4-7"],
        window: M,
        max_output: 128 * K as u32,
        input: 5.0,
        output: 25.0,
        end_of_life: None,
    },
    Row {
        ids: &["claude-opus-4-6"],
        window: M,
        max_output: 128 * K as u32,
        input: 5.0,
        output: 25.0,
        end_of_life: None,
    },
    Row {
        ids: &["claude-sonnet-4-6"],
        window: M,
        max_output: 64 * K as u32,
        input: 3.0,
        output: 15.0,
        end_of_life: None,
    },
    Row {
        ids: &["claude-haiku-4-5-20251001", "claude-haiku-4-5"],
        window: 200 * K,
        max_output: 64 * K as u32,
        input: 1.0,
        output: 5.0,
        end_of_life: None,
    },
    Row {
        ids: &["claude-opus-4-5-20251101", "claude-opus-4-5"],
        window: 200 * K,
        max_output: 64 * K as u32,
        input: 5.0,
        output: 25.0,
        end_of_life: Some("2027-01-22"),
    },
    Row {
        ids: &["claude-sonnet-4-5-20250929", "claude-sonnet-4-5"],
        window: 200 * K,
        max_output: 64 * K as u32,
        input: 3.0,
        output: 15.0,
        end_of_life: Some("2026-11-30"),
    },
];

/// Normalises a Bedrock or Vertex spelling to the Claude API one:
/// `us.anthropic.claude-sonnet-4-5-20250929-v1:0` → `claude-sonnet-4-5-20250929`,
/// `claude-haiku-4-5@20251001` → `claude-haiku-4-5-20251001`.
pub fn canonical(model: &str) -> String {
    let mut m = model.trim();
    // Bedrock: an optional inference-profile region (`us.`, `eu.`, `apac.`, `global.`), then the
    // vendor prefix, then an optional `-vN[:M]` version suffix.
    if let Some(i) = m.find("anthropic.") {
        m = &m[i + "anthropic.".len()..];
    }
    let m = match m.rfind("-v") {
        Some(i)
            if m[i + 2..]
                .split(':')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) =>
        {
            &m[..i]
        }
        _ => m,
    };
    m.replace('@', "-")
}

impl ModelInfo {
    /// The table row for any spelling of a known model.
    pub fn lookup(model: &str) -> Option<ModelInfo> {
        let id = canonical(model);
        TABLE
            .iter()
            .find(|r| r.ids.contains(&id.as_str()))
            .map(|r| ModelInfo {
                id: r.ids[0].to_owned(),
                context_window: r.window,
                max_output: r.max_output,
                pricing: Pricing::anthropic(r.input, r.output),
                end_of_life: r.end_of_life,
                known: true,
            })
    }

    /// A model the table does not know (an OpenAI-compatible server, a newer Claude): the
    /// limits configured by `JARVIS_CONTEXT_WINDOW` and `JARVIS_MAX_OUTPUT_TOKENS`, else small
    /// enough ones that nothing is sent that a typical model would reject; default prices.
    pub fn fallback(model: &str) -> ModelInfo {
        let var = |k: &str| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        Self::fallback_with(
            model,
            var("JARVIS_CONTEXT_WINDOW"),
            var("JARVIS_MAX_OUTPUT_TOKENS"),
        )
    }

    /// [`ModelInfo::fallback`] with the configured limits passed in.
    pub fn fallback_with(model: &str, window: Option<u64>, max_output: Option<u64>) -> ModelInfo {
        let window = window.filter(|w| *w >= 1_024).unwrap_or(128 * K);
        let max_output = max_output
            .filter(|m| *m > 0)
            .map_or(8_192, |m| m.min(window / 2).min(u64::from(u32::MAX)) as u32);
        ModelInfo {
            id: model.to_owned(),
            context_window: window,
            max_output,
            pricing: Pricing::default(),
            end_of_life: None,
            known: false,
        }
    }

    /// A model described by configuration (OpenAI-compatible servers).
    pub fn custom(model: &str, context_window: u64, max_output: u32, pricing: Pricing) -> Self {
        ModelInfo {
            id: model.to_owned(),
            context_window,
            max_output,
            pricing,
            end_of_life: None,
            known: true,
        }
    }

    /// [`ModelInfo::lookup`], else [`ModelInfo::fallback`].
    pub fn resolve(model: &str) -> ModelInfo {
        Self::lookup(model).unwrap_or_else(|| Self::fallback(model))
    }

    /// A warning to show in the session when the model is deprecated or retired on `today`
    /// (`YYYY-MM-DD`; passed in so the check is testable).
    pub fn deprecation_warning(&self, today: &str) -> Option<String> {
        let eol = self.end_of_life?;
        Some(if today >= eol {
            format!(
                "The model {} reached its end of life on {eol}; requests to it fail. Choose a \
                 current model (for example {DEFAULT_MODEL}) with `--model` or the session's \
                 model setting.",
                self.id
            )
        } else {
            format!(
                "The model {} is deprecated and retires on {eol}. Move to a current model (for \
                 example {DEFAULT_MODEL}) before then.",
                self.id
            )
        })
    }
}

/// Today's date as `YYYY-MM-DD` in UTC (civil-from-days; no date crate needed).
pub fn today_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    date_of_days((secs / 86_400) as i64)
}

/// Howard Hinnant's days-from-civil inverse: days since 1970-01-01 to a calendar date.
fn date_of_days(z: i64) -> String {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Every id in the table with its end of life, for `jarvis models` and the JS check.
pub fn table() -> Vec<ModelInfo> {
    TABLE
        .iter()
        .filter_map(|r| ModelInfo::lookup(r.ids[0]))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_finds_the_same_row() {
        for spelling in [
            "claude-sonnet-4-5",
            "claude-sonnet-4-5-20250929",
            "anthropic.claude-sonnet-4-5-20250929-v1:0",
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "claude-sonnet-4-5@20250929",
        ] {
            let m = ModelInfo::lookup(spelling).unwrap();
            assert_eq!(m.id, "claude-sonnet-4-5-20250929", "{spelling}");
            assert_eq!(m.end_of_life, Some("2026-11-30"));
        }
        assert_eq!(
            ModelInfo::lookup("global.anthropic.claude-sonnet-5-5")
                .unwrap()
                .id,
            "claude-sonnet-5-5"
        );
        assert_eq!(
            ModelInfo::lookup("claude-haiku-4-5@20251001")
                .unwrap()
                .context_window,
            200_000
        );
        assert!(ModelInfo::lookup("gpt-oss-120b").is_none());
        // OpenAI-compatible models: limits by configuration.
        let local = ModelInfo::fallback_with("qwen3-coder", Some(32_768), Some(4_096));
        assert_eq!((local.context_window, local.max_output), (32_768, 4_096));
        let default = ModelInfo::fallback_with("qwen3-coder", None, None);
        assert_eq!(
            (default.context_window, default.max_output),
            (128_000, 8_192)
        );
        assert!(!ModelInfo::resolve("gpt-oss-120b").known);
    }

    #[test]
    fn the_default_is_current_and_the_old_default_warns() {
        let today = "2026-11-30";
        assert_eq!(
            DEFAULT_MODEL,
            DEFAULT_MODEL.trim(),
            "no whitespace in DEFAULT_MODEL"
        );
        let default = ModelInfo::lookup(DEFAULT_MODEL).unwrap();
        assert_eq!(default.deprecation_warning(today), None);
        let old = ModelInfo::lookup("claude-sonnet-4-5").unwrap();
        assert!(
            old.deprecation_warning(today)
                .unwrap()
                .contains("end of life on 2026-11-30")
        );
        assert!(
            old.deprecation_warning("2026-11-29")
                .unwrap()
                .contains("retires on 2026-11-30")
        );
    }

    #[test]
    fn prices_follow_the_cache_multipliers() {
        let p = ModelInfo::lookup(DEFAULT_MODEL).unwrap().pricing;
        assert_eq!(
            (
                p.input,
                p.output,
                p.cache_write,
                p.cache_write_1h,
                p.cache_read
            ),
            (2.0, 10.0, 2.5, 4.0, 0.2)
        );
        let u = jarvis_sync::doc::Usage {
            input_tokens: 1_000_000,
            output_tokens: 0,
            cache_read_tokens: 1_000_000,
            cache_write_tokens: 0,
            cost_micros: 0,
        };
        assert_eq!(p.cost_micros(&u), 2_200_000);
    }

    #[test]
    fn dates_from_days() {
        assert_eq!(date_of_days(0), "1970-01-01");
        assert_eq!(date_of_days(20_422), "2025-11-30");
        assert_eq!(date_of_days(20_787), "2026-11-30");
        assert_eq!(date_of_days(11_016), "2000-02-29");
    }
}
