//! Golden-output tests: what `ps`, `nodes`, `history`, `run --dry-run` and `--help` print for
//! fixed fixtures (tests/fixtures) at a fixed time, compared exactly with tests/golden/*.
//! `UPDATE_GOLDEN=1 cargo test -p kubectl-lodger --test golden` rewrites the golden files; review
//! the diff before committing it.

use std::path::PathBuf;

use clap::{CommandFactory, Parser};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use kubectl_lodger::args::{Cli, Command, OutputFormat};
use kubectl_lodger::commands::structured;
use kubectl_lodger::jobspec::build_job;
use kubectl_lodger::render;
use lodger_api::MigratableJob;

fn dir(sub: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(sub)
}

fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let text = std::fs::read_to_string(dir("fixtures").join(name)).expect("fixture");
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn golden(name: &str, actual: &str) {
    let path = dir("golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "missing {}: run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    assert!(
        actual == expected,
        "{name} differs from its golden file (UPDATE_GOLDEN=1 rewrites it)\n--- expected\n{expected}\n--- actual\n{actual}"
    );
}

fn now() -> Timestamp {
    "2026-11-22T10:00:00Z".parse().expect("time")
}

fn jobs() -> Vec<MigratableJob> {
    fixture("jobs.yaml")
}

/// If this fails, `kubectl lodger ps` shows other columns or values than documented.
#[test]
fn ps_tables() {
    let jobs = jobs();
    let alice: Vec<MigratableJob> = jobs
        .iter()
        .filter(|j| j.metadata.namespace.as_deref() == Some("alice"))
        .cloned()
        .collect();
    golden("ps.txt", &render::ps_table(&alice, now(), false, false));
    golden("ps-wide.txt", &render::ps_table(&jobs, now(), true, false));
    golden(
        "ps-all-namespaces.txt",
        &render::ps_table(&jobs, now(), false, true),
    );
    golden("ps-empty.txt", &render::ps_table(&[], now(), false, false));
}

/// If this fails, `kubectl lodger ps -o json` would not be a valid kubectl-style List of the jobs.
#[test]
fn ps_json_is_a_valid_list() {
    let jobs = jobs();
    let text = structured(
        &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": jobs}),
        OutputFormat::Json,
    )
    .expect("json");
    let parsed: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(parsed["kind"], "List");
    let back: Vec<MigratableJob> =
        serde_json::from_value(parsed["items"].clone()).expect("items are MigratableJobs");
    let names = |js: &[MigratableJob]| {
        js.iter()
            .map(|j| (j.metadata.name.clone(), j.spec.clone(), j.status.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&back), names(&jobs));
}

/// If this fails, `kubectl lodger nodes` misreports idleness, owners, cordons, owner-active
/// taints or which lodgers run where (finished pods are not lodgers).
#[test]
fn nodes_tables() {
    let nodes: Vec<Node> = fixture("nodes.yaml");
    let pods: Vec<Pod> = fixture("pods.yaml");
    let summaries = render::summarize_nodes(&nodes, &pods);
    golden("nodes.txt", &render::nodes_table(&summaries, now(), false));
    golden(
        "nodes-wide.txt",
        &render::nodes_table(&summaries, now(), true),
    );
    let json = structured(&summaries, OutputFormat::Json).expect("json");
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert_eq!(parsed[0]["name"], "ws-03");
    golden("nodes.json", &json);
}

/// If this fails, `kubectl lodger history` loses moves, misorders them or misreports freeze and
/// downtime.
#[test]
fn history_tables() {
    let jobs = jobs();
    golden(
        "history.txt",
        &render::history_table(&jobs[0], now(), false),
    );
    golden(
        "history-wide.txt",
        &render::history_table(&jobs[0], now(), true),
    );
    golden(
        "history-parked.txt",
        &render::history_table(&jobs[2], now(), false),
    );
    golden(
        "history-none.txt",
        &render::history_table(&jobs[1], now(), false),
    );
    golden(
        "history.yaml",
        &structured(
            &jobs[0].status.as_ref().unwrap().history,
            OutputFormat::Yaml,
        )
        .expect("yaml"),
    );
}

/// If this fails, `kubectl lodger run` would create a different MigratableJob than documented
/// (command, image, strategy, home, fan-out, requests, env).
#[test]
fn run_builds_the_documented_job() {
    let cli = Cli::try_parse_from([
        "kubectl-lodger",
        "run",
        "--home",
        "ws-alice",
        "--strategy",
        "lazyrestore",
        "--parallel",
        "8",
        "--cpu",
        "2",
        "--memory",
        "4Gi",
        "-e",
        "SEED=7",
        "--image",
        "python:3.12",
        "--",
        "python3",
        "sweep.py",
        "--point",
        "{}",
    ])
    .expect("parses");
    let Command::Run(args) = cli.command else {
        panic!("run")
    };
    let job = build_job(&args, "alice").expect("valid");
    golden(
        "run-parallel.yaml",
        &structured(&job, OutputFormat::Yaml).expect("yaml"),
    );
    let cli = Cli::try_parse_from([
        "kubectl-lodger",
        "run",
        "--name",
        "sim",
        "--",
        "./sim",
        "--steps",
        "10",
    ])
    .expect("parses");
    let Command::Run(args) = cli.command else {
        panic!("run")
    };
    golden(
        "run-named.json",
        &structured(
            &build_job(&args, "default").expect("valid"),
            OutputFormat::Json,
        )
        .expect("json"),
    );
}

/// If this fails, the help text users read changed without review.
#[test]
fn help_texts() {
    let mut cmd = Cli::command();
    golden("help.txt", &cmd.render_long_help().to_string());
    for sub in [
        "run",
        "ps",
        "nodes",
        "migrate",
        "signal",
        "logs",
        "history",
        "completion",
    ] {
        let err = Cli::try_parse_from(["kubectl-lodger", sub, "--help"]).expect_err("help exits");
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp);
        golden(&format!("help-{sub}.txt"), &err.to_string());
    }
}

/// If this fails, the krew manifest no longer installs this plugin: wrong name, binary or
/// version (it must follow the crate's version), or a malformed sha256.
#[test]
fn krew_manifest_matches_the_crate() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/lodger.yaml");
    let manifest: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(path).expect("plugins/lodger.yaml"))
            .expect("YAML");
    assert_eq!(
        manifest["apiVersion"],
        "krew.googlecontainertools.github.com/v1alpha2"
    );
    assert_eq!(manifest["kind"], "Plugin");
    assert_eq!(manifest["metadata"]["name"], "lodger");
    let version = format!("v{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(manifest["spec"]["version"], version.as_str());
    let platform = &manifest["spec"]["platforms"][0];
    assert_eq!(platform["bin"], "kubectl-lodger");
    assert!(
        platform["uri"]
            .as_str()
            .unwrap()
            .contains(&format!("/download/{version}/"))
    );
    let sha = platform["sha256"].as_str().unwrap();
    assert!(
        sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
        "{sha}"
    );
}
