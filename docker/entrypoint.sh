#!/bin/sh
# Entrypoint of the stingy-teacher image. The first argument picks the command; the rest are its flags.
#
#   serve [FLAGS]    wait until $STINGY_CHECKPOINT exists (for at most $STINGY_CHECKPOINT_WAIT_S seconds,
#                    default 3600), then `stingy-serve FLAGS` (configured by the STINGY_* environment)
#   teacher [FLAGS]  exit 0 at once when $STINGY_CHECKPOINT exists; else `stingy-train teacher` into
#                    $STINGY_TEACHER_RUN (default: the checkpoint's folder/run; an interrupted run resumes)
#                    with $STINGY_TEACHER_DATASET (fashion-mnist), _ARCH (cnn_small), _EPOCHS (10),
#                    _TRAIN_SUBSET (all images) and $STINGY_DEVICE (auto), then copy the checkpoint to
#                    $STINGY_CHECKPOINT in one rename (a server waiting for it never sees half a file)
#   attack [FLAGS]   wait until $STINGY_ATTACK_URL (http://api:8000) is ready (at most $STINGY_ATTACK_WAIT_S
#                    seconds, default 3600), then `stingy-attack run --url URL FLAGS` with the key in
#                    $STINGY_API_KEY or, when unset, the first entry of the file $STINGY_API_KEY_FILE
#   bench [FLAGS]    `stingy-bench run --preset $STINGY_BENCH_PRESET (fmnist-cpu) --out $STINGY_BENCH_OUT
#                    (/results/bench) FLAGS`
#   anything else    run as given (e.g. `stingy-train models`)
#
# Exit status: that of the command; 1 when what it waits for did not come in time.
set -eu
here=$(dirname "$0")

wait_for_checkpoint() {
  waited=0
  limit=${STINGY_CHECKPOINT_WAIT_S:-3600}
  until [ -f "$STINGY_CHECKPOINT" ]; do
    if [ "$waited" -ge "$limit" ]; then
      echo "entrypoint: no checkpoint at $STINGY_CHECKPOINT after ${limit} s (is the teacher job running?)" >&2
      exit 1
    fi
    [ "$waited" -eq 0 ] && echo "entrypoint: waiting for the teacher checkpoint $STINGY_CHECKPOINT"
    sleep 2
    waited=$((waited + 2))
  done
}

train_teacher() {
  if [ -f "$STINGY_CHECKPOINT" ]; then
    echo "teacher: $STINGY_CHECKPOINT is there, nothing to train"
    return 0
  fi
  run=${STINGY_TEACHER_RUN:-$(dirname "$STINGY_CHECKPOINT")/run}
  set -- --dataset "${STINGY_TEACHER_DATASET:-fashion-mnist}" --arch "${STINGY_TEACHER_ARCH:-cnn_small}" \
    --epochs "${STINGY_TEACHER_EPOCHS:-10}" --device "${STINGY_DEVICE:-auto}" --out "$run" "$@"
  [ -n "${STINGY_TEACHER_TRAIN_SUBSET:-}" ] && set -- --train-subset "$STINGY_TEACHER_TRAIN_SUBSET" "$@"
  [ -f "$run/state.pt" ] && set -- --resume "$@"
  stingy-train teacher "$@"
  cp "$run/teacher.safetensors" "$STINGY_CHECKPOINT.partial"
  mv "$STINGY_CHECKPOINT.partial" "$STINGY_CHECKPOINT"
  echo "teacher: trained $STINGY_CHECKPOINT"
}

attack_key() {
  # the secret of the first entry ('name:secret' or a bare secret; blank lines and # comments skipped)
  grep -v '^[[:space:]]*#' "$1" | grep -m1 '[^[:space:]]' | sed -e 's/^[^:]*://' -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//'
}

command=${1:-serve}
[ $# -gt 0 ] && shift
case "$command" in
  serve)
    wait_for_checkpoint
    exec stingy-serve "$@" ;;
  teacher)
    train_teacher "$@" ;;
  attack)
    url=${STINGY_ATTACK_URL:-http://api:8000}
    if [ -z "${STINGY_API_KEY:-}" ] && [ -n "${STINGY_API_KEY_FILE:-}" ]; then
      STINGY_API_KEY=$(attack_key "$STINGY_API_KEY_FILE")
      export STINGY_API_KEY
    fi
    echo "attack: waiting for $url/readyz"
    python3 "$here/ready.py" "$url" --wait "${STINGY_ATTACK_WAIT_S:-3600}"
    exec stingy-attack run --url "$url" "$@" ;;
  bench)
    exec stingy-bench run --preset "${STINGY_BENCH_PRESET:-fmnist-cpu}" --out "${STINGY_BENCH_OUT:-/results/bench}" "$@" ;;
  *)
    exec "$command" "$@" ;;
esac
