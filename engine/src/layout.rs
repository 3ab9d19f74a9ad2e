//! Where images live on the checkpoint volume and how files there are written.
//!
//! `<root>/<namespace>/<job>/<seq>/` holds CRIU's images and `manifest.json`. Directories are
//! created 0700 and files end up 0600: images hold process memory and are treated like Secrets.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Mode of every directory Lodger creates on the volume.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file Lodger leaves on the volume.
pub const FILE_MODE: u32 = 0o600;

/// Errors of the volume layout.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The relative image path is not acceptable.
    #[error("failed to accept checkpoint path {path:?}: {reason}")]
    BadPath {
        /// The path given.
        path: PathBuf,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A filesystem operation on the volume failed.
    #[error("failed to {action} {}: {source}", path.display())]
    Io {
        /// What was being done ("create directory", "write", ...).
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
}

impl LayoutError {
    /// Stable category for metrics and events.
    pub fn category(&self) -> &'static str {
        match self {
            LayoutError::BadPath { .. } => "BadPath",
            LayoutError::Io { .. } => "Storage",
        }
    }

    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        LayoutError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The conventional image path of checkpoint `seq` of a job, relative to the volume root.
pub fn image_path(namespace: &str, job: &str, seq: u64) -> PathBuf {
    PathBuf::from(namespace).join(job).join(seq.to_string())
}

/// Joins a relative image path onto the volume root, refusing absolute paths, `..`, `.` and
/// empty paths so a request can never reach outside the volume.
pub fn resolve(root: &Path, relative: &Path) -> Result<PathBuf, LayoutError> {
    let bad = |reason| LayoutError::BadPath {
        path: relative.to_path_buf(),
        reason,
    };
    if relative.as_os_str().is_empty() {
        return Err(bad("it is empty"));
    }
    for component in relative.components() {
        match component {
            Component::Normal(_) => {}
            Component::ParentDir => return Err(bad("it contains `..`")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(bad("it must be relative to the checkpoint volume"));
            }
            Component::CurDir => return Err(bad("it contains `.`")),
        }
    }
    Ok(root.join(relative))
}

/// Creates `dir` and its missing parents below `root`, each 0700.
pub fn create_dirs(root: &Path, dir: &Path) -> Result<(), LayoutError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|e| LayoutError::io("create directory", dir, e))?;
    // NB: DirBuilder's mode is filtered by the umask and leaves existing parents alone; set the
    // mode explicitly on every directory between root and dir that we may have created.
    let mut current = dir.to_path_buf();
    while current.starts_with(root) && current != root {
        fs::set_permissions(&current, fs::Permissions::from_mode(DIR_MODE))
            .map_err(|e| LayoutError::io("set permissions of", &current, e))?;
        if !current.pop() {
            break;
        }
    }
    Ok(())
}

/// Proves `dir` is writable by creating, syncing and removing a small probe file.
pub fn probe_writable(dir: &Path) -> Result<(), LayoutError> {
    let probe = dir.join(".lodger-probe");
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(&probe)?;
        file.write_all(&[0u8; 4096])?;
        file.sync_all()
    })();
    let _ = fs::remove_file(&probe);
    result.map_err(|e| LayoutError::io("write to the checkpoint volume at", dir, e))
}

/// Writes `bytes` to `dir/name` atomically: temp file, fsync, rename, fsync of the directory.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), LayoutError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let target = dir.join(name);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(&tmp)
        .map_err(|e| LayoutError::io("create", &tmp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| {
            let _ = fs::remove_file(&tmp);
            LayoutError::io("write", &tmp, e)
        })?;
    drop(file);
    fs::rename(&tmp, &target).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        LayoutError::io("rename into place", &target, e)
    })?;
    sync_dir(dir)
}

/// fsyncs a directory so renames and new entries in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), LayoutError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LayoutError::io("sync directory", dir, e))
}

/// Regular files below `dir` (relative paths, sorted), skipping `skip` names at the top level.
/// Symlinks (CRIU's `parent` links of pre-dumps) are not followed.
pub fn list_files(dir: &Path, skip: &[&str]) -> Result<Vec<PathBuf>, LayoutError> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = dir.join(&rel);
        let entries = fs::read_dir(&abs).map_err(|e| LayoutError::io("list", &abs, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| LayoutError::io("list", &abs, e))?;
            let name = entry.file_name();
            if rel.as_os_str().is_empty() && skip.iter().any(|s| name == *s) {
                continue;
            }
            let kind = entry
                .file_type()
                .map_err(|e| LayoutError::io("stat", &entry.path(), e))?;
            if kind.is_dir() {
                stack.push(rel.join(&name));
            } else if kind.is_file() {
                out.push(rel.join(&name));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Sets 0600 on every regular file and 0700 on every directory below `dir` (CRIU's own modes
/// vary by image type).
pub fn restrict_modes(dir: &Path) -> Result<(), LayoutError> {
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
        .map_err(|e| LayoutError::io("set permissions of", dir, e))?;
    for rel in list_files(dir, &[])? {
        let path = dir.join(rel);
        fs::set_permissions(&path, fs::Permissions::from_mode(FILE_MODE))
            .map_err(|e| LayoutError::io("set permissions of", &path, e))?;
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(|e| LayoutError::io("list", &d, e))? {
            let entry = entry.map_err(|e| LayoutError::io("list", &d, e))?;
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                let sub = entry.path();
                fs::set_permissions(&sub, fs::Permissions::from_mode(DIR_MODE))
                    .map_err(|e| LayoutError::io("set permissions of", &sub, e))?;
                stack.push(sub);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A request must never reach outside the volume: absolute paths and `..` are refused.
    #[test]
    fn resolve_refuses_escapes() {
        let root = Path::new("/vol");
        assert_eq!(
            resolve(root, Path::new("ns/job/3")).unwrap(),
            Path::new("/vol/ns/job/3")
        );
        for bad in ["/etc", "ns/../../etc", "", "./x"] {
            assert!(resolve(root, Path::new(bad)).is_err(), "{bad:?} accepted");
        }
    }

    /// Image directories hold process memory: they must be 0700 and the manifest 0600, and the
    /// manifest must be complete or absent (never a partial file under its final name).
    #[test]
    fn dirs_are_private_and_writes_atomic() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(image_path("ns", "job", 7));
        create_dirs(tmp.path(), &dir).unwrap();
        for d in [
            tmp.path().join("ns"),
            tmp.path().join("ns/job"),
            dir.clone(),
        ] {
            assert_eq!(
                fs::metadata(&d).unwrap().mode() & 0o777,
                DIR_MODE,
                "{}",
                d.display()
            );
        }
        write_atomically(&dir, "manifest.json", b"{}").unwrap();
        let meta = fs::metadata(dir.join("manifest.json")).unwrap();
        assert_eq!(meta.mode() & 0o777, FILE_MODE);
        assert_eq!(fs::read(dir.join("manifest.json")).unwrap(), b"{}");
        assert!(!dir.join(".manifest.json.tmp").exists());
        probe_writable(&dir).unwrap();
        assert_eq!(
            list_files(&dir, &[]).unwrap(),
            vec![PathBuf::from("manifest.json")]
        );
    }
}
