//! The shim's control protocol: typed, versioned requests and responses on a unix socket.
//!
//! The shim listens on `<control dir>/shim.sock` (an emptyDir the pod shares with the node; the
//! node agent reaches it through the kubelet's pods directory). Each connection carries exactly
//! one request and one response, each a single line of JSON. Every message names
//! [`PROTOCOL_VERSION`]; a shim answers a request of another version with
//! [`ErrorKind::UnsupportedVersion`] and does nothing else.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Version of this protocol; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// File name of the control socket inside the control directory.
pub const SOCKET_NAME: &str = "shim.sock";

/// Largest message either side accepts, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Lowest real-time signal number a `signal` request may carry (Linux numbering). The kernel's
/// real-time signals start at 32, but glibc keeps 32 and 33 for its threads, so the SIGRTMIN
/// programs see is 34 and `SIGRTMIN+n` means `34 + n`.
pub const SIGRTMIN: i32 = 34;

/// Highest signal number a `signal` request may carry: SIGRTMAX (the kernel's `_NSIG`).
pub const SIGRTMAX: i32 = 64;

/// Why the shim refuses a `signal` request for `signo`, or `None` when it takes it: the
/// standard signals 1..=31 and the real-time signals [`SIGRTMIN`]..=[`SIGRTMAX`]. Refused: 0
/// and negative numbers, 32 and 33 (glibc's own; a job's C library would treat them as thread
/// cancellation or set*id broadcasts), anything above 64. The node agent applies the same rule
/// before it hands a JobSignal over, so a refused number fails that signal instead of holding
/// up the job's later ones.
pub fn signal_refusal(signo: i32) -> Option<String> {
    match signo {
        1..=31 | SIGRTMIN..=SIGRTMAX => None,
        32 | 33 => Some(format!(
            "signal {signo} is reserved by the C library (glibc) for its own threads and is never \
             sent to a job; real-time signals start at SIGRTMIN = {SIGRTMIN}"
        )),
        _ => Some(format!(
            "{signo} is not a signal number a job can be sent (1..=31, or SIGRTMIN..=SIGRTMAX = \
             {SIGRTMIN}..={SIGRTMAX})"
        )),
    }
}

/// Checkpoint strategy, spelled as in the Kubernetes API (`StopAndCopy`, ...).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Freeze, dump everything, restore eagerly.
    StopAndCopy,
    /// Dump everything; the target restores with lazy pages served from the image on the volume.
    LazyRestore,
    /// Dump with `--lazy-pages`; the source serves the pages to the target until it has them all.
    PostCopy,
    /// Iterative `pre-dump --track-mem`, then a short final dump.
    PreCopy,
}

/// Identity of the job a checkpoint belongs to; recorded in the manifest and checked at restore.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct JobIdentity {
    /// Namespace of the MigratableJob.
    pub namespace: String,
    /// Name of the MigratableJob.
    pub name: String,
    /// UID of the MigratableJob (a re-created job with the same name has another UID).
    pub uid: String,
}

/// A request to the shim.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// Protocol version of the sender; must equal [`PROTOCOL_VERSION`].
    pub version: u32,
    /// What to do.
    #[serde(flatten)]
    pub op: Op,
}

impl Request {
    /// A request of this protocol version.
    pub fn new(op: Op) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            op,
        }
    }
}

/// The operations the shim offers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Op {
    /// Checkpoint the job into `<checkpoint root>/<path>`.
    Checkpoint(CheckpointRequest),
    /// Deliver signal `signo` to the job, exactly once per `seq` (also across migrations).
    Signal {
        /// Signal number, Linux numbering: 1..=31 or a real-time signal 34..=64 (see
        /// [`signal_refusal`]).
        signo: i32,
        /// Per-job sequence number (≥ 1); a seq at or below the highest one seen is a duplicate.
        seq: u64,
    },
    /// Report the shim's state.
    Status,
}

