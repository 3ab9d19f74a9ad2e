//! Reporting the node's idle state on its own Node object, and nothing else.
//!
//! What the agent writes, with server-side apply as field manager `lodger-node-agent`:
//! - label `lodger.dev/idle=true|false`;
//! - annotation `lodger.dev/idle-since=<RFC 3339>` while idle (when the agent declared the node
//!   idle; an agent restart keeps the value already on the Node), removed otherwise;
//! - taint `lodger.dev/owner-active:NoSchedule` while the owner is active, removed when idle.
//!
//! NB (how SSA treats node taints): `NodeSpec.taints` is `+listType=atomic` — the whole list is
//! one field with one owner set; it is not merged per key+effect (kubernetes/kubernetes#128866
//! proposes a map keyed by key+effect and is not merged). Applying a list with only our taint
//! would therefore replace everybody else's (the node lifecycle controller's `not-ready`, an
//! admin's `kubectl taint`), and, once we own the list, omitting it from a later apply would
//! delete the whole list. So every apply carries the *full* list, read from the Node just
//! before: everybody else's taints unchanged, plus or minus ours; and it carries the Node's
//! `resourceVersion`, which SSA honours as a precondition, so a concurrent change by someone
//! else makes our apply fail with 409 and we re-read and retry instead of overwriting it.
//! Labels and annotations are maps (granular), so only our keys appear there.
//!
//! The reporter is built for one node name (from the downward API) and has no way to address
//! another Node; the chart's ValidatingAdmissionPolicy enforces the same on the server side.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Taint};
use kube::api::{Api, Patch, PatchParams};
use lodger_api::{ANNOTATION_IDLE_SINCE, LABEL_IDLE, MANAGER_NODE_AGENT, TAINT_OWNER_ACTIVE};
use serde_json::{Value, json};

/// Effect of the owner-active taint.
pub const OWNER_ACTIVE_EFFECT: &str = "NoSchedule";

/// How many times a write is retried after a 409 (someone changed the Node in between).
const CONFLICT_RETRIES: usize = 3;

/// Errors of node reporting.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Reading the Node failed.
    #[error("failed to read node {node}: {source}")]
    Get {
        /// The node.
        node: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Applying the patch failed.
    #[error("failed to apply idle state to node {node}: {source}")]
    Apply {
        /// The node.
        node: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

impl ReportError {
    /// Stable category for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            ReportError::Get { .. } => "node_get",
            ReportError::Apply { .. } => "node_apply",
        }
    }
}

/// The state to report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeReport {
    /// True while the node is idle.
    pub idle: bool,
    /// When it became idle (used only when `idle`).
    pub idle_since: Timestamp,
}

fn is_ours(t: &Taint) -> bool {
    t.key == TAINT_OWNER_ACTIVE && t.effect == OWNER_ACTIVE_EFFECT
}

/// The server-side apply body that brings `node` to `report`, or `None` when the Node already
/// shows it. Pure.
pub fn desired_apply(node: &Node, report: &NodeReport) -> Option<Value> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let annotations = node.metadata.annotations.clone().unwrap_or_default();
    let taints: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();

    let want_label = if report.idle { "true" } else { "false" };
    // An agent restart finds the node already idle: keep the moment it became idle.
    let already_idle = labels.get(LABEL_IDLE).is_some_and(|v| v == "true");
    let existing_since = annotations
        .get(ANNOTATION_IDLE_SINCE)
        .filter(|v| v.parse::<Timestamp>().is_ok());
    let want_since: Option<String> = report.idle.then(|| match existing_since {
        Some(v) if already_idle => v.clone(),
        _ => report.idle_since.to_string(),
    });
    let has_ours = taints.iter().any(is_ours);
    let want_ours = !report.idle;

    if labels.get(LABEL_IDLE).map(String::as_str) == Some(want_label)
        && annotations.get(ANNOTATION_IDLE_SINCE) == want_since.as_ref()
        && has_ours == want_ours
        && taints.iter().filter(|t| is_ours(t)).count() <= 1
    {
        return None;
    }

    // Everybody else's taints, untouched and in their order; ours last, at most once.
    let mut new_taints: Vec<Value> = taints
        .iter()
        .filter(|t| !is_ours(t))
        .map(|t| serde_json::to_value(t).expect("a Taint always serializes"))
        .collect();
    if want_ours {
        let kept = taints.iter().find(|t| is_ours(t)).cloned();
        let ours = kept.unwrap_or_else(|| Taint {
            key: TAINT_OWNER_ACTIVE.to_string(),
            effect: OWNER_ACTIVE_EFFECT.to_string(),
            value: None,
            time_added: None,
        });
        new_taints.push(serde_json::to_value(ours).expect("a Taint always serializes"));
    }

    let mut metadata = json!({
        "name": name,
        "labels": { LABEL_IDLE: want_label },
    });
    if let Some(rv) = &node.metadata.resource_version {
        metadata["resourceVersion"] = json!(rv);
    }
    if let Some(since) = want_since {
        metadata["annotations"] = json!({ ANNOTATION_IDLE_SINCE: since });
    }
    Some(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": metadata,
        "spec": { "taints": new_taints },
    }))
}

