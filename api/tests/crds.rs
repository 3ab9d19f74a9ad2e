//! The CRDs as a user meets them: the checked-in YAML must be what the Rust types generate, and
//! the CRD's own validation (OpenAPI constraints + CEL rules) must refuse bad objects with a
//! readable message and accept good ones. Checked without an API server: OpenAPI constraints
//! with a JSON-schema validator, CEL rules with kube-cel's client-side evaluator.

use std::path::PathBuf;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use lodger_api::{Checkpoint, JobSignal, MigratableJob};
use serde_json::{Value, json};

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("api/ has a parent")
        .to_path_buf()
}

fn schema_of(crd: &CustomResourceDefinition) -> Value {
    let version = &crd.spec.versions[0];
    serde_json::to_value(
        version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("every Lodger CRD has a schema"),
    )
    .unwrap()
}

/// Failure messages the API server would return for `object` (and `old` on update): OpenAPI
/// constraints first, then CEL rules. Empty when the object is accepted.
fn admission_errors(
    crd: &CustomResourceDefinition,
    object: &Value,
    old: Option<&Value>,
) -> Vec<String> {
    let schema = schema_of(crd);
    let mut errors = Vec::new();
    // OpenAPI v3 (structural) constraints: types, enums, ranges, required fields.
    let mut plain = schema.clone();
    strip_kubernetes_extensions(&mut plain);
    let validator =
        jsonschema::validator_for(&plain).expect("the CRD schema is a valid JSON schema");
    for err in validator.iter_errors(object) {
        errors.push(format!("{}: {}", err.instance_path(), err));
    }
    // CEL rules, as the API server evaluates them (defaults applied first).
    if let Err(cel) = kube_cel::Validator::new().validate(&schema, object, old) {
        for err in cel.iter() {
            errors.push(err.to_string());
        }
    }
    errors
}

/// `x-kubernetes-*` keywords mean nothing to a JSON-schema validator; drop them (the CEL rules
/// are checked separately).
fn strip_kubernetes_extensions(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|k, _| !k.starts_with("x-kubernetes-"));
            map.values_mut().for_each(strip_kubernetes_extensions);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_kubernetes_extensions),
        _ => {}
    }
}

fn example_job() -> Value {
    let text =
        std::fs::read_to_string(workspace_root().join("examples/migratablejob.yaml")).unwrap();
    serde_yaml_ng::from_str(&text).unwrap()
}

fn with(mut base: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = base
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no {parent} in object"));
    match target {
        Value::Object(map) => {
            map.insert(key.to_string(), value);
        }
        Value::Array(items) => {
            let i: usize = key.parse().unwrap();
            items[i] = value;
        }
        _ => panic!("{parent} is not a container"),
    }
    base
}

fn without(mut base: Value, pointer: &str) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    base.pointer_mut(parent)
        .unwrap()
        .as_object_mut()
        .unwrap()
        .remove(key);
    base
}

fn assert_refused(errors: &[String], needle: &str) {
    assert!(
        errors.iter().any(|e| e.contains(needle)),
        "expected an error containing {needle:?}, got {errors:#?}"
    );
}

/// crds/ and charts/lodger/crds/ are what `kubectl apply` and `helm install` use: if they differ
/// from the Rust types, the cluster validates against a stale schema. Fix with `make crds`.
#[test]
fn checked_in_crds_match_the_rust_types() {
    for (file, crd) in lodger_api::crds() {
        let generated = lodger_api::crd_yaml(&crd).unwrap();
        for dir in ["crds", "charts/lodger/crds"] {
            let path = workspace_root().join(dir).join(file);
            let on_disk = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{} is missing ({e}); run `make crds`", path.display()));
            assert!(
                on_disk == generated,
                "{} is stale: run `make crds` and commit the result",
                path.display()
            );
        }
    }
}

/// The CRDs carry what `kubectl get`/`explain` show: short names, printer columns, status
/// subresources and a description on every field of the spec.
#[test]
fn crds_have_short_names_columns_status_and_docs() {
    let mj = MigratableJob::crd();
    assert_eq!(
        mj.spec.names.short_names.as_deref(),
        Some(&["mj".to_string()][..])
    );
    let columns: Vec<_> = mj.spec.versions[0]
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["Phase", "Node", "Home", "Migrations", "Age"]);
    assert!(
        mj.spec.versions[0]
            .subresources
            .as_ref()
            .unwrap()
            .status
            .is_some()
    );
    assert_eq!(
        Checkpoint::crd().spec.names.short_names.as_deref(),
        Some(&["ckpt".to_string()][..])
    );
    assert!(
        JobSignal::crd().spec.versions[0]
            .subresources
            .as_ref()
            .unwrap()
            .status
            .is_some()
    );

    // Every property below spec and status has a description (kubectl explain shows it).
    fn undocumented(v: &Value, path: &str, out: &mut Vec<String>) {
        if let Some(props) = v.get("properties").and_then(Value::as_object) {
            for (name, sub) in props {
                let p = format!("{path}.{name}");
                let opaque = sub.get("x-kubernetes-preserve-unknown-fields").is_some();
                if sub.get("description").is_none() && !path.contains(".template") {
                    out.push(p.clone());
                }
                if !opaque {
                    undocumented(sub, &p, out);
                }
                if let Some(items) = sub.get("items") {
                    undocumented(items, &p, out);
                }
            }
        }
    }
    for (_, crd) in lodger_api::crds() {
        let schema = schema_of(&crd);
        let mut missing = Vec::new();
        for top in ["spec", "status"] {
            if let Some(sub) = schema.pointer(&format!("/properties/{top}")) {
                undocumented(sub, top, &mut missing);
            }
        }
        // Types from k8s-openapi (conditions, node affinity, times) bring their own docs.
        missing.retain(|p| !p.contains("conditions.") && !p.contains("nodeAffinity."));
        assert!(
            missing.is_empty(),
            "{}: fields without docs: {missing:?}",
            crd.spec.names.kind
        );
    }
}

