//! The image, without a Docker engine: the Dockerfile's shape (scripts it runs exist, --locked,
//! cache mounts, non-root final user), and the /opt/lodger bundle built for real by
//! scripts/make-bundle.sh from the locally installed CRIU and lodger-shim, then run with an
//! empty environment in a private mount namespace where it is bound at /opt/lodger and the
//! system's library directories are hidden, which shows it is self-contained.

use std::path::{Path, PathBuf};
use std::process::Command;

use lodger_chart_tests::workspace_root;

fn dockerfile() -> String {
    std::fs::read_to_string(workspace_root().join("Dockerfile")).expect("Dockerfile exists")
}

/// Dockerfile lines with continuation lines joined.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(body) = t.strip_suffix('\\') {
            cur.push_str(body);
            cur.push(' ');
        } else {
            cur.push_str(t);
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

/// Every `scripts/...` path the Dockerfile mentions exists in the repository, and every file
/// the .dockerignore lets in is a source (target/ and node_modules are ignored).
/// If this fails, `docker build` would break on a missing script.
#[test]
fn dockerfile_references_only_existing_scripts() {
    let text = dockerfile();
    let mut found = 0;
    for word in text.split(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
        if let Some(idx) = word.find("scripts/") {
            let rel = word[idx..].trim_end_matches([';', '&', ')']);
            if rel.ends_with(".sh") {
                found += 1;
                assert!(
                    workspace_root().join(rel).is_file(),
                    "Dockerfile refers to missing {rel}"
                );
            }
        }
    }
    assert!(
        found >= 2,
        "the Dockerfile must run install-criu.sh and make-bundle.sh"
    );
    assert!(
        text.contains("scripts/install-criu.sh"),
        "CRIU must come from the script make test uses"
    );
    assert!(
        text.contains("scripts/make-bundle.sh"),
        "the bundle must come from make-bundle.sh"
    );
    let ignore = std::fs::read_to_string(workspace_root().join(".dockerignore"))
        .expect(".dockerignore exists");
    for pattern in ["target/", "tools/node_modules/", ".git/"] {
        assert!(
            ignore.lines().any(|l| l.trim() == pattern),
            ".dockerignore must exclude {pattern}"
        );
    }
}

/// Every cargo invocation uses --locked and cache mounts; the builder is rust:1-bookworm, the
/// final stage debian:bookworm-slim with a non-root USER; every `COPY --from` names a stage.
/// If this fails, the image build is not reproducible from Cargo.lock, or runs as root.
#[test]
fn dockerfile_is_locked_multistage_and_non_root() {
    let text = dockerfile();
    let ins = instructions(&text);
    let cargo: Vec<&String> = ins.iter().filter(|i| i.contains("cargo ")).collect();
    assert!(!cargo.is_empty(), "the Dockerfile builds with cargo");
    for i in &cargo {
        assert!(i.contains("--locked"), "cargo without --locked: {i}");
        assert!(
            i.contains("--mount=type=cache"),
            "cargo without cache mounts: {i}"
        );
        assert!(i.contains("--release"), "cargo without --release: {i}");
    }
    let args: Vec<(String, String)> = ins
        .iter()
        .filter_map(|i| i.strip_prefix("ARG "))
        .filter_map(|a| a.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let resolve = |image: &str| -> String {
        match image.strip_prefix("${").and_then(|s| s.strip_suffix('}')) {
            Some(name) => args
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
            None => image.to_string(),
        }
    };
    let froms: Vec<(String, Option<String>)> = ins
        .iter()
        .filter_map(|i| i.strip_prefix("FROM "))
        .map(|f| {
            let mut parts = f.split_whitespace();
            let image = resolve(parts.next().unwrap());
            let stage = match (parts.next(), parts.next()) {
                (Some(a), Some(name)) if a.eq_ignore_ascii_case("AS") => Some(name.to_string()),
                _ => None,
            };
            (image, stage)
        })
        .collect();
    assert!(froms.len() >= 3, "multi-stage: build, bundle, final");
    assert_eq!(froms[0].0, "rust:1-bookworm");
    assert_eq!(froms.last().unwrap().0, "debian:bookworm-slim");
    let stages: Vec<&str> = froms.iter().filter_map(|(_, s)| s.as_deref()).collect();
    for i in ins.iter().filter(|i| i.starts_with("COPY --from=")) {
        let from = i["COPY --from=".len()..].split_whitespace().next().unwrap();
        assert!(stages.contains(&from), "COPY --from={from} names no stage");
    }
    let last_from = ins.iter().rposition(|i| i.starts_with("FROM ")).unwrap();
    let user = ins[last_from..]
        .iter()
        .rev()
        .find_map(|i| i.strip_prefix("USER "))
        .expect("the final stage sets USER");
    let uid = user.split(':').next().unwrap();
    assert!(uid != "0" && uid != "root", "final USER must not be root");
    for bin in [
        "lodger-operator",
        "lodger-node-agent",
        "lodger-stub",
        "kubectl-lodger",
        "lodger-workload",
    ] {
        assert!(
            ins[last_from..].iter().any(|i| i.starts_with("COPY")
                && i.contains(bin)
                && i.ends_with("/usr/local/bin/")),
            "the final image must carry /usr/local/bin/{bin}"
        );
    }
    assert!(
        ins[last_from..]
            .iter()
            .any(|i| i.starts_with("COPY --from=bundle /opt/lodger /opt/lodger"))
    );
}

fn shim_binary() -> PathBuf {
    lodger_chart_tests::binary("lodger-shim", "lodger-shim")
}

const CRIU: &str = "/usr/local/sbin/criu";

/// Run `script` with `sh` in a private mount namespace (unshare -m) with an empty environment
/// except LD_LIBRARY_PATH="" and a PATH for the few tools it needs before it hides the system
/// libraries. The namespace, its tmpfs mounts and the bind mount vanish with the process.
fn in_private_mount_ns(script: &str, bundle: &Path) -> (bool, String, String) {
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-euc", script])
        .env_clear()
        .env("LD_LIBRARY_PATH", "")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("BUNDLE", bundle)
        .output()
        .expect("unshare runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What a workload pod does, in this namespace only: a tmpfs over /opt; `/opt/lodger` a
/// root-owned 0777 directory like the `lodger-tools` emptyDir; the init container's
/// `cp -a /opt/lodger/. /lodger-tools/` as uid 0 with no capability at all (as the operator
/// runs `lodger-install`); then the directory bound read-only, as the job's container mounts it.
const SETUP: &str = r#"
mount -t tmpfs -o size=512m lodger-test-opt /opt
mkdir /opt/lodger
chmod 0777 /opt/lodger
setpriv --bounding-set -all --inh-caps -all --no-new-privs cp -a "$BUNDLE/." /opt/lodger/
mount --bind /opt/lodger /opt/lodger
mount -o remount,bind,ro /opt/lodger
"#;

/// The workload container's capability set (docs/contracts.md); the shim and CRIU run with it.
const WORKLOAD_CAPS: &str = "setpriv --bounding-set -all,+sys_admin,+sys_ptrace,+checkpoint_restore,+net_admin,+sys_time,+sys_chroot --inh-caps -all";

/// Then hide the system's library directories so nothing can come from them; after this only
/// shell builtins and the bundle can run (so the directory `mount` itself needs goes last).
/// NB: /lib64/ld-linux-x86-64.so.2 is a symlink into /usr/lib/x86_64-linux-gnu on Debian, so
/// it dangles afterwards; the control run below proves nothing from the system still loads.
const HIDE_SYSTEM_LIBS: &str = r#"
for d in /usr/local/lib /usr/lib/x86_64-linux-gnu; do
    if [ -d "$d" ]; then mount -t tmpfs -o size=1m lodger-test-empty "$d"; fi
done
"#;

/// scripts/make-bundle.sh turns the local CRIU and lodger-shim into a bundle that runs at
/// /opt/lodger with an empty LD_LIBRARY_PATH and with the system's libraries hidden, whose
/// every library resolves inside /opt/lodger/lib (interpreter included).
/// If this fails, the shim or CRIU would not start inside a workload image with another (or
/// no) libc: workload pods would fail at their first instruction.
#[test]
fn bundle_is_self_contained() {
    assert!(
        Path::new(CRIU).is_file(),
        "{CRIU} is missing: run `make criu` (scripts/install-criu.sh)"
    );
    assert!(
        Path::new("/opt").is_dir(),
        "/opt must exist to mount over it"
    );
    let shim = shim_binary();
    let tmp = tempfile::tempdir().expect("tempdir");
    let bundle = tmp.path().join("bundle");
    let out = Command::new("bash")
        .arg(workspace_root().join("scripts/make-bundle.sh"))
        .arg(&bundle)
        .env("CRIU", CRIU)
        .env("SHIM", &shim)
        .output()
        .expect("make-bundle.sh runs");
    assert!(
        out.status.success(),
        "make-bundle.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "bin/criu",
        "bin/lodger-shim",
        "lib/ld-linux-x86-64.so.2",
        "lib/libc.so.6",
    ] {
        assert!(bundle.join(f).is_file(), "bundle lacks {f}");
    }

    // The loader's own view: every dependency of both binaries, resolved by the bundled loader.
    for bin in ["criu", "lodger-shim"] {
        let script = format!("{SETUP}\nLD_TRACE_LOADED_OBJECTS=1 /opt/lodger/bin/{bin}\n");
        let (ok, stdout, stderr) = in_private_mount_ns(&script, &bundle);
        assert!(ok, "tracing {bin}'s libraries failed:\n{stderr}");
        let mut libs = 0;
        let mut interp = false;
        for line in stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
            assert!(!line.contains("not found"), "{bin}: {line}");
            if line.starts_with("linux-vdso") {
                continue;
            }
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next().unwrap_or(""),
                None => {
                    interp = true;
                    line.split_whitespace().next().unwrap_or("")
                }
            };
            assert!(
                path.starts_with("/opt/lodger/lib/"),
                "{bin} loads {path} from outside the bundle: {line}"
            );
            libs += 1;
        }
        assert!(interp, "{bin}: no interpreter line in the trace:\n{stdout}");
        assert!(libs >= 2, "{bin}: suspiciously few libraries:\n{stdout}");
    }

    // And they run, with the system's libraries out of reach.
    let script = format!(
        "{SETUP}exec {WORKLOAD_CAPS} sh -euc '{HIDE_SYSTEM_LIBS}\nexec /opt/lodger/bin/criu --version'\n"
    );
    let (ok, stdout, stderr) = in_private_mount_ns(&script, &bundle);
    assert!(ok, "bundled criu --version failed:\n{stdout}{stderr}");
    assert!(stdout.contains("Version: 4."), "not CRIU 4.x: {stdout}");

    let script = format!(
        "{SETUP}exec {WORKLOAD_CAPS} sh -euc '{HIDE_SYSTEM_LIBS}\nexec /opt/lodger/bin/lodger-shim --help'\n"
    );
    let (ok, stdout, stderr) = in_private_mount_ns(&script, &bundle);
    assert!(ok, "bundled lodger-shim --help failed:\n{stdout}{stderr}");
    assert!(
        stdout.contains("--control-dir") || stdout.to_lowercase().contains("usage"),
        "{stdout}"
    );

    // Why `lodger-install` runs as uid 0: as the image's non-root default user, `cp -a` cannot
    // set the times of the root-owned emptyDir and fails, so the pod would never start.
    let script = r#"
mount -t tmpfs -o size=512m lodger-test-opt /opt
mkdir /opt/lodger
chmod 0777 /opt/lodger
exec setpriv --reuid 65532 --regid 65532 --clear-groups cp -a "$BUNDLE/." /opt/lodger/
"#;
    let (ok, _, stderr) = in_private_mount_ns(script, &bundle);
    assert!(
        !ok,
        "cp -a as uid 65532 succeeded: the operator's runAsUser 0 for lodger-install may be unneeded now"
    );
    assert!(stderr.contains("preserving times"), "{stderr}");

    // Control: with the system libraries hidden, an unbundled binary cannot even start, so the
    // runs above really did not use them.
    let script = format!(
        "{SETUP}exec {WORKLOAD_CAPS} sh -euc '{HIDE_SYSTEM_LIBS}\nexec {CRIU} --version'\n"
    );
    let (ok, _, _) = in_private_mount_ns(&script, &bundle);
    assert!(
        !ok,
        "the system's criu still ran with its libraries hidden: the check proves nothing"
    );
}

/// Binary targets of the workspace: `[[bin]] name = ...` entries, plus the package name of
/// crates with a `src/main.rs`.
fn workspace_binaries() -> Vec<String> {
    let root = workspace_root();
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let mut bins = Vec::new();
    let members = manifest
        .split("members = [")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .expect("the workspace lists its members");
    for member in members
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
    {
        let dir = root.join(member);
        let Ok(text) = std::fs::read_to_string(dir.join("Cargo.toml")) else {
            continue;
        };
        let mut in_bin = false;
        let mut in_package = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                in_bin = line == "[[bin]]";
                in_package = line == "[package]";
                continue;
            }
            if let Some(v) = line.strip_prefix("name = ") {
                let name = v.trim_matches('"').to_string();
                if in_bin || (in_package && dir.join("src/main.rs").is_file()) {
                    bins.push(name);
                }
            }
        }
    }
    bins
}

/// Every binary the Dockerfile installs is a binary target of the workspace, and the
/// binaries the chart and the operator run (operator, agent, stub, shim, plugin, workload)
/// are among them.
/// If this fails, `docker build` would stop at a missing target/release file, or the image would
/// lack a binary a pod runs.
#[test]
fn dockerfile_installs_workspace_binaries() {
    let text = dockerfile();
    let ins = instructions(&text);
    let build = ins
        .iter()
        .find(|i| i.contains("cargo build") && i.contains("for bin in"))
        .expect("the build stage installs a list of binaries");
    let list = build
        .split("for bin in")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .expect("for bin in ...;");
    let installed: Vec<&str> = list.split_whitespace().collect();
    let known = workspace_binaries();
    for bin in &installed {
        assert!(
            known.iter().any(|k| k == bin),
            "the Dockerfile installs {bin}, which no crate builds ({known:?})"
        );
    }
    for needed in [
        "lodger-operator",
        "lodger-node-agent",
        "lodger-stub",
        "lodger-shim",
        "kubectl-lodger",
        "lodger-workload",
    ] {
        assert!(installed.contains(&needed), "the image must carry {needed}");
    }
}
