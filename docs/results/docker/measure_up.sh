#!/usr/bin/env bash
# The raw record of the README's "Run with Docker" times: a first `compose up` (image built without any
# cache, teacher trained: STINGY_TEACHER_EPOCHS, default 10, on STINGY_TEACHER_TRAIN_SUBSET images, default
# all) and a second one (image, teacher and budgets reused), each timed until the API's /readyz answers 200
# on the published port.
#
#   STINGY_TEACHER_EPOCHS=1 docs/results/docker/measure_up.sh 2>&1 | tee docs/results/docker/up-times.log
#
# Uses podman-compose when installed (extra `podman build` flags from $STINGY_CONTAINER_BUILD_FLAGS), else
# Docker Compose; $STINGY_BASE_IMAGE replaces the base image. Needs docker/api-keys. Removes the stack's volumes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
[ -f docker/api-keys ] || { echo "create docker/api-keys first (see the README)" >&2; exit 2; }
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export STINGY_PUBLISH=127.0.0.1:$port
if command -v podman-compose >/dev/null; then
  compose=(podman-compose -f docker/compose.yaml)
  build=("${compose[@]}" --podman-build-args "--no-cache --format docker ${STINGY_CONTAINER_BUILD_FLAGS:-}" build teacher)
else
  compose=(docker compose -f docker/compose.yaml)
  build=("${compose[@]}" build --no-cache teacher)
fi

wait_ready() {
  until python3 docker/ready.py "http://127.0.0.1:$port"; do sleep 1; done 2>/dev/null
}

timed_up() {  # $1: label; the rest: commands run before `up -d`
  local label=$1 start end; shift
  echo "== $label: $(date -u +%FT%TZ), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
  start=$(date +%s.%N)
  "$@"
  "${compose[@]}" up -d
  wait_ready
  end=$(date +%s.%N)
  echo "== $label: ready after $(python3 -c "print(f'{$end - $start:.1f}')") s"
  "${compose[@]}" logs teacher 2>&1 | grep -E 'teacher:|DIVERGED|done:' || true
}

echo "teacher: ${STINGY_TEACHER_EPOCHS:-10} epochs on ${STINGY_TEACHER_TRAIN_SUBSET:-all} training images"
set -x
"${compose[@]}" down -v
{ set +x; } 2>/dev/null
timed_up "first up (build without cache, teacher trained)" "${build[@]}"
"${compose[@]}" down
timed_up "second up (everything reused)" true
"${compose[@]}" down
