//! Turning a signal into a `JobSignal` object: the request path of Lodger's signal forwarding.
//!
//! Each signal becomes `JobSignal <job>-sig-<seq>` (spec `{job, signal, seq}`) in the job's
//! namespace; the node agent of the node running the job delivers pending JobSignals in `seq`
//! order and the shim delivers each seq at most once (see docs/signals.md). This module's part of
//! the exactly-once promise is: every caught signal gets exactly one object, with seqs increasing
//! in the order the signals were caught.
//!
//! - Seqs count from 1 per job; a fresh sender continues after the highest existing seq of the
//!   job (listed by the `lodger.dev/job` label), so a restarted stub never reuses a number.
//! - Names are deterministic, so a retry after an ambiguous failure (timeout, reset connection,
//!   5xx) re-sends the *same* object and gets AlreadyExists instead of making a duplicate.
//! - Each object carries the sender's id for that signal in `lodger.dev/signal-id`. On
//!   AlreadyExists the sender reads the object back (a `list` narrowed to its name: the stub's
//!   RBAC on jobsignals is create + list only): its own id means the earlier attempt landed
//!   (done, nothing duplicated); another id means a second sender (the plugin, another stub)
//!   took that seq first, so this signal moves on to the next seq.
//! - Permanent refusals (403, 422, ...) are returned as errors and consume no seq.
//! - Each JobSignal has an owner reference to its MigratableJob (no `blockOwnerDeletion`, so no
//!   extra RBAC), so the garbage collector removes a job's signals with the job.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, Client, Resource};
use lodger_api::{ANNOTATION_SIGNAL_ID, JobSignal, JobSignalSpec, LABEL_JOB, MigratableJob};

// NB: after a transport failure or a 5xx the create may or may not have landed: that is the
// ambiguous case the deterministic name and the signal id resolve.
use crate::output::is_transient;

/// Name of the JobSignal with sequence number `seq` of `job`.
pub fn signal_object_name(job: &str, seq: i64) -> String {
    format!("{job}-sig-{seq}")
}

/// Builds the JobSignal a sender creates (pure).
pub fn build_signal(job: &str, seq: i64, signo: i32, signal_id: &str) -> JobSignal {
    JobSignal {
        metadata: ObjectMeta {
            name: Some(signal_object_name(job, seq)),
            labels: Some([(LABEL_JOB.to_string(), job.to_string())].into()),
            annotations: Some([(ANNOTATION_SIGNAL_ID.to_string(), signal_id.to_string())].into()),
            ..ObjectMeta::default()
        },
        spec: JobSignalSpec {
            job: job.to_string(),
            signal: signo,
            seq,
        },
        status: None,
    }
}

/// The owner reference a job's JobSignals carry (plain: not controller, no blockOwnerDeletion).
pub fn owner_reference(job: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: MigratableJob::api_version(&()).into_owned(),
        kind: MigratableJob::kind(&()).into_owned(),
        name: job.to_string(),
        uid: uid.to_string(),
        controller: None,
        block_owner_deletion: None,
    }
}

/// Errors of sending a signal.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The MigratableJob does not exist (reading it for the owner reference failed).
    #[error("migratablejob {job} not found: there is no job to signal")]
    JobGone { job: String },
    /// Reading the MigratableJob failed.
    #[error("failed to read migratablejob {job}: {source}")]
    Job {
        job: String,
        #[source]
        source: kube::Error,
    },
    /// Listing the job's JobSignals (to find the next seq) failed.
    #[error("failed to list the JobSignals of job {job}: {source}")]
    List {
        job: String,
        #[source]
        source: kube::Error,
    },
    /// The API server refused the JobSignal for good (RBAC, validation, missing CRD).
    #[error("failed to create JobSignal {name}: {source}")]
    Refused {
        name: String,
        #[source]
        source: kube::Error,
    },
    /// Transient failures went on past the retry budget.
    #[error("failed to create JobSignal {name} after {attempts} attempts: {source}")]
    GaveUp {
        name: String,
        attempts: u32,
        #[source]
        source: kube::Error,
    },
}

