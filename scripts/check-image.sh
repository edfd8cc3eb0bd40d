#!/usr/bin/env bash
# Builds the container image and checks it: the binary runs as the non-root user `eds`, and a
# container started with a data volume and a file destination turns healthy (its HEALTHCHECK on
# eds's `/`) within two minutes. Needs a running container engine (docker).
set -euo pipefail
cd "$(dirname "$0")/.."
tag="eds:check-$$"
name="eds-check-$$"
volume="eds-check-$$"
cleanup() {
  docker rm -f "$name" >/dev/null 2>&1 || true
  docker volume rm -f "$volume" >/dev/null 2>&1 || true
  docker image rm -f "$tag" >/dev/null 2>&1 || true
}
trap cleanup EXIT
docker build --build-arg EDS_VERSION="$(git describe --tags --always --dirty 2>/dev/null || echo check)" -t "$tag" .
[ "$(docker run --rm --entrypoint id "$tag" -un)" = "eds" ] || { echo "error: the image does not run as eds" >&2; exit 1; }
docker run --rm "$tag" version
# Standalone (`--server`), with no NATS to reach: eds serves `/` (200) while it waits for it.
docker run -d --name "$name" -v "$volume:/data" "$tag" \
  server --data-dir /data --server nats://127.0.0.1:4222 --url file:///data/out >/dev/null
deadline=$((SECONDS + 120))
while :; do
  health="$(docker inspect --format '{{.State.Health.Status}}' "$name")"
  [ "$health" = "healthy" ] && break
  if [ "$health" = "unhealthy" ] || [ $SECONDS -ge $deadline ]; then
    docker logs "$name" >&2 || true
    echo "error: the container is $health after $((SECONDS - deadline + 120)) s" >&2
    exit 1
  fi
  sleep 2
done
echo "image $tag: runs as eds, healthy"
