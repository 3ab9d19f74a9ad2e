//! Lodger's scenarios on a real cluster (kind or a lab cluster, see docs/lab-cluster.md).
//! Run by `make e2e` with `--test-threads=1`; each prints "skipped" and passes without
//! KUBECONFIG and LODGER_IMAGE.
//!
//! Cluster shape they expect: at least three Ready nodes labelled `lodger.dev/workstation=true`
//! (the last, by name, is the home node) and at least one schedulable node without that label
//! (for the operator and for stubs of jobs without a home). Idle detection is off
//! (`agent.detection.enabled=false`): scenarios declare idleness themselves.

use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, ResourceExt};
use lodger_api::{
    CheckpointReason, JobPhase, JobSignal, LABEL_JOB, LABEL_ROLE, MigratableJob, ROLE_WORKLOAD,
};
use lodger_demo::continuity::check_text;
use lodger_e2e::{Env, Scenario, set_cordoned, set_idle, set_owner_active, workstations};
use serde_json::json;

const PLACE: Duration = Duration::from_secs(180);
const MIGRATE: Duration = Duration::from_secs(150);

fn phase(job: &MigratableJob) -> Option<JobPhase> {
    job.status.as_ref().and_then(|s| s.phase)
}

fn node_of(job: &MigratableJob) -> String {
    job.status
        .as_ref()
        .and_then(|s| s.node.clone())
        .unwrap_or_default()
}

fn migrations(job: &MigratableJob) -> i32 {
    job.status.as_ref().map(|s| s.migrations).unwrap_or(0)
}

fn running_on(job: &MigratableJob, nodes: &[String]) -> bool {
    phase(job) == Some(JobPhase::Running) && nodes.contains(&node_of(job))
}

/// The workstations of the cluster: (candidates, home). Every workstation starts busy.
async fn layout(sc: &Scenario, need: usize) -> Result<(Vec<String>, String)> {
    let mut ws = workstations(&sc.env.client).await?;
    ensure!(
        ws.len() >= need,
        "this scenario needs {need} Ready workstations, the cluster has {ws:?}"
    );
    for n in &ws {
        set_idle(&sc.env.client, n, false).await?;
        set_owner_active(&sc.env.client, n, false).await?;
        set_cordoned(&sc.env.client, n, false).await?;
    }
    let home = ws.pop().expect("checked above");
    Ok((ws, home))
}