/// Writes the idle state onto one Node.
#[derive(Clone)]
pub struct NodeReporter {
    nodes: Api<Node>,
    node_name: String,
}

impl std::fmt::Debug for NodeReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeReporter")
            .field("node_name", &self.node_name)
            .finish()
    }
}

/// What a report did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportOutcome {
    /// The Node already showed the state.
    Unchanged,
    /// The Node was updated.
    Applied,
}

impl NodeReporter {
    /// A reporter for the node called `node_name` (this agent's own node).
    pub fn new(client: kube::Client, node_name: impl Into<String>) -> Self {
        Self {
            nodes: Api::all(client),
            node_name: node_name.into(),
        }
    }

    /// The node this reporter writes.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Reads the Node and applies `report` if it differs; retries on 409 (the Node changed
    /// between our read and our write).
    pub async fn report(&self, report: &NodeReport) -> Result<ReportOutcome, ReportError> {
        let params = PatchParams::apply(MANAGER_NODE_AGENT).force();
        let mut attempt = 0;
        loop {
            let node =
                self.nodes
                    .get(&self.node_name)
                    .await
                    .map_err(|source| ReportError::Get {
                        node: self.node_name.clone(),
                        source,
                    })?;
            let Some(body) = desired_apply(&node, report) else {
                return Ok(ReportOutcome::Unchanged);
            };
            match self
                .nodes
                .patch(&self.node_name, &params, &Patch::Apply(&body))
                .await
            {
                Ok(_) => return Ok(ReportOutcome::Applied),
                Err(kube::Error::Api(e)) if e.code == 409 && attempt < CONFLICT_RETRIES => {
                    attempt += 1;
                    tracing::debug!(node = %self.node_name, attempt, "node changed under us; re-reading");
                }
                Err(source) => {
                    return Err(ReportError::Apply {
                        node: self.node_name.clone(),
                        source,
                    });
                }
            }
        }
    }
}

