//! Lodger's real-cluster end-to-end suite (needs KUBECONFIG and LODGER_IMAGE).
//!
//! `make e2e` (scripts/e2e.sh) installs the chart with idle detection off, then runs
//! `cargo test -p lodger-e2e -- --test-threads=1`. Each scenario (tests/scenarios.rs) runs in its
//! own temporary namespace, labelled for Pod Security `privileged` and with
//! [`LABEL_E2E`]/[`LABEL_SCENARIO`], deleted by label afterwards; on failure the namespace's pod
//! logs and events are printed first. Scenarios that need idle nodes mark them idle with the same
//! label and annotation the node agent writes, and every node they touch is put back as it was.
//!
//! Without KUBECONFIG (or LODGER_IMAGE) every scenario prints "skipped" and passes, so
//! `make test` can build and run this crate anywhere.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    Event, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod, Taint,
};
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use lodger_api::{
    ANNOTATION_IDLE_SINCE, LABEL_IDLE, LABEL_WORKSTATION, MigratableJob, TAINT_OWNER_ACTIVE,
};
use serde_json::json;

/// Label on every namespace the suite creates.
pub const LABEL_E2E: &str = "lodger.dev/e2e";
/// Label naming the scenario a namespace belongs to (cleanup deletes by it).
pub const LABEL_SCENARIO: &str = "lodger.dev/e2e-scenario";
/// Field manager of the suite's writes.
pub const MANAGER: &str = "lodger-e2e";

/// What a scenario needs: a client, the Lodger image (which also carries lodger-workload).
#[derive(Clone)]
pub struct Env {
    /// Client from KUBECONFIG.
    pub client: Client,
    /// The Lodger image under test (`LODGER_IMAGE`).
    pub image: String,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("image", &self.image)
            .finish_non_exhaustive()
    }
}

impl Env {
    /// The environment, or `None` (after printing why the scenario is skipped) when KUBECONFIG
    /// or LODGER_IMAGE is unset.
    ///
    /// # Panics
    /// When KUBECONFIG is set but no client can be built from it: a broken configuration is a
    /// failure, not a skip.
    pub async fn from_env(scenario: &str) -> Option<Env> {
        let kubeconfig = std::env::var("KUBECONFIG").unwrap_or_default();
        let image = std::env::var("LODGER_IMAGE").unwrap_or_default();
        if kubeconfig.is_empty() || image.is_empty() {
            eprintln!(
                "{scenario}: skipped (KUBECONFIG and LODGER_IMAGE must both be set; see docs/lab-cluster.md)"
            );
            return None;
        }
        let client = Client::try_default()
            .await
            .unwrap_or_else(|e| panic!("KUBECONFIG={kubeconfig} is set but unusable: {e}"));
        Some(Env { client, image })
    }

    /// Run `body` in a fresh namespace; dump logs and events if it fails or panics; put back
    /// every node the scenario changed; delete the namespace by label and wait until it is gone.
    ///
    /// # Panics
    /// When the scenario failed (after cleaning up), or cleanup left something behind.
    pub async fn scenario<F, Fut>(&self, name: &str, body: F)
    where
        F: FnOnce(Scenario) -> Fut,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        // A previous run that crashed may have left this scenario's namespace behind.
        delete_namespaces(&namespaces, name)
            .await
            .expect("stale namespaces are removed");

