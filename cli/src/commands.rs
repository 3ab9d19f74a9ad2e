//! What each subcommand does against the API server. Each function takes a client, the namespace
//! and its arguments, writes results to `out` and notes to `err` (stdout and stderr in the binary,
//! buffers in tests), and returns the exit code.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use lodger_api::{
    ANNOTATION_MIGRATE_TO, LABEL_ROLE, LABEL_WORKSTATION, MANAGER_CLI, MigratableJob, ROLE_WORKLOAD,
};
use lodger_stub::forward::{RetryPolicy, SignalSender};
use lodger_stub::output::{Ended, FollowOptions, Stitcher, exit_code_of};
use lodger_stub::signals::{parse_signal, signal_name};
use lodger_stub::stub::queued_note;
use serde::Serialize;
use serde_json::json;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::args::{HistoryArgs, LogsArgs, MigrateArgs, OutputFormat, PsArgs, RunArgs, SignalArgs};
use crate::error::CliError;
use crate::jobspec::build_job;
use crate::render;

/// Where a command writes.
pub struct Io<'a, O, E> {
    /// Results (stdout).
    pub out: &'a mut O,
    /// Notes and progress (stderr).
    pub err: &'a mut E,
}

impl<O, E> std::fmt::Debug for Io<'_, O, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Io")
    }
}

impl<O: AsyncWrite + Unpin, E: AsyncWrite + Unpin> Io<'_, O, E> {
    async fn say(&mut self, text: &str) -> Result<(), CliError> {
        self.out.write_all(text.as_bytes()).await?;
        self.out.flush().await?;
        Ok(())
    }

    async fn note(&mut self, text: &str) -> Result<(), CliError> {
        self.err.write_all(text.as_bytes()).await?;
        self.err.flush().await?;
        Ok(())
    }
}

/// Serializes `value` as `-o json` or `-o yaml` print it.
pub fn structured<T: Serialize>(value: &T, format: OutputFormat) -> Result<String, CliError> {
    match format {
        OutputFormat::Json => serde_json::to_string_pretty(value)
            .map(|s| s + "\n")
            .map_err(|e| CliError::Io(std::io::Error::other(e))),
        _ => serde_yaml_ng::to_string(value).map_err(|e| CliError::Io(std::io::Error::other(e))),
    }
}

/// A kubectl-style `List` of objects.
fn list_of<T: Serialize>(items: &[T]) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items})
}

async fn get_job(api: &Api<MigratableJob>, ns: &str, job: &str) -> Result<MigratableJob, CliError> {
    api.get_opt(job)
        .await
        .map_err(CliError::api(format!(
            "get migratablejob {job} in namespace {ns}"
        )))?
        .ok_or_else(|| CliError::JobNotFound {
            job: job.to_string(),
            namespace: ns.to_string(),
        })
}

/// A sender id unique to this invocation.
fn cli_sender_id() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
    format!(
        "kubectl-lodger-{user}-{}-{}",
        std::process::id(),
        Timestamp::now().as_nanosecond()
    )
}

/// `run`: creates the MigratableJob; with `--wait`, streams its output and returns its code.
pub async fn run<O: AsyncWrite + Unpin, E: AsyncWrite + Unpin>(
    client: Client,
    ns: &str,
    args: &RunArgs,
    output: Option<OutputFormat>,
    poll: std::time::Duration,
    io: &mut Io<'_, O, E>,
) -> Result<i32, CliError> {
    let job = build_job(args, ns)?;
    let api: Api<MigratableJob> = Api::namespaced(client.clone(), ns);
    let pp = PostParams {
        dry_run: false,
        field_manager: Some(MANAGER_CLI.to_string()),
    };
    let created = api.create(&pp, &job).await.map_err(CliError::api(format!(
        "create a migratablejob in namespace {ns}"
    )))?;
    let name = created.name_any();
    match output {
        Some(f @ (OutputFormat::Json | OutputFormat::Yaml)) => {
            io.say(&structured(&created, f)?).await?
        }
        _ => {
            io.say(&format!("migratablejob.lodger.dev/{name} created\n"))
                .await?
        }
    }
    if !args.wait {
        return Ok(0);
    }
    if args.parallel.is_some() {
        return wait_parallel(&api, ns, &name, poll, io).await;
    }
    io.note(&format!(
        "Streaming the output of {name}; Ctrl-C stops watching (the job goes on: `kubectl lodger signal {name} INT` interrupts it).\n"
    ))
    .await?;
    let ended = Stitcher::new(
        api,
        Api::<Pod>::namespaced(client, ns),
        &name,
        FollowOptions { follow: true, poll },
    )
    .run(io.out)
    .await?;
    if let Ended::Finished { phase, exit_code } = &ended {
        let code = exit_code.map_or("none".into(), |c| c.to_string());
        io.note(&format!(
            "migratablejob/{name} {phase} (exit code {code})\n"
        ))
        .await?;
    } else {
        return Err(CliError::JobNotFound {
            job: name,
            namespace: ns.to_string(),
        });
    }
    Ok(exit_code_of(&ended))
}

