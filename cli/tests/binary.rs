//! The `kubectl-lodger` binary as users run it: exit codes, error messages that say what to do,
//! completion scripts, and `run --dry-run` output. None of these needs a cluster.

use std::process::{Command, Output};

fn plugin(args: &[&str], home: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-lodger"))
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("HOME", home)
        .output()
        .expect("run kubectl-lodger")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// If this fails, a user without a kubeconfig would get a cryptic error (or exit 0) instead of
/// being told how to configure access.
#[test]
fn no_kubeconfig_says_how_to_set_one() {
    let home = tempfile::tempdir().unwrap();
    let out = plugin(&["ps"], home.path());
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("error: no Kubernetes configuration found"),
        "{err}"
    );
    assert!(
        err.contains("Set KUBECONFIG=/path/to/kubeconfig, pass --kubeconfig FILE"),
        "{err}"
    );
    let out = plugin(
        &["--kubeconfig", "/nonexistent/config", "nodes"],
        home.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("failed to load the kubeconfig"),
        "{}",
        text(&out.stderr)
    );
}

/// If this fails, invalid arguments would reach the cluster (or exit 1 like an API error)
/// instead of exiting 2 with a message naming the problem, before any connection is tried.
#[test]
fn invalid_arguments_exit_2_with_a_clear_message() {
    let home = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 10] = [
        (
            &["run", "--parallel", "0", "--", "x"],
            "0 is not in 1..=1000",
        ),
        (
            &["run", "--name", "Sim_1", "--", "x"],
            "invalid --name 'Sim_1'",
        ),
        (
            &[
                "run",
                "--name",
                &"a".repeat(50),
                "--parallel",
                "100",
                "--",
                "x",
            ],
            "at most 49 are allowed with --parallel",
        ),
        (
            &["run", "--strategy", "Teleport", "--", "x"],
            "unknown strategy 'Teleport'",
        ),
        (&["run", "--", ""], "a command is required after `--`"),
        (&["signal", "sim", "SIGFOO"], "unknown signal 'SIGFOO'"),
        (
            &["signal", "sim", "SIGRTMIN+31"],
            "signal 'SIGRTMIN+31' is out of range",
        ),
        (&["signal", "sim", "65"], "signal '65' is out of range"),
        (&["signal", "sim", "33"], "reserved by the C library"),
        (&["-o", "xml", "ps"], "invalid value 'xml'"),
    ];
    for (args, want) in cases {
        let out = plugin(args, home.path());
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(
            !err.contains("no Kubernetes configuration"),
            "{args:?} checked before connecting: {err}"
        );
    }
    let out = plugin(&["run", "--", "x"], home.path());
    assert_eq!(
        out.status.code(),
        Some(1),
        "valid arguments get as far as the missing kubeconfig"
    );
}

/// If this fails, `kubectl lodger completion SHELL` would not produce a usable script.
#[test]
fn completion_scripts() {
    let home = tempfile::tempdir().unwrap();
    for (shell, marker) in [
        ("bash", "complete -F _kubectl__lodger"),
        ("zsh", "#compdef kubectl-lodger"),
        ("fish", "complete -c kubectl-lodger"),
    ] {
        let out = plugin(&["completion", shell], home.path());
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let script = text(&out.stdout);
        assert!(
            script.contains(marker),
            "{shell}: {}",
            &script[..200.min(script.len())]
        );
        for sub in ["run", "ps", "nodes", "migrate", "signal", "logs", "history"] {
            assert!(script.contains(sub), "{shell} completes {sub}");
        }
    }
}

/// If this fails, `run --dry-run` would not print a MigratableJob a user can `kubectl apply`.
#[test]
fn dry_run_prints_an_applyable_job_without_a_cluster() {
    let home = tempfile::tempdir().unwrap();
    let out = plugin(
        &[
            "run",
            "--dry-run",
            "-n",
            "lab",
            "--name",
            "sim",
            "--",
            "./sim",
            "--seed",
            "4",
        ],
        home.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let job: lodger_api::MigratableJob =
        serde_yaml_ng::from_str(&text(&out.stdout)).expect("a MigratableJob in YAML");
    assert_eq!(job.metadata.name.as_deref(), Some("sim"));
    assert_eq!(job.metadata.namespace.as_deref(), Some("lab"));
    let c = &job.spec.template.spec.as_ref().unwrap().containers[0];
    assert_eq!(
        c.command.as_deref(),
        Some(&["./sim".to_string(), "--seed".into(), "4".into()][..])
    );
}