        let ns_name = format!("e2e-{name}-{}", std::process::id());
        let ns = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(ns_name.clone()),
                labels: Some(BTreeMap::from([
                    (LABEL_E2E.to_string(), "true".to_string()),
                    (LABEL_SCENARIO.to_string(), name.to_string()),
                    // Workload pods need SYS_ADMIN and seccomp Unconfined (docs/security.md).
                    (
                        "pod-security.kubernetes.io/enforce".to_string(),
                        "privileged".to_string(),
                    ),
                ])),
                ..Default::default()
            },
            ..Default::default()
        };
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .expect("namespace is created");
        let nodes = NodeSnapshot::take(&self.client)
            .await
            .expect("nodes can be listed");

        let mut claim = None;
        let failure = match share_checkpoint_volume(&self.client, &ns_name, name).await {
            Err(err) => Some(format!("the checkpoint claim could not be made: {err:#}")),
            Ok(name) => {
                claim = Some(name.clone());
                let sc = Scenario {
                    env: self.clone(),
                    ns: ns_name.clone(),
                    claim: name,
                };
                match tokio::spawn(body(sc)).await {
                    Ok(Ok(())) => None,
                    Ok(Err(err)) => Some(format!("{err:#}")),
                    Err(join) => Some(format!("panicked: {join}")),
                }
            }
        };
        if let Some(why) = &failure {
            eprintln!("scenario {name} failed: {why}");
            dump_namespace(&self.client, &ns_name).await;
        }
        let scrubbed = match &claim {
            Some(claim) => remove_work_files(self, &ns_name, claim).await,
            None => Ok(()),
        };
        let restored = nodes.restore(&self.client).await;
        let deleted = delete_namespaces(&namespaces, name).await;
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        let unshared = pvs
            .delete_collection(
                &DeleteParams::default(),
                &ListParams::default().labels(&format!("{LABEL_E2E}=true,{LABEL_SCENARIO}={name}")),
            )
            .await;
        if let Some(why) = failure {
            panic!("scenario {name} failed: {why}");
        }
        scrubbed.expect("the scenario's work files are removed from the shared volume");
        restored.expect("nodes are put back as they were");
        deleted.expect("the scenario's namespace is deleted");
        unshared.expect("the scenario's PersistentVolume is deleted");
    }
}

/// One running scenario: its namespace and the environment.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The environment.
    pub env: Env,
    /// The scenario's namespace.
    pub ns: String,
    /// The checkpoint claim in that namespace (same shared storage as the release's).
    pub claim: String,
}

impl Scenario {
    /// MigratableJobs of the scenario's namespace.
    pub fn jobs(&self) -> Api<MigratableJob> {
        Api::namespaced(self.env.client.clone(), &self.ns)
    }

