//! Sealing a finished dump: checksum every image file, make every image file and directory
//! durable, and only then write the manifest.
//!
//! The manifest says "this checkpoint is complete"; it must never describe bytes that are not
//! yet on stable storage. So [`seal`] fsyncs each image file (`File::sync_all`) and every
//! directory from the image directory up to the volume root before [`Manifest::write`] (which
//! itself writes a temp file, fsyncs it, renames it and fsyncs the directory).
//!
//! Per-file `fsync` rather than one `syncfs(2)` of the volume: `syncfs` would also flush every
//! other job's dirty data on a shared volume (unbounded, unrelated work inside this job's
//! downtime) and, on the network filesystems a ReadWriteMany volume usually is, reports write
//! errors less reliably than `fsync` of the file that failed. The fsyncs run on their own thread
//! while the checksums are computed, so the disk's writeback and the CPU's hashing overlap; the
//! manifest waits for both.
//!
//! The steps go through the small [`SealIo`] trait so a test can record their order.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::digest::{self, FileDigest};
use crate::layout::{self, LayoutError};
use crate::manifest::{ImageFile, MANIFEST_FILE, Manifest};

/// Names at the top of an image directory that are not image files.
pub const NOT_IMAGES: [&str; 2] = [MANIFEST_FILE, ".manifest.json.tmp"];

/// The filesystem steps of sealing a checkpoint.
pub trait SealIo: Sync {
    /// Size and per-chunk checksums of `names` (relative to `dir`).
    fn digest(&self, dir: &Path, names: &[PathBuf]) -> Result<Vec<FileDigest>, LayoutError>;
    /// Makes a file's data and metadata durable.
    fn sync_file(&self, path: &Path) -> Result<(), LayoutError>;
    /// Makes a directory's entries durable.
    fn sync_dir(&self, path: &Path) -> Result<(), LayoutError>;
    /// Writes the manifest into `dir` (atomically and durably).
    fn write_manifest(&self, dir: &Path, manifest: &Manifest) -> Result<(), LayoutError>;
}

/// The real filesystem.
#[derive(Debug, Clone, Copy, Default)]
pub struct Disk;

impl SealIo for Disk {
    fn digest(&self, dir: &Path, names: &[PathBuf]) -> Result<Vec<FileDigest>, LayoutError> {
        digest::digest_files(dir, names)
    }

    fn sync_file(&self, path: &Path) -> Result<(), LayoutError> {
        File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(|e| LayoutError::io("sync", path, e))
    }

    fn sync_dir(&self, path: &Path) -> Result<(), LayoutError> {
        layout::sync_dir(path)
    }

    fn write_manifest(&self, dir: &Path, manifest: &Manifest) -> Result<(), LayoutError> {
        manifest.write(dir)
    }
}