impl SendError {
    /// Stable category for logs and exit codes.
    pub fn category(&self) -> &'static str {
        match self {
            SendError::JobGone { .. } => "job-gone",
            SendError::Job { .. } | SendError::List { .. } => "read",
            SendError::Refused { .. } => "refused",
            SendError::GaveUp { .. } => "unavailable",
        }
    }
}

/// How a sender retries transient failures.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// First back-off.
    pub initial: Duration,
    /// Largest back-off.
    pub max: Duration,
    /// Attempts per signal before giving up; `None` retries forever (the stub: a signal the user
    /// sent must not be dropped because the API server was briefly away).
    pub max_attempts: Option<u32>,
}

impl RetryPolicy {
    /// The stub's policy: 100 ms doubling up to 5 s, forever.
    pub fn stub() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            max_attempts: None,
        }
    }

    /// The plugin's policy: 200 ms doubling, 5 attempts, then an error for the user.
    pub fn cli() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(2),
            max_attempts: Some(5),
        }
    }
}

/// What happened to one signal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    /// Name of the JobSignal that carries it.
    pub name: String,
    /// Its sequence number.
    pub seq: i64,
    /// Create calls made (1 when the first one succeeded).
    pub attempts: u32,
    /// True when a retry found the object of an earlier ambiguous attempt (no duplicate made).
    pub recovered: bool,
}

/// Sends signals for one job as JobSignals, allocating seqs.
#[derive(Debug)]
pub struct SignalSender {
    api: Api<JobSignal>,
    namespace: String,
    job: String,
    sender_id: String,
    field_manager: String,
    retry: RetryPolicy,
    next_seq: Option<i64>,
    sent: u64,
    owner: Option<OwnerReference>,
}

fn is_already_exists(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 409)
}

