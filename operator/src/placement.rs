//! Placement: which idle workstation each waiting job goes to. A pure function of observed
//! state (Nodes with the node agent's idle label/annotation and taints, non-Lodger pods and
//! their requests, MigratableJobs and their status), so a reconcile of any job computes the same
//! plan and two jobs never race for one node.
//!
//! Rules (docs: DESIGN.md "Place"):
//! - candidates are Ready, schedulable nodes labelled `lodger.dev/workstation=true` and
//!   `lodger.dev/idle=true` since at least `minIdleSeconds` (`lodger.dev/idle-since`), without
//!   the `lodger.dev/owner-active` taint, whose other NoSchedule/NoExecute taints the job
//!   tolerates, matching its node selector and required node affinity, with room for its
//!   requests next to what runs there (allocatable minus requests of non-terminated pods);
//! - nodes are ranked longest-idle first (then by name, for determinism);
//! - jobs are served by fair share: the user (label `lodger.dev/user`, else the namespace) with
//!   the fewest lodgers running (plus those placed so far in this plan) goes next, oldest job
//!   first; so a user with more than their share yields the next idle node;
//! - instances of one parallel job (same `lodger.dev/parent`) never share a node.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{
    Node, NodeAffinity, NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint, Toleration,
};
use lodger_api::{
    ANNOTATION_IDLE_SINCE, JobPhase, LABEL_IDLE, LABEL_PARENT, LABEL_ROLE, LABEL_USER,
    LABEL_WORKSTATION, MigratableJob, ROLE_WORKLOAD, TAINT_OWNER_ACTIVE,
};

use crate::quantity::{Resources, pod_requests};

/// What placement needs to know about one node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// Node labels.
    pub labels: BTreeMap<String, String>,
    /// Node taints.
    pub taints: Vec<Taint>,
    /// Ready condition is True.
    pub ready: bool,
    /// When the Ready condition last changed to something other than True.
    pub not_ready_since: Option<Timestamp>,
    /// `spec.unschedulable` (cordoned).
    pub unschedulable: bool,
    /// Since when the node agent has seen it idle (None: not idle or not reported).
    pub idle_since: Option<Timestamp>,
    /// Allocatable resources.
    pub allocatable: Resources,
    /// Requests of everything that runs there (non-terminated pods and placed lodgers).
    pub used: Resources,
}

impl NodeInfo {
    /// Reads a Node object. `used` starts at zero; see [`snapshot`].
    pub fn from_node(node: &Node) -> Self {
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let idle = labels.get(LABEL_IDLE).is_some_and(|v| v == "true");
        let idle_since = idle
            .then(|| {
                node.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(ANNOTATION_IDLE_SINCE))
                    .and_then(|t| t.parse::<Timestamp>().ok())
            })
            .flatten();
        Self {
            name: node.metadata.name.clone().unwrap_or_default(),
            labels,
            taints: node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default(),
            ready: node_ready(node),
            not_ready_since: node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready" && c.status != "True"))
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0),
            unschedulable: node
                .spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false),
            idle_since,
            allocatable: Resources::from_list(
                node.status.as_ref().and_then(|s| s.allocatable.as_ref()),
            ),
            used: Resources::default(),
        }
    }

    /// Labelled `lodger.dev/workstation=true`.
    pub fn is_workstation(&self) -> bool {
        self.labels
            .get(LABEL_WORKSTATION)
            .is_some_and(|v| v == "true")
    }

    /// Carries the owner-active taint (any effect).
    pub fn owner_active(&self) -> bool {
        self.taints.iter().any(|t| t.key == TAINT_OWNER_ACTIVE)
    }

    /// May take a lodger at `now` if idle for `min_idle`, before job-specific checks.
    pub fn idle_candidate(&self, now: Timestamp, min_idle: SignedDuration) -> bool {
        self.ready
            && !self.unschedulable
            && self.is_workstation()
            && !self.owner_active()
            && self
                .idle_since
                .is_some_and(|since| now.duration_since(since) >= min_idle)
    }
}

