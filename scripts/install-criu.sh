#!/usr/bin/env bash
# Install CRIU 4.x from Debian trixie's source package onto a Debian 12 (bookworm) machine.
#
# Debian 12 ships criu 3.17, which fails on kernels >= 6.x (vDSO handling). Trixie's source
# package (criu 4.1.1) builds on bookworm with bookworm's -dev packages. This one script is used
# by `make test`, `make demo`, CI and the Dockerfile, so the path the image takes is the path CI
# exercises. It is idempotent: when a CRIU 4.x binary is already at $PREFIX/sbin/criu it only
# checks it and exits.
#
# Environment:
#   PREFIX        install prefix (default /usr/local)
#   CRIU_BUILD    build directory (default /var/cache/lodger/criu-build)
#   CRIU_VERSION  the upstream version expected from trixie (default 4.1.1)
set -euo pipefail

PREFIX=${PREFIX:-/usr/local}
CRIU_BUILD=${CRIU_BUILD:-/var/cache/lodger/criu-build}
CRIU_VERSION=${CRIU_VERSION:-4.1.1}
BIN="$PREFIX/sbin/criu"

log() { printf 'install-criu: %s\n' "$*" >&2; }

installed_version() {
    "$BIN" --version 2>/dev/null | sed -n 's/^Version: *//p'
}

if [ -x "$BIN" ]; then
    v=$(installed_version || true)
    case "$v" in
        4.*) log "criu $v already at $BIN"; exit 0 ;;
        *) log "found criu '$v' at $BIN; rebuilding $CRIU_VERSION" ;;
    esac
fi

if [ "$(id -u)" != 0 ]; then
    log "must run as root (installs Debian packages and $BIN)"
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
SRC_LIST=/etc/apt/sources.list.d/lodger-trixie-src.sources
if [ ! -f "$SRC_LIST" ]; then
    log "adding a deb-src entry for trixie (sources only; no binary packages come from trixie)"
    cat >"$SRC_LIST" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

BUILD_DEPS=(build-essential pkg-config libbsd-dev libcap-dev libnet1-dev libnftables-dev
    libnl-3-dev libnl-route-3-dev libprotobuf-c-dev libprotobuf-dev protobuf-c-compiler
    protobuf-compiler python3-protobuf libaio-dev libgnutls28-dev dpkg-dev xz-utils iproute2
    patchelf)
missing=()
for p in "${BUILD_DEPS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
apt_updated=0
if [ ${#missing[@]} -gt 0 ]; then
    log "installing build dependencies: ${missing[*]}"
    apt-get update -qq
    apt_updated=1
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

mkdir -p "$CRIU_BUILD"
cd "$CRIU_BUILD"
orig=$(ls criu_"$CRIU_VERSION"*.orig.tar.* 2>/dev/null | head -n1 || true)
if [ -z "$orig" ]; then
    [ "$apt_updated" = 1 ] || apt-get update -qq
    log "fetching trixie's criu source package"
    # NB: only the upstream tarball matters; the mirror may lack the .dsc/.debian.tar.xz of an
    # older revision, so a partial fetch is accepted and the tarball is verified below instead.
    apt-get source --download-only criu/trixie >/dev/null 2>&1 || true
    orig=$(ls criu_"$CRIU_VERSION"*.orig.tar.* 2>/dev/null | head -n1 || true)
    if [ -z "$orig" ]; then
        log "trixie's source package did not carry criu $CRIU_VERSION: $(ls)"
        exit 1
    fi
fi

# Verify the tarball against the SHA-256 in the signed source index (apt-cache showsrc).
want=$(apt-cache showsrc criu 2>/dev/null | awk -v f="$orig" '/^Checksums-Sha256:/{s=1;next} /^[^ ]/{s=0} s && $3==f {print $1; exit}')
have=$(sha256sum "$orig" | cut -d' ' -f1)
if [ -n "$want" ] && [ "$want" != "$have" ]; then
    log "checksum mismatch for $orig (want $want, have $have); removing it"
    rm -f "$orig"
    exit 1
fi
[ -n "$want" ] && log "verified $orig (sha256 $have)"

srcdir="criu-$CRIU_VERSION"
if [ ! -d "$srcdir" ]; then
    tar -xf "$orig"
fi
log "building criu $CRIU_VERSION in $CRIU_BUILD/$srcdir"
make -C "$srcdir" -j"$(nproc)" criu >"$CRIU_BUILD/build.log" 2>&1 || {
    tail -n 40 "$CRIU_BUILD/build.log" >&2
    exit 1
}
install -D -m 0755 "$srcdir/criu/criu" "$BIN"
log "installed $(installed_version) at $BIN"
"$BIN" check >/dev/null 2>&1 && log "criu check: ok" || log "criu check reported problems (run '$BIN check' to see them)"
