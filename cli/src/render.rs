//! Turning API objects into what `ps`, `nodes` and `history` print (pure: input objects and the
//! current time in, text out), kubectl style: upper-case headers, columns three spaces apart,
//! `<none>` for nothing, ages like `5m12s`.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use lodger_api::{
    ANNOTATION_IDLE_SINCE, LABEL_IDLE, LABEL_OWNER, LABEL_ROLE, MigratableJob, ROLE_WORKLOAD,
    TAINT_OWNER_ACTIVE,
};
use serde::Serialize;

/// kubectl's human duration (`k8s.io/apimachinery/pkg/util/duration.HumanDuration`).
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let s = seconds.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    let y = d / 365;
    match () {
        _ if s < 120 => format!("{s}s"),
        _ if m < 10 && s % 60 == 0 => format!("{m}m"),
        _ if m < 10 => format!("{m}m{}s", s % 60),
        _ if m < 180 => format!("{m}m"),
        _ if h < 8 && m % 60 == 0 => format!("{h}h"),
        _ if h < 8 => format!("{h}h{}m", m % 60),
        _ if h < 48 => format!("{h}h"),
        _ if h < 192 && h % 24 == 0 => format!("{d}d"),
        _ if h < 192 => format!("{d}d{}h", h % 24),
        _ if d < 730 => format!("{d}d"),
        _ if y < 8 && d % 365 == 0 => format!("{y}y"),
        _ if y < 8 => format!("{y}y{}d", d % 365),
        _ => format!("{y}y"),
    }
}

/// Age of `t` at `now`, or `<unknown>`.
pub fn age(t: Option<&Time>, now: Timestamp) -> String {
    t.map_or("<unknown>".into(), |t| {
        human_duration(now.as_second() - t.0.as_second())
    })
}

