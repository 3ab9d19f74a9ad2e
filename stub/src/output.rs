//! The job's output, stitched across generations: used by the stub (its stdout) and by
//! `kubectl lodger logs`.
//!
//! Where the bytes are: the job writes to its shim's stdout, which is the container's stdout, so
//! each workload pod `<job>-<generation>` logs what the job wrote while it ran *there*. A restored
//! process writes to the new pod's stdout, so generation N's log ends at the checkpoint and
//! generation N+1's begins right after it. Stitching is therefore: follow generation N until its
//! container has terminated and its log is drained, then read generation N+1 from its beginning.
//!
//! Nothing lost, nothing repeated within a generation: lines are requested with `timestamps=true`.
//! When a stream breaks while the container still runs, it is re-requested with `sinceTime` (whole
//! seconds, floored) and a [`Cursor`] drops lines already written: those older than the last
//! written timestamp, and at that timestamp as many as were already written. After a container
//! terminates, one last non-following read (deduplicated the same way) drains anything the
//! following stream had not delivered yet.
//!
//! A *restart* (the operator started the command afresh: the new pod has no
//! `lodger.dev/restore-from` annotation) replays output; a marker line says so before it.
//!
//! Not possible here: output written to a node that is lost before its log is read is gone with
//! the node (the pod's log lives on the node); a restore from a periodic checkpoint then repeats
//! what the job wrote after that checkpoint. A marker line names such a gap when a generation's
//! pod disappears before its log was read to a clean end.

use std::time::Duration;

use futures::{AsyncBufReadExt, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, LogParams};
use kube::{Api, ResourceExt};
use lodger_api::{
    ANNOTATION_RESTORE_FROM, JobPhase, LABEL_GENERATION, LABEL_JOB, LABEL_ROLE, MigratableJob,
    ROLE_WORKLOAD,
};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Errors of output following.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// A read of the job or its pods failed for good (RBAC, missing CRD).
    #[error("failed to read {what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    /// Writing to the output failed (stdout closed).
    #[error("failed to write the job's output: {0}")]
    Write(#[source] std::io::Error),
}

/// Dedup cursor over one generation's timestamped log lines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Timestamp of the last written line.
    last: Option<Timestamp>,
    /// Lines written with exactly that timestamp.
    written_at_last: usize,
    /// Lines at `last` still to skip in the current (resumed) stream.
    to_skip_at_last: usize,
}

impl Cursor {
    /// The `sinceTime` to resume from: the last written timestamp floored to whole seconds
    /// (the API's resolution), so the resumed stream starts at or before it.
    pub fn resume_from(&self) -> Option<Timestamp> {
        self.last
            .and_then(|t| Timestamp::from_second(t.as_second()).ok())
    }

    /// Starts a new stream of the same container (after a break): lines already written will
    /// come again and must be skipped.
    pub fn restart_stream(&mut self) {
        self.to_skip_at_last = self.written_at_last;
    }

    /// Whether a line with timestamp `ts` is new (and records it when it is). Lines without a
    /// timestamp are always new.
    pub fn accept(&mut self, ts: Option<Timestamp>) -> bool {
        let Some(ts) = ts else { return true };
        match self.last {
            Some(last) if ts < last => false,
            Some(last) if ts == last => {
                if self.to_skip_at_last > 0 {
                    self.to_skip_at_last -= 1;
                    false
                } else {
                    self.written_at_last += 1;
                    true
                }
            }
            _ => {
                self.last = Some(ts);
                self.written_at_last = 1;
                self.to_skip_at_last = 0;
                true
            }
        }
    }
}

/// Splits a `timestamps=true` log line into its timestamp and text (the text keeps its newline).
pub fn split_timestamp(line: &str) -> (Option<Timestamp>, &str) {
    if let Some((head, rest)) = line.split_once(' ')
        && let Ok(ts) = head.parse::<Timestamp>()
    {
        return (Some(ts), rest);
    }
    (None, line)
}

