#!/usr/bin/env bash
# The checks that need an NVIDIA GPU (CI has none): the CUDA tests, a mixed-precision Fashion-MNIST teacher,
# training and serving throughput on the GPU, and the whole suite with CUDA present.
#
#   ./scripts/gpu_check.sh [LOG_DIR]      # default runs/gpu-check: one log per check and summary.txt
#
# CHECKS picks checks by name (default: all); SERVING_WORKERS the --workers values of the serving_workers check.
# Uses .venv when scripts/bootstrap.sh made one, else $PYTHON (default python3) with the project importable
# from the repository root. BUDGET_S (default 3600) caps the whole script: a check gets what is left.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOG_DIR="$(mkdir -p "${1:-$ROOT/runs/gpu-check}" && cd "${1:-$ROOT/runs/gpu-check}" && pwd)"
BUDGET_S="${BUDGET_S:-3600}"
if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON="${PYTHON:-python3}"; fi
TEACHER_DIR="$ROOT/runs/gpu-check-teacher"
export STINGY_PROGRESS=0 PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"
: >"$LOG_DIR/summary.txt"

# check NAME LIMIT_S COMMAND...: run COMMAND with at most LIMIT_S seconds (less if the budget is nearly
# spent), its output in LOG_DIR/NAME.log, its tail on the screen, its status and time in summary.txt.
CHECKS="${CHECKS:-environment cuda_tests teacher train_speed serving serving_workers suite}"
check() {
  local name=$1 limit=$2; shift 2
  case " $CHECKS " in *" $name "*|*" ${name%_*} "*) ;; *) return ;; esac  # serving_workers_8 runs under serving_workers
  local left=$((BUDGET_S - SECONDS - 5)) began=$SECONDS status
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -le 10 ]; then
    printf '%-12s skipped: budget spent\n' "$name" | tee -a "$LOG_DIR/summary.txt"; return
  fi
  echo "==> $name: $*"
  timeout "$limit" "$@" >"$LOG_DIR/$name.log" 2>&1
  status=$?
  tail -n 30 "$LOG_DIR/$name.log"
  printf '%-12s exit %-3s %4d s%s\n' "$name" "$status" $((SECONDS - began)) "$([ "$status" = 124 ] && echo ' (timed out)')" \
    | tee -a "$LOG_DIR/summary.txt"
}

check environment 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \"$PYTHON\" -c \
'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else \"NO GPU\")'"
check cuda_tests 240 "$PYTHON" -m pytest tests/gpu -v -p no:cacheprovider -m cuda
rm -rf "$TEACHER_DIR"
check teacher 300 "$PYTHON" -m training.cli teacher --dataset fashion-mnist --arch cnn_small --epochs 10 --out "$TEACHER_DIR"
cp "$TEACHER_DIR/metrics.jsonl" "$LOG_DIR/teacher_metrics.jsonl" 2>/dev/null
check train_speed 180 "$PYTHON" -m bench.train_speed --archs mlp lenet5 cnn_small resnetc20 resnet18 mobilenetv2 --batch-size 256 --steps 30
check serving 300 "$PYTHON" -m bench.serving --device cuda --models resnet18 --formats v2-json v2-binary \
    --clients 1 8 32 64 128 --duration 3 --out "$LOG_DIR/serving"   # needs hey (apt-get install hey)
for workers in ${SERVING_WORKERS:-4}; do   # SERVING_WORKERS="4 8 auto": one check per --workers value
  check "serving_workers_$workers" 150 "$PYTHON" -m bench.serving --device cuda --models resnet18 --formats v2-binary v2-json \
      --images 1 --clients 64 128 --duration 3 --server-arg=--workers --server-arg="$workers" --out "$LOG_DIR/serving_workers_$workers"
done
check suite 900 "$PYTHON" -m pytest -q -p no:cacheprovider
echo "==> summary ($LOG_DIR)"
cat "$LOG_DIR/summary.txt"
