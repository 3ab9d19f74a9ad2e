//! `manifest.json`: what a checkpoint directory holds, written last and atomically, and checked
//! before anything is restored from it.
//!
//! A directory without a manifest is an unfinished dump. A manifest whose job, format, CRIU
//! major version or file checksums do not match is refused; verification only reads.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::layout::{self, LayoutError};

/// Name of the manifest inside an image directory (same as `lodger_api::MANIFEST_FILE`).
pub const MANIFEST_FILE: &str = "manifest.json";

/// Version of the manifest format; a restore refuses any other.
pub const FORMAT_VERSION: u32 = 1;

/// Checkpoint strategy, spelled as in the Kubernetes API.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Freeze, dump everything, restore eagerly.
    StopAndCopy,
    /// Dump everything; the target resumes at once and pages memory in from the volume.
    LazyRestore,
    /// Dump without memory; the source serves pages to the target (`criu lazy-pages`).
    PostCopy,
    /// Iterative `pre-dump --track-mem`, then a short final dump.
    PreCopy,
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Strategy::StopAndCopy => "StopAndCopy",
            Strategy::LazyRestore => "LazyRestore",
            Strategy::PostCopy => "PostCopy",
            Strategy::PreCopy => "PreCopy",
        };
        f.write_str(name)
    }
}

/// Identity of the job an image belongs to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct JobId {
    /// Namespace of the MigratableJob.
    pub namespace: String,
    /// Name of the MigratableJob.
    pub name: String,
    /// UID of the MigratableJob.
    pub uid: String,
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} (uid {})", self.namespace, self.name, self.uid)
    }
}

/// A signal the shim accepted while a checkpoint was running; delivered once after restore.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct QueuedSignal {
    /// The signal's sequence number.
    pub seq: u64,
    /// Signal number.
    pub signo: i32,
}

/// One of the job's stdio pipes: which fd of the job it is and CRIU's id for it, so that the
/// restoring shim can hand CRIU a fresh pipe in its place (`--inherit-fd fd[N]:<pipe>`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StdioPipe {
    /// The job's file descriptor (1 = stdout, 2 = stderr).
    pub fd: i32,
    /// CRIU's name of the pipe, `pipe:[<inode>]`.
    pub pipe: String,
}

/// Shim state that travels with the image.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TravelState {
    /// Highest signal seq handled (delivered or queued) so far.
    pub last_signal_seq: u64,
    /// Signals accepted but not yet delivered, in seq order.
    pub queued_signals: Vec<QueuedSignal>,
    /// The job's stdio pipes.
    pub stdio: Vec<StdioPipe>,
}

/// One image file with its size and checksum.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ImageFile {
    /// Path relative to the image directory.
    pub name: PathBuf,
    /// Size in bytes.
    pub bytes: u64,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
}

/// Timing and size figures from CRIU's `stats-dump` and our own clocks.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DumpFigures {
    /// Microseconds CRIU spent freezing the job.
    pub freezing_us: u64,
    /// Microseconds the job stayed frozen.
    pub frozen_us: u64,
    /// Milliseconds the job was stopped by the dump (freezing + frozen, rounded up).
    pub freeze_ms: u64,
    /// Milliseconds the whole checkpoint took (all CRIU runs plus checksums).
    pub duration_ms: u64,
    /// Pages written to the image.
    pub pages_written: u64,
    /// Pages left to be served lazily (PostCopy).
    pub pages_lazy: u64,
}

/// The manifest of one checkpoint directory.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The job the image belongs to.
    pub job: JobId,
    /// Checkpoint sequence number within the job.
    pub seq: u64,
    /// Strategy used.
    pub strategy: Strategy,
    /// Strategy requested.
    pub requested_strategy: Strategy,
    /// Why the requested strategy was not used, when it was not.
    pub fallback_reason: Option<String>,
    /// Whether the job was left running on the source.
    pub leave_running: bool,
    /// `criu --version` of the dumping CRIU.
    pub criu_version: String,
    /// Kernel release of the dumping node (`uname -r`).
    pub kernel: String,
    /// Unix time (ms) the manifest was written.
    pub created_at_unix_ms: u64,
    /// Unix time (ms) the job stopped running on the source (None if left running).
    pub stopped_at_unix_ms: Option<u64>,
    /// For PostCopy: `host:port` of the source's page server.
    pub page_server: Option<String>,
    /// Timings and page counts.
    pub figures: DumpFigures,
    /// Sum of all image file sizes.
    pub image_bytes: u64,
    /// Every image file with its checksum.
    pub files: Vec<ImageFile>,
    /// Shim state that travels with the job.
    pub travel: TravelState,
}