/// How to read the output.
#[derive(Clone, Copy, Debug)]
pub struct FollowOptions {
    /// Keep following until the job ends (stub, `logs -f`), or print what exists and stop.
    pub follow: bool,
    /// How often to look again while waiting for a pod, a container or the job's end.
    pub poll: Duration,
}

/// How reading the output ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The job reached a terminal phase and every generation's output was written.
    Finished {
        /// Succeeded or Failed.
        phase: JobPhase,
        /// `status.exitCode`.
        exit_code: Option<i32>,
    },
    /// The MigratableJob is gone (deleted: cancelled).
    Deleted,
    /// Not following: every existing generation's output was written; the job goes on.
    Caught,
}

/// The exit code a process representing the job should end with.
pub fn exit_code_of(ended: &Ended) -> i32 {
    match ended {
        Ended::Finished {
            exit_code: Some(c), ..
        } => (*c).clamp(0, 255),
        Ended::Finished {
            phase: JobPhase::Succeeded,
            exit_code: None,
        } => 0,
        Ended::Finished { .. } => 1,
        // Cancelled: as if the job had been killed by SIGTERM.
        Ended::Deleted => 128 + 15,
        Ended::Caught => 0,
    }
}

fn generation_of(pod: &Pod) -> Option<i64> {
    pod.labels().get(LABEL_GENERATION)?.parse().ok()
}

/// State of the job's container in a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ContainerState {
    NotStarted,
    Running,
    Terminated,
    /// The pod ended without the container ever running.
    NeverRan,
}

fn container_state(pod: &Pod, container: &str) -> ContainerState {
    let status = pod.status.as_ref();
    let cs = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|all| all.iter().find(|c| c.name == container));
    match cs.and_then(|c| c.state.as_ref()) {
        Some(st) if st.terminated.is_some() => ContainerState::Terminated,
        Some(st) if st.running.is_some() => ContainerState::Running,
        _ => match status.and_then(|s| s.phase.as_deref()) {
            Some("Succeeded" | "Failed") => ContainerState::NeverRan,
            _ => ContainerState::NotStarted,
        },
    }
}