/// Every CEL rule in every CRD compiles: the API server refuses a CRD whose rules do not.
#[test]
fn every_cel_rule_compiles() {
    for (file, crd) in lodger_api::crds() {
        let compiled = kube_cel::compile_schema(&schema_of(&crd));
        assert!(
            !compiled.has_errors(),
            "{file}: CEL rules that do not compile: {:?}",
            compiled.compilation_errors()
        );
    }
}

/// The shipped example must be accepted, or the README's first step fails.
#[test]
fn example_job_is_accepted() {
    let errors = admission_errors(&MigratableJob::crd(), &example_job(), None);
    assert!(errors.is_empty(), "{errors:#?}");
    // And it deserializes into the Rust type the operator uses.
    let _: MigratableJob = serde_json::from_value(example_job()).unwrap();
}

/// A minimal job (only a command) is accepted and gets the documented defaults.
#[test]
fn minimal_job_is_accepted() {
    let job = json!({
        "apiVersion": "lodger.dev/v1alpha1", "kind": "MigratableJob",
        "metadata": {"name": "count"},
        "spec": {"template": {"spec": {"containers": [
            {"name": "main", "image": "busybox", "command": ["sleep", "100"]}
        ]}}}
    });
    let errors = admission_errors(&MigratableJob::crd(), &job, None);
    assert!(errors.is_empty(), "{errors:#?}");
    let parsed: MigratableJob = serde_json::from_value(job).unwrap();
    assert_eq!(parsed.spec.migration.grace_period_seconds, 30);
    assert_eq!(parsed.spec.checkpoint.keep, 2);
}

/// Lodger wraps exactly one command: two containers must be refused at `kubectl apply`.
#[test]
fn two_containers_are_refused() {
    let mut bad = example_job();
    bad.pointer_mut("/spec/template/spec/containers")
        .unwrap()
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "sidecar", "image": "busybox", "command": ["true"]}));
    let errors = admission_errors(&MigratableJob::crd(), &bad, None);
    assert_refused(&errors, "exactly one container");
}

/// A container without `command` cannot be wrapped by the shim.
#[test]
fn missing_command_is_refused() {
    let bad = without(example_job(), "/spec/template/spec/containers/0/command");
    assert_refused(
        &admission_errors(&MigratableJob::crd(), &bad, None),
        "must set 'command'",
    );
    let empty = with(
        example_job(),
        "/spec/template/spec/containers/0/command",
        json!([]),
    );
    assert_refused(
        &admission_errors(&MigratableJob::crd(), &empty, None),
        "must set 'command'",
    );
}

/// Grace periods outside 1..=3600 s make no sense (0 kills the job before it can be dumped).
#[test]
fn grace_period_out_of_range_is_refused() {
    for value in [-5, 0, 3601] {
        let bad = with(
            example_job(),
            "/spec/migration/gracePeriodSeconds",
            json!(value),
        );
        let errors = admission_errors(&MigratableJob::crd(), &bad, None);
        assert_refused(&errors, "/spec/migration/gracePeriodSeconds");
    }
}

/// Unknown strategies are refused with the list of valid ones.
#[test]
fn unknown_strategy_is_refused() {
    let bad = with(example_job(), "/spec/migration/strategy", json!("Teleport"));
    let errors = admission_errors(&MigratableJob::crd(), &bad, None);
    assert_refused(&errors, "StopAndCopy");
}

/// Negative limits and keep < 1 are refused.
#[test]
fn negative_limits_are_refused() {
    let bad = with(example_job(), "/spec/migration/maxMigrations", json!(-1));
    assert_refused(
        &admission_errors(&MigratableJob::crd(), &bad, None),
        "maxMigrations",
    );
    let bad = with(example_job(), "/spec/checkpoint/keep", json!(0));
    assert_refused(&admission_errors(&MigratableJob::crd(), &bad, None), "keep");
    let bad = with(
        example_job(),
        "/spec/checkpoint/intervalSeconds",
        json!(-10),
    );
    assert_refused(
        &admission_errors(&MigratableJob::crd(), &bad, None),
        "intervalSeconds",
    );
}