/// Why a checkpoint directory cannot be restored from. Nothing is changed by verification.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// No manifest: the dump never finished (or this is not an image directory).
    #[error("failed to find {} (the checkpoint is incomplete or the path is wrong)", path.display())]
    Missing {
        /// Expected manifest path.
        path: PathBuf,
    },
    /// The manifest is not valid JSON of the expected shape.
    #[error("failed to parse {}: {source}", path.display())]
    Unreadable {
        /// Manifest path.
        path: PathBuf,
        /// Parser error.
        #[source]
        source: serde_json::Error,
    },
    /// Written by an incompatible Lodger.
    #[error("failed to use manifest format {found}: this shim reads format {FORMAT_VERSION}")]
    Format {
        /// Format found.
        found: u32,
    },
    /// Belongs to another job.
    #[error("failed to restore: checkpoint belongs to job {found}, not {expected}")]
    OtherJob {
        /// The job in the manifest, `ns/name (uid ...)`.
        found: String,
        /// The job restoring, `ns/name (uid ...)`.
        expected: String,
    },
    /// Dumped by a CRIU whose images this CRIU may not read.
    #[error(
        "failed to restore: images were written by CRIU {found}, this node has CRIU {local} (major versions must match)"
    )]
    CriuVersion {
        /// CRIU version in the manifest.
        found: String,
        /// Local CRIU version.
        local: String,
    },
    /// An image file is missing or has another size.
    #[error("failed to verify image file {}: {reason} (the checkpoint is partial)", name.display())]
    Partial {
        /// File name relative to the image directory.
        name: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An image file's checksum differs.
    #[error("failed to verify image file {}: SHA-256 {found} differs from the manifest's {expected} (the checkpoint is corrupt)", name.display())]
    Checksum {
        /// File name.
        name: PathBuf,
        /// Checksum in the manifest.
        expected: String,
        /// Checksum of the file.
        found: String,
    },
    /// Reading the directory failed.
    #[error(transparent)]
    Layout(#[from] LayoutError),
}

impl ManifestError {
    /// Stable category for metrics and events.
    pub fn category(&self) -> &'static str {
        match self {
            ManifestError::Missing { .. } => "ManifestMissing",
            ManifestError::Unreadable { .. } | ManifestError::Format { .. } => "ManifestInvalid",
            ManifestError::OtherJob { .. } => "ManifestOtherJob",
            ManifestError::CriuVersion { .. } => "CriuIncompatible",
            ManifestError::Partial { .. } | ManifestError::Checksum { .. } => "ImageCorrupt",
            ManifestError::Layout(e) => e.category(),
        }
    }
}