impl SignalSender {
    /// A sender for `job` in `namespace`. `sender_id` must be unique to this process (the stub
    /// uses its pod name, PID and start time); `field_manager` is the component's manager name.
    pub fn new(
        client: Client,
        namespace: &str,
        job: &str,
        sender_id: &str,
        field_manager: &str,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            job: job.to_string(),
            sender_id: sender_id.to_string(),
            field_manager: field_manager.to_string(),
            retry,
            next_seq: None,
            sent: 0,
            owner: None,
        }
    }

    /// Uses `uid` as the job's UID for owner references (callers that have read the job);
    /// otherwise the first `send` reads the job once.
    pub fn with_owner_uid(mut self, uid: &str) -> Self {
        self.owner = Some(owner_reference(&self.job, uid));
        self
    }

    /// Runs a read, retrying transient failures per the retry policy (reads are idempotent).
    async fn retrying<T, F, Fut>(&self, call: F) -> Result<T, kube::Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let mut attempts = 0u32;
        let mut backoff = self.retry.initial;
        loop {
            attempts += 1;
            match call().await {
                Err(err)
                    if is_transient(&err)
                        && self.retry.max_attempts.is_none_or(|max| attempts < max) =>
                {
                    tracing::warn!(error = %err, "reading for a JobSignal failed, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.retry.max);
                }
                other => return other,
            }
        }
    }

    async fn ensure_owner(&mut self) -> Result<OwnerReference, SendError> {
        if let Some(owner) = &self.owner {
            return Ok(owner.clone());
        }
        let jobs: Api<MigratableJob> =
            Api::namespaced(self.api.clone().into_client(), &self.namespace);
        let job = self
            .retrying(|| jobs.get_opt(&self.job))
            .await
            .map_err(|source| SendError::Job {
                job: self.job.clone(),
                source,
            })?
            .ok_or_else(|| SendError::JobGone {
                job: self.job.clone(),
            })?;
        let uid = job.metadata.uid.unwrap_or_default();
        let owner = owner_reference(&self.job, &uid);
        self.owner = Some(owner.clone());
        Ok(owner)
    }

    /// The highest seq of the job's existing JobSignals (0 when there are none).
    pub async fn highest_seq(&self) -> Result<i64, SendError> {
        let lp = ListParams::default().labels(&format!("{LABEL_JOB}={}", self.job));
        let list = self
            .retrying(|| self.api.list(&lp))
            .await
            .map_err(|source| SendError::List {
                job: self.job.clone(),
                source,
            })?;
        Ok(list
            .items
            .iter()
            .filter(|s| s.spec.job == self.job)
            .map(|s| s.spec.seq)
            .max()
            .unwrap_or(0))
    }

    /// The JobSignal named `name`, read with `list` (label and field selector) rather than `get`,
    /// so the stub's RBAC stays at create + list on jobsignals.
    async fn find(&self, name: &str) -> Result<Option<JobSignal>, kube::Error> {
        let lp = ListParams::default()
            .labels(&format!("{LABEL_JOB}={}", self.job))
            .fields(&format!("metadata.name={name}"));
        let list = self.api.list(&lp).await?;
        Ok(list
            .items
            .into_iter()
            .find(|s| s.metadata.name.as_deref() == Some(name)))
    }

    /// Creates the JobSignal for `signo`; see the module docs for the exactly-once rules.
    pub async fn send(&mut self, signo: i32) -> Result<Sent, SendError> {
        let owner = self.ensure_owner().await?;
        self.sent += 1;
        let signal_id = format!("{}-{}", self.sender_id, self.sent);
        let pp = PostParams {
            dry_run: false,
            field_manager: Some(self.field_manager.clone()),
        };
        let mut attempts = 0u32;
        let mut backoff = self.retry.initial;
        loop {
            let seq = match self.next_seq {
                Some(seq) => seq,
                None => {
                    let seq = self.highest_seq().await? + 1;
                    self.next_seq = Some(seq);
                    seq
                }
            };
            let mut object = build_signal(&self.job, seq, signo, &signal_id);
            object.metadata.owner_references = Some(vec![owner.clone()]);
            let name = signal_object_name(&self.job, seq);
            attempts += 1;
            let err = match self.api.create(&pp, &object).await {
                Ok(_) => {
                    self.next_seq = Some(seq + 1);
                    return Ok(Sent {
                        name,
                        seq,
                        attempts,
                        recovered: false,
                    });
                }
                Err(err) => err,
            };
            if is_already_exists(&err) {
                match self.find(&name).await {
                    Ok(Some(existing)) => {
                        let id = existing
                            .metadata
                            .annotations
                            .as_ref()
                            .and_then(|a| a.get(ANNOTATION_SIGNAL_ID));
                        self.next_seq = Some(seq + 1);
                        if id.map(String::as_str) == Some(signal_id.as_str()) {
                            // Our earlier, ambiguous attempt landed: this signal is sent.
                            return Ok(Sent {
                                name,
                                seq,
                                attempts,
                                recovered: true,
                            });
                        }
                        // Another sender owns this seq: try the next one, at once.
                        tracing::info!(%name, "seq taken by another sender, using the next one");
                        continue;
                    }
                    // Deleted between our create and get: the seq is free again, retry it.
                    Ok(None) => continue,
                    Err(get_err) if is_transient(&get_err) => {}
                    Err(source) => return Err(SendError::Refused { name, source }),
                }
            } else if !is_transient(&err) {
                return Err(SendError::Refused { name, source: err });
            }
            if self.retry.max_attempts.is_some_and(|max| attempts >= max) {
                return Err(SendError::GaveUp {
                    name,
                    attempts,
                    source: err,
                });
            }
            tracing::warn!(%name, error = %err, "creating the JobSignal failed, retrying the same name");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.retry.max);
        }
    }
}
