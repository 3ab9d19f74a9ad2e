//! `manifest.json`: what a checkpoint directory holds, written last and atomically, and checked
//! before anything is restored from it.
//!
//! A directory without a manifest is an unfinished dump. A manifest whose job, format, CRIU
//! major version or file checksums do not match is refused; verification only reads.
//!
//! Format 2 stores a BLAKE3 digest per [`crate::digest::CHUNK_BYTES`] chunk of every file
//! (format 1 had one SHA-256 per file and is refused with a clear error). Verification comes in
//! two parts so a restore can overlap the slow one with CRIU: [`Manifest::verify_metadata`]
//! (identity, versions, every file's size, the checksums of everything but `pages-*.img`) and
//! [`Manifest::verify_pages`] (the page images' checksums).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{self, CHUNK_BYTES, CheckError};
use crate::layout::{self, LayoutError};

/// Name of the manifest inside an image directory (same as `lodger_api::MANIFEST_FILE`).
pub const MANIFEST_FILE: &str = "manifest.json";

/// Version of the manifest format; a restore refuses any other.
pub const FORMAT_VERSION: u32 = 2;

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

/// One image file with its size and checksums.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ImageFile {
    /// Path relative to the image directory.
    pub name: PathBuf,
    /// Size in bytes.
    pub bytes: u64,
    /// Lower-case hex BLAKE3 of each [`Manifest::chunk_bytes`] chunk, in order (none if empty).
    pub blake3_chunks: Vec<String>,
}

impl ImageFile {
    /// Whether this is a memory image (`pages-*.img`, also in PreCopy's `pre/N/`): the bulk of
    /// a checkpoint, whose checksums a restore may check while CRIU runs.
    pub fn is_pages(&self) -> bool {
        is_pages_image(&self.name)
    }
}