/// True when the node's Ready condition is True.
pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// One job that needs a node.
#[derive(Clone, Debug, PartialEq)]
pub struct Demand {
    /// `<namespace>/<name>`.
    pub key: String,
    /// Fair-share user.
    pub user: String,
    /// Parent of a parallel instance (instances never share a node).
    pub parent: Option<String>,
    /// Requests of the workload pod.
    pub requests: Resources,
    /// Labels the node must carry.
    pub node_selector: BTreeMap<String, String>,
    /// Required node affinity terms (ORed); every one of `affinities` must match.
    pub affinities: Vec<NodeAffinity>,
    /// The job's own tolerations (the template's).
    pub tolerations: Vec<Toleration>,
    /// Minimum idle time of a candidate.
    pub min_idle: SignedDuration,
    /// Creation time (older first within a user).
    pub created: Timestamp,
    /// A node it must not go to (the one it is being evicted from).
    pub exclude: Option<String>,
}

/// A job already running on a node: counts for fair share, and its requests use the node.
#[derive(Clone, Debug, PartialEq)]
pub struct Lodger {
    /// Fair-share user.
    pub user: String,
    /// Parent of a parallel instance.
    pub parent: Option<String>,
    /// Node it runs on.
    pub node: String,
    /// Its requests.
    pub requests: Resources,
}

/// Fair-share user of a job: label `lodger.dev/user`, else the namespace.
pub fn user_of(job: &MigratableJob) -> String {
    job.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_USER))
        .cloned()
        .unwrap_or_else(|| job.metadata.namespace.clone().unwrap_or_default())
}

/// Key `<namespace>/<name>` of a job.
pub fn key_of(job: &MigratableJob) -> String {
    format!(
        "{}/{}",
        job.metadata.namespace.as_deref().unwrap_or_default(),
        job.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Requests of a job's workload pod.
pub fn job_requests(job: &MigratableJob) -> Resources {
    job.spec
        .template
        .spec
        .as_ref()
        .map(pod_requests)
        .unwrap_or_default()
}

/// The placement demand of a job; `default_min_idle` applies without a per-job override.
pub fn demand_of(job: &MigratableJob, default_min_idle: SignedDuration) -> Demand {
    let pod_spec = job.spec.template.spec.as_ref();
    let mut node_selector = pod_spec
        .and_then(|s| s.node_selector.clone())
        .unwrap_or_default();
    node_selector.extend(job.spec.placement.node_selector.clone());
    let affinities = pod_spec
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.clone())
        .into_iter()
        .chain(job.spec.placement.node_affinity.clone())
        .collect();
    Demand {
        key: key_of(job),
        user: user_of(job),
        parent: job
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_PARENT))
            .map(|p| {
                format!(
                    "{}/{p}",
                    job.metadata.namespace.as_deref().unwrap_or_default()
                )
            }),
        requests: job_requests(job),
        node_selector,
        affinities,
        tolerations: pod_spec
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default(),
        min_idle: job
            .spec
            .placement
            .min_idle_seconds
            .map(|s| SignedDuration::from_secs(i64::from(s)))
            .unwrap_or(default_min_idle),
        created: job
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(Timestamp::UNIX_EPOCH),
        exclude: None,
    }
}

/// True when `toleration` tolerates `taint` (core/v1 semantics).
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref()
        && !effect.is_empty()
        && effect != taint.effect
    {
        return false;
    }
    match toleration.operator.as_deref() {
        Some("Exists") => toleration
            .key
            .as_deref()
            .is_none_or(|k| k.is_empty() || k == taint.key),
        _ => {
            toleration.key.as_deref() == Some(taint.key.as_str())
                && toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
    }
}

/// True when some toleration in `tolerations` tolerates `taint`.
pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

fn requirement_matches(req: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| values.iter().all(|x| x != v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if req.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

fn term_matches(term: &NodeSelectorTerm, node: &NodeInfo) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        // An empty term matches nothing (core/v1 semantics).
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, node.labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            let value = (r.key == "metadata.name").then_some(node.name.as_str());
            requirement_matches(r, value)
        })
}