/// Parameters of a checkpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointRequest {
    /// Image directory relative to the checkpoint volume's root: `<namespace>/<job>/<seq>`.
    /// Absolute paths and `..` are refused.
    pub path: PathBuf,
    /// Requested strategy (the shim may fall back to StopAndCopy and says so in the outcome).
    pub strategy: Strategy,
    /// Keep the job running after the dump (periodic checkpoint) instead of stopping it.
    pub leave_running: bool,
    /// The job the image belongs to.
    pub job: JobIdentity,
    /// Sequence number of the checkpoint within the job.
    pub seq: u64,
    /// Milliseconds the shim may spend; past it the dump is abandoned and the job resumes here.
    pub deadline_ms: u64,
}

/// A response from the shim.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    /// Protocol version of the shim.
    pub version: u32,
    /// The outcome.
    #[serde(flatten)]
    pub result: Reply,
}

/// Outcome of a request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum Reply {
    /// The checkpoint is complete and its manifest written.
    Checkpointed(CheckpointOutcome),
    /// What happened to a signal request.
    Signal(SignalOutcome),
    /// The shim's state.
    Status(ShimStatus),
    /// The request failed; nothing changed unless `message` says otherwise.
    Error(ControlError),
}

/// Result of a completed checkpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointOutcome {
    /// Image directory relative to the volume root.
    pub path: PathBuf,
    /// Strategy actually used.
    pub strategy: Strategy,
    /// Why the requested strategy was not used, when it was not.
    pub fallback_reason: Option<String>,
    /// Total bytes of image files.
    pub image_bytes: u64,
    /// Milliseconds the job was frozen (CRIU's statistics).
    pub freeze_ms: u64,
    /// Milliseconds the whole checkpoint took.
    pub duration_ms: u64,
    /// Unix time in milliseconds at which the job stopped running here (None if left running).
    pub stopped_at_unix_ms: Option<u64>,
    /// For PostCopy: the address the target's `criu lazy-pages` must fetch pages from.
    pub page_server: Option<String>,
}

/// What the shim did with a signal request.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum SignalDisposition {
    /// Sent to the job now.
    Delivered,
    /// The job is being checkpointed: the signal travels with the image and is delivered once
    /// after restore (or here, if the checkpoint fails or leaves the job running).
    Queued,
    /// This seq was delivered (or queued) before; nothing was sent.
    Duplicate,
}

/// Result of a signal request.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SignalOutcome {
    /// The request's seq.
    pub seq: u64,
    /// What happened.
    pub disposition: SignalDisposition,
}

/// State of the job under the shim.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum JobState {
    /// Starting or being restored.
    Starting,
    /// Running.
    Running,
    /// Being dumped.
    Checkpointing,
    /// Dumped and stopped here (it now lives in the image).
    Migrated,
    /// Ended.
    Exited {
        /// Exit code (128 + signal number if killed by a signal).
        code: i32,
    },
}

/// The shim's state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ShimStatus {
    /// State of the job.
    pub job: JobState,
    /// PID (in the shim's PID namespace) of the job's init process.
    pub init_pid: Option<i32>,
    /// Highest signal seq handled so far (0 when none).
    pub last_signal_seq: u64,
    /// Checkpoint directory the job was restored from, if it was.
    pub restored_from: Option<PathBuf>,
    /// Version string of the CRIU the shim uses.
    pub criu_version: Option<String>,
    /// After a LazyRestore/PostCopy restore: the background check of the page images'
    /// checksums (the job runs before it finishes). Absent otherwise (eager restores check
    /// every page before the job resumes) and from shims that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_check: Option<PageCheckState>,
}

/// Progress of the background page-image check after a lazy restore.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum PageCheckState {
    /// Still hashing.
    Pending,
    /// Every page image matched the manifest.
    Passed,
    /// A page image differs from the manifest (or could not be read): the job has been
    /// running on memory that may be corrupt.
    Failed {
        /// The verification error.
        message: String,
    },
}

/// A failure, for people and for programs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ControlError {
    /// Stable category.
    pub kind: ErrorKind,
    /// What went wrong and what to do, in a sentence.
    pub message: String,
}

