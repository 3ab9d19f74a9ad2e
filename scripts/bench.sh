#!/usr/bin/env bash
# Benchmarks (`make bench`; never part of `make test`). Builds in release and runs:
#   1. the engine benchmark (lodger-bench: engine vs raw CRIU vs dd, per RSS and strategy);
#   2. any other component benchmark present (operator placement, node-agent footprint).
# Record results in docs/benchmarks.md.
#
# Extra arguments go to lodger-bench (e.g. `scripts/bench.sh --quick`).
# Environment: CARGO (default cargo), CARGO_TARGET_DIR (default target), CRIU,
# LODGER_BENCH_ENGINE_ONLY=1 to skip the other components' benchmarks.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
cargo=${CARGO:-cargo}
target=${CARGO_TARGET_DIR:-$here/target}
criu=${CRIU:-/usr/local/sbin/criu}

if [ "$(id -u)" != 0 ]; then
    echo "bench: must run as root (CRIU)" >&2
    exit 1
fi
if ! "$criu" --version 2>/dev/null | grep -q '^Version: 4\.'; then
    bash "$here/scripts/install-criu.sh"
fi
"$cargo" build --release --locked -p lodger-demo --bins
echo "# Engine benchmark ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
"$target/release/lodger-bench" --criu "$criu" "$@"

# Other components' benchmarks, when their crates have them.
if [ "${LODGER_BENCH_ENGINE_ONLY:-0}" = 1 ]; then
    exit 0
fi
for spec in lodger-operator:operator/benches/placement.rs lodger-node-agent:node-agent/benches/footprint.rs; do
    pkg=${spec%%:*}
    file=${spec#*:}
    if [ -f "$file" ]; then
        name=$(basename "$file" .rs)
        echo "# $pkg: $name"
        "$cargo" bench --locked -p "$pkg" --bench "$name"
    fi
done