/// Names longer than 52 characters would make pod names over 63 characters.
#[test]
fn long_names_are_refused() {
    let bad = with(example_job(), "/metadata/name", json!("a".repeat(53)));
    assert_refused(
        &admission_errors(&MigratableJob::crd(), &bad, None),
        "at most 52 characters",
    );
}

/// Lodger picks the node and restarts; a template that pins a node, adds init containers or asks
/// the kubelet to restart would fight it.
#[test]
fn template_fields_lodger_owns_are_refused() {
    let bad = with(
        example_job(),
        "/spec/template/spec/nodeName",
        json!("somewhere"),
    );
    assert_refused(
        &admission_errors(&MigratableJob::crd(), &bad, None),
        "nodeName must not be set",
    );
    let bad = with(
        example_job(),
        "/spec/template/spec/initContainers",
        json!([{"name": "setup", "image": "busybox"}]),
    );
    assert_refused(
        &admission_errors(&MigratableJob::crd(), &bad, None),
        "initContainers is not supported",
    );
    let bad = with(
        example_job(),
        "/spec/template/spec/restartPolicy",
        json!("Always"),
    );
    assert_refused(
        &admission_errors(&MigratableJob::crd(), &bad, None),
        "restartPolicy must be Never",
    );
}

/// What the job runs, where it lives and its fan-out are fixed at creation; the strategy and
/// limits may change.
#[test]
fn immutable_fields_cannot_change_but_policy_can() {
    let old = example_job();
    let new = with(
        old.clone(),
        "/spec/template/spec/containers/0/command",
        json!(["other"]),
    );
    assert_refused(
        &admission_errors(&MigratableJob::crd(), &new, Some(&old)),
        "spec.template is immutable",
    );
    let new = with(old.clone(), "/spec/homeNode", json!("bob-desktop"));
    assert_refused(
        &admission_errors(&MigratableJob::crd(), &new, Some(&old)),
        "spec.homeNode is immutable",
    );
    let new = without(old.clone(), "/spec/homeNode");
    assert_refused(
        &admission_errors(&MigratableJob::crd(), &new, Some(&old)),
        "spec.homeNode is immutable",
    );
    let new = with(old.clone(), "/spec/parallelism", json!(4));
    assert_refused(
        &admission_errors(&MigratableJob::crd(), &new, Some(&old)),
        "spec.parallelism is immutable",
    );

    let new = with(
        old.clone(),
        "/spec/migration/strategy",
        json!("LazyRestore"),
    );
    let errors = admission_errors(&MigratableJob::crd(), &new, Some(&old));
    assert!(
        errors.is_empty(),
        "changing the strategy must be allowed: {errors:#?}"
    );
}

/// A Checkpoint is a record; its request cannot be rewritten after the fact.
#[test]
fn checkpoint_spec_is_immutable_and_reasons_are_an_enum() {
    let ckpt = json!({
        "apiVersion": "lodger.dev/v1alpha1", "kind": "Checkpoint",
        "metadata": {"name": "render-frames-3"},
        "spec": {"job": "render-frames", "pod": "render-frames-2", "node": "n1", "seq": 3,
                 "strategy": "StopAndCopy", "reason": "OwnerReturned"}
    });
    assert!(admission_errors(&Checkpoint::crd(), &ckpt, None).is_empty());
    let moved = with(ckpt.clone(), "/spec/node", json!("n2"));
    assert_refused(
        &admission_errors(&Checkpoint::crd(), &moved, Some(&ckpt)),
        "immutable",
    );
    let bad = with(ckpt.clone(), "/spec/reason", json!("Whim"));
    assert_refused(
        &admission_errors(&Checkpoint::crd(), &bad, None),
        "OwnerReturned",
    );
}

/// Signal numbers outside 1..=64, the C library's reserved 32 and 33, and seq 0 are refused;
/// real-time 34 and 64 are admitted. If this fails, a signal the shim never delivers could be
/// created and wait forever.
#[test]
fn job_signal_ranges() {
    let sig = json!({
        "apiVersion": "lodger.dev/v1alpha1", "kind": "JobSignal",
        "metadata": {"name": "render-frames-sig-1"},
        "spec": {"job": "render-frames", "signal": 10, "seq": 1}
    });
    assert!(admission_errors(&JobSignal::crd(), &sig, None).is_empty());
    assert_refused(
        &admission_errors(
            &JobSignal::crd(),
            &with(sig.clone(), "/spec/signal", json!(0)),
            None,
        ),
        "/spec/signal",
    );
    for rt in [34, 64] {
        let ok = with(sig.clone(), "/spec/signal", json!(rt));
        assert!(admission_errors(&JobSignal::crd(), &ok, None).is_empty());
    }
    for reserved in [32, 33] {
        let bad = with(sig.clone(), "/spec/signal", json!(reserved));
        assert_refused(
            &admission_errors(&JobSignal::crd(), &bad, None),
            "reserved by the C library",
        );
    }
    assert_refused(
        &admission_errors(&JobSignal::crd(), &with(sig, "/spec/seq", json!(0)), None),
        "/spec/seq",
    );
}
