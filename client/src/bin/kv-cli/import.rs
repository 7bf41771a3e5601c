//! `kv-cli import`: parsers of the three input formats and the concurrent
//! loader.
//!
//! Parsers turn the whole input into records, each either a key and value
//! or the reason the input at that line is unusable. An unusable record
//! counts as failed and the rest still load. The whole file is read into
//! memory first, so inputs are limited by RAM.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use kv_client::Client;
use serde::Deserialize;

use crate::args::{ImportArgs, ImportFormat};
use crate::CliError;

/// Minimum interval between two progress lines.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);
/// Failures listed in the summary.
const FAILURES_SHOWN: usize = 5;

/// One record to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// A record the input could not provide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseFailure {
    /// 1-based line where the record starts.
    pub line: usize,
    pub reason: String,
}

pub type Parsed = Result<Record, ParseFailure>;

/// Parses `key<TAB>value` lines. The first tab separates key and value, so
/// values may contain tabs. Empty lines are skipped; a trailing `\r` is
/// removed.
pub fn parse_tsv(text: &str) -> Vec<Parsed> {
    let mut records = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let parsed = match line.split_once('\t') {
            Some(("", _)) => Err(ParseFailure {
                line: index + 1,
                reason: "empty key before the tab".into(),
            }),
            Some((key, value)) => Ok(Record {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
            }),
            None => Err(ParseFailure {
                line: index + 1,
                reason: "no tab between key and value".into(),
            }),
        };
        records.push(parsed);
    }
    records
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRecord {
    key: String,
    value: String,
}

/// Parses one `{"key": "...", "value": "..."}` object per line. Empty lines
/// are skipped.
pub fn parse_jsonl(text: &str) -> Vec<Parsed> {
    let mut records = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed = match serde_json::from_str::<JsonRecord>(line) {
            Ok(record) if record.key.is_empty() => Err(ParseFailure {
                line: index + 1,
                reason: "empty key".into(),
            }),
            Ok(record) => Ok(Record {
                key: record.key.into_bytes(),
                value: record.value.into_bytes(),
            }),
            Err(error) => Err(ParseFailure {
                line: index + 1,
                reason: format!("invalid JSON record: {error}"),
            }),
        };
        records.push(parsed);
    }
    records
}

/// Parses deb822 stanzas (paragraphs separated by lines that are empty or
/// hold only spaces and tabs, as in /var/lib/dpkg/status).
///
/// The key is the value of the field `key_field`, whose name compares
/// case-insensitively as deb822 specifies. Continuation lines (starting
/// with a space or tab) belong to the previous field and never provide the
/// key. The value is the whole stanza, its lines joined with `\n` and a
/// final `\n`. The last stanza needs no blank line after it.
pub fn parse_deb822(text: &str, key_field: &str) -> Vec<Parsed> {
    let mut records = Vec::new();
    let mut stanza: Vec<&str> = Vec::new();
    let mut stanza_start = 0;
    for (index, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim_matches([' ', '\t']).is_empty() {
            if !stanza.is_empty() {
                records.push(deb822_record(&stanza, stanza_start, key_field));
                stanza.clear();
            }
            continue;
        }
        if stanza.is_empty() {
            stanza_start = index + 1;
        }
        stanza.push(line);
    }
    if !stanza.is_empty() {
        records.push(deb822_record(&stanza, stanza_start, key_field));
    }
    records
}

fn deb822_record(lines: &[&str], first_line: usize, key_field: &str) -> Parsed {
    let key = lines
        .iter()
        .filter(|line| !line.starts_with([' ', '\t']))
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case(key_field))
        .map(|(_, value)| value.trim());
    match key {
        Some(key) if !key.is_empty() => {
            let mut value = lines.join("\n");
            value.push('\n');
            Ok(Record {
                key: key.as_bytes().to_vec(),
                value: value.into_bytes(),
            })
        }
        Some(_) => Err(ParseFailure {
            line: first_line,
            reason: format!("field {key_field} of the stanza is empty"),
        }),
        None => Err(ParseFailure {
            line: first_line,
            reason: format!("stanza has no {key_field} field; choose another with --key-field"),
        }),
    }
}

/// Outcome of an import.
#[derive(Debug, Default)]
pub struct ImportSummary {
    pub loaded: u64,
    pub failed: u64,
    pub elapsed: Duration,
    /// The first failures: where (key or line) and why.
    pub failures: Vec<(String, String)>,
}