    /// Pods of the scenario's namespace.
    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.env.client.clone(), &self.ns)
    }

    /// All nodes.
    pub fn nodes(&self) -> Api<Node> {
        Api::all(self.env.client.clone())
    }

    /// Create a MigratableJob from JSON (namespace filled in).
    pub async fn create_job(&self, mut body: serde_json::Value) -> Result<MigratableJob> {
        body["metadata"]["namespace"] = json!(self.ns);
        let job: MigratableJob =
            serde_json::from_value(body).context("job JSON is a MigratableJob")?;
        Ok(self.jobs().create(&PostParams::default(), &job).await?)
    }

    /// Poll the job until `pred` holds (every 500 ms), or fail after `timeout` with its status.
    pub async fn wait_job(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&MigratableJob) -> bool,
    ) -> Result<MigratableJob> {
        let start = Instant::now();
        loop {
            let job = self.jobs().get(name).await?;
            if pred(&job) {
                return Ok(job);
            }
            if start.elapsed() > timeout {
                bail!(
                    "timed out after {timeout:?} waiting for {name}: {what}; status: {}",
                    serde_json::to_string_pretty(&job.status).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Poll a pod until `pred` holds.
    pub async fn wait_pod(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Pod) -> bool,
    ) -> Result<Pod> {
        let start = Instant::now();
        loop {
            if let Some(pod) = self.pods().get_opt(name).await? {
                if pred(&pod) {
                    return Ok(pod);
                }
                if start.elapsed() > timeout {
                    bail!(
                        "timed out after {timeout:?} waiting for pod {name}: {what}; status: {:?}",
                        pod.status
                    );
                }
            } else if start.elapsed() > timeout {
                bail!("timed out after {timeout:?} waiting for pod {name} to exist ({what})");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The whole log of a pod's first container.
    pub async fn logs(&self, pod: &str) -> Result<String> {
        Ok(self.pods().logs(pod, &LogParams::default()).await?)
    }

    /// Run `sh -c script` in a pod's first container; fails when it exits non-zero.
    pub async fn exec_sh(&self, pod: &str, script: &str) -> Result<()> {
        use kube::api::AttachParams;
        let mut attached = self
            .pods()
            .exec(
                pod,
                ["sh", "-c", script],
                &AttachParams::default().stdout(true).stderr(true),
            )
            .await?;
        let status = attached
            .take_status()
            .ok_or_else(|| anyhow!("no status channel"))?;
        let status = status.await;
        attached.join().await?;
        match status {
            Some(s) if s.status.as_deref() == Some("Success") => Ok(()),
            other => bail!("exec {script:?} in {pod} failed: {other:?}"),
        }
    }
}

/// Directory on the shared volume (below its root) where scenarios keep the job's work files.
pub const WORK_DIR: &str = "e2e-work";

impl Scenario {
    /// A MigratableJob running lodger-workload from the Lodger image. With `tick_file`, the job
    /// appends to `/work/<job>.ticks` through one long-lived fd, on the shared volume
    /// (`<volume>/e2e-work/<namespace>/`), so the file and its offset exist on whichever node it
    /// is restored on.
    ///
    /// NB: a periodic checkpoint followed by a restore (NodeLost) goes back in time while the
    /// file on the shared volume does not; CRIU then refuses the file (size changed). Scenarios
    /// that restore from an older checkpoint run without the file.
    pub fn workload_job(
        &self,
        name: &str,
        home: Option<&str>,
        tick_file: bool,
        extra_args: &[&str],
    ) -> serde_json::Value {
        let mut command = vec![
            "lodger-workload".to_string(),
            "--mem-mib".into(),
            "32".into(),
            "--tick-ms".into(),
            "200".into(),
            "--verify-every".into(),
            "5".into(),
        ];
        if tick_file {
            command.push("--file".into());
            command.push(format!("/work/{name}.ticks"));
        }
        command.extend(extra_args.iter().map(|s| s.to_string()));
        let mut job = json!({
            "apiVersion": "lodger.dev/v1alpha1",
            "kind": "MigratableJob",
            "metadata": {"name": name},
            "spec": {
                "template": {"spec": {"containers": [{
                    "name": "main",
                    "image": self.env.image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": command,
                    "resources": {"requests": {"cpu": "50m", "memory": "96Mi"}},
                }]}},
                "placement": {"minIdleSeconds": 0},
                "migration": {"strategy": "StopAndCopy", "gracePeriodSeconds": 60},
            },
        });
        if tick_file {
            job["spec"]["template"]["spec"]["volumes"] = json!([{
                "name": "work",
                "persistentVolumeClaim": {"claimName": self.claim},
            }]);
            job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] = json!([{
                "name": "work",
                "mountPath": "/work",
                "subPath": format!("{WORK_DIR}/{}", self.ns),
            }]);
        }
        if let Some(home) = home {
            job["spec"]["homeNode"] = json!(home);
        }
        job
    }
}

/// Remove `<volume>/e2e-work/<ns>` with a short-lived pod in the scenario's namespace (the files
/// belong to the job's uid 0), then wait for it to finish.
async fn remove_work_files(env: &Env, ns: &str, claim: &str) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "e2e-scrub", "namespace": ns},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "scrub",
                "image": env.image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["rm", "-rf", format!("/shared/{ns}")],
                "securityContext": {"runAsUser": 0, "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [{"name": "shared", "mountPath": "/shared", "subPath": WORK_DIR}],
            }],
            "volumes": [{"name": "shared", "persistentVolumeClaim": {"claimName": claim}}],
        },
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let start = Instant::now();
    loop {
        let p = pods.get("e2e-scrub").await?;
        match p.status.and_then(|s| s.phase).as_deref() {
            Some("Succeeded") => return Ok(()),
            Some("Failed") => bail!("the scrub pod failed"),
            _ if start.elapsed() > Duration::from_secs(120) => {
                bail!("the scrub pod did not finish in 120 s")
            }
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

// ---- nodes ----

/// Names of the nodes labelled `lodger.dev/workstation=true` that are Ready, sorted.
pub async fn workstations(client: &Client) -> Result<Vec<String>> {
    let nodes: Api<Node> = Api::all(client.clone());
    let list = nodes
        .list(&ListParams::default().labels(&format!("{LABEL_WORKSTATION}=true")))
        .await?;
    let mut names: Vec<String> = list
        .items
        .iter()
        .filter(|n| is_ready(n))
        .map(|n| n.name_any())
        .collect();
    names.sort();
    Ok(names)
}

/// Whether the node's Ready condition is True.
pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Mark a node idle (since an hour ago) or busy, exactly as the node agent would.
pub async fn set_idle(client: &Client, node: &str, idle: bool) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let since = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(3600);
    let patch = if idle {
        json!({"metadata": {
            "labels": {LABEL_IDLE: "true"},
            "annotations": {ANNOTATION_IDLE_SINCE: since.to_string()},
        }})
    } else {
        json!({"metadata": {
            "labels": {LABEL_IDLE: "false"},
            "annotations": {ANNOTATION_IDLE_SINCE: null},
        }})
    };
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Add or remove the `lodger.dev/owner-active:NoSchedule` taint (the owner came back / left).
pub async fn set_owner_active(client: &Client, node: &str, active: bool) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let current = nodes.get(node).await?;
    let mut taints: Vec<Taint> = current.spec.and_then(|s| s.taints).unwrap_or_default();
    taints.retain(|t| t.key != TAINT_OWNER_ACTIVE);
    if active {
        taints.push(Taint {
            key: TAINT_OWNER_ACTIVE.to_string(),
            effect: "NoSchedule".to_string(),
            ..Default::default()
        });
    }
    let patch = json!({"metadata": {"resourceVersion": current.metadata.resource_version}, "spec": {"taints": taints}});
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Cordon (`kubectl cordon`) or uncordon a node.
pub async fn set_cordoned(client: &Client, node: &str, cordoned: bool) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let patch =
        json!({"spec": {"unschedulable": if cordoned { json!(true) } else { json!(null) }}});
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// What a scenario may change on nodes, recorded before it runs and written back after.
#[derive(Debug)]
struct NodeSnapshot {
    nodes: Vec<Node>,
}

impl NodeSnapshot {
    async fn take(client: &Client) -> Result<Self> {
        let nodes: Api<Node> = Api::all(client.clone());
        Ok(Self {
            nodes: nodes.list(&ListParams::default()).await?.items,
        })
    }

    /// Put back the idle label/annotation, the owner-active taint and `unschedulable`; re-create
    /// a Node object a scenario deleted (its kubelet keeps reporting status into it).
    async fn restore(&self, client: &Client) -> Result<()> {
        let api: Api<Node> = Api::all(client.clone());
        for old in &self.nodes {
            let name = old.name_any();
            let Some(now) = api.get_opt(&name).await? else {
                let mut fresh = Node {
                    metadata: kube::api::ObjectMeta {
                        name: Some(name.clone()),
                        labels: old.metadata.labels.clone(),
                        annotations: old.metadata.annotations.clone(),
                        ..Default::default()
                    },
                    spec: old.spec.clone(),
                    status: None,
                };
                if let Some(spec) = fresh.spec.as_mut() {
                    // The node controller re-adds its own taints; keep only the admin's.
                    if let Some(t) = spec.taints.as_mut() {
                        t.retain(|t| !t.key.starts_with("node.kubernetes.io/"));
                    }
                }
                api.create(&PostParams::default(), &fresh)
                    .await
                    .with_context(|| format!("re-creating node {name}"))?;
                // Its kubelet reports into the new object; later scenarios need it Ready.
                let start = Instant::now();
                loop {
                    if api.get_opt(&name).await?.as_ref().is_some_and(is_ready) {
                        break;
                    }
                    if start.elapsed() > Duration::from_secs(180) {
                        bail!("re-created node {name} did not become Ready within 180 s");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                continue;
            };
            let label = |n: &Node| n.labels().get(LABEL_IDLE).cloned();
            let annotation = |n: &Node| n.annotations().get(ANNOTATION_IDLE_SINCE).cloned();
            let owner_taint = |n: &Node| {
                n.spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .is_some_and(|ts| ts.iter().any(|t| t.key == TAINT_OWNER_ACTIVE))
            };
            let cordoned = |n: &Node| {
                n.spec
                    .as_ref()
                    .and_then(|s| s.unschedulable)
                    .unwrap_or(false)
            };
            if label(old) != label(&now) || annotation(old) != annotation(&now) {
                let patch = json!({"metadata": {
                    "labels": {LABEL_IDLE: label(old)},
                    "annotations": {ANNOTATION_IDLE_SINCE: annotation(old)},
                }});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
            }
            if owner_taint(old) != owner_taint(&now) {
                set_owner_active(client, &name, owner_taint(old)).await?;
            }
            if cordoned(old) != cordoned(&now) {
                set_cordoned(client, &name, cordoned(old)).await?;
            }
        }
        Ok(())
    }
}

// ---- acting as a component ----

/// A client that authenticates with `token` (and nothing else from the kubeconfig), for acting
/// as a ServiceAccount. The token is handed over through a file in `dir`.
pub async fn client_with_token(token: &str, dir: &std::path::Path) -> Result<Client> {
    let path = dir.join("token");
    std::fs::write(&path, token)?;
    let mut config = kube::Config::infer().await?;
    config.auth_info = kube::config::AuthInfo {
        token_file: Some(path.to_string_lossy().into_owned()),
        ..Default::default()
    };
    Ok(Client::try_from(config)?)
}

/// A short-lived token of the node agent's ServiceAccount bound to `pod` (one of its pods), as
/// the kubelet would project it: the API server adds the pod's node to it.
pub async fn agent_token(client: &Client, pod: &Pod) -> Result<String> {
    use k8s_openapi::api::authentication::v1::{
        BoundObjectReference, TokenRequest, TokenRequestSpec,
    };
    use k8s_openapi::api::core::v1::ServiceAccount;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &release_namespace());
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .ok_or_else(|| anyhow!("agent pod has no ServiceAccount"))?;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(600),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let answer = accounts
        .create_token_request(&sa, &PostParams::default(), &request)
        .await?;
    answer
        .status
        .map(|s| s.token)
        .ok_or_else(|| anyhow!("TokenRequest returned no token"))
}

// ---- the checkpoint volume in scenario namespaces ----

/// The release namespace (where the chart is installed): `LODGER_E2E_NAMESPACE` or
/// `lodger-system`.
pub fn release_namespace() -> String {
    std::env::var("LODGER_E2E_NAMESPACE").unwrap_or_else(|_| "lodger-system".to_string())
}

/// The claim name the operator puts into workload pods, from its Deployment (flag or env).
async fn operator_claim(client: &Client) -> Result<String> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &release_namespace());
    let d = deployments
        .get("lodger-operator")
        .await
        .context("the operator Deployment")?;
    let containers = d
        .spec
        .and_then(|s| s.template.spec)
        .map(|s| s.containers)
        .unwrap_or_default();
    for c in containers {
        for arg in c.args.unwrap_or_default() {
            if let Some(v) = arg.strip_prefix("--checkpoint-claim=") {
                return Ok(v.to_string());
            }
        }
        for e in c.env.unwrap_or_default() {
            if e.name == "LODGER_CHECKPOINT_CLAIM"
                && let Some(v) = e.value
            {
                return Ok(v);
            }
        }
    }
    Ok("lodger-checkpoints".to_string())
}

/// Make the checkpoint claim in a scenario namespace: a static PersistentVolume with the same
/// source as the release namespace's claim (the same shared directory or export), pre-bound to
/// a claim of the operator's claim name. Reclaim policy Retain: deleting it never touches the
/// shared data. Labelled for cleanup by scenario.
async fn share_checkpoint_volume(client: &Client, ns: &str, scenario: &str) -> Result<String> {
    let claim = operator_claim(client).await?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &release_namespace());
    let release_claim = claims
        .get(&claim)
        .await
        .context("the release namespace's checkpoint claim")?;
    let pv_name = release_claim
        .spec
        .and_then(|s| s.volume_name)
        .ok_or_else(|| anyhow!("claim {claim} is not bound"))?;
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let source = pvs.get(&pv_name).await?;
    let mut spec = source
        .spec
        .ok_or_else(|| anyhow!("PV {pv_name} has no spec"))?;
    spec.claim_ref = Some(k8s_openapi::api::core::v1::ObjectReference {
        namespace: Some(ns.to_string()),
        name: Some(claim.clone()),
        ..Default::default()
    });
    spec.persistent_volume_reclaim_policy = Some("Retain".to_string());
    spec.storage_class_name = Some(String::new());
    let labels = BTreeMap::from([
        (LABEL_E2E.to_string(), "true".to_string()),
        (LABEL_SCENARIO.to_string(), scenario.to_string()),
    ]);
    let name = format!("{ns}-checkpoints");
    let capacity = spec.capacity.clone().unwrap_or_default();
    let pv = PersistentVolume {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    };
    pvs.create(&PostParams::default(), &pv)
        .await
        .context("creating the scenario's PV")?;
    let pvc = PersistentVolumeClaim {
        metadata: kube::api::ObjectMeta {
            name: Some(claim.clone()),
            namespace: Some(ns.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::core::v1::PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteMany".to_string()]),
            storage_class_name: Some(String::new()),
            volume_name: Some(name),
            resources: Some(k8s_openapi::api::core::v1::VolumeResourceRequirements {
                requests: Some(capacity),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    };
    let ns_claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    ns_claims
        .create(&PostParams::default(), &pvc)
        .await
        .context("creating the scenario's claim")?;
    Ok(claim)
}

// ---- cleanup and diagnostics ----

async fn delete_namespaces(api: &Api<Namespace>, scenario: &str) -> Result<()> {
    let lp = ListParams::default().labels(&format!("{LABEL_E2E}=true,{LABEL_SCENARIO}={scenario}"));
    let _ = api.delete_collection(&DeleteParams::default(), &lp).await?;
    let start = Instant::now();
    loop {
        let left = api.list(&lp).await?.items;
        if left.is_empty() {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(180) {
            let names: Vec<String> = left.iter().map(|n| n.name_any()).collect();
            bail!(
                "namespaces {names:?} still exist 180 s after deletion (a finalizer that never ran?)"
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Print the namespace's MigratableJobs, pods (with logs of every container) and events.
async fn dump_namespace(client: &Client, ns: &str) {
    let jobs: Api<MigratableJob> = Api::namespaced(client.clone(), ns);
    if let Ok(list) = jobs.list(&ListParams::default()).await {
        for j in list {
            eprintln!(
                "--- MigratableJob {}: {}",
                j.name_any(),
                serde_json::to_string_pretty(&j.status).unwrap_or_default()
            );
        }
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    if let Ok(list) = pods.list(&ListParams::default()).await {
        for p in list {
            let name = p.name_any();
            let node = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            let phase = p
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            eprintln!("--- pod {name} on {node}: {phase}");
            let containers = p
                .spec
                .as_ref()
                .map(|s| s.containers.clone())
                .unwrap_or_default();
            for c in containers {
                let lp = LogParams {
                    container: Some(c.name.clone()),
                    tail_lines: Some(200),
                    ..Default::default()
                };
                match pods.logs(&name, &lp).await {
                    Ok(text) => eprintln!("--- logs {name}/{}:\n{text}", c.name),
                    Err(e) => eprintln!("--- logs {name}/{}: unavailable: {e}", c.name),
                }
            }
        }
    }
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    if let Ok(list) = events.list(&ListParams::default()).await {
        for e in list {
            eprintln!(
                "--- event {} {} {}: {}",
                e.type_.unwrap_or_default(),
                e.involved_object.name.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default()
            );
        }
    }
}
