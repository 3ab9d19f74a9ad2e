//! Placement benchmark: 10,000 waiting jobs x 1,000 nodes (goal: <= 50 ms for a whole plan,
//! which every reconcile computes). Jobs come from 100 users, a tenth carry a node selector and
//! a tenth an affinity; nodes have room for 8,000 of them, so the last 2,000 scan every node and
//! find none (the worst case). Run: `cargo bench -p lodger-operator --bench placement`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Node, Pod};
use lodger_api::MigratableJob;
use lodger_operator::placement::{plan, snapshot};
use serde_json::json;

fn nodes(n: usize) -> Vec<Node> {
    (0..n)
        .map(|i| {
            serde_json::from_value(json!({
                "metadata": {
                    "name": format!("desk-{i:04}"),
                    "labels": {"lodger.dev/workstation": "true", "lodger.dev/idle": "true",
                               "disk": if i % 3 == 0 { "ssd" } else { "hdd" },
                               "cpu": if i % 2 == 0 { "new" } else { "old" }},
                    "annotations": {"lodger.dev/idle-since": Timestamp::from_second(1_000 + (i as i64 * 7919) % 50_000).unwrap().to_string()}
                },
                "spec": if i % 10 == 0 { json!({"taints": [{"key": "gpu", "effect": "NoSchedule"}]}) } else { json!({}) },
                "status": {"conditions": [{"type": "Ready", "status": "True"}],
                           "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"}}
            }))
            .unwrap()
        })
        .collect()
}

fn jobs(n: usize) -> Vec<MigratableJob> {
    (0..n)
        .map(|i| {
            let mut spec = json!({"template": {"spec": {"containers": [{
                "name": "main", "image": "busybox", "command": ["work"],
                "resources": {"requests": {"cpu": "1", "memory": "2Gi"}}
            }]}}});
            if i % 10 == 1 {
                spec["placement"] = json!({"nodeSelector": {"disk": "ssd"}});
            }
            if i % 10 == 2 {
                spec["placement"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                    {"nodeSelectorTerms": [{"matchExpressions": [{"key": "cpu", "operator": "In", "values": ["new"]}]}]}}});
            }
            serde_json::from_value(json!({
                "apiVersion": "lodger.dev/v1alpha1", "kind": "MigratableJob",
                "metadata": {"name": format!("job-{i:05}"), "namespace": format!("team-{}", i % 20),
                             "labels": {"lodger.dev/user": format!("user-{}", i % 100)},
                             "creationTimestamp": Timestamp::from_second(i as i64).unwrap().to_string()},
                "spec": spec
            }))
            .unwrap()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let nodes = nodes(1_000);
    let jobs = jobs(10_000);
    let pods: Vec<Pod> = Vec::new();
    let now = Timestamp::from_second(100_000).unwrap();
    let min_idle = SignedDuration::from_secs(30);
    let snap = snapshot(&nodes, &pods, &jobs, min_idle);
    let placed = plan(&snap, now).len();
    eprintln!(
        "placement: {} jobs, {} nodes -> {placed} placed",
        jobs.len(),
        nodes.len()
    );
    let mut group = c.benchmark_group("placement_10000_jobs_1000_nodes");
    group.sample_size(20);
    group.bench_function("plan", |b| b.iter(|| plan(black_box(&snap), now)));
    group.bench_function("snapshot_and_plan", |b| {
        b.iter(|| {
            plan(
                &snapshot(black_box(&nodes), &pods, black_box(&jobs), min_idle),
                now,
            )
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