/// `run --parallel --wait`: waits for the parent to end; exit code 0 only if every instance
/// succeeded. Instances' output is not streamed (see `logs <job>-<index>`).
async fn wait_parallel<O: AsyncWrite + Unpin, E: AsyncWrite + Unpin>(
    api: &Api<MigratableJob>,
    ns: &str,
    name: &str,
    poll: std::time::Duration,
    io: &mut Io<'_, O, E>,
) -> Result<i32, CliError> {
    io.note(&format!(
        "Waiting for the instances of {name}; see each one's output with `kubectl lodger logs {name}-<index>`.\n"
    ))
    .await?;
    loop {
        let job = get_job(api, ns, name).await?;
        let st = job.status.clone().unwrap_or_default();
        if let Some(phase) = st.phase.filter(|p| p.is_terminal()) {
            let failed: Vec<&str> = st
                .instances
                .iter()
                .filter(|i| i.phase == Some(lodger_api::JobPhase::Failed))
                .map(|i| i.name.as_str())
                .collect();
            io.note(&format!(
                "migratablejob/{name} {phase}: {} instances, {} failed{}\n",
                st.instances.len(),
                failed.len(),
                if failed.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", failed.join(", "))
                }
            ))
            .await?;
            return Ok(st
                .exit_code
                .map_or(i32::from(phase == lodger_api::JobPhase::Failed), |c| {
                    c.clamp(0, 255)
                }));
        }
        tokio::time::sleep(poll).await;
    }
}

/// `ps`.
pub async fn ps<O: AsyncWrite + Unpin, E: AsyncWrite + Unpin>(
    client: Client,
    ns: &str,
    args: &PsArgs,
    output: Option<OutputFormat>,
    now: Timestamp,
    io: &mut Io<'_, O, E>,
) -> Result<i32, CliError> {
    let (api, scope): (Api<MigratableJob>, String) = if args.all_namespaces {
        (Api::all(client), "all namespaces".into())
    } else {
        (Api::namespaced(client, ns), format!("namespace {ns}"))
    };
    let mut jobs = api
        .list(&ListParams::default())
        .await
        .map_err(CliError::api(format!("list migratablejobs in {scope}")))?
        .items;
    jobs.sort_by_key(|j| (j.namespace(), j.name_any()));
    let text = match output {
        Some(f @ (OutputFormat::Json | OutputFormat::Yaml)) => structured(&list_of(&jobs), f)?,
        wide => render::ps_table(
            &jobs,
            now,
            wide == Some(OutputFormat::Wide),
            args.all_namespaces,
        ),
    };
    io.say(&text).await?;
    Ok(0)
}

/// `nodes`.
pub async fn nodes<O: AsyncWrite + Unpin, E: AsyncWrite + Unpin>(
    client: Client,
    ns: &str,
    output: Option<OutputFormat>,
    now: Timestamp,
    io: &mut Io<'_, O, E>,
) -> Result<i32, CliError> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default().labels(&format!("{LABEL_WORKSTATION}=true")))
        .await
        .map_err(CliError::api("list nodes"))?
        .items;
    let workload = ListParams::default().labels(&format!("{LABEL_ROLE}={ROLE_WORKLOAD}"));
    let pods = match Api::<Pod>::all(client.clone()).list(&workload).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(s)) if s.code == 403 => {
            io.note(&format!(
                "note: you may not list pods in all namespaces; LODGERS shows namespace {ns} only\n"
            ))
            .await?;
            Api::<Pod>::namespaced(client, ns)
                .list(&workload)
                .await
                .map_err(CliError::api(format!("list pods in namespace {ns}")))?
                .items
        }
        Err(e) => return Err(CliError::api("list pods in all namespaces")(e)),
    };
    let summaries = render::summarize_nodes(&nodes, &pods);
    let text = match output {
        Some(f @ (OutputFormat::Json | OutputFormat::Yaml)) => structured(&summaries, f)?,
        wide => render::nodes_table(&summaries, now, wide == Some(OutputFormat::Wide)),
    };
    io.say(&text).await?;
    Ok(0)
}

