//! Terminal activity: the newest access or modify time of `/dev/tty*` and `/dev/pts/*`.
//!
//! This is how HTCondor measures `KeyboardIdle`: typing on a console or in a terminal emulator
//! (or over ssh) reads and writes the terminal device, and the kernel updates the device node's
//! times. NB: since Linux 3.8 (CVE-2013-0160) the kernel updates tty times at most every 8
//! seconds, so this source is accurate to about 8 s plus the sampling period; evdev is the
//! precise one. `/dev/ptmx` is skipped (every new terminal touches it). The directory is
//! configurable because in a container the host's `/dev` is mounted elsewhere.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Errors of the terminal source.
#[derive(Debug, thiserror::Error)]
pub enum TtyError {
    /// The device directory could not be listed.
    #[error("failed to list terminals in {dir}: {source}")]
    List {
        /// The directory.
        dir: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
}

impl TtyError {
    /// Stable category for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            TtyError::List { .. } => "tty_list",
        }
    }
}

/// The newer of a file's access and modify times, from its metadata.
fn touched_at(meta: &std::fs::Metadata) -> SystemTime {
    let at = |secs: i64, nanos: i64| {
        let secs = u64::try_from(secs).unwrap_or(0);
        let nanos = u32::try_from(nanos).unwrap_or(0);
        SystemTime::UNIX_EPOCH + Duration::new(secs, nanos)
    };
    at(meta.atime(), meta.atime_nsec()).max(at(meta.mtime(), meta.mtime_nsec()))
}

/// The newest time any terminal under `dev_dir` (its `tty*` entries and everything in its `pts/`
/// but `ptmx`) was read or written. `None` when there are no terminals. A missing `pts/` is not
/// an error (a console-only machine); a missing `dev_dir` is.
pub fn newest_terminal_activity(dev_dir: &Path) -> Result<Option<SystemTime>, TtyError> {
    let list = |dir: &Path| {
        std::fs::read_dir(dir).map_err(|source| TtyError::List {
            dir: dir.to_path_buf(),
            source,
        })
    };
    let mut newest: Option<SystemTime> = None;
    let mut consider = |entry: std::fs::DirEntry| {
        // Terminals that vanish between listing and stat are simply skipped.
        if let Ok(meta) = entry.metadata()
            && !meta.is_dir()
        {
            let t = touched_at(&meta);
            newest = Some(newest.map_or(t, |n| n.max(t)));
        }
    };
    for entry in list(dev_dir)?.filter_map(Result::ok) {
        if entry.file_name().to_string_lossy().starts_with("tty") {
            consider(entry);
        }
    }
    let pts = dev_dir.join("pts");
    if pts.is_dir() {
        for entry in list(&pts)?.filter_map(Result::ok) {
            if entry.file_name() != "ptmx" {
                consider(entry);
            }
        }
    }
    Ok(newest)
}

#[cfg(test)]
mod tests {
    use std::fs::{File, FileTimes};

    use super::*;

    fn touch(path: &Path, atime: SystemTime, mtime: SystemTime) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        let f = File::create(path).unwrap();
        f.set_times(FileTimes::new().set_accessed(atime).set_modified(mtime))
            .unwrap();
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// If this fails, typing in a terminal (which moves a pts device's access time) would not be
    /// seen, or a stale console would hide a fresh ssh session.
    #[test]
    fn newest_of_tty_and_pts_access_and_modify_times() {
        let dev = tempfile::tempdir().unwrap();
        touch(&dev.path().join("tty1"), at(1_000), at(900));
        touch(&dev.path().join("ttyS0"), at(500), at(1_100));
        touch(&dev.path().join("pts/0"), at(2_000), at(1_500));
        touch(&dev.path().join("pts/3"), at(1_800), at(1_900));
        assert_eq!(
            newest_terminal_activity(dev.path()).unwrap(),
            Some(at(2_000))
        );
    }

    /// If this fails, unrelated device nodes (disks, `/dev/null`) or `/dev/pts/ptmx` (touched on
    /// every new terminal, by anyone) would count as the owner typing.
    #[test]
    fn non_terminals_and_ptmx_are_ignored() {
        let dev = tempfile::tempdir().unwrap();
        touch(&dev.path().join("tty2"), at(1_000), at(1_000));
        touch(&dev.path().join("null"), at(9_000), at(9_000));
        touch(&dev.path().join("sda"), at(9_000), at(9_000));
        touch(&dev.path().join("pts/ptmx"), at(9_000), at(9_000));
        assert_eq!(
            newest_terminal_activity(dev.path()).unwrap(),
            Some(at(1_000))
        );
    }

    /// If this fails, a machine without terminals would be reported as active (or the source
    /// would error) instead of having no opinion; a missing directory must be an error the agent
    /// can report once.
    #[test]
    fn no_terminals_means_no_opinion_and_missing_dir_is_an_error() {
        let dev = tempfile::tempdir().unwrap();
        assert_eq!(newest_terminal_activity(dev.path()).unwrap(), None);
        let err = newest_terminal_activity(&dev.path().join("absent")).unwrap_err();
        assert_eq!(err.category(), "tty_list");
    }
}