/// True when the node satisfies the affinity's required terms (ORed).
pub fn affinity_matches(affinity: &NodeAffinity, node: &NodeInfo) -> bool {
    match &affinity.required_during_scheduling_ignored_during_execution {
        None => true,
        Some(sel) => sel
            .node_selector_terms
            .iter()
            .any(|t| term_matches(t, node)),
    }
}

/// Job-specific constraints, without idleness and room: selector, affinity and the taints the
/// node carries (NoSchedule/NoExecute must be tolerated; owner-active never is).
pub fn constraints_match(demand: &Demand, node: &NodeInfo) -> bool {
    demand
        .node_selector
        .iter()
        .all(|(k, v)| node.labels.get(k) == Some(v))
        && demand.affinities.iter().all(|a| affinity_matches(a, node))
        && node.taints.iter().all(|t| {
            t.key != TAINT_OWNER_ACTIVE
                && (t.effect == "PreferNoSchedule" || tolerated(&demand.tolerations, t))
        })
}

/// Everything placement reads, prepared once per reconcile.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Every node, with `used` filled in.
    pub nodes: Vec<NodeInfo>,
    /// Jobs running on a node.
    pub lodgers: Vec<Lodger>,
    /// Jobs that need a node.
    pub demands: Vec<Demand>,
}

/// True when a job in this state needs a node now or soon (it waits, is parked or is being
/// checkpointed away from its node).
pub fn needs_node(job: &MigratableJob) -> bool {
    job.spec.parallelism.is_none()
        && matches!(
            job.status.as_ref().and_then(|s| s.phase),
            None | Some(
                JobPhase::Pending | JobPhase::Placing | JobPhase::Parked | JobPhase::Checkpointing
            )
        )
}

/// Builds the snapshot from the caches: nodes, pods (non-Lodger pods count by their requests;
/// Lodger workload pods are counted through their job's status, which is what placement decides
/// on) and jobs.
pub fn snapshot<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    pods: impl IntoIterator<Item = &'a Pod>,
    jobs: impl IntoIterator<Item = &'a MigratableJob>,
    default_min_idle: SignedDuration,
) -> Snapshot {
    let mut infos: Vec<NodeInfo> = nodes.into_iter().map(NodeInfo::from_node).collect();
    let index: HashMap<String, usize> = infos
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.clone(), i))
        .collect();
    for pod in pods {
        let is_lodger = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_ROLE))
            .is_some_and(|r| r == ROLE_WORKLOAD);
        let terminated = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        let Some(spec) = pod.spec.as_ref() else {
            continue;
        };
        if is_lodger || terminated {
            continue;
        }
        if let Some(&i) = spec.node_name.as_ref().and_then(|n| index.get(n)) {
            infos[i].used += pod_requests(spec);
        }
    }
    let mut lodgers = Vec::new();
    let mut demands = Vec::new();
    for job in jobs {
        let status = job.status.as_ref();
        let phase = status.and_then(|s| s.phase);
        if phase.is_some_and(JobPhase::is_terminal) || job.spec.parallelism.is_some() {
            continue;
        }
        let demand = demand_of(job, default_min_idle);
        if let Some(node) = status.and_then(|s| s.node.clone())
            && phase != Some(JobPhase::Parked)
        {
            if let Some(&i) = index.get(&node) {
                infos[i].used += demand.requests;
            }
            lodgers.push(Lodger {
                user: demand.user.clone(),
                parent: demand.parent.clone(),
                node: node.clone(),
                requests: demand.requests,
            });
            if needs_node(job) {
                // Being checkpointed away: it needs a target elsewhere.
                demands.push(Demand {
                    exclude: Some(node),
                    ..demand
                });
            }
        } else if needs_node(job) {
            demands.push(demand);
        }
    }
    Snapshot {
        nodes: infos,
        lodgers,
        demands,
    }
}

/// Makes sure `job` is among the demands: a job whose state alone does not say it needs a node
/// (Running on a lost node, Restoring after a failed restore) asks for one elsewhere than its
/// current node.
pub fn ensure_demand(
    snapshot: &mut Snapshot,
    job: &MigratableJob,
    default_min_idle: SignedDuration,
) {
    let key = key_of(job);
    if snapshot.demands.iter().any(|d| d.key == key) {
        return;
    }
    let mut demand = demand_of(job, default_min_idle);
    demand.exclude = job.status.as_ref().and_then(|s| s.node.clone());
    snapshot.demands.push(demand);
}