/// `migrate`: sets `lodger.dev/migrate-to` (empty: any idle node) with a merge patch.
pub async fn migrate<O: AsyncWrite + Unpin, E: AsyncWrite + Unpin>(
    client: Client,
    ns: &str,
    args: &MigrateArgs,
    io: &mut Io<'_, O, E>,
) -> Result<i32, CliError> {
    if args.to.as_deref().is_some_and(str::is_empty) {
        return Err(CliError::Invalid(
            "--to needs a node name; leave it out to let Lodger pick an idle node".into(),
        ));
    }
    let api: Api<MigratableJob> = Api::namespaced(client, ns);
    let job = get_job(&api, ns, &args.job).await?;
    let phase = job.status.as_ref().and_then(|s| s.phase);
    if let Some(p) = phase.filter(|p| p.is_terminal()) {
        return Err(CliError::Invalid(format!(
            "migratablejob/{} has ended ({p}): there is nothing to migrate",
            args.job
        )));
    }
    if job
        .status
        .as_ref()
        .and_then(|s| s.node.as_deref())
        .is_some_and(|n| Some(n) == args.to.as_deref())
    {
        return Err(CliError::Invalid(format!(
            "migratablejob/{} already runs on {}: pick another node (see `kubectl lodger nodes`)",
            args.job,
            args.to.as_deref().unwrap_or_default()
        )));
    }
    let target = args.to.clone().unwrap_or_default();
    let patch = json!({"metadata": {"annotations": {ANNOTATION_MIGRATE_TO: target}}});
    let pp = PatchParams {
        field_manager: Some(MANAGER_CLI.to_string()),
        ..PatchParams::default()
    };
    api.patch(&args.job, &pp, &Patch::Merge(&patch))
        .await
        .map_err(CliError::api(format!(
            "annotate migratablejob {} in namespace {ns}",
            args.job
        )))?;
    let to = args
        .to
        .as_deref()
        .map_or("any idle node".to_string(), |n| format!("node {n}"));
    io.say(&format!(
        "migratablejob.lodger.dev/{} migration to {to} requested\n",
        args.job
    ))
    .await?;
    Ok(0)
}

/// `signal`: one JobSignal with the job's next seq (same naming and retry rules as the stub).
pub async fn signal<O: AsyncWrite + Unpin, E: AsyncWrite + Unpin>(
    client: Client,
    ns: &str,
    args: &SignalArgs,
    retry: RetryPolicy,
    io: &mut Io<'_, O, E>,
) -> Result<i32, CliError> {
    let signo = parse_signal(&args.signal).map_err(|e| CliError::Invalid(e.to_string()))?;
    let api: Api<MigratableJob> = Api::namespaced(client.clone(), ns);
    let job = get_job(&api, ns, &args.job).await?;
    let phase = job.status.as_ref().and_then(|s| s.phase);
    if let Some(p) = phase.filter(|p| p.is_terminal()) {
        return Err(CliError::Invalid(format!(
            "migratablejob/{} has ended ({p}): there is no process to signal",
            args.job
        )));
    }
    let mut sender = SignalSender::new(client, ns, &args.job, &cli_sender_id(), MANAGER_CLI, retry);
    if let Some(uid) = &job.metadata.uid {
        sender = sender.with_owner_uid(uid);
    }
    let sent = sender.send(signo).await?;
    io.say(&format!(
        "jobsignal.lodger.dev/{} created ({}, seq {})\n",
        sent.name,
        signal_name(signo),
        sent.seq
    ))
    .await?;
    if let Some(note) = queued_note(phase) {
        io.note(&format!("{note}\n")).await?;
    }
    Ok(0)
}

/// `logs`.
pub async fn logs<O: AsyncWrite + Unpin, E: AsyncWrite + Unpin>(
    client: Client,
    ns: &str,
    args: &LogsArgs,
    poll: std::time::Duration,
    io: &mut Io<'_, O, E>,
) -> Result<i32, CliError> {
    let jobs: Api<MigratableJob> = Api::namespaced(client.clone(), ns);
    let job = get_job(&jobs, ns, &args.job).await?;
    if let Some(n) = job.spec.parallelism {
        return Err(CliError::Invalid(format!(
            "migratablejob/{0} is a parallel job: its output is in its {n} instances, e.g. `kubectl lodger logs {0}-0` (up to {0}-{1})",
            args.job,
            n - 1
        )));
    }
    let ended = Stitcher::new(
        jobs,
        Api::<Pod>::namespaced(client, ns),
        &args.job,
        FollowOptions {
            follow: args.follow,
            poll,
        },
    )
    .run(io.out)
    .await?;
    if ended == Ended::Deleted {
        return Err(CliError::JobNotFound {
            job: args.job.clone(),
            namespace: ns.to_string(),
        });
    }
    Ok(0)
}

/// `history`.
pub async fn history<O: AsyncWrite + Unpin, E: AsyncWrite + Unpin>(
    client: Client,
    ns: &str,
    args: &HistoryArgs,
    output: Option<OutputFormat>,
    now: Timestamp,
    io: &mut Io<'_, O, E>,
) -> Result<i32, CliError> {
    let job = get_job(&Api::namespaced(client, ns), ns, &args.job).await?;
    let text = match output {
        Some(f @ (OutputFormat::Json | OutputFormat::Yaml)) => {
            let history = job
                .status
                .as_ref()
                .map(|s| s.history.clone())
                .unwrap_or_default();
            structured(&history, f)?
        }
        wide => render::history_table(&job, now, wide == Some(OutputFormat::Wide)),
    };
    io.say(&text).await?;
    Ok(0)
}