/// Every directory below `dir` (`dir` included) and every ancestor of `dir` up to `root`
/// (included): the directories whose entries a new checkpoint added.
fn dirs_to_sync(root: &Path, dir: &Path, names: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = names
        .iter()
        .filter_map(|n| n.parent())
        .filter(|p| !p.as_os_str().is_empty())
        .flat_map(|p| p.ancestors().filter(|a| !a.as_os_str().is_empty()))
        .map(|p| dir.join(p))
        .collect();
    let mut up = dir.to_path_buf();
    loop {
        dirs.push(up.clone());
        if up == root || !up.starts_with(root) || !up.pop() {
            break;
        }
    }
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Seals the image directory `dir` (below the volume root `root`): lists its image files,
/// checksums them while fsyncing them and the directories, then writes the manifest `build`
/// makes from the file list. Nothing is written if any step fails (`build` included: it may
/// refuse, e.g. once a deadline has passed).
pub fn seal<E: From<LayoutError>>(
    io: &dyn SealIo,
    root: &Path,
    dir: &Path,
    build: impl FnOnce(Vec<ImageFile>) -> Result<Manifest, E>,
) -> Result<Manifest, E> {
    let names = layout::list_files(dir, &NOT_IMAGES)?;
    let dirs = dirs_to_sync(root, dir, &names);
    let (digests, synced) = std::thread::scope(|scope| {
        let syncer = scope.spawn(|| -> Result<(), LayoutError> {
            for name in &names {
                io.sync_file(&dir.join(name))?;
            }
            for d in &dirs {
                io.sync_dir(d)?;
            }
            Ok(())
        });
        let digests = io.digest(dir, &names);
        let synced = syncer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (digests, synced)
    });
    let digests = digests?;
    synced?;
    let files = names
        .into_iter()
        .zip(digests)
        .map(|(name, d)| ImageFile {
            name,
            bytes: d.bytes,
            blake3_chunks: d.chunks,
        })
        .collect();
    let manifest = build(files)?;
    io.write_manifest(dir, &manifest)?;
    Ok(manifest)
}

/// Lists and checksums every image file in `dir` (everything but the manifest); writes nothing.
pub fn describe_files(dir: &Path) -> Result<Vec<ImageFile>, LayoutError> {
    let names = layout::list_files(dir, &NOT_IMAGES)?;
    let digests = digest::digest_files(dir, &names)?;
    Ok(names
        .into_iter()
        .zip(digests)
        .map(|(name, d)| ImageFile {
            name,
            bytes: d.bytes,
            blake3_chunks: d.chunks,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use crate::manifest::{DumpFigures, FORMAT_VERSION, JobId, Strategy, TravelState};

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Step {
        Digest,
        SyncFile(PathBuf),
        SyncDir(PathBuf),
        WriteManifest,
    }

    /// Records every step, then does it on the real disk; optionally fails one file's fsync.
    struct Recorder {
        steps: Mutex<Vec<Step>>,
        fail_sync_of: Option<PathBuf>,
    }

    impl Recorder {
        fn push(&self, step: Step) {
            self.steps.lock().unwrap().push(step);
        }
    }

    impl SealIo for Recorder {
        fn digest(&self, dir: &Path, names: &[PathBuf]) -> Result<Vec<FileDigest>, LayoutError> {
            let out = Disk.digest(dir, names);
            self.push(Step::Digest);
            out
        }
        fn sync_file(&self, path: &Path) -> Result<(), LayoutError> {
            if self.fail_sync_of.as_deref() == Some(path) {
                return Err(LayoutError::io("sync", path, std::io::Error::other("EIO")));
            }
            Disk.sync_file(path)?;
            self.push(Step::SyncFile(path.to_path_buf()));
            Ok(())
        }
        fn sync_dir(&self, path: &Path) -> Result<(), LayoutError> {
            Disk.sync_dir(path)?;
            self.push(Step::SyncDir(path.to_path_buf()));
            Ok(())
        }
        fn write_manifest(&self, dir: &Path, manifest: &Manifest) -> Result<(), LayoutError> {
            self.push(Step::WriteManifest);
            Disk.write_manifest(dir, manifest)
        }
    }

    fn manifest(files: Vec<ImageFile>) -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            job: JobId {
                namespace: "lab".into(),
                name: "render".into(),
                uid: "u-1".into(),
            },
            seq: 1,
            strategy: Strategy::StopAndCopy,
            requested_strategy: Strategy::StopAndCopy,
            fallback_reason: None,
            leave_running: false,
            criu_version: "4.1.1".into(),
            kernel: "6.18".into(),
            created_at_unix_ms: 1,
            stopped_at_unix_ms: Some(1),
            page_server: None,
            figures: DumpFigures::default(),
            image_bytes: files.iter().map(|f| f.bytes).sum(),
            chunk_bytes: digest::CHUNK_BYTES,
            files,
            travel: TravelState::default(),
        }
    }

    fn image_dir(root: &Path) -> PathBuf {
        let dir = root.join("lab/render/1");
        std::fs::create_dir_all(dir.join("pre/1")).unwrap();
        std::fs::write(dir.join("pages-1.img"), vec![1u8; 100_000]).unwrap();
        std::fs::write(dir.join("core-1.img"), b"core").unwrap();
        std::fs::write(dir.join("pre/1/pages-1.img"), b"old pages").unwrap();
        dir
    }

    /// The manifest is written only after every image file and every directory from the image
    /// directory up to the volume root was fsynced (and checksummed): otherwise a crash could
    /// leave a "complete" manifest describing pages that never reached the disk.
    #[test]
    fn every_file_and_directory_is_synced_before_the_manifest() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let dir = image_dir(root);
        let io = Recorder {
            steps: Mutex::new(Vec::new()),
            fail_sync_of: None,
        };
        let written = seal::<LayoutError>(&io, root, &dir, |f| Ok(manifest(f))).unwrap();
        let steps = io.steps.into_inner().unwrap();
        assert_eq!(steps.last(), Some(&Step::WriteManifest), "{steps:?}");
        assert_eq!(
            steps.iter().filter(|s| **s == Step::WriteManifest).count(),
            1
        );
        let before: Vec<&Step> = steps[..steps.len() - 1].iter().collect();
        for name in ["pages-1.img", "core-1.img", "pre/1/pages-1.img"] {
            assert!(
                before.contains(&&Step::SyncFile(dir.join(name))),
                "{name} not synced before the manifest: {steps:?}"
            );
        }
        for d in [
            dir.join("pre/1"),
            dir.join("pre"),
            dir.clone(),
            root.join("lab/render"),
            root.join("lab"),
            root.to_path_buf(),
        ] {
            assert!(
                before.contains(&&Step::SyncDir(d.clone())),
                "{} not synced before the manifest: {steps:?}",
                d.display()
            );
        }
        assert!(before.contains(&&Step::Digest));
        assert_eq!(written.files.len(), 3);
        assert_eq!(Manifest::read(&dir).unwrap(), written);
    }

    /// A failed fsync of any image file means no manifest at all: the checkpoint stays
    /// "unfinished" instead of claiming bytes the disk may not have.
    #[test]
    fn a_failed_sync_writes_no_manifest() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let dir = image_dir(root);
        let io = Recorder {
            steps: Mutex::new(Vec::new()),
            fail_sync_of: Some(dir.join("core-1.img")),
        };
        let err = seal::<LayoutError>(&io, root, &dir, |f| Ok(manifest(f))).unwrap_err();
        assert!(err.to_string().contains("core-1.img"), "{err}");
        assert!(
            !io.steps
                .into_inner()
                .unwrap()
                .contains(&Step::WriteManifest)
        );
        assert!(!dir.join(MANIFEST_FILE).exists());
    }
}
