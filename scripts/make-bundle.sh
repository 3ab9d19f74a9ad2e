#!/usr/bin/env bash
# Build Lodger's self-contained tools bundle (docs/contracts.md, "The Lodger image"):
#
#   DIR/bin/lodger-shim   DIR/bin/criu   DIR/lib/<glibc's loader and every shared library>
#
# Both binaries are patched with patchelf to use the interpreter
# /opt/lodger/lib/ld-linux-x86-64.so.2 and the run path /opt/lodger/lib, and every bundled
# library gets the run path $ORIGIN, so the bundle needs nothing from the image it runs in (any
# libc, or none) but works only once placed at /opt/lodger: workload pods mount it there.
#
# Usage: scripts/make-bundle.sh DIR
# Environment:
#   CRIU     the CRIU 4.x binary to bundle (default /usr/local/sbin/criu, from install-criu.sh)
#   SHIM     the lodger-shim binary (default target/release/lodger-shim)
#   PREFIX_IN_IMAGE  where the bundle will live (default /opt/lodger; the contract fixes it)
#
# Used by the Dockerfile and by chart-tests (tests/bundle.rs), which runs the result with an
# empty LD_LIBRARY_PATH inside a private mount namespace where the bundle is bound at /opt/lodger.
set -euo pipefail

log() { printf 'make-bundle: %s\n' "$*" >&2; }

if [ $# -ne 1 ]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
OUT=$1
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CRIU=${CRIU:-/usr/local/sbin/criu}
SHIM=${SHIM:-$ROOT/target/release/lodger-shim}
PREFIX_IN_IMAGE=${PREFIX_IN_IMAGE:-/opt/lodger}
LIBDIR="$PREFIX_IN_IMAGE/lib"

for bin in "$CRIU" "$SHIM"; do
    if [ ! -x "$bin" ]; then
        log "missing executable $bin (CRIU: scripts/install-criu.sh; SHIM: cargo build -p lodger-shim)"
        exit 1
    fi
done

# patchelf comes from Debian; installed here (idempotently) so the Dockerfile stage and CI need
# no other step.
if ! command -v patchelf >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        log "patchelf is missing and we are not root: apt-get install patchelf"
        exit 1
    fi
    log "installing patchelf"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends patchelf >/dev/null 2>&1 || {
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends patchelf >/dev/null
    }
fi

rm -rf "$OUT"
mkdir -p "$OUT/bin" "$OUT/lib"

# Every shared library the two binaries need, transitively, as resolved by the build machine's
# loader (ldd prints the whole closure). The loader itself is copied under its canonical name.
interp=""
declare -A seen=()
for bin in "$CRIU" "$SHIM"; do
    while read -r line; do
        case "$line" in
            *"not found"*)
                log "unresolved library for $bin: $line"
                exit 1
                ;;
            *"=>"*)
                path=$(awk '{print $3}' <<<"$line")
                ;;
            /*)
                path=$(awk '{print $1}' <<<"$line")
                interp=$path
                ;;
            *) continue ;; # linux-vdso.so.1: provided by the kernel
        esac
        [ -n "$path" ] || continue
        name=$(basename "$path")
        if [ -z "${seen[$name]:-}" ]; then
            seen[$name]=1
            cp -L "$path" "$OUT/lib/$name"
            chmod 0755 "$OUT/lib/$name"
        fi
    done < <(ldd "$bin")
done
if [ -z "$interp" ]; then
    log "could not find the ELF interpreter (are the binaries dynamically linked?)"
    exit 1
fi
loader=$(basename "$interp")

install -m 0755 "$CRIU" "$OUT/bin/criu"
install -m 0755 "$SHIM" "$OUT/bin/lodger-shim"

for bin in "$OUT/bin/criu" "$OUT/bin/lodger-shim"; do
    patchelf --set-interpreter "$LIBDIR/$loader" --set-rpath "$LIBDIR" "$bin"
done
# NB: RUNPATH applies only to an object's own direct dependencies, so each library that needs
# others carries $ORIGIN too. glibc's own objects (loader, libc) are left untouched: the loader
# finds them through the executables' run path.
for lib in "$OUT"/lib/*; do
    name=$(basename "$lib")
    case "$name" in
        ld-linux*|libc.so.*) continue ;;
    esac
    if patchelf --print-needed "$lib" | grep -qv -e '^libc\.so' -e '^ld-linux'; then
        patchelf --set-rpath '$ORIGIN' "$lib"
    fi
done

log "bundle in $OUT: $(ls "$OUT/bin" | tr '\n' ' ')+ $(ls "$OUT/lib" | wc -l) libraries, loader $LIBDIR/$loader"
