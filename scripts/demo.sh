#!/usr/bin/env bash
# The one-machine migration demo (`make demo`, which builds lodger-shim and lodger-demo in release
# first). Checks that we are root and that CRIU 4.x is installed (installing it with
# scripts/install-criu.sh if not), then runs target/release/lodger-demo, which migrates a real job
# between two namespaced "nodes" through the real shim and its control socket, once per strategy.
#
# Extra arguments go to lodger-demo (e.g. `scripts/demo.sh --strategies StopAndCopy`).
# Environment: CARGO_TARGET_DIR (default target), CRIU (default /usr/local/sbin/criu).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$here/target}
criu=${CRIU:-/usr/local/sbin/criu}

if [ "$(id -u)" != 0 ]; then
    echo "demo: must run as root (CRIU and the nodes' PID/mount namespaces need CAP_SYS_ADMIN)" >&2
    exit 1
fi
if ! "$criu" --version 2>/dev/null | grep -q '^Version: 4\.'; then
    echo "demo: CRIU 4.x not found at $criu; installing it" >&2
    bash "$here/scripts/install-criu.sh"
fi
for bin in lodger-demo lodger-shim lodger-workload; do
    if [ ! -x "$target/release/$bin" ]; then
        echo "demo: $target/release/$bin is missing; run \`make demo\` (it builds them)" >&2
        exit 1
    fi
done
exec "$target/release/lodger-demo" --criu "$criu" "$@"
