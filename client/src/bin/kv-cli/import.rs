//! `kv-cli import`: parsers of the three input formats and the concurrent
//! loader.
//!
//! Parsers turn the whole input into records, each either a key and value
//! or the reason the input at that line is unusable. An unusable record
//! counts as failed and the rest still load. The whole file is read into
//! memory first, so inputs are limited by RAM.
//!
//! With `--failed-out`, every failed record is written back in the input
//! format. A record whose load failed is written from its parsed key and
//! value, so importing that file again retries exactly those records; a
//! record the parser rejected is copied as it was and needs fixing first.
//! A failed record of a key whose later record in the file loaded is left
//! out, because importing it again would replace the newer value.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use kv_client::Client;
use serde::Deserialize;

use clap::ValueEnum;

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
    /// The record's input text without its final line break, for
    /// `--failed-out`.
    pub text: String,
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
                text: line.to_string(),
            }),
            Some((key, value)) => Ok(Record {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
            }),
            None => Err(ParseFailure {
                line: index + 1,
                reason: "no tab between key and value".into(),
                text: line.to_string(),
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
                text: line.to_string(),
            }),
            Ok(record) => Ok(Record {
                key: record.key.into_bytes(),
                value: record.value.into_bytes(),
            }),
            Err(error) => Err(ParseFailure {
                line: index + 1,
                reason: format!("invalid JSON record: {error}"),
                text: line.to_string(),
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
            text: lines.join("\n"),
        }),
        None => Err(ParseFailure {
            line: first_line,
            reason: format!("stanza has no {key_field} field; choose another with --key-field"),
            text: lines.join("\n"),
        }),
    }
}

/// A record that did not load, kept for `--failed-out`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailedRecord {
    /// Input text the parser rejected, without its final line break.
    Unparsed(String),
    /// A parsed record whose read or put failed, with the wave it ran in
    /// (see [`split_duplicate_keys`]).
    Unloaded { record: Record, wave: usize },
}

/// Outcome of an import.
#[derive(Debug, Default)]
pub struct ImportSummary {
    pub loaded: u64,
    pub failed: u64,
    pub elapsed: Duration,
    /// The first failures: where (key or line) and why.
    pub failures: Vec<(String, String)>,
    /// Every failed record, in the order the failures happened.
    pub failed_records: Vec<FailedRecord>,
    /// Last wave in which each key loaded.
    loaded_waves: HashMap<Vec<u8>, usize>,
}

impl ImportSummary {
    fn record_failure(&mut self, location: String, reason: String, record: FailedRecord) {
        self.failed += 1;
        if self.failures.len() < FAILURES_SHOWN {
            self.failures.push((location, reason));
        }
        self.failed_records.push(record);
    }

    fn record_loaded(&mut self, key: Vec<u8>, wave: usize) {
        self.loaded += 1;
        let last = self.loaded_waves.entry(key).or_insert(wave);
        *last = (*last).max(wave);
    }