/// Milliseconds as people read them: `850ms`, `1.8s`, `2m05s`.
pub fn millis(ms: Option<i64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms < 1000 => format!("{ms}ms"),
        Some(ms) if ms < 60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        Some(ms) => format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// Bytes in binary units: `512B`, `48.2MiB`.
pub fn bytes(n: Option<i64>) -> String {
    let Some(n) = n else { return "-".into() };
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

/// A kubectl-style table; `rows` are padded to the headers' count.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        let mut text = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            text.push_str(cell);
            if i < last {
                text.push_str(&" ".repeat(widths[i] - cell.chars().count() + 3));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

fn or_none(v: Option<&str>) -> String {
    v.filter(|s| !s.is_empty()).unwrap_or("<none>").to_string()
}

/// `ps`: NAME PHASE NODE HOME MIGRATIONS AGE (wide: + POD EXIT STRATEGY INSTANCES).
pub fn ps_table(jobs: &[MigratableJob], now: Timestamp, wide: bool, namespaces: bool) -> String {
    let mut headers = vec![];
    if namespaces {
        headers.push("NAMESPACE");
    }
    headers.extend(["NAME", "PHASE", "NODE", "HOME", "MIGRATIONS", "AGE"]);
    if wide {
        headers.extend(["POD", "EXIT", "STRATEGY", "INSTANCES"]);
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|job| {
            let st = job.status.clone().unwrap_or_default();
            let mut row = vec![];
            if namespaces {
                row.push(job.namespace().unwrap_or_default());
            }
            row.extend([
                job.name_any(),
                st.phase.map_or("Pending".into(), |p| p.to_string()),
                or_none(st.node.as_deref()),
                or_none(st.home_node.as_deref().or(job.spec.home_node.as_deref())),
                st.migrations.to_string(),
                age(job.metadata.creation_timestamp.as_ref(), now),
            ]);
            if wide {
                row.extend([
                    or_none(st.pod.as_deref()),
                    st.exit_code.map_or("-".into(), |c| c.to_string()),
                    job.spec.migration.strategy.to_string(),
                    job.spec.parallelism.map_or("-".into(), |n| {
                        let running = st
                            .instances
                            .iter()
                            .filter(|i| i.phase.is_some_and(|p| p == lodger_api::JobPhase::Running))
                            .count();
                        format!("{running}/{n} running")
                    }),
                ]);
            }
            row
        })
        .collect();
    if rows.is_empty() {
        return "No MigratableJobs found.\n".into();
    }
    table(&headers, &rows)
}

/// One workstation as `nodes` shows it (also its `-o json|yaml` form).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSummary {
    /// Node name.
    pub name: String,
    /// Ready condition is True.
    pub ready: bool,
    /// Cordoned (`spec.unschedulable`).
    pub cordoned: bool,
    /// Carries the `lodger.dev/owner-active` taint.
    pub owner_active: bool,
    /// `lodger.dev/idle` label (None when the node agent has not reported).
    pub idle: Option<bool>,
    /// `lodger.dev/idle-since` annotation.
    pub idle_since: Option<Timestamp>,
    /// `lodger.dev/owner` label.
    pub owner: Option<String>,
    /// Workload pods on the node, `namespace/name`.
    pub lodgers: Vec<String>,
}

/// Summaries of `nodes` with the workload pods of `pods` assigned to them, by name.
pub fn summarize_nodes(nodes: &[Node], pods: &[Pod]) -> Vec<NodeSummary> {
    let mut out: Vec<NodeSummary> = nodes
        .iter()
        .map(|node| {
            let name = node.name_any();
            let spec = node.spec.clone().unwrap_or_default();
            let ready = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .is_some_and(|c| c.status == "True");
            let mut lodgers: Vec<String> = pods
                .iter()
                .filter(|p| p.labels().get(LABEL_ROLE).map(String::as_str) == Some(ROLE_WORKLOAD))
                .filter(|p| {
                    p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str())
                })
                .filter(|p| {
                    !matches!(
                        p.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Succeeded" | "Failed")
                    )
                })
                .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
                .collect();
            lodgers.sort();
            NodeSummary {
                ready,
                cordoned: spec.unschedulable.unwrap_or(false),
                owner_active: spec
                    .taints
                    .as_ref()
                    .is_some_and(|t| t.iter().any(|t| t.key == TAINT_OWNER_ACTIVE)),
                idle: node.labels().get(LABEL_IDLE).map(|v| v == "true"),
                idle_since: node
                    .annotations()
                    .get(ANNOTATION_IDLE_SINCE)
                    .and_then(|v| v.parse().ok()),
                owner: node.labels().get(LABEL_OWNER).cloned(),
                lodgers,
                name,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// `nodes`: NAME STATUS IDLE IDLE-SINCE OWNER LODGERS (wide: IDLE-SINCE as a time too).
pub fn nodes_table(nodes: &[NodeSummary], now: Timestamp, wide: bool) -> String {
    let mut headers = vec!["NAME", "STATUS", "IDLE", "IDLE-SINCE", "OWNER", "LODGERS"];
    if wide {
        headers.insert(4, "IDLE-SINCE-TIME");
    }
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let mut status = vec![if n.ready { "Ready" } else { "NotReady" }];
            if n.cordoned {
                status.push("SchedulingDisabled");
            }
            if n.owner_active {
                status.push("OwnerActive");
            }
            let idle = match n.idle {
                Some(true) => "true",
                Some(false) => "false",
                None => "<unknown>",
            };
            let since = match (n.idle, n.idle_since) {
                (Some(true), Some(t)) => human_duration(now.as_second() - t.as_second()),
                _ => "-".into(),
            };
            let mut row = vec![
                n.name.clone(),
                status.join(","),
                idle.to_string(),
                since,
                or_none(n.owner.as_deref()),
                if n.lodgers.is_empty() {
                    "<none>".into()
                } else {
                    n.lodgers.join(",")
                },
            ];
            if wide {
                let t = match (n.idle, n.idle_since) {
                    (Some(true), Some(t)) => t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                    _ => "-".into(),
                };
                row.insert(4, t);
            }
            row
        })
        .collect();
    if rows.is_empty() {
        return "No workstations found (nodes labelled lodger.dev/workstation=true).\n".into();
    }
    table(&headers, &rows)
}

/// `history`: one row per move, oldest first.
pub fn history_table(job: &MigratableJob, now: Timestamp, wide: bool) -> String {
    let history = job
        .status
        .as_ref()
        .map(|s| s.history.as_slice())
        .unwrap_or_default();
    if history.is_empty() {
        return format!("migratablejob/{} has not migrated.\n", job.name_any());
    }
    let mut headers = vec![
        "#", "AGE", "FROM", "TO", "REASON", "STRATEGY", "FREEZE", "DOWNTIME",
    ];
    if wide {
        headers.extend(["IMAGE", "AT"]);
    }
    let rows: Vec<Vec<String>> = history
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut row = vec![
                (i + 1).to_string(),
                age(Some(&r.at), now),
                r.from.clone(),
                if r.to.is_empty() {
                    "(parked)".into()
                } else {
                    r.to.clone()
                },
                r.reason.to_string(),
                r.strategy.to_string(),
                millis(r.freeze_millis),
                millis(r.downtime_millis),
            ];
            if wide {
                row.push(bytes(r.image_bytes));
                row.push(r.at.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
            }
            row
        })
        .collect();
    table(&headers, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// If this fails, ages would read differently from `kubectl get`.
    #[test]
    fn durations_like_kubectl() {
        let cases = [
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (312, "5m12s"),
            (600, "10m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 60 * 7, "3h7m"),
            (30 * 3600, "30h"),
            (3 * 86400 + 4 * 3600, "3d4h"),
            (100 * 86400, "100d"),
            (3 * 365 * 86400 + 86400, "3y1d"),
            (-5, "<invalid>"),
        ];
        for (s, want) in cases {
            assert_eq!(human_duration(s), want, "{s}");
        }
    }

    /// If this fails, freeze/downtime/size columns would mislead.
    #[test]
    fn units() {
        assert_eq!(millis(Some(850)), "850ms");
        assert_eq!(millis(Some(1840)), "1.8s");
        assert_eq!(millis(Some(125_000)), "2m05s");
        assert_eq!(millis(None), "-");
        assert_eq!(bytes(Some(512)), "512B");
        assert_eq!(bytes(Some(50_541_363)), "48.2MiB");
    }
}
