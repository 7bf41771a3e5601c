//! Clock skew with libfaketime (Debian package `faketime`).
//!
//! Each node starts with `LD_PRELOAD` set to libfaketime and
//! `FAKETIME_TIMESTAMP_FILE` pointing to its own file in the run folder,
//! which contains a relative offset such as `+30s` or `-45s` (initially `+0`).
//! `FAKETIME_NO_CACHE=1` makes libfaketime read the file on every clock
//! call, so rewriting it changes the skew while the node runs.
//! `FAKETIME_DONT_FAKE_MONOTONIC=1` leaves the monotonic clock alone, so
//! tokio's timers and the failure detector's intervals keep working; only
//! wall-clock time (`SystemTime`, e.g. the node generation) is skewed.
//!
//! Known limit: the offset is read per clock call, so a rewrite takes
//! effect at once, but a write that races with a read can be seen half
//! written; the file is therefore replaced by a rename.

use std::path::{Path, PathBuf};

/// Errors of clock skew.
#[derive(Debug, thiserror::Error)]
pub enum SkewError {
    #[error("cannot write the skew file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Searches the usual library folders for `libfaketime.so.1` (glob over
/// the multiarch folders, so other architectures work too).
pub fn find_libfaketime() -> Option<PathBuf> {
    let mut roots = vec![
        PathBuf::from("/usr/lib/faketime"),
        PathBuf::from("/usr/local/lib/faketime"),
    ];
    for base in ["/usr/lib", "/usr/lib64", "/lib"] {
        if let Ok(entries) = std::fs::read_dir(base) {
            for entry in entries.flatten() {
                roots.push(entry.path().join("faketime"));
            }
        }
    }
    roots
        .into_iter()
        .map(|dir| dir.join("libfaketime.so.1"))
        .find(|path| path.is_file())
}

/// The per-node skew files of a run.
#[derive(Clone, Debug)]
pub struct Skew {
    library: PathBuf,
    dir: PathBuf,
}

impl Skew {
    /// Uses `library` and keeps the node files in `dir`.
    pub fn new(library: PathBuf, dir: &Path) -> Skew {
        Skew {
            library,
            dir: dir.to_path_buf(),
        }
    }

    fn file(&self, node: usize) -> PathBuf {
        self.dir.join(format!("n{node}.faketime"))
    }

    /// Environment that starts node `node` under libfaketime; creates its
    /// file with no offset.
    pub fn env_for(&self, node: usize) -> Result<Vec<(String, String)>, SkewError> {
        self.set(node, 0)?;
        Ok(vec![
            ("LD_PRELOAD".into(), self.library.display().to_string()),
            (
                "FAKETIME_TIMESTAMP_FILE".into(),
                self.file(node).display().to_string(),
            ),
            ("FAKETIME_NO_CACHE".into(), "1".into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        ])
    }

    /// Sets node `node`'s wall clock `offset_secs` seconds ahead (negative:
    /// behind) of the real time.
    pub fn set(&self, node: usize, offset_secs: i64) -> Result<(), SkewError> {
        let path = self.file(node);
        let temporary = self.dir.join(format!("n{node}.faketime.tmp"));
        let text = format!("{}\n", offset_text(offset_secs));
        std::fs::write(&temporary, text)
            .and_then(|()| std::fs::rename(&temporary, &path))
            .map_err(|source| SkewError::Write { path, source })
    }
}

/// Formats an offset the way libfaketime reads it: `+30s`, `-45s`, `+0`.
pub fn offset_text(offset_secs: i64) -> String {
    match offset_secs {
        0 => "+0".into(),
        secs if secs > 0 => format!("+{secs}s"),
        secs => format!("{secs}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_text_signs() {
        assert_eq!(offset_text(0), "+0");
        assert_eq!(offset_text(30), "+30s");
        assert_eq!(offset_text(-45), "-45s");
    }

    #[test]
    fn set_replaces_file_content() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let skew = Skew::new(PathBuf::from("/nonexistent/libfaketime.so.1"), dir.path());
        let env = skew.env_for(2).expect("env");
        assert!(env.iter().any(|(name, _)| name == "FAKETIME_NO_CACHE"));
        skew.set(2, -45).expect("write");
        let text = std::fs::read_to_string(dir.path().join("n2.faketime")).expect("read");
        assert_eq!(text, "-45s\n");
    }
}