impl ImportSummary {
    fn record_failure(&mut self, location: String, reason: String) {
        self.failed += 1;
        if self.failures.len() < FAILURES_SHOWN {
            self.failures.push((location, reason));
        }
    }

    fn rate(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            (self.loaded + self.failed) as f64 / seconds
        } else {
            0.0
        }
    }
}

/// Splits records into waves that each contain a key at most once: the
/// n-th record of a key goes to wave n. Loading the waves one after the
/// other keeps the file order for repeated keys, so the last record
/// replaces the earlier ones instead of racing them into siblings.
pub fn split_duplicate_keys(records: Vec<Record>) -> Vec<Vec<Record>> {
    let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut waves: Vec<Vec<Record>> = Vec::new();
    for record in records {
        let occurrence = seen.entry(record.key.clone()).or_insert(0);
        if waves.len() <= *occurrence {
            waves.push(Vec::new());
        }
        waves[*occurrence].push(record);
        *occurrence += 1;
    }
    waves
}

/// Writes one record: a read then a put with its context, or a blind put.
async fn load_record(client: &Client, record: Record, blind: bool) -> Result<(), kv_client::Error> {
    let context = if blind {
        None
    } else {
        Some(client.get(&record.key).await?.context)
    };
    client
        .put(&record.key, record.value, context.as_ref())
        .await?;
    Ok(())
}

/// Runs `kv-cli import` and prints the summary.
pub async fn run(client: &Client, args: &ImportArgs, json: bool) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read import file {}", args.file.display()))?;
    let text = String::from_utf8(bytes).map_err(|error| CliError::Usage {
        message: format!(
            "import file {} is not valid UTF-8 (first invalid byte at offset {})",
            args.file.display(),
            error.utf8_error().valid_up_to()
        ),
    })?;
    let parsed = match args.format {
        ImportFormat::Tsv => parse_tsv(&text),
        ImportFormat::Jsonl => parse_jsonl(&text),
        ImportFormat::Deb822 => parse_deb822(&text, &args.key_field),
    };
    drop(text);

    let total = parsed.len();
    let mut summary = ImportSummary::default();
    let mut records = Vec::with_capacity(total);
    for item in parsed {
        match item {
            Ok(record) => records.push(record),
            Err(failure) => {
                summary.record_failure(format!("line {}", failure.line), failure.reason)
            }
        }
    }

    // A terminal gets one progress line rewritten in place, a log file
    // gets separate lines.
    let progress_end = if std::io::stderr().is_terminal() {
        "\r"
    } else {
        "\n"
    };
    let started = Instant::now();
    let mut last_progress = started;
    let blind = args.blind;
    // Blind puts of one key become siblings whatever their order, so only
    // the read-then-put mode needs the waves.
    let waves = if blind {
        vec![records]
    } else {
        split_duplicate_keys(records)
    };
    for wave in waves {
        let mut results = futures::stream::iter(wave)
            .map(|record| async move {
                let key = String::from_utf8_lossy(&record.key).into_owned();
                (key, load_record(client, record, blind).await)
            })
            .buffer_unordered(args.concurrency as usize);
        while let Some((key, result)) = results.next().await {
            match result {
                Ok(()) => summary.loaded += 1,
                Err(error) => summary.record_failure(format!("key {key:?}"), error.to_string()),
            }
            if last_progress.elapsed() >= PROGRESS_INTERVAL {
                last_progress = Instant::now();
                eprint!(
                    "loaded {}, failed {} of {total} records{progress_end}",
                    summary.loaded, summary.failed
                );
            }
        }
    }
    if last_progress != started && progress_end == "\r" {
        eprintln!();
    }
    summary.elapsed = started.elapsed();
    print_summary(&summary, json);

    if summary.failed > 0 {
        return Err(CliError::ImportFailed {
            failed: summary.failed,
            total: total as u64,
        }
        .into());
    }
    Ok(())
}