    /// Returns the failed records to import again: all of them except a
    /// failed record of a key that loaded in a later wave, whose newer
    /// value a re-import would replace.
    pub fn records_to_retry(&self) -> Vec<&FailedRecord> {
        self.failed_records
            .iter()
            .filter(|failed| match failed {
                FailedRecord::Unparsed(_) => true,
                FailedRecord::Unloaded { record, wave } => self
                    .loaded_waves
                    .get(&record.key)
                    .is_none_or(|loaded| loaded < wave),
            })
            .collect()
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

/// Renders a failed record in the input format, followed by the separator
/// the parser expects after it, so that the output parses back to the same
/// records.
pub fn format_failed_record(format: ImportFormat, failed: &FailedRecord) -> String {
    let record = match failed {
        FailedRecord::Unparsed(text) => {
            return match format {
                ImportFormat::Deb822 => format!("{text}\n\n"),
                ImportFormat::Tsv | ImportFormat::Jsonl => format!("{text}\n"),
            };
        }
        FailedRecord::Unloaded { record, .. } => record,
    };
    // Parsed records come from UTF-8 text, so the lossy conversion never
    // replaces anything.
    let key = String::from_utf8_lossy(&record.key);
    let value = String::from_utf8_lossy(&record.value);
    match format {
        ImportFormat::Tsv => format!("{key}\t{value}\n"),
        ImportFormat::Jsonl => format!("{}\n", serde_json::json!({"key": key, "value": value})),
        // The value is the whole stanza and ends with a line break.
        ImportFormat::Deb822 => format!("{value}\n"),
    }
}

/// Writes the records to retry to `path`, replacing the file.
fn write_failed_records(
    path: &Path,
    format: ImportFormat,
    summary: &ImportSummary,
) -> anyhow::Result<usize> {
    let records = summary.records_to_retry();
    let file = std::fs::File::create(path)
        .with_context(|| format!("cannot create --failed-out file {}", path.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    for failed in &records {
        writer
            .write_all(format_failed_record(format, failed).as_bytes())
            .with_context(|| format!("cannot write --failed-out file {}", path.display()))?;
    }
    writer
        .flush()
        .with_context(|| format!("cannot write --failed-out file {}", path.display()))?;
    Ok(records.len())
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

/// Step of [`load_record`] that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadStep {
    /// The read that fetches the context; the put was not sent.
    Read,
    Put,
}

/// Returns true when a put that failed with `error` may still have been
/// applied on some replicas: the request reached a coordinator, or the
/// connection broke while it was in flight.
pub fn put_may_be_applied(error: &kv_client::Error) -> bool {
    matches!(
        error,
        kv_client::Error::Transport { .. }
            | kv_client::Error::DeadlineExceeded { .. }
            | kv_client::Error::QuorumFailed { .. }
    )
}

/// Describes a failed record for the summary, saying whether the put may
/// have been applied and whether importing the record again is safe.
///
/// Without --blind a re-import reads the key and puts with that context, so
/// it replaces what the read returns. A copy held only by replicas outside
/// that read (such as a stopped node) is not covered and can come back as
/// a sibling with the same value. With --blind nothing is replaced, so an
/// applied first put always leaves a second copy.
pub fn describe_load_failure(step: LoadStep, error: &kv_client::Error, blind: bool) -> String {
    if step == LoadStep::Read {
        return format!("read before the put failed, so the put was not sent: {error}");
    }
    if !put_may_be_applied(error) {
        return error.to_string();
    }
    if blind {
        format!(
            "{error}; the put may have been applied. Re-importing it with --blind then adds \
             a second copy as a sibling, so re-import it without --blind"
        )
    } else {
        format!(
            "{error}; the put may have been applied. Re-importing it is safe because import \
             reads the key first and replaces what it reads; only a copy on a replica the \
             read misses, such as a stopped node, can return as a same-value sibling"
        )
    }
}

/// Writes one record: a read then a put with its context, or a blind put.
async fn load_record(
    client: &Client,
    record: Record,
    blind: bool,
) -> Result<(), (LoadStep, kv_client::Error)> {
    let context = if blind {
        None
    } else {
        let read = client
            .get(&record.key)
            .await
            .map_err(|error| (LoadStep::Read, error))?;
        Some(read.context)
    };
    client
        .put(&record.key, record.value, context.as_ref())
        .await
        .map_err(|error| (LoadStep::Put, error))?;
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
            Err(failure) => summary.record_failure(
                format!("line {}", failure.line),
                failure.reason,
                FailedRecord::Unparsed(failure.text),
            ),
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
    for (wave_index, wave) in waves.into_iter().enumerate() {
        let mut results = futures::stream::iter(wave)
            .map(|record| async move {
                let result = load_record(client, record.clone(), blind).await;
                (record, result)
            })
            .buffer_unordered(args.concurrency as usize);
        while let Some((record, result)) = results.next().await {
            match result {
                Ok(()) => summary.record_loaded(record.key, wave_index),
                Err((step, error)) => {
                    let key = String::from_utf8_lossy(&record.key).into_owned();
                    summary.record_failure(
                        format!("key {key:?}"),
                        describe_load_failure(step, &error, blind),
                        FailedRecord::Unloaded {
                            record,
                            wave: wave_index,
                        },
                    );
                }
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

    let written = match &args.failed_out {
        Some(path) => Some(write_failed_records(path, args.format, &summary)?),
        None => None,
    };
    print_summary(&summary, json);
    if summary.failed > 0 {
        eprintln!("{}", failed_out_hint(args, written));
        return Err(CliError::ImportFailed {
            failed: summary.failed,
            total: total as u64,
        }
        .into());
    }
    Ok(())
}

/// Returns the line that tells where the failed records are, or how to get
/// them all when --failed-out was not given.
fn failed_out_hint(args: &ImportArgs, written: Option<usize>) -> String {
    let format = args
        .format
        .to_possible_value()
        .map(|value| value.get_name().to_string())
        .unwrap_or_default();
    match (&args.failed_out, written) {
        (Some(path), Some(count)) => format!(
            "wrote {count} failed records to {}; import that file again with --format {format} (records the parser rejected need fixing first)",
            path.display()
        ),
        _ => format!(
            "the summary lists at most {FAILURES_SHOWN} failures; run again with --failed-out PATH to write every failed record to PATH for a re-import"
        ),
    }
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

    fn record(key: &str, value: &str) -> Record {
        Record {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        }
    }

    fn unloaded(key: &str, value: &str, wave: usize) -> FailedRecord {
        FailedRecord::Unloaded {
            record: record(key, value),
            wave,
        }
    }

    #[test]
    fn failed_records_parse_back_in_each_format() {
        let records = [record("a", "x\ty \"q\" é"), record("b", "")];
        for format in [ImportFormat::Tsv, ImportFormat::Jsonl] {
            let text: String = records
                .iter()
                .map(|r| {
                    format_failed_record(
                        format,
                        &FailedRecord::Unloaded {
                            record: r.clone(),
                            wave: 0,
                        },
                    )
                })
                .collect();
            let parsed = match format {
                ImportFormat::Tsv => parse_tsv(&text),
                _ => parse_jsonl(&text),
            };
            let parsed: Vec<Record> = parsed
                .into_iter()
                .map(|p| p.expect("written record parses"))
                .collect();
            assert_eq!(parsed, records, "round trip of {format:?}");
        }
    }

    #[test]
    fn failed_deb822_stanzas_parse_back() {
        let input = "Package: a\nVersion: 1\n Continued\n\nPackage: b\nVersion: 2\n";
        let parsed = parse_deb822(input, "Package");
        let text: String = parsed
            .iter()
            .map(|p| {
                let r = p.clone().expect("stanza parses");
                format_failed_record(
                    ImportFormat::Deb822,
                    &FailedRecord::Unloaded { record: r, wave: 0 },
                )
            })
            .collect();
        assert_eq!(parse_deb822(&text, "Package"), parsed);
    }

    #[test]
    fn unparsed_text_is_copied_unchanged() {
        let parsed = parse_tsv("good\t1\nno-tab-here\n");
        let failure = parsed[1].as_ref().expect_err("no tab");
        let failed = FailedRecord::Unparsed(failure.text.clone());
        assert_eq!(
            format_failed_record(ImportFormat::Tsv, &failed),
            "no-tab-here\n"
        );

        let parsed = parse_deb822("Source: s\nVersion: 1\n", "Package");
        let failure = parsed[0].as_ref().expect_err("no Package");
        let failed = FailedRecord::Unparsed(failure.text.clone());
        assert_eq!(
            format_failed_record(ImportFormat::Deb822, &failed),
            "Source: s\nVersion: 1\n\n"
        );
    }

    #[test]
    fn retry_skips_key_loaded_later() {
        let mut summary = ImportSummary::default();
        summary.record_failure("key a".into(), "r".into(), unloaded("a", "1", 0));
        summary.record_loaded(b"a".to_vec(), 1);
        summary.record_loaded(b"b".to_vec(), 0);
        summary.record_failure("key b".into(), "r".into(), unloaded("b", "2", 1));
        summary.record_failure(
            "line 9".into(),
            "r".into(),
            FailedRecord::Unparsed("x".into()),
        );
        let retry = summary.records_to_retry();
        assert_eq!(
            retry,
            vec![&unloaded("b", "2", 1), &FailedRecord::Unparsed("x".into())]
        );
        assert_eq!(summary.failed, 3);
    }

    #[test]
    fn summary_keeps_every_failed_record() {
        let mut summary = ImportSummary::default();
        for index in 0..(FAILURES_SHOWN + 3) {
            summary.record_failure(
                format!("key {index}"),
                "r".into(),
                unloaded(&index.to_string(), "v", 0),
            );
        }
        assert_eq!(summary.failures.len(), FAILURES_SHOWN);
        assert_eq!(summary.records_to_retry().len(), FAILURES_SHOWN + 3);
    }

    #[test]
    fn load_failure_says_when_put_may_be_applied() {
        let transport = kv_client::Error::Transport {
            address: "127.0.0.1:7402".into(),
            message: "transport error".into(),
        };
        let reason = describe_load_failure(LoadStep::Put, &transport, false);
        assert!(
            reason.starts_with("transport error talking to 127.0.0.1:7402"),
            "{reason}"
        );
        assert!(reason.contains("may have been applied"), "{reason}");
        assert!(
            reason.contains("re-importing it is safe")
                || reason.contains("Re-importing it is safe"),
            "{reason}"
        );

        let blind = describe_load_failure(LoadStep::Put, &transport, true);
        assert!(blind.contains("may have been applied"), "{blind}");
        assert!(blind.contains("without --blind"), "{blind}");

        let quorum = kv_client::Error::QuorumFailed {
            message: "1 of W=2".into(),
        };
        assert!(
            describe_load_failure(LoadStep::Put, &quorum, false).contains("may have been applied")
        );

        let read = describe_load_failure(LoadStep::Read, &transport, false);
        assert!(read.contains("put was not sent"), "{read}");
        assert!(!read.contains("may have been applied"), "{read}");

        let invalid = kv_client::Error::InvalidArgument {
            message: "invalid key: empty".into(),
        };
        assert_eq!(
            describe_load_failure(LoadStep::Put, &invalid, false),
            "invalid key: empty"
        );
    }
}