/// Wait until the home stub runs on `node` (any node when `None`) and shows some ticks.
async fn stub_running(sc: &Scenario, job: &str, node: Option<&str>) -> Result<Pod> {
    let stub = format!("{job}-home");
    let pod = sc
        .wait_pod(&stub, "stub Running", PLACE, |p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .await?;
    if let Some(node) = node {
        let on = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        ensure!(
            on == node,
            "stub {stub} runs on {on}, not on the home node {node}"
        );
    }
    wait_ticks(sc, &stub, 5).await?;
    Ok(pod)
}

/// Wait until the pod's log holds at least `n` more ticks than now.
async fn wait_ticks(sc: &Scenario, pod: &str, n: u64) -> Result<u64> {
    let last = |text: &str| check_text(text).ok().and_then(|s| s.last_tick);
    let start = last(&sc.logs(pod).await.unwrap_or_default()).unwrap_or(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = sc.logs(pod).await.unwrap_or_default();
        if let Some(t) = last(&text)
            && t >= start + n
        {
            return Ok(t);
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "{pod} did not print {n} more ticks within 60 s (last: {:?}); log:\n{text}",
                last(&text)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn workload_pods(sc: &Scenario, job: &str) -> Result<Vec<Pod>> {
    let lp =
        ListParams::default().labels(&format!("{LABEL_JOB}={job},{LABEL_ROLE}={ROLE_WORKLOAD}"));
    Ok(sc
        .pods()
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect())
}

/// Owner returns (taint) -> migrated to the other idle node within the grace period; cordon ->
/// migrated again. Across both moves the job keeps its PID, memory checksum and file offset,
/// the counter has no gap or repeat in `kubectl logs <job>-home`, history records both moves
/// with freeze and downtime, and nothing of the job stays on the nodes it left.
/// If this fails, Lodger's central promise (transparent migration) is broken.
#[tokio::test]
async fn owner_return_and_cordon_migrate_transparently() {
    let Some(env) = Env::from_env("owner_return_and_cordon_migrate_transparently").await else {
        return;
    };
    env.scenario("migrate", |sc| async move {
        let c = sc.env.client.clone();
        let (ws, home) = layout(&sc, 3).await?;
        let (a, b) = (ws[0].clone(), ws[1].clone());
        set_idle(&c, &a, true).await?;
        set_idle(&c, &b, true).await?;
        sc.create_job(sc.workload_job("mover", Some(&home), true, &[]))
            .await?;
        let idle = vec![a.clone(), b.clone()];
        let job = sc
            .wait_job("mover", "Running on an idle node", PLACE, |j| {
                running_on(j, &idle)
            })
            .await?;
        stub_running(&sc, "mover", Some(&home)).await?;
        let first = node_of(&job);
        let second = if first == a { b.clone() } else { a.clone() };

        // The owner of `first` comes back: the agent would mark it busy and taint it.
        set_idle(&c, &first, false).await?;
        set_owner_active(&c, &first, true).await?;
        let job = sc
            .wait_job("mover", "migrated after the owner returned", MIGRATE, |j| {
                migrations(j) == 1 && running_on(j, std::slice::from_ref(&second))
            })
            .await?;
        let history = &job.status.as_ref().unwrap().history;
        ensure!(
            history.len() == 1,
            "history should hold one move: {history:?}"
        );
        let h = &history[0];
        ensure!(
            h.from == first && h.to == second,
            "history says {} -> {}",
            h.from,
            h.to
        );
        ensure!(
            h.reason == CheckpointReason::OwnerReturned,
            "reason {:?}",
            h.reason
        );
        ensure!(
            h.freeze_millis.is_some_and(|m| m >= 0),
            "no freeze time: {h:?}"
        );
        ensure!(
            h.downtime_millis.is_some_and(|m| m >= 0),
            "no downtime: {h:?}"
        );
        println!(
            "mover: {} -> {}: freeze {:?} ms, downtime {:?} ms, image {:?} bytes",
            h.from, h.to, h.freeze_millis, h.downtime_millis, h.image_bytes
        );
        wait_ticks(&sc, "mover-home", 5).await?;

        // The owner leaves `first` again; an admin cordons `second`.
        set_owner_active(&c, &first, false).await?;
        set_idle(&c, &first, true).await?;
        set_cordoned(&c, &second, true).await?;
        let job = sc
            .wait_job("mover", "migrated after cordon", MIGRATE, |j| {
                migrations(j) == 2 && running_on(j, std::slice::from_ref(&first))
            })
            .await?;
        let last = job.status.as_ref().unwrap().history.last().unwrap().clone();
        ensure!(
            last.reason == CheckpointReason::Drain,
            "cordon should be a Drain, got {:?}",
            last.reason
        );
        wait_ticks(&sc, "mover-home", 5).await?;

        // No residue: exactly one live workload pod, on the current node.
        let pods = workload_pods(&sc, "mover").await?;
        ensure!(
            pods.len() == 1,
            "expected one workload pod, found {:?}",
            pods.iter().map(|p| p.name_any()).collect::<Vec<_>>()
        );
        let on = pods[0]
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        ensure!(
            on == first,
            "the workload pod runs on {on}, status says {first}"
        );

        // The home stub's log is the job's whole output, continuous across both migrations.
        let text = sc.logs("mover-home").await?;
        let summary = check_text(&text)
            .map_err(|b| anyhow::anyhow!("output broke continuity: {b}\n{text}"))?;
        ensure!(
            summary.first_tick == Some(0) || summary.first_tick == Some(1),
            "output starts at {:?}",
            summary.first_tick
        );
        ensure!(
            summary.verified_ticks >= 2,
            "memory checksum verified only {} times",
            summary.verified_ticks
        );
        println!(
            "mover: ticks {:?}..{:?}, pid {:?}, checksum {:?}",
            summary.first_tick, summary.last_tick, summary.pid, summary.sum
        );
        Ok(())
    })
    .await;
}

/// The only idle node's owner returns and nothing else is idle: the job goes home and runs
/// there.
/// If this fails, Sprite's "back home if nothing is idle" rule is broken.
#[tokio::test]
async fn no_idle_node_sends_the_job_home() {
    let Some(env) = Env::from_env("no_idle_node_sends_the_job_home").await else {
        return;
    };
    env.scenario("home", |sc| async move {
        let c = sc.env.client.clone();
        let (ws, home) = layout(&sc, 2).await?;
        let a = ws[0].clone();
        set_idle(&c, &a, true).await?;
        sc.create_job(sc.workload_job("homing", Some(&home), true, &[]))
            .await?;
        sc.wait_job("homing", "Running on the idle node", PLACE, |j| {
            running_on(j, std::slice::from_ref(&a))
        })
        .await?;
        stub_running(&sc, "homing", Some(&home)).await?;
        set_idle(&c, &a, false).await?;
        set_owner_active(&c, &a, true).await?;
        let job = sc
            .wait_job("homing", "Running at home", MIGRATE, |j| {
                running_on(j, std::slice::from_ref(&home))
            })
            .await?;
        let h = job
            .status
            .as_ref()
            .unwrap()
            .history
            .last()
            .cloned()
            .context("a history entry")?;
        ensure!(h.to == home, "history says it went to {}", h.to);
        wait_ticks(&sc, "homing-home", 5).await?;
        check_text(&sc.logs("homing-home").await?)
            .map_err(|b| anyhow::anyhow!("continuity: {b}"))?;
        Ok(())
    })
    .await;
}

/// No home and no idle node: the job is Parked on the volume; a node becomes idle: the job is
/// unparked and runs there, continuing where it stopped.
/// If this fails, homeless jobs are lost (or restarted) instead of waiting.
#[tokio::test]
async fn homeless_job_parks_and_unparks() {
    let Some(env) = Env::from_env("homeless_job_parks_and_unparks").await else {
        return;
    };
    env.scenario("park", |sc| async move {
        let c = sc.env.client.clone();
        let (ws, _home) = layout(&sc, 3).await?;
        let (a, b) = (ws[0].clone(), ws[1].clone());
        set_idle(&c, &a, true).await?;
        sc.create_job(sc.workload_job("nomad", None, true, &[]))
            .await?;
        sc.wait_job("nomad", "Running on the idle node", PLACE, |j| {
            running_on(j, std::slice::from_ref(&a))
        })
        .await?;
        stub_running(&sc, "nomad", None).await?;
        set_idle(&c, &a, false).await?;
        set_owner_active(&c, &a, true).await?;
        sc.wait_job("nomad", "Parked", MIGRATE, |j| {
            phase(j) == Some(JobPhase::Parked)
        })
        .await?;
        ensure!(
            workload_pods(&sc, "nomad").await?.is_empty(),
            "a parked job must have no workload pod"
        );
        set_idle(&c, &b, true).await?;
        sc.wait_job("nomad", "unparked onto the new idle node", MIGRATE, |j| {
            running_on(j, std::slice::from_ref(&b))
        })
        .await?;
        wait_ticks(&sc, "nomad-home", 5).await?;
        check_text(&sc.logs("nomad-home").await?)
            .map_err(|b| anyhow::anyhow!("continuity: {b}"))?;
        Ok(())
    })
    .await;
}

/// Signals sent to the home stub (SIGUSR1, then the real-time SIGRTMIN+3 = 37) reach the job
/// exactly once each, in order, and their JobSignals are marked Delivered.
/// If this fails, `kill` on the home node no longer means anything to a migrated job.
#[tokio::test]
async fn signal_to_stub_is_delivered_once() {
    let Some(env) = Env::from_env("signal_to_stub_is_delivered_once").await else {
        return;
    };
    env.scenario("signal", |sc| async move {
        let c = sc.env.client.clone();
        let (ws, home) = layout(&sc, 2).await?;
        set_idle(&c, &ws[0], true).await?;
        sc.create_job(sc.workload_job("listener", Some(&home), false, &[]))
            .await?;
        sc.wait_job("listener", "Running", PLACE, |j| {
            running_on(j, std::slice::from_ref(&ws[0]))
        })
        .await?;
        stub_running(&sc, "listener", Some(&home)).await?;
        // NB: numbers, not names: the image's procps `kill` refuses SIGRTMIN+n spellings.
        sc.exec_sh("listener-home", "kill -USR1 1 && kill -37 1")
            .await?;
        let expected = ["SIGUSR1", "SIG37"];
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let text = sc.logs("listener-home").await?;
            let summary = check_text(&text).map_err(|b| anyhow::anyhow!("continuity: {b}"))?;
            if expected
                .iter()
                .all(|e| summary.signals.iter().any(|s| s == e))
            {
                break;
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "{expected:?} never all reached the job:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Give a duplicate time to show up, then check each arrived once, in order.
        wait_ticks(&sc, "listener-home", 10).await?;
        let summary =
            check_text(&sc.logs("listener-home").await?).map_err(|b| anyhow::anyhow!("{b}"))?;
        ensure!(
            summary.signals == expected,
            "signals the job saw: {:?}, expected {expected:?} once each",
            summary.signals
        );
        let signals: Api<JobSignal> = Api::namespaced(c.clone(), &sc.ns);
        let mut list = signals.list(&ListParams::default()).await?.items;
        list.sort_by_key(|s| s.spec.seq);
        let numbers: Vec<i32> = list.iter().map(|s| s.spec.signal).collect();
        ensure!(
            numbers == [10, 37],
            "expected JobSignals for 10 then 37, found {numbers:?}"
        );
        for sig in &list {
            let phase = sig
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .map(|p| format!("{p:?}"));
            ensure!(
                phase.as_deref() == Some("Delivered"),
                "JobSignal seq {} phase {phase:?}",
                sig.spec.seq
            );
        }
        Ok(())
    })
    .await;
}

/// The job exits 3: the stub exits 3 and the MigratableJob is Failed with exitCode 3.
/// If this fails, the home node cannot tell how a job ended.
#[tokio::test]
async fn exit_code_reaches_home() {
    let Some(env) = Env::from_env("exit_code_reaches_home").await else {
        return;
    };
    env.scenario("exit", |sc| async move {
        let c = sc.env.client.clone();
        let (ws, home) = layout(&sc, 2).await?;
        set_idle(&c, &ws[0], true).await?;
        sc.create_job(sc.workload_job(
            "quitter",
            Some(&home),
            false,
            &["--exit-at-tick", "25", "--exit-code", "3"],
        ))
        .await?;
        let job = sc
            .wait_job("quitter", "Failed", PLACE, |j| {
                phase(j) == Some(JobPhase::Failed)
            })
            .await?;
        let code = job.status.as_ref().and_then(|s| s.exit_code);
        ensure!(code == Some(3), "exitCode {code:?}");
        let stub = sc
            .wait_pod("quitter-home", "stub terminated", MIGRATE, |p| {
                p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
            })
            .await?;
        let exit = stub
            .status
            .and_then(|s| s.container_statuses)
            .and_then(|cs| cs.into_iter().next())
            .and_then(|c| c.state)
            .and_then(|s| s.terminated)
            .map(|t| t.exit_code);
        ensure!(exit == Some(3), "the stub exited {exit:?}");
        Ok(())
    })
    .await;
}

/// Invalid MigratableJobs are refused by the API server with messages that say what to fix.
/// If this fails, users learn about mistakes only from a stuck job (or never).
#[tokio::test]
async fn invalid_jobs_are_refused_readably() {
    let Some(env) = Env::from_env("invalid_jobs_are_refused_readably").await else {
        return;
    };
    env.scenario("invalid", |sc| async move {
        let base = sc.workload_job("bad", None, false, &[]);
        let mut two = base.clone();
        let c0 = two["spec"]["template"]["spec"]["containers"][0].clone();
        let mut c1 = c0.clone();
        c1["name"] = json!("second");
        two["spec"]["template"]["spec"]["containers"] = json!([c0, c1]);
        let mut no_command = base.clone();
        no_command["spec"]["template"]["spec"]["containers"][0]
            .as_object_mut()
            .unwrap()
            .remove("command");
        let mut negative = base.clone();
        negative["spec"]["migration"]["gracePeriodSeconds"] = json!(-5);
        let mut strategy = base.clone();
        strategy["spec"]["migration"]["strategy"] = json!("Teleport");
        // Each message must name what is wrong (alternatives: the schema's maxItems may answer
        // before the CEL rule does).
        let cases: [(&str, serde_json::Value, &[&str]); 4] = [
            (
                "two containers",
                two,
                &["exactly one container", "at most 1 item"],
            ),
            ("no command", no_command, &["must set 'command'"]),
            ("negative grace period", negative, &["gracePeriodSeconds"]),
            ("unknown strategy", strategy, &["Teleport"]),
        ];
        for (what, body, needles) in cases {
            // NB: a JSON body, not the typed struct: the typed struct cannot even hold some of
            // these mistakes.
            let api: Api<kube::core::DynamicObject> = Api::namespaced_with(
                sc.env.client.clone(),
                &sc.ns,
                &kube::core::ApiResource::erase::<MigratableJob>(&()),
            );
            let mut body = body;
            body["metadata"]["namespace"] = json!(sc.ns);
            let obj: kube::core::DynamicObject = serde_json::from_value(body)?;
            match api.create(&Default::default(), &obj).await {
                Ok(_) => bail!("the API server accepted a job with {what}"),
                Err(kube::Error::Api(status)) => {
                    ensure!(
                        status.code == 422,
                        "{what}: expected 422 Invalid, got {}",
                        status.code
                    );
                    ensure!(
                        needles.iter().any(|n| status.message.contains(n)),
                        "{what}: message mentions none of {needles:?}: {}",
                        status.message
                    );
                    println!("{what}: {}", status.message);
                }
                Err(other) => bail!("{what}: unexpected error {other}"),
            }
        }
        Ok(())
    })
    .await;
}

/// With periodic checkpoints on, deleting the running pod's Node object (NodeLost) restores the
/// job from its last checkpoint on another node: the restored process continues from that
/// checkpoint (no fresh start).
/// If this fails, a crashed workstation loses its lodgers' work.
#[tokio::test]
async fn node_lost_restores_from_periodic_checkpoint() {
    let Some(env) = Env::from_env("node_lost_restores_from_periodic_checkpoint").await else {
        return;
    };
    env.scenario("nodelost", |sc| async move {
        let c = sc.env.client.clone();
        let (ws, home) = layout(&sc, 3).await?;
        let (a, b) = (ws[0].clone(), ws[1].clone());
        set_idle(&c, &a, true).await?;
        set_idle(&c, &b, true).await?;
        let mut body = sc.workload_job("survivor", Some(&home), false, &[]);
        body["spec"]["checkpoint"] = json!({"intervalSeconds": 10, "keep": 2});
        sc.create_job(body).await?;
        let idle = vec![a.clone(), b.clone()];
        let job = sc
            .wait_job("survivor", "Running", PLACE, |j| running_on(j, &idle))
            .await?;
        let lost = node_of(&job);
        let other = if lost == a { b.clone() } else { a.clone() };
        sc.wait_job("survivor", "a periodic checkpoint", MIGRATE, |j| {
            j.status
                .as_ref()
                .is_some_and(|s| s.last_checkpoint.is_some())
        })
        .await?;
        let generation = job.status.as_ref().map(|s| s.pod_generation).unwrap_or(0);
        // The node is lost (the scenario's cleanup re-creates its Node object).
        sc.nodes().delete(&lost, &DeleteParams::default()).await?;
        let job = sc
            .wait_job(
                "survivor",
                "restored on another node",
                Duration::from_secs(300),
                |j| running_on(j, std::slice::from_ref(&other)),
            )
            .await?;
        let h = job
            .status
            .as_ref()
            .unwrap()
            .history
            .last()
            .cloned()
            .context("a history entry")?;
        ensure!(
            h.reason == CheckpointReason::NodeLost,
            "reason {:?}",
            h.reason
        );
        let pod = job
            .status
            .as_ref()
            .and_then(|s| s.pod.clone())
            .context("status.pod")?;
        ensure!(
            job.status.as_ref().unwrap().pod_generation > generation,
            "no new pod generation"
        );
        wait_ticks(&sc, &pod, 5).await?;
        let summary = check_text(&sc.logs(&pod).await?)
            .map_err(|b| anyhow::anyhow!("restored output: {b}"))?;
        ensure!(
            summary.first_tick.unwrap_or(0) > 0,
            "the job started afresh instead of being restored"
        );
        Ok(())
    })
    .await;
}

/// A token of the node agent's ServiceAccount bound to its pod on node A may change A's idle
/// label, but not B's, and not A's other labels: the chart's ValidatingAdmissionPolicy, with
/// the node name the API server puts into pod-bound tokens.
/// If this fails, one compromised workstation could relabel or untaint every other one.
#[tokio::test]
async fn agent_token_is_confined_to_its_node() {
    let Some(env) = Env::from_env("agent_token_is_confined_to_its_node").await else {
        return;
    };
    env.scenario("vap", |sc| async move {
        let c = sc.env.client.clone();
        let (ws, _home) = layout(&sc, 2).await?;
        let pods: Api<Pod> = Api::namespaced(c.clone(), &lodger_e2e::release_namespace());
        let agents = pods
            .list(&ListParams::default().labels("app.kubernetes.io/component=node-agent"))
            .await?
            .items;
        let (a, pod) = ws
            .iter()
            .find_map(|n| {
                agents
                    .iter()
                    .find(|p| {
                        p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(n.as_str())
                    })
                    .map(|p| (n.clone(), p.clone()))
            })
            .context("no node agent pod on a workstation")?;
        let b = ws
            .iter()
            .find(|n| **n != a)
            .cloned()
            .context("a second workstation")?;
        let token = lodger_e2e::agent_token(&c, &pod).await?;
        let dir = std::env::temp_dir().join(format!("lodger-e2e-{}", sc.ns));
        std::fs::create_dir_all(&dir)?;
        let as_agent = lodger_e2e::client_with_token(&token, &dir).await;
        let _ = std::fs::remove_dir_all(&dir);
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(as_agent?);
        let patch = |labels: serde_json::Value| {
            kube::api::Patch::Merge(json!({"metadata": {"labels": labels}}))
        };
        let pp = kube::api::PatchParams::default();

        nodes
            .patch(&a, &pp, &patch(json!({"lodger.dev/idle": "false"})))
            .await
            .with_context(|| format!("the agent of {a} could not set its own idle label"))?;
        for (node, labels, needle) in [
            (
                b.as_str(),
                json!({"lodger.dev/idle": "false"}),
                "may not change node",
            ),
            (
                a.as_str(),
                json!({"lodger.dev/owner": "mallory"}),
                "only the lodger.dev/idle label",
            ),
        ] {
            match nodes.patch(node, &pp, &patch(labels.clone())).await {
                Ok(_) => bail!("the agent of {a} was allowed to set {labels} on {node}"),
                Err(kube::Error::Api(status)) => {
                    ensure!(
                        status.message.contains(needle),
                        "refused, but not by the policy ({needle:?}): {}",
                        status.message
                    );
                    println!("refused as expected: {}", status.message);
                }
                Err(other) => bail!("unexpected error: {other}"),
            }
        }
        Ok(())
    })
    .await;
}
