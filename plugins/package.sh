#!/usr/bin/env bash
# Builds the krew archive of kubectl-lodger for linux/amd64 and points plugins/lodger.yaml at it.
#   plugins/package.sh v0.1.0
# Output: target/krew/kubectl-lodger_linux_amd64.tar.gz (kubectl-lodger + README.md); the
# manifest's version, uri and sha256 are rewritten in place. Upload the archive to the release
# named by the version before publishing the manifest.
set -euo pipefail
version=${1:?usage: plugins/package.sh vX.Y.Z}
[[ $version =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "version must look like v1.2.3" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release --locked -p kubectl-lodger --bin kubectl-lodger
out=target/krew
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp target/release/kubectl-lodger "$stage/"
cp docs/kubectl-lodger.md "$stage/README.md"
mkdir -p "$out"
archive=$out/kubectl-lodger_linux_amd64.tar.gz
tar -C "$stage" --owner=0 --group=0 --mtime='@0' -czf "$archive" kubectl-lodger README.md
sum=$(sha256sum "$archive" | cut -d' ' -f1)
manifest=plugins/lodger.yaml
sed -i -E \
  -e "s|^(  version: ).*|\1$version|" \
  -e "s|(releases/download/)v[^/]+/|\1$version/|" \
  -e "s|^(      sha256: ).*|\1\"$sum\"|" \
  "$manifest"
echo "$archive sha256 $sum; $manifest updated for $version"