/// True for failures that may pass: 429, 5xx and transport errors.
pub fn is_transient(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(status) => matches!(status.code, 429 | 500 | 502 | 503 | 504),
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// Follows a job's output across its generations and writes it to `out`.
#[derive(Debug)]
pub struct Stitcher {
    jobs: Api<MigratableJob>,
    pods: Api<Pod>,
    job: String,
    options: FollowOptions,
    phase_tx: Option<tokio::sync::watch::Sender<Option<JobPhase>>>,
}

impl Stitcher {
    /// A stitcher for `job`, reading through `jobs` and `pods` (both in the job's namespace).
    pub fn new(
        jobs: Api<MigratableJob>,
        pods: Api<Pod>,
        job: &str,
        options: FollowOptions,
    ) -> Self {
        Self {
            jobs,
            pods,
            job: job.to_string(),
            options,
            phase_tx: None,
        }
    }

    /// Publishes every job phase the stitcher observes (the stub tells users when a signal is
    /// queued because the job is migrating or parked).
    pub fn with_phase_updates(
        mut self,
        phase_tx: tokio::sync::watch::Sender<Option<JobPhase>>,
    ) -> Self {
        self.phase_tx = Some(phase_tx);
        self
    }

    /// Runs an API read; while following, transient failures (5xx, 429, transport) are retried
    /// every poll interval instead of ending the output.
    async fn read<T, F, Fut>(&self, what: String, call: F) -> Result<T, OutputError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        loop {
            match call().await {
                Ok(v) => return Ok(v),
                Err(err) if self.options.follow && is_transient(&err) => {
                    tracing::warn!(%what, error = %err, "read failed, retrying");
                    tokio::time::sleep(self.options.poll).await;
                }
                Err(source) => return Err(OutputError::Api { what, source }),
            }
        }
    }

    async fn workload_pods(&self) -> Result<Vec<(i64, Pod)>, OutputError> {
        let lp = ListParams::default().labels(&format!(
            "{LABEL_JOB}={},{LABEL_ROLE}={ROLE_WORKLOAD}",
            self.job
        ));
        let list = self
            .read(format!("the pods of job {}", self.job), || {
                self.pods.list(&lp)
            })
            .await?;
        let mut pods: Vec<(i64, Pod)> = list
            .items
            .into_iter()
            .filter_map(|p| generation_of(&p).map(|g| (g, p)))
            .collect();
        pods.sort_by_key(|(g, _)| *g);
        Ok(pods)
    }

    /// Writes the output of every generation, in order, and returns how it ended.
    pub async fn run<W: AsyncWrite + Unpin>(&self, out: &mut W) -> Result<Ended, OutputError> {
        let mut done: Option<i64> = None;
        let mut terminal_seen = false;
        // Between generations (placing, migrating, Parked) the stub polls; while nothing changes
        // it backs off from `poll` to 8 x `poll`, so a long-Parked job costs its stub about one
        // list and one get per 8 s.
        let mut last_seen: Option<(Option<JobPhase>, i64)> = None;
        let mut quiet_rounds = 0u32;
        loop {
            let next = self
                .workload_pods()
                .await?
                .into_iter()
                .find(|(g, _)| done.is_none_or(|d| *g > d));
            if let Some((generation, pod)) = next {
                if done.is_some() && !pod.annotations().contains_key(ANNOTATION_RESTORE_FROM) {
                    let node = pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_deref())
                        .unwrap_or("?");
                    let marker = format!(
                        "[lodger] job restarted from the beginning (generation {generation}, node {node}): the output below repeats earlier output\n"
                    );
                    out.write_all(marker.as_bytes())
                        .await
                        .map_err(OutputError::Write)?;
                }
                self.follow_pod(&pod, out).await?;
                done = Some(generation);
                continue;
            }
            let Some(job) = self
                .read(format!("MigratableJob {}", self.job), || {
                    self.jobs.get_opt(&self.job)
                })
                .await?
            else {
                return Ok(Ended::Deleted);
            };
            let status = job.status.unwrap_or_default();
            let seen = Some((status.phase, status.pod_generation));
            if seen == last_seen {
                quiet_rounds = (quiet_rounds + 1).min(3);
            } else {
                quiet_rounds = 0;
                last_seen = seen;
            }
            if let Some(tx) = &self.phase_tx {
                tx.send_replace(status.phase);
            }
            if let Some(phase) = status.phase.filter(|p| p.is_terminal()) {
                // NB: list once more after seeing the end: a last generation could have been
                // created and finished between our list and the job's read.
                if terminal_seen {
                    return Ok(Ended::Finished {
                        phase,
                        exit_code: status.exit_code,
                    });
                }
                terminal_seen = true;
                continue;
            }
            if !self.options.follow {
                return Ok(Ended::Caught);
            }
            tokio::time::sleep(self.options.poll * (1 << quiet_rounds)).await;
        }
    }

    /// Writes one generation's output: until its container terminated and its log is drained,
    /// or until the pod is gone.
    async fn follow_pod<W: AsyncWrite + Unpin>(
        &self,
        pod: &Pod,
        out: &mut W,
    ) -> Result<(), OutputError> {
        let name = pod.name_any();
        let Some(container) = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .map(|c| c.name.clone())
        else {
            return Ok(());
        };
        let mut cursor = Cursor::default();
        let mut first_stream = true;
        // NB: a following stream the server ended cleanly (EOF, no error) delivered everything up
        // to the container's exit; the operator may then delete the pod at once (nothing of a job
        // stays on the source node), and that is no loss.
        let mut clean_eof = false;
        loop {
            let current = self
                .read(format!("pod {name}"), || self.pods.get_opt(&name))
                .await?;
            let Some(current) = current else {
                if clean_eof {
                    return Ok(());
                }
                let marker = format!(
                    "[lodger] pod {name} vanished before its output was fully read: output may be missing here\n"
                );
                out.write_all(marker.as_bytes())
                    .await
                    .map_err(OutputError::Write)?;
                return Ok(());
            };
            let state = container_state(&current, &container);
            match state {
                ContainerState::NeverRan => return Ok(()),
                ContainerState::NotStarted => {
                    if !self.options.follow {
                        return Ok(());
                    }
                    tokio::time::sleep(self.options.poll).await;
                    continue;
                }
                ContainerState::Running | ContainerState::Terminated => {}
            }
            let follow = self.options.follow && state == ContainerState::Running;
            if !first_stream {
                cursor.restart_stream();
            }
            first_stream = false;
            let lp = LogParams {
                container: Some(container.clone()),
                follow,
                timestamps: true,
                since_time: cursor.resume_from(),
                ..LogParams::default()
            };
            clean_eof = false;
            match self.pods.log_stream(&name, &lp).await {
                Ok(reader) => {
                    let mut lines = reader.lines();
                    clean_eof = true;
                    while let Some(line) = lines.next().await {
                        // A broken stream: the loop re-reads with the cursor.
                        let Ok(line) = line else {
                            clean_eof = false;
                            break;
                        };
                        let (ts, text) = split_timestamp(&line);
                        if cursor.accept(ts) {
                            out.write_all(text.as_bytes())
                                .await
                                .map_err(OutputError::Write)?;
                            out.write_all(b"\n").await.map_err(OutputError::Write)?;
                        }
                    }
                    out.flush().await.map_err(OutputError::Write)?;
                }
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
                // 400 while the container is being (re)created, 5xx, transport errors: retry.
                Err(err) => {
                    tracing::debug!(pod = %name, error = %err, "reading the log failed, retrying");
                    if !self.options.follow {
                        return Ok(());
                    }
                }
            }
            if state == ContainerState::Terminated || !self.options.follow {
                return Ok(());
            }
            tokio::time::sleep(self.options.poll).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Option<Timestamp> {
        Some(s.parse().unwrap())
    }

    /// If this fails, a resumed log stream would repeat lines already printed or drop lines that
    /// share a timestamp with the last printed one.
    #[test]
    fn cursor_skips_exactly_what_was_written() {
        let mut c = Cursor::default();
        assert!(c.accept(ts("2026-01-01T00:00:01.5Z")));
        assert!(c.accept(ts("2026-01-01T00:00:02.25Z")));
        assert!(c.accept(ts("2026-01-01T00:00:02.25Z")));
        assert_eq!(c.resume_from(), ts("2026-01-01T00:00:02Z"));
        c.restart_stream();
        // The resumed stream from 00:00:02 repeats the two lines at .25, then brings a third.
        assert!(!c.accept(ts("2026-01-01T00:00:02.25Z")));
        assert!(!c.accept(ts("2026-01-01T00:00:02.25Z")));
        assert!(c.accept(ts("2026-01-01T00:00:02.25Z")));
        assert!(c.accept(ts("2026-01-01T00:00:03Z")));
        // An older line can only be a repeat.
        assert!(!c.accept(ts("2026-01-01T00:00:02.9Z")));
        // Lines without timestamps pass.
        assert!(c.accept(None));
    }

    /// If this fails, job output lines would be printed with kubelet timestamps or lose their
    /// text.
    #[test]
    fn splits_kubelet_timestamps() {
        let (t, text) = split_timestamp("2026-11-22T10:00:00.123456789Z hello world");
        assert_eq!(t, ts("2026-11-22T10:00:00.123456789Z"));
        assert_eq!(text, "hello world");
        assert_eq!(split_timestamp("no stamp here"), (None, "no stamp here"));
    }

    /// If this fails, the stub would exit 0 for a failed job or lose the job's exit code.
    #[test]
    fn exit_codes() {
        let fin = |phase, exit_code| Ended::Finished { phase, exit_code };
        assert_eq!(exit_code_of(&fin(JobPhase::Succeeded, None)), 0);
        assert_eq!(exit_code_of(&fin(JobPhase::Failed, Some(3))), 3);
        assert_eq!(exit_code_of(&fin(JobPhase::Failed, None)), 1);
        assert_eq!(exit_code_of(&fin(JobPhase::Failed, Some(300))), 255);
        assert_eq!(exit_code_of(&Ended::Deleted), 143);
    }
}