/// The plan: job key -> node name, for every demand that found a node.
pub fn plan(snapshot: &Snapshot, now: Timestamp) -> BTreeMap<String, String> {
    // Nodes that are idle candidates at all, longest idle first. Per-job minimum idle times are
    // checked below; the widest filter here uses min_idle = 0.
    let mut order: Vec<usize> = (0..snapshot.nodes.len())
        .filter(|&i| snapshot.nodes[i].idle_candidate(now, SignedDuration::ZERO))
        .collect();
    order.sort_by(|&a, &b| {
        let (na, nb) = (&snapshot.nodes[a], &snapshot.nodes[b]);
        na.idle_since
            .cmp(&nb.idle_since)
            .then_with(|| na.name.cmp(&nb.name))
    });
    let mut free: Vec<Resources> = snapshot
        .nodes
        .iter()
        .map(|n| n.allocatable.minus(n.used))
        .collect();

    let mut running: HashMap<&str, usize> = HashMap::new();
    let mut sibling_nodes: HashSet<(&str, &str)> = HashSet::new();
    for l in &snapshot.lodgers {
        *running.entry(l.user.as_str()).or_default() += 1;
        if let Some(p) = &l.parent {
            sibling_nodes.insert((p.as_str(), l.node.as_str()));
        }
    }
    // A job being checkpointed away still counts on its node for fair share; it must not count
    // twice once it is given a target, so discount demands that already run.
    let mut queues: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, d) in snapshot.demands.iter().enumerate() {
        queues.entry(d.user.as_str()).or_default().push(i);
        if d.exclude.is_some()
            && let Some(c) = running.get_mut(d.user.as_str())
        {
            *c = c.saturating_sub(1);
        }
    }
    for q in queues.values_mut() {
        q.sort_by(|&a, &b| {
            let (da, db) = (&snapshot.demands[a], &snapshot.demands[b]);
            (da.created, &da.key).cmp(&(db.created, &db.key))
        });
        q.reverse(); // pop() takes the oldest
    }
    // Heap of users: fewest lodgers first, then the user whose next job is oldest.
    let mut heap: BinaryHeap<Reverse<(usize, Timestamp, &str)>> = queues
        .iter()
        .filter_map(|(user, q)| {
            q.last().map(|&i| {
                Reverse((
                    running.get(user).copied().unwrap_or(0),
                    snapshot.demands[i].created,
                    *user,
                ))
            })
        })
        .collect();

    // The smallest request in every dimension: a node that cannot fit it can take no job.
    let smallest = snapshot
        .demands
        .iter()
        .map(|d| d.requests)
        .reduce(|a, b| Resources {
            cpu: a.cpu.min(b.cpu),
            memory: a.memory.min(b.memory),
            pods: a.pods.min(b.pods),
        })
        .unwrap_or_default();
    order.retain(|&n| smallest.fits_in(free[n]));

    let mut assigned = BTreeMap::new();
    while let Some(Reverse((count, _, user))) = heap.pop() {
        let Some(queue) = queues.get_mut(user) else {
            continue;
        };
        let Some(i) = queue.pop() else { continue };
        let d = &snapshot.demands[i];
        let chosen = order.iter().position(|&n| {
            let node = &snapshot.nodes[n];
            d.requests.fits_in(free[n])
                && d.exclude.as_deref() != Some(node.name.as_str())
                && node
                    .idle_since
                    .is_some_and(|since| now.duration_since(since) >= d.min_idle)
                && d.parent
                    .as_deref()
                    .is_none_or(|p| !sibling_nodes.contains(&(p, node.name.as_str())))
                && constraints_match(d, node)
        });
        let count = match chosen {
            Some(pos) => {
                let n = order[pos];
                free[n] = free[n].minus(d.requests);
                if !smallest.fits_in(free[n]) {
                    // Full for every job: stop scanning it (free room only shrinks here).
                    order.remove(pos);
                }
                let name = snapshot.nodes[n].name.as_str();
                if let Some(p) = &d.parent {
                    sibling_nodes.insert((p.as_str(), name));
                }
                assigned.insert(d.key.clone(), name.to_string());
                count + 1
            }
            None => count,
        };
        if let Some(&next) = queue.last() {
            heap.push(Reverse((count, snapshot.demands[next].created, user)));
        }
    }
    assigned
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{JobBuilder, NodeBuilder, ts};

    fn run(nodes: Vec<Node>, jobs: Vec<MigratableJob>, pods: Vec<Pod>) -> BTreeMap<String, String> {
        let snap = snapshot(&nodes, &pods, &jobs, SignedDuration::from_secs(30));
        plan(&snap, ts(1000))
    }

    /// Table of single-job scenarios: which node (if any) a lone waiting job gets. If a row
    /// fails, placement sends jobs to busy, tainted, cordoned, lost or full machines, or ignores
    /// the job's constraints.
    #[test]
    fn single_job_placement_table() {
        let idle = |name: &str, since: i64| NodeBuilder::new(name).idle_since(since);
        let rows: Vec<(&str, Vec<Node>, MigratableJob, Option<&str>)> = vec![
            (
                "longest idle wins",
                vec![
                    idle("a", 900).build(),
                    idle("b", 100).build(),
                    idle("c", 500).build(),
                ],
                JobBuilder::new("j").build(),
                Some("b"),
            ),
            (
                "idle too briefly (default 30 s)",
                vec![idle("a", 990).build()],
                JobBuilder::new("j").build(),
                None,
            ),
            (
                "per-job min idle override",
                vec![idle("a", 990).build()],
                JobBuilder::new("j").min_idle(5).build(),
                Some("a"),
            ),
            (
                "per-job min idle stricter",
                vec![idle("a", 900).build(), idle("b", 0).build()],
                JobBuilder::new("j").min_idle(500).build(),
                Some("b"),
            ),
            (
                "busy (idle=false) excluded",
                vec![idle("a", 0).not_idle().build(), idle("b", 500).build()],
                JobBuilder::new("j").build(),
                Some("b"),
            ),
            (
                "owner-active taint excluded",
                vec![
                    idle("a", 0).taint(TAINT_OWNER_ACTIVE, "NoSchedule").build(),
                    idle("b", 500).build(),
                ],
                JobBuilder::new("j").build(),
                Some("b"),
            ),
            (
                "NoSchedule taint not tolerated",
                vec![idle("a", 0).taint("gpu", "NoSchedule").build()],
                JobBuilder::new("j").build(),
                None,
            ),
            (
                "NoSchedule taint tolerated",
                vec![idle("a", 0).taint("gpu", "NoSchedule").build()],
                JobBuilder::new("j").tolerate("gpu").build(),
                Some("a"),
            ),
            (
                "PreferNoSchedule ignored",
                vec![idle("a", 0).taint("x", "PreferNoSchedule").build()],
                JobBuilder::new("j").build(),
                Some("a"),
            ),
            (
                "cordoned excluded",
                vec![idle("a", 0).cordoned().build(), idle("b", 500).build()],
                JobBuilder::new("j").build(),
                Some("b"),
            ),
            (
                "NotReady excluded",
                vec![idle("a", 0).not_ready().build()],
                JobBuilder::new("j").build(),
                None,
            ),
            (
                "not a workstation excluded",
                vec![idle("a", 0).not_workstation().build()],
                JobBuilder::new("j").build(),
                None,
            ),
            (
                "full node excluded",
                vec![
                    idle("a", 0).allocatable("1", "1Gi").build(),
                    idle("b", 500).build(),
                ],
                JobBuilder::new("j").requests("2", "1Gi").build(),
                Some("b"),
            ),
            (
                "node selector",
                vec![
                    idle("a", 0).build(),
                    idle("b", 500).label("disk", "ssd").build(),
                ],
                JobBuilder::new("j").selector("disk", "ssd").build(),
                Some("b"),
            ),
            (
                "template node selector",
                vec![
                    idle("a", 0).build(),
                    idle("b", 500).label("zone", "lab2").build(),
                ],
                JobBuilder::new("j")
                    .template_selector("zone", "lab2")
                    .build(),
                Some("b"),
            ),
            (
                "affinity In",
                vec![
                    idle("a", 0).label("cpu", "old").build(),
                    idle("b", 500).label("cpu", "new").build(),
                ],
                JobBuilder::new("j").affinity_in("cpu", &["new"]).build(),
                Some("b"),
            ),
            (
                "affinity NotIn",
                vec![
                    idle("a", 0).label("cpu", "old").build(),
                    idle("b", 500).build(),
                ],
                JobBuilder::new("j")
                    .affinity_not_in("cpu", &["old"])
                    .build(),
                Some("b"),
            ),
        ];
        for (name, nodes, job, want) in rows {
            let got = run(nodes, vec![job], vec![]);
            assert_eq!(got.get("ns/j").map(String::as_str), want, "{name}");
        }
    }

    /// Requests of pods already on a node count against it; if this breaks, a desktop running
    /// its owner's own heavy pods is handed a lodger that does not fit.
    #[test]
    fn requests_of_running_pods_count() {
        let nodes = vec![
            NodeBuilder::new("a")
                .idle_since(0)
                .allocatable("4", "8Gi")
                .build(),
            NodeBuilder::new("b")
                .idle_since(500)
                .allocatable("4", "8Gi")
                .build(),
        ];
        let other: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "owner-thing", "namespace": "x"},
            "spec": {"nodeName": "a", "containers": [{"name": "c", "resources": {"requests": {"cpu": "3"}}}]},
            "status": {"phase": "Running"}
        }))
        .unwrap();
        let job = JobBuilder::new("j").requests("2", "1Gi").build();
        assert_eq!(
            run(nodes.clone(), vec![job.clone()], vec![other.clone()])["ns/j"],
            "b"
        );
        // A terminated pod frees its requests.
        let mut done = other;
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert_eq!(run(nodes, vec![job], vec![done])["ns/j"], "a");
    }

    /// Several jobs share nodes by capacity, and a lodger already running uses its node's room;
    /// if this breaks, two jobs are bound to a node that holds only one.
    #[test]
    fn capacity_is_shared_between_jobs() {
        let nodes = vec![
            NodeBuilder::new("a")
                .idle_since(0)
                .allocatable("2", "8Gi")
                .build(),
            NodeBuilder::new("b")
                .idle_since(500)
                .allocatable("2", "8Gi")
                .build(),
        ];
        let running = JobBuilder::new("r")
            .requests("1", "1Gi")
            .running_on("a")
            .build();
        let j1 = JobBuilder::new("j1")
            .requests("1", "1Gi")
            .created(1)
            .build();
        let j2 = JobBuilder::new("j2")
            .requests("1", "1Gi")
            .created(2)
            .build();
        let got = run(nodes, vec![running, j1, j2], vec![]);
        assert_eq!(got["ns/j1"], "a");
        assert_eq!(got["ns/j2"], "b");
        assert!(!got.contains_key("ns/r"));
    }

    /// Fair share: a user with more lodgers yields the longest-idle node to a user with fewer,
    /// even when their job is older; if this breaks, one user's batch starves everyone else.
    #[test]
    fn fair_share_yields_to_user_with_fewer_lodgers() {
        let nodes = vec![
            NodeBuilder::new("n1")
                .idle_since(0)
                .allocatable("1", "8Gi")
                .build(),
            NodeBuilder::new("n2")
                .idle_since(100)
                .allocatable("1", "8Gi")
                .build(),
            NodeBuilder::new("run1")
                .idle_since(0)
                .allocatable("8", "8Gi")
                .build(),
        ];
        let busy = |n: &str| {
            JobBuilder::new(n)
                .user("alice")
                .requests("1", "1Gi")
                .running_on("run1")
                .build()
        };
        let jobs = vec![
            busy("a-run-1"),
            busy("a-run-2"),
            JobBuilder::new("alice-old")
                .user("alice")
                .requests("1", "1Gi")
                .created(1)
                .build(),
            JobBuilder::new("bob-new")
                .user("bob")
                .requests("1", "1Gi")
                .created(50)
                .build(),
        ];
        let got = run(nodes, jobs, vec![]);
        // n1 (idle since 0) is the longest idle with room for exactly one job.
        assert_eq!(got["ns/bob-new"], "n1");
        assert_eq!(got.get("ns/alice-old").map(String::as_str), Some("run1"));
    }

    /// Fair share between users with equal counts alternates, oldest first; if this breaks,
    /// the order of jobs in the cache decides who runs.
    #[test]
    fn fair_share_alternates_between_users() {
        let nodes: Vec<Node> = (0..3)
            .map(|i| {
                NodeBuilder::new(&format!("n{i}"))
                    .idle_since(i * 10)
                    .allocatable("1", "8Gi")
                    .build()
            })
            .collect();
        let jobs = vec![
            JobBuilder::new("a1")
                .user("alice")
                .requests("1", "1Gi")
                .created(1)
                .build(),
            JobBuilder::new("a2")
                .user("alice")
                .requests("1", "1Gi")
                .created(2)
                .build(),
            JobBuilder::new("a3")
                .user("alice")
                .requests("1", "1Gi")
                .created(3)
                .build(),
            JobBuilder::new("b1")
                .user("bob")
                .requests("1", "1Gi")
                .created(10)
                .build(),
        ];
        let got = run(nodes, jobs, vec![]);
        assert_eq!(got["ns/a1"], "n0");
        assert_eq!(got["ns/b1"], "n1");
        assert_eq!(got["ns/a2"], "n2");
        assert!(!got.contains_key("ns/a3"));
    }

    /// Parallel instances get one node each and fewer run when fewer nodes are idle; if this
    /// breaks, pmake-style fan-out piles instances onto one desktop.
    #[test]
    fn parallel_instances_spread_and_get_fewer_nodes() {
        let nodes = vec![
            NodeBuilder::new("a").idle_since(0).build(),
            NodeBuilder::new("b").idle_since(10).build(),
        ];
        let jobs: Vec<MigratableJob> = (0..4)
            .map(|i| {
                JobBuilder::new(&format!("p-{i}"))
                    .parent("p")
                    .created(i)
                    .build()
            })
            .collect();
        let got = run(nodes, jobs, vec![]);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got["ns/p-0"], "a");
        assert_eq!(got["ns/p-1"], "b");
    }

    /// A running job whose node is lost asks for a node through `ensure_demand` and gets one
    /// other than its own. If this breaks, jobs on a crashed desktop are parked although idle
    /// nodes exist.
    #[test]
    fn ensure_demand_adds_a_running_job() {
        let nodes = vec![
            NodeBuilder::new("src").not_ready().build(),
            NodeBuilder::new("dst").idle_since(500).build(),
        ];
        let job = JobBuilder::new("j").running_on("src").build();
        let mut snap = snapshot(
            &nodes,
            &[],
            std::slice::from_ref(&job),
            SignedDuration::from_secs(30),
        );
        assert!(plan(&snap, ts(1000)).is_empty());
        ensure_demand(&mut snap, &job, SignedDuration::from_secs(30));
        ensure_demand(&mut snap, &job, SignedDuration::from_secs(30));
        assert_eq!(snap.demands.len(), 1);
        assert_eq!(plan(&snap, ts(1000))["ns/j"], "dst");
    }

    /// A job being checkpointed away is never planned back onto the node it leaves; if this
    /// breaks, an evicted job "migrates" onto the desktop whose owner just returned.
    #[test]
    fn evicted_job_excludes_its_node() {
        let nodes = vec![
            NodeBuilder::new("src").idle_since(0).build(),
            NodeBuilder::new("dst").idle_since(500).build(),
        ];
        let job = JobBuilder::new("j")
            .running_on("src")
            .phase(JobPhase::Checkpointing)
            .build();
        let got = run(nodes, vec![job], vec![]);
        assert_eq!(got["ns/j"], "dst");
    }
}