/// Labels of a Node as a map (helper for tests and logs).
pub fn node_labels(node: &Node) -> BTreeMap<String, String> {
    node.metadata.labels.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ApiServerVerifier, timeout_after_1s};

    const NODE: &str = "desk-7";

    fn since() -> Timestamp {
        "2026-11-22T10:00:00Z".parse().unwrap()
    }

    /// A Node as the API server returns it: with a kubelet label, an admin's annotation, and
    /// someone else's taint.
    fn node(labels: Value, annotations: Value, taints: Value) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": NODE,
                "resourceVersion": "4711",
                "labels": labels,
                "annotations": annotations,
            },
            "spec": { "taints": taints },
        })
    }

    fn foreign_taint() -> Value {
        json!({"key": "gpu", "value": "a100", "effect": "NoSchedule"})
    }

    fn our_taint() -> Value {
        json!({"key": TAINT_OWNER_ACTIVE, "effect": "NoSchedule"})
    }

    /// If this fails, the owner's return does not put the taint on (lodgers would not be
    /// evicted), or the patch touches something besides the idle label/taint and drops
    /// someone else's taint: the body must be exactly label + full taint list (others' first,
    /// unchanged) + resourceVersion precondition, and go to this node's URI with our manager.
    #[tokio::test]
    async fn owner_active_applies_label_and_taint_and_keeps_foreign_taints() {
        let (client, verifier) = ApiServerVerifier::new();
        let server = tokio::spawn(async move {
            let mut v = verifier;
            v.expect(
                "GET",
                &format!("/api/v1/nodes/{NODE}"),
                None,
                node(
                    json!({"kubernetes.io/hostname": NODE, LABEL_IDLE: "true"}),
                    json!({ANNOTATION_IDLE_SINCE: "2026-11-22T09:00:00Z", "admin/note": "x"}),
                    json!([foreign_taint()]),
                ),
            )
            .await;
            let body = v
                .expect(
                    "PATCH",
                    &format!("/api/v1/nodes/{NODE}?&force=true&fieldManager=lodger-node-agent"),
                    Some("application/apply-patch+yaml"),
                    node(json!({}), json!({}), json!([])),
                )
                .await;
            assert_eq!(
                body,
                json!({
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": NODE,
                        "resourceVersion": "4711",
                        "labels": { LABEL_IDLE: "false" },
                    },
                    "spec": { "taints": [foreign_taint(), our_taint()] },
                })
            );
        });
        let reporter = NodeReporter::new(client, NODE);
        let outcome = reporter
            .report(&NodeReport {
                idle: false,
                idle_since: since(),
            })
            .await
            .unwrap();
        assert_eq!(outcome, ReportOutcome::Applied);
        timeout_after_1s(server).await;
    }

    /// If this fails, an idle node keeps the owner-active taint (no lodger is ever placed on
    /// it) or loses someone else's taint when ours is removed.
    #[tokio::test]
    async fn idle_removes_only_our_taint_and_sets_idle_since() {
        let (client, verifier) = ApiServerVerifier::new();
        let server = tokio::spawn(async move {
            let mut v = verifier;
            v.expect(
                "GET",
                &format!("/api/v1/nodes/{NODE}"),
                None,
                node(
                    json!({LABEL_IDLE: "false"}),
                    json!({}),
                    json!([our_taint(), foreign_taint()]),
                ),
            )
            .await;
            let body = v
                .expect(
                    "PATCH",
                    &format!("/api/v1/nodes/{NODE}?&force=true&fieldManager=lodger-node-agent"),
                    Some("application/apply-patch+yaml"),
                    node(json!({}), json!({}), json!([])),
                )
                .await;
            assert_eq!(
                body,
                json!({
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": NODE,
                        "resourceVersion": "4711",
                        "labels": { LABEL_IDLE: "true" },
                        "annotations": { ANNOTATION_IDLE_SINCE: "2026-11-22T10:00:00Z" },
                    },
                    "spec": { "taints": [foreign_taint()] },
                })
            );
        });
        let reporter = NodeReporter::new(client, NODE);
        reporter
            .report(&NodeReport {
                idle: true,
                idle_since: since(),
            })
            .await
            .unwrap();
        timeout_after_1s(server).await;
    }

    /// If this fails, the agent writes its Node on every tick although nothing changed (API
    /// load from every workstation), or an agent restart resets `idle-since` (jobs with a
    /// minIdleSeconds would wait again for no reason).
    #[tokio::test]
    async fn unchanged_state_writes_nothing_and_restart_keeps_idle_since() {
        let (client, verifier) = ApiServerVerifier::new();
        let server = tokio::spawn(async move {
            let mut v = verifier;
            v.expect(
                "GET",
                &format!("/api/v1/nodes/{NODE}"),
                None,
                node(
                    json!({LABEL_IDLE: "true"}),
                    json!({ANNOTATION_IDLE_SINCE: "2026-11-22T08:00:00Z"}),
                    json!([foreign_taint()]),
                ),
            )
            .await;
        });
        let reporter = NodeReporter::new(client, NODE);
        let outcome = reporter
            .report(&NodeReport {
                idle: true,
                idle_since: since(),
            })
            .await
            .unwrap();
        assert_eq!(outcome, ReportOutcome::Unchanged);
        timeout_after_1s(server).await;
    }

    /// If this fails, a concurrent change of the Node's taints (someone else's write between
    /// our read and our apply) is overwritten instead of re-read: after a 409 the agent must
    /// read again and apply the list as it is now.
    #[tokio::test]
    async fn conflict_rereads_and_reapplies_with_the_new_list() {
        let (client, verifier) = ApiServerVerifier::new();
        let server = tokio::spawn(async move {
            let mut v = verifier;
            let uri_get = format!("/api/v1/nodes/{NODE}");
            let uri_patch =
                format!("/api/v1/nodes/{NODE}?&force=true&fieldManager=lodger-node-agent");
            v.expect("GET", &uri_get, None, node(json!({}), json!({}), json!([])))
                .await;
            v.expect_status("PATCH", &uri_patch, 409, "Conflict").await;
            let mut changed = node(json!({}), json!({}), json!([foreign_taint()]));
            changed["metadata"]["resourceVersion"] = json!("4712");
            v.expect("GET", &uri_get, None, changed).await;
            let body = v
                .expect(
                    "PATCH",
                    &uri_patch,
                    Some("application/apply-patch+yaml"),
                    node(json!({}), json!({}), json!([])),
                )
                .await;
            assert_eq!(body["metadata"]["resourceVersion"], json!("4712"));
            assert_eq!(
                body["spec"]["taints"],
                json!([foreign_taint(), our_taint()])
            );
        });
        let reporter = NodeReporter::new(client, NODE);
        reporter
            .report(&NodeReport {
                idle: false,
                idle_since: since(),
            })
            .await
            .unwrap();
        timeout_after_1s(server).await;
    }

    /// If this fails, a duplicated owner-active taint (two writers racing in the past) would be
    /// left in place, or the pure decision disagrees with what the Node shows.
    #[test]
    fn duplicate_own_taint_is_collapsed() {
        let n: Node = serde_json::from_value(node(
            json!({LABEL_IDLE: "false"}),
            json!({}),
            json!([our_taint(), our_taint()]),
        ))
        .unwrap();
        let body = desired_apply(
            &n,
            &NodeReport {
                idle: false,
                idle_since: since(),
            },
        )
        .expect("a write is needed");
        assert_eq!(body["spec"]["taints"], json!([our_taint()]));
        assert_eq!(node_labels(&n).get(LABEL_IDLE).unwrap(), "false");
    }
}
