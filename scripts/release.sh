#!/usr/bin/env bash
# Builds what a shop copies to its box: a release binary with every driver, its version taken from
# git (`git describe`), debug info stripped (symbol names kept, so a panic's backtrace still names
# functions), packed as dist/eds-<version>-<os>-<arch>.tar.gz with a SHA-256 sum beside it.
#
#   scripts/release.sh                       # every driver (s3, kafka, eventhub on top of the defaults)
#   FEATURES=postgres NO_DEFAULT=1 scripts/release.sh   # a minimal build
set -euo pipefail
cd "$(dirname "$0")/.."

features="${FEATURES-s3,kafka,eventhub}"
version="${EDS_VERSION:-$(git describe --tags --always --dirty 2>/dev/null || true)}"
[ -n "$version" ] || { echo "error: no version: not a git checkout and EDS_VERSION is unset" >&2; exit 1; }
# Tags are v1.2.3; versions (and HQ's upgrade requests) are 1.2.3.
version="${version#v}"
target_dir="${CARGO_TARGET_DIR:-target}"
args=(build --release --locked)
[ -n "${NO_DEFAULT:-}" ] && args+=(--no-default-features)
[ -n "$features" ] && args+=(--features "$features")

echo "==> cargo ${args[*]} (version $version)"
EDS_VERSION="$version" cargo "${args[@]}"
binary="$target_dir/release/eds"
reported="$("$binary" version)"
[ "$reported" = "$version" ] || { echo "error: the binary says $reported, not $version" >&2; exit 1; }

os="$(uname -s | tr '[:upper:]' '[:lower:]')"
arch="$(uname -m)"
name="eds-$version-$os-$arch"
mkdir -p dist "dist/$name"
install -m 0755 "$binary" "dist/$name/eds"
cp README.md LICENSE contrib/eds.service "dist/$name/"
tar -C dist -czf "dist/$name.tar.gz" "$name"
rm -r "dist/${name:?}"
(cd dist && sha256sum "$name.tar.gz" > "$name.tar.gz.sha256")
echo "==> dist/$name.tar.gz ($(du -h "dist/$name.tar.gz" | cut -f1); binary $(du -h "$binary" | cut -f1))"