/// Stable categories of control errors.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ErrorKind {
    /// The request's version is not [`PROTOCOL_VERSION`].
    UnsupportedVersion,
    /// The request is malformed or its parameters are invalid.
    BadRequest,
    /// Another checkpoint is in progress.
    Busy,
    /// The job is not running (not started yet, migrated or exited).
    NotRunning,
    /// CRIU failed; the job keeps running here.
    CheckpointFailed,
    /// The deadline passed; the dump was abandoned and the job resumed here.
    DeadlineExceeded,
    /// The checkpoint volume is not writable or is full; the job keeps running here.
    Storage,
    /// Anything else.
    Internal,
}

/// Errors of [`call`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not connect to the socket.
    #[error("failed to connect to shim socket {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// IO failed mid-exchange.
    #[error("failed to talk to the shim: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent something that is not a response.
    #[error("failed to decode the shim's response: {0}")]
    Decode(#[from] serde_json::Error),
    /// No answer within the timeout.
    #[error("the shim did not answer within {0:?}")]
    Timeout(Duration),
    /// The shim speaks another protocol version.
    #[error("the shim speaks protocol version {0}, this client {PROTOCOL_VERSION}")]
    Version(u32),
}

/// Sends one request to the shim at `socket` and waits up to `timeout` for its response.
pub async fn call(socket: &Path, op: Op, timeout: Duration) -> Result<Reply, ClientError> {
    let exchange = async {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: socket.to_path_buf(),
                source,
            })?;
        let (read_half, mut write_half) = stream.into_split();
        let mut line = serde_json::to_vec(&Request::new(op))?;
        line.push(b'\n');
        write_half.write_all(&line).await?;
        write_half.flush().await?;
        let mut reader = BufReader::new(read_half);
        let mut answer = String::new();
        reader.read_line(&mut answer).await?;
        let response: Response = serde_json::from_str(answer.trim_end())?;
        if response.version != PROTOCOL_VERSION {
            return Err(ClientError::Version(response.version));
        }
        Ok(response.result)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ClientError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire format is part of the contract with deployed node agents: a change here breaks
    /// mixed-version clusters.
    #[test]
    fn wire_format_is_stable() {
        let req = Request::new(Op::Signal { signo: 10, seq: 3 });
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"version":1,"op":"signal","signo":10,"seq":3}"#
        );
        let resp = Response {
            version: 1,
            result: Reply::Signal(SignalOutcome {
                seq: 3,
                disposition: SignalDisposition::Queued,
            }),
        };
        assert_eq!(
            serde_json::to_string(&resp).unwrap(),
            r#"{"version":1,"result":"signal","seq":3,"disposition":"queued"}"#
        );
        let back: Response = serde_json::from_str(&serde_json::to_string(&resp).unwrap()).unwrap();
        assert_eq!(back, resp);
    }

    /// If this fails, the shim would refuse a real-time signal a user sent (or a standard one),
    /// or hand the job a number glibc reserves (32, 33) or one that is no signal at all.
    #[test]
    fn takes_standard_and_real_time_signals_only() {
        for signo in (1..=31).chain(SIGRTMIN..=SIGRTMAX) {
            assert_eq!(signal_refusal(signo), None, "{signo}");
        }
        for signo in [i32::MIN, -1, 0, 32, 33, 65, 128, i32::MAX] {
            assert!(signal_refusal(signo).is_some(), "{signo}");
        }
        assert!(
            signal_refusal(32)
                .unwrap()
                .contains("reserved by the C library")
        );
        assert!(signal_refusal(65).unwrap().contains("34..=64"));
    }

    /// If this fails, [`SIGRTMIN`]/[`SIGRTMAX`] disagree with the C library the shim and its
    /// job's init are built against, so `SIGRTMIN+n` would name another signal than in C.
    #[test]
    fn real_time_range_matches_the_c_library() {
        assert_eq!((SIGRTMIN, SIGRTMAX), (libc::SIGRTMIN(), libc::SIGRTMAX()));
    }
}
