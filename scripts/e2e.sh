#!/usr/bin/env bash
# Lodger's real-cluster suite (`make e2e`). Needs:
#   KUBECONFIG     a cluster (kind or a lab cluster; docs/lab-cluster.md)
#   LODGER_IMAGE   the Lodger image the cluster can pull (repository:tag)
# Without either it says "skipped" and exits 0.
#
# Optional:
#   LODGER_E2E_NAMESPACE  release namespace (default lodger-system)
#   LODGER_E2E_VALUES     extra values file for the chart (kind: e2e/kind/values.yaml; a lab:
#                         its checkpoints.sharedSource, see docs/lab-cluster.md)
#   LODGER_E2E_SETUP      manifest applied before the install and deleted after it
#   LODGER_HELM           helm binary (default tools/node_modules/.bin/helm, from `make tools`)
#   KUBECTL               kubectl binary (default: kubectl on PATH)
#   CARGO                 cargo binary (default: cargo on PATH)
#
# It installs the chart (`helm upgrade --install`, idle detection off), waits for the operator
# and the node agents, runs `cargo test -p lodger-e2e -- --test-threads=1`, uninstalls, and
# checks that nothing is left behind: no release, no e2e namespace, no cluster-scoped object of
# the chart, no CRD, no node still tainted or labelled by the suite.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

if [ -z "${KUBECONFIG:-}" ] || [ -z "${LODGER_IMAGE:-}" ]; then
    echo "e2e: skipped (set KUBECONFIG and LODGER_IMAGE to run the real-cluster suite; see docs/lab-cluster.md)"
    exit 0
fi

NS=${LODGER_E2E_NAMESPACE:-lodger-system}
RELEASE=lodger
HELM=${LODGER_HELM:-$ROOT/tools/node_modules/.bin/helm}
KUBECTL=${KUBECTL:-kubectl}
CARGO=${CARGO:-cargo}
[ -x "$HELM" ] || { echo "e2e: helm not found at $HELM: run 'make tools'" >&2; exit 1; }
command -v "$KUBECTL" >/dev/null || { echo "e2e: kubectl not found (set KUBECTL)" >&2; exit 1; }

log() { printf 'e2e: %s\n' "$*" >&2; }

# repository:tag (a registry port's colon is not a tag separator).
repo=$LODGER_IMAGE
tag=latest
last=${LODGER_IMAGE##*/}
if [[ "$last" == *:* ]]; then
    tag=${last##*:}
    repo=${LODGER_IMAGE%:*}
fi

# What the suite may touch on nodes, to compare after the run (taints: only Lodger's; the node
# controller's own come and go).
node_state() {
    "$KUBECTL" get nodes -o jsonpath='{range .items[*]}{.metadata.name} idle={.metadata.labels.lodger\.dev/idle} unschedulable={.spec.unschedulable} taints={.spec.taints[*].key}{"\n"}{end}' |
        awk '{ out = $1 " " $2 " " $3 " taints="; sub(/^taints=/, "", $4);
               for (i = 4; i <= NF; i++) if ($i ~ /^lodger\.dev\//) out = out $i ",";
               print out }' | sort
}
nodes_before=$(node_state)

created_ns=0
if ! "$KUBECTL" get namespace "$NS" >/dev/null 2>&1; then
    "$KUBECTL" create namespace "$NS" >/dev/null
    created_ns=1
    # The node agent mounts host paths, which Pod Security's baseline level refuses.
    "$KUBECTL" label namespace "$NS" pod-security.kubernetes.io/enforce=privileged >/dev/null
fi

cleanup() {
    local rc=$?
    set +e
    log "uninstalling"
    "$HELM" uninstall "$RELEASE" --namespace "$NS" --wait --timeout 5m >/dev/null 2>&1
    # helm leaves a chart's crds/ installed by design; the suite leaves nothing behind.
    for crd in "$ROOT"/charts/lodger/crds/*.yaml; do
        "$KUBECTL" delete -f "$crd" --ignore-not-found --wait=true >/dev/null
    done
    if [ -n "${LODGER_E2E_SETUP:-}" ]; then
        "$KUBECTL" delete -f "$LODGER_E2E_SETUP" --ignore-not-found --wait=true >/dev/null
    fi
    "$KUBECTL" delete namespace -l lodger.dev/e2e=true --wait=true >/dev/null 2>&1
    if [ "$created_ns" = 1 ]; then
        "$KUBECTL" delete namespace "$NS" --wait=true >/dev/null
    fi

    local left=""
    if "$HELM" status "$RELEASE" --namespace "$NS" >/dev/null 2>&1; then
        left+=" helm-release"
    fi
    local objs
    objs=$("$KUBECTL" get clusterrole,clusterrolebinding,validatingadmissionpolicy,validatingadmissionpolicybinding,pv \
        -l "app.kubernetes.io/instance=$RELEASE" -o name 2>/dev/null)
    [ -z "$objs" ] || left+=" $objs"
    objs=$("$KUBECTL" get crd -o name 2>/dev/null | grep '\.lodger\.dev$' || true)
    [ -z "$objs" ] || left+=" $objs"
    objs=$("$KUBECTL" get namespace -l lodger.dev/e2e=true -o name 2>/dev/null)
    [ -z "$objs" ] || left+=" $objs"
    objs=$("$KUBECTL" get pv -l lodger.dev/e2e=true -o name 2>/dev/null)
    [ -z "$objs" ] || left+=" $objs"
    local nodes_after
    nodes_after=$(node_state)
    if [ "$nodes_before" != "$nodes_after" ]; then
        left+=" node-state"
        diff <(echo "$nodes_before") <(echo "$nodes_after") >&2
    fi
    if [ -n "$left" ]; then
        log "LEFT BEHIND:$left"
        [ "$rc" = 0 ] && rc=1
    else
        log "cleanup verified: nothing left behind"
    fi
    exit "$rc"
}
trap cleanup EXIT

if [ -n "${LODGER_E2E_SETUP:-}" ]; then
    log "applying $LODGER_E2E_SETUP"
    "$KUBECTL" apply -f "$LODGER_E2E_SETUP" >/dev/null
fi

values=()
[ -n "${LODGER_E2E_VALUES:-}" ] && values+=(--values "$LODGER_E2E_VALUES")
log "installing chart with image $repo:$tag into $NS"
"$HELM" upgrade --install "$RELEASE" charts/lodger \
    --namespace "$NS" \
    "${values[@]}" \
    --set image.repository="$repo" \
    --set image.tag="$tag" \
    --set agent.detection.enabled=false \
    --wait --timeout 5m

"$KUBECTL" -n "$NS" rollout status deployment/lodger-operator --timeout=3m
"$KUBECTL" -n "$NS" rollout status daemonset/lodger-node-agent --timeout=3m

log "running scenarios"
"$CARGO" test --locked -p lodger-e2e -- --test-threads=1