/// Whether `name` is a memory image (`pages-*.img`).
pub fn is_pages_image(name: &Path) -> bool {
    name.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("pages-") && n.ends_with(".img"))
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
    /// Bytes per checksummed chunk of [`ImageFile::blake3_chunks`].
    pub chunk_bytes: u64,
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
    #[error(
        "failed to use manifest format {found}: this shim reads format {FORMAT_VERSION} only \
         (format 1, SHA-256 per file, was written by Lodger before chunked BLAKE3 checksums; \
         take a new checkpoint with a current shim)"
    )]
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
    #[error("failed to verify image file {}: BLAKE3 of chunk {chunk} is {found}, the manifest says {expected} (the checkpoint is corrupt)", name.display())]
    Checksum {
        /// File name.
        name: PathBuf,
        /// Index of the chunk that differs.
        chunk: usize,
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

impl Manifest {
    /// Writes the manifest into `dir`, atomically.
    pub fn write(&self, dir: &Path) -> Result<(), LayoutError> {
        let mut bytes =
            serde_json::to_vec_pretty(self).expect("manifest has only serializable fields");
        bytes.push(b'\n');
        layout::write_atomically(dir, MANIFEST_FILE, &bytes)
    }

    /// Reads the manifest of `dir`, checking its syntax and format version.
    pub fn read(dir: &Path) -> Result<Self, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ManifestError::Missing { path });
            }
            Err(e) => return Err(LayoutError::io("read", &path, e).into()),
        };
        // The version first, so an older format is named as such rather than as a parse error.
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Version {
            format_version: u32,
        }
        let version: Version =
            serde_json::from_slice(&bytes).map_err(|source| ManifestError::Unreadable {
                path: path.clone(),
                source,
            })?;
        if version.format_version != FORMAT_VERSION {
            return Err(ManifestError::Format {
                found: version.format_version,
            });
        }
        serde_json::from_slice(&bytes).map_err(|source| ManifestError::Unreadable { path, source })
    }

    /// Reads and verifies everything of `dir` but the page images' checksums, for a restore by
    /// `job` with a CRIU of version `criu_version`: format, job identity, CRIU major version,
    /// every file's presence and size, the checksums of every file but `pages-*.img`. Returns
    /// the manifest; [`Manifest::verify_pages`] checks the rest. Only reads.
    pub fn verify_metadata(
        dir: &Path,
        job: &JobId,
        criu_version: &str,
    ) -> Result<Self, ManifestError> {
        let manifest = Self::read(dir)?;
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
        if manifest.chunk_bytes != CHUNK_BYTES {
            return Err(ManifestError::Partial {
                name: PathBuf::from(MANIFEST_FILE),
                reason: format!(
                    "checksum chunks of {} bytes, this shim uses {CHUNK_BYTES}",
                    manifest.chunk_bytes
                ),
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
        }
        manifest.check(dir, |f| !f.is_pages())?;
        Ok(manifest)
    }

    /// Checks the checksums of the page images (`pages-*.img`). Only reads.
    pub fn verify_pages(&self, dir: &Path) -> Result<(), ManifestError> {
        self.check(dir, ImageFile::is_pages)
    }

    /// Reads and fully verifies the manifest of `dir`: [`Manifest::verify_metadata`] and
    /// [`Manifest::verify_pages`]. Only reads.
    pub fn verify(dir: &Path, job: &JobId, criu_version: &str) -> Result<Self, ManifestError> {
        let manifest = Self::verify_metadata(dir, job, criu_version)?;
        manifest.verify_pages(dir)?;
        Ok(manifest)
    }

    /// Checks the files chosen by `which` against their chunk digests, in parallel.
    fn check(&self, dir: &Path, which: impl Fn(&ImageFile) -> bool) -> Result<(), ManifestError> {
        let chosen: Vec<&ImageFile> = self.files.iter().filter(|f| which(f)).collect();
        let list: Vec<(PathBuf, u64, &[String])> = chosen
            .iter()
            .map(|f| (dir.join(&f.name), f.bytes, f.blake3_chunks.as_slice()))
            .collect();
        digest::check_files(&list).map_err(|e| match e {
            CheckError::Mismatch(m) => ManifestError::Checksum {
                name: chosen[m.file].name.clone(),
                chunk: m.chunk,
                expected: m.expected,
                found: m.found,
            },
            CheckError::Io(LayoutError::Io { path, source, .. }) => ManifestError::Partial {
                name: path.strip_prefix(dir).unwrap_or(&path).to_path_buf(),
                reason: source.to_string(),
            },
            CheckError::Io(other) => other.into(),
        })
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
        let files = crate::seal::describe_files(dir).unwrap();
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
            chunk_bytes: CHUNK_BYTES,
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
        assert!(err.to_string().contains("BLAKE3"), "{err}");
        // The metadata part alone does not read page images: it passes, the pages part fails.
        let meta = Manifest::verify_metadata(dir, &job(), "4.1.1").unwrap();
        assert_eq!(
            meta.verify_pages(dir).unwrap_err().category(),
            "ImageCorrupt"
        );
        // A flipped byte in a metadata image is caught by the metadata part itself.
        std::fs::write(dir.join("pages-1.img"), vec![7u8; 10_000]).unwrap();
        std::fs::write(dir.join("core-1.img"), b"cord").unwrap();
        let err = Manifest::verify_metadata(dir, &job(), "4.1.1").unwrap_err();
        assert!(err.to_string().contains("core-1.img"), "{err}");

        std::fs::remove_file(dir.join("core-1.img")).unwrap();
        let err = Manifest::verify(dir, &job(), "4.1.1").unwrap_err();
        assert!(err.to_string().contains("partial"), "{err}");

        // A format-1 manifest (SHA-256 per file) is named as an older format, not garbage.
        std::fs::write(
            dir.join(MANIFEST_FILE),
            b"{\"formatVersion\":1,\"files\":[]}",
        )
        .unwrap();
        let err = Manifest::verify(dir, &job(), "4.1.1").unwrap_err();
        assert_eq!(err.category(), "ManifestInvalid");
        assert!(err.to_string().contains("format 1"), "{err}");

        std::fs::write(dir.join(MANIFEST_FILE), b"{\"formatVersion\":2").unwrap();
        assert_eq!(
            Manifest::verify(dir, &job(), "4.1.1")
                .unwrap_err()
                .category(),
            "ManifestInvalid"
        );
    }
}