/// Size and SHA-256 of a file, streamed.
pub fn hash_file(path: &Path) -> Result<(u64, String), LayoutError> {
    let mut file = std::fs::File::open(path).map_err(|e| LayoutError::io("open", path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| LayoutError::io("read", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, hex::encode(hasher.finalize())))
}

/// Lists and checksums every image file in `dir` (everything but the manifest).
pub fn describe_files(dir: &Path) -> Result<Vec<ImageFile>, LayoutError> {
    let skip = [MANIFEST_FILE, ".manifest.json.tmp"];
    layout::list_files(dir, &skip)?
        .into_iter()
        .map(|name| {
            let (bytes, sha256) = hash_file(&dir.join(&name))?;
            Ok(ImageFile {
                name,
                bytes,
                sha256,
            })
        })
        .collect()
}

impl Manifest {
    /// Writes the manifest into `dir`, atomically.
    pub fn write(&self, dir: &Path) -> Result<(), LayoutError> {
        let mut bytes =
            serde_json::to_vec_pretty(self).expect("manifest has only serializable fields");
        bytes.push(b'\n');
        layout::write_atomically(dir, MANIFEST_FILE, &bytes)
    }

    /// Reads the manifest of `dir` without checking anything but its syntax.
    pub fn read(dir: &Path) -> Result<Self, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ManifestError::Missing { path });
            }
            Err(e) => return Err(LayoutError::io("read", &path, e).into()),
        };
        serde_json::from_slice(&bytes).map_err(|source| ManifestError::Unreadable { path, source })
    }

    /// Reads and fully verifies the manifest of `dir` for a restore by `job` with a CRIU of
    /// version `criu_version`: format, job identity, CRIU major version, every file's size and
    /// checksum. Only reads.
    pub fn verify(dir: &Path, job: &JobId, criu_version: &str) -> Result<Self, ManifestError> {
        let manifest = Self::read(dir)?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(ManifestError::Format {
                found: manifest.format_version,
            });
        }
        if &manifest.job != job {
            return Err(ManifestError::OtherJob {
                found: manifest.job.to_string(),
                expected: job.to_string(),
            });
        }
        let major = |v: &str| v.split('.').next().unwrap_or("").to_owned();
        if major(&manifest.criu_version) != major(criu_version) {
            return Err(ManifestError::CriuVersion {
                found: manifest.criu_version.clone(),
                local: criu_version.to_owned(),
            });
        }
        for file in &manifest.files {
            let path = dir.join(&file.name);
            let meta = std::fs::symlink_metadata(&path).map_err(|e| ManifestError::Partial {
                name: file.name.clone(),
                reason: e.to_string(),
            })?;
            if meta.len() != file.bytes {
                return Err(ManifestError::Partial {
                    name: file.name.clone(),
                    reason: format!("{} bytes, manifest says {}", meta.len(), file.bytes),
                });
            }
            let (_, sha256) = hash_file(&path)?;
            if sha256 != file.sha256 {
                return Err(ManifestError::Checksum {
                    name: file.name.clone(),
                    expected: file.sha256.clone(),
                    found: sha256,
                });
            }
        }
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobId {
        JobId {
            namespace: "lab".into(),
            name: "render".into(),
            uid: "u-1".into(),
        }
    }

    fn sample(dir: &Path) -> Manifest {
        std::fs::write(dir.join("pages-1.img"), vec![7u8; 10_000]).unwrap();
        std::fs::write(dir.join("core-1.img"), b"core").unwrap();
        let files = describe_files(dir).unwrap();
        Manifest {
            format_version: FORMAT_VERSION,
            job: job(),
            seq: 3,
            strategy: Strategy::StopAndCopy,
            requested_strategy: Strategy::PreCopy,
            fallback_reason: Some("no soft-dirty".into()),
            leave_running: false,
            criu_version: "4.1.1".into(),
            kernel: "6.18".into(),
            created_at_unix_ms: 1,
            stopped_at_unix_ms: Some(1),
            page_server: None,
            figures: DumpFigures::default(),
            image_bytes: files.iter().map(|f| f.bytes).sum(),
            files,
            travel: TravelState {
                last_signal_seq: 4,
                queued_signals: vec![QueuedSignal { seq: 4, signo: 10 }],
                stdio: vec![StdioPipe {
                    fd: 1,
                    pipe: "pipe:[99]".into(),
                }],
            },
        }
    }

    /// A manifest written by a dump verifies and round-trips exactly, travel state included;
    /// otherwise signals or stdio would be lost across a migration.
    #[test]
    fn written_manifest_verifies_and_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let manifest = sample(tmp.path());
        assert_eq!(manifest.image_bytes, 10_004);
        manifest.write(tmp.path()).unwrap();
        let back = Manifest::verify(tmp.path(), &job(), "4.0.0").unwrap();
        assert_eq!(back, manifest);
    }

    /// Each way a checkpoint can be unusable is refused with its own category, so the operator
    /// can fall back to an older checkpoint instead of restoring garbage.
    #[test]
    fn verification_refuses_bad_checkpoints() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let err = Manifest::verify(dir, &job(), "4.1.1").unwrap_err();
        assert_eq!(err.category(), "ManifestMissing");

        let manifest = sample(dir);
        manifest.write(dir).unwrap();
        let other = JobId {
            uid: "u-2".into(),
            ..job()
        };
        assert_eq!(
            Manifest::verify(dir, &other, "4.1.1")
                .unwrap_err()
                .category(),
            "ManifestOtherJob"
        );
        assert_eq!(
            Manifest::verify(dir, &job(), "5.0").unwrap_err().category(),
            "CriuIncompatible"
        );

        // Same size, one byte flipped: only the checksum can catch it.
        let mut pages = std::fs::read(dir.join("pages-1.img")).unwrap();
        pages[5000] ^= 1;
        std::fs::write(dir.join("pages-1.img"), &pages).unwrap();
        let err = Manifest::verify(dir, &job(), "4.1.1").unwrap_err();
        assert_eq!(err.category(), "ImageCorrupt");
        assert!(err.to_string().contains("SHA-256"), "{err}");

        std::fs::remove_file(dir.join("core-1.img")).unwrap();
        let err = Manifest::verify(dir, &job(), "4.1.1").unwrap_err();
        assert!(err.to_string().contains("partial"), "{err}");

        std::fs::write(dir.join(MANIFEST_FILE), b"{\"formatVersion\":1").unwrap();
        assert_eq!(
            Manifest::verify(dir, &job(), "4.1.1")
                .unwrap_err()
                .category(),
            "ManifestInvalid"
        );
    }
}