fn print_summary(summary: &ImportSummary, json: bool) {
    if json {
        let failures: Vec<_> = summary
            .failures
            .iter()
            .map(|(location, reason)| serde_json::json!({"record": location, "error": reason}))
            .collect();
        let document = serde_json::json!({
            "loaded": summary.loaded,
            "failed": summary.failed,
            "seconds": summary.elapsed.as_secs_f64(),
            "records_per_second": summary.rate(),
            "first_failures": failures,
        });
        println!("{document}");
        return;
    }
    println!(
        "loaded {}, failed {} records in {:.2} s ({:.0} records/s)",
        summary.loaded,
        summary.failed,
        summary.elapsed.as_secs_f64(),
        summary.rate()
    );
    for (location, reason) in &summary.failures {
        eprintln!("failed {location}: {reason}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(parsed: &Parsed) -> (&str, &str) {
        let record = parsed.as_ref().expect("record parses");
        (
            std::str::from_utf8(&record.key).expect("utf-8 key"),
            std::str::from_utf8(&record.value).expect("utf-8 value"),
        )
    }

    #[test]
    fn tsv_splits_at_first_tab() {
        let parsed = parse_tsv("a\t1\nb\tx\ty\r\n\nc\t\n");
        assert_eq!(parsed.len(), 3);
        assert_eq!(ok(&parsed[0]), ("a", "1"));
        assert_eq!(ok(&parsed[1]), ("b", "x\ty"));
        assert_eq!(ok(&parsed[2]), ("c", ""));
    }

    #[test]
    fn tsv_reports_line_without_tab() {
        let parsed = parse_tsv("a\t1\nno-tab\n\tvalue\n");
        assert_eq!(parsed.len(), 3);
        let failure = parsed[1].as_ref().expect_err("no tab");
        assert_eq!(failure.line, 2);
        assert!(failure.reason.contains("no tab"), "{}", failure.reason);
        let failure = parsed[2].as_ref().expect_err("empty key");
        assert_eq!(failure.line, 3);
    }

    #[test]
    fn jsonl_parses_records_and_reports_bad_lines() {
        let text = "{\"key\": \"k1\", \"value\": \"v \\u00e9\"}\n\n{\"key\": 1}\n{\"key\": \"k2\", \"value\": \"\"}\n";
        let parsed = parse_jsonl(text);
        assert_eq!(parsed.len(), 3);
        assert_eq!(ok(&parsed[0]), ("k1", "v é"));
        let failure = parsed[1].as_ref().expect_err("key is a number");
        assert_eq!(failure.line, 3);
        assert!(failure.reason.starts_with("invalid JSON record"));
        assert_eq!(ok(&parsed[2]), ("k2", ""));
    }

    #[test]
    fn jsonl_rejects_empty_key() {
        let parsed = parse_jsonl("{\"key\": \"\", \"value\": \"v\"}");
        assert_eq!(
            parsed[0].as_ref().expect_err("empty key").reason,
            "empty key"
        );
    }

    #[test]
    fn deb822_handles_continuations_and_last_stanza() {
        let text = "\
Package: alpha
Status: install ok installed
Description: first line
 continued line
 .
 Package: not-a-key

  \t
package: beta
Version: 1.0
Description: no blank line after this stanza";
        let parsed = parse_deb822(text, "Package");
        assert_eq!(parsed.len(), 2);
        let (key, value) = ok(&parsed[0]);
        assert_eq!(key, "alpha");
        assert_eq!(
            value,
            "Package: alpha\nStatus: install ok installed\nDescription: first line\n continued line\n .\n Package: not-a-key\n"
        );
        let (key, value) = ok(&parsed[1]);
        assert_eq!(key, "beta");
        assert!(
            value.ends_with("no blank line after this stanza\n"),
            "{value}"
        );
    }

    #[test]
    fn deb822_reports_stanza_without_key_field() {
        let parsed = parse_deb822("Package: a\n\nSource: b\nVersion: 2\n", "Package");
        assert_eq!(parsed.len(), 2);
        assert!(parsed[0].is_ok());
        let failure = parsed[1].as_ref().expect_err("no Package field");
        assert_eq!(failure.line, 3);
        assert!(failure.reason.contains("Package"), "{}", failure.reason);
    }

    #[test]
    fn split_duplicate_keys_keeps_file_order() {
        let record = |key: &str, value: &str| Record {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        };
        let waves = split_duplicate_keys(vec![
            record("a", "1"),
            record("b", "1"),
            record("a", "2"),
            record("a", "3"),
            record("c", "1"),
        ]);
        assert_eq!(waves.len(), 3);
        assert_eq!(
            waves[0],
            vec![record("a", "1"), record("b", "1"), record("c", "1")]
        );
        assert_eq!(waves[1], vec![record("a", "2")]);
        assert_eq!(waves[2], vec![record("a", "3")]);
    }

    #[test]
    fn split_duplicate_keys_of_empty_input() {
        assert!(split_duplicate_keys(Vec::new()).is_empty());
    }

    #[test]
    fn deb822_uses_chosen_key_field() {
        let parsed = parse_deb822("Package: a\nSource: src-a\n", "Source");
        assert_eq!(ok(&parsed[0]).0, "src-a");
    }
}
