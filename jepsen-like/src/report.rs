//! The checkers' results of a run: `results.json` in the run folder and a
//! short text summary for the terminal.
//!
//! `results.json` is one pretty-printed JSON object: the fields of
//! [`Verdicts`] at the top level (so `valid` and `verdict` come first) plus
//! a `run` field with whatever the harness passes to describe the run
//! (workload, nemesis, seed, ...).

use crate::checker::{Anomaly, Share, Verdict, Verdicts};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// File name of the results in the run folder.
pub const RESULTS_FILE: &str = "results.json";

/// Anomalies listed per kind in the summary; `results.json` has them all.
const SUMMARY_ANOMALIES_PER_KIND: usize = 10;

/// Errors writing `results.json`.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("failed to create the run folder {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to serialise the results for {path}: {source}")]
    Serialize {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("failed to write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Serialize)]
struct Results<'a, R: Serialize> {
    #[serde(flatten)]
    verdicts: &'a Verdicts,
    run: &'a R,
}

/// Writes `results.json` (pretty JSON) into `dir`, creating the folder if
/// needed, and returns the file's path. `run` describes the run, e.g. a
/// struct with the workload, nemesis and seed; use `()` for none.
pub fn write<R: Serialize>(
    dir: &Path,
    verdicts: &Verdicts,
    run: &R,
) -> Result<PathBuf, ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(RESULTS_FILE);
    let mut text = serde_json::to_string_pretty(&Results { verdicts, run }).map_err(|source| {
        ReportError::Serialize {
            path: path.clone(),
            source,
        }
    })?;
    text.push('\n');
    std::fs::write(&path, text).map_err(|source| ReportError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Renders a short text summary: the verdict, the first anomalies of each
/// kind, convergence, indeterminate operations, availability and latency.
pub fn summary(verdicts: &Verdicts) -> String {
    let mut text = String::new();
    let verdict = match verdicts.verdict {
        Verdict::Valid => "VALID",
        Verdict::Invalid => "INVALID",
        Verdict::Unknown => "UNKNOWN",
    };
    let _ = writeln!(
        text,
        "verdict: {verdict} ({} anomalies, {} operations on {} keys)",
        verdicts.anomaly_count, verdicts.operations, verdicts.keys
    );

    let kinds: [(&str, &[Anomaly]); 6] = [
        ("lost writes", &verdicts.lost_writes),
        ("lost supersedes", &verdicts.lost_supersedes),
        ("resurrected deletes", &verdicts.resurrected_deletes),
        ("phantom values", &verdicts.phantom_values),
        ("unconverged", &verdicts.convergence.anomalies),
        ("dot conflicts", &verdicts.dot_conflicts),
    ];
    for (name, anomalies) in kinds {
        let _ = writeln!(text, "  {name}: {}", anomalies.len());
        for anomaly in anomalies.iter().take(SUMMARY_ANOMALIES_PER_KIND) {
            let _ = writeln!(text, "    - {}", anomaly.explanation);
        }
        if anomalies.len() > SUMMARY_ANOMALIES_PER_KIND {
            let _ = writeln!(
                text,
                "    ... and {} more in {RESULTS_FILE}",
                anomalies.len() - SUMMARY_ANOMALIES_PER_KIND
            );
        }
    }

    let convergence = &verdicts.convergence;
    let _ = writeln!(
        text,
        "convergence: {} after {:.0} ms (deadline {:.0} ms)",
        if convergence.converged {
            "converged"
        } else {
            "NOT converged"
        },
        convergence.waited_ms,
        convergence.deadline_ms
    );
    let indeterminate = &verdicts.indeterminate;
    let _ = writeln!(
        text,
        "indeterminate operations: {} ({} present, {} absent at the end)",
        indeterminate.operations, indeterminate.present, indeterminate.absent
    );

    let availability = &verdicts.availability;
    let _ = writeln!(text, "availability (ok / completed):");
    let _ = writeln!(
        text,
        "  overall       {}",
        format_share(&availability.overall)
    );
    let _ = writeln!(
        text,
        "  during faults {}",
        format_share(&availability.during_faults)
    );
    let _ = writeln!(
        text,
        "  healthy       {}",
        format_share(&availability.healthy)
    );
    for (phase, share) in &availability.phases {
        let _ = writeln!(text, "  phase {phase:<7} {}", format_share(share));
    }

    if !verdicts.latency.is_empty() {
        let _ = writeln!(
            text,
            "latency (ms): {:<8} {:>7} {:>9} {:>9} {:>9} {:>9}",
            "kind", "count", "p50", "p90", "p99", "max"
        );
        for (kind, latency) in &verdicts.latency {
            let _ = writeln!(
                text,
                "              {kind:<8} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                latency.count, latency.p50_ms, latency.p90_ms, latency.p99_ms, latency.max_ms
            );
        }
    }

    if !verdicts.unchecked.is_empty() {
        let _ = writeln!(text, "not checked: {}", verdicts.unchecked.len());
        for unchecked in verdicts.unchecked.iter().take(SUMMARY_ANOMALIES_PER_KIND) {
            let key = unchecked.key.as_deref().unwrap_or("history");
            let _ = writeln!(text, "    - {key}: {}", unchecked.reason);
        }
    }
    text
}

fn format_share(share: &Share) -> String {
    let percent = share
        .ok_share
        .map_or_else(|| "   n/a".to_string(), |ok| format!("{:5.1}%", ok * 100.0));
    format!(
        "{percent} of {} ({} fail, {} info, {} incomplete)",
        share.completed, share.fail, share.info, share.incomplete
    )
}
