#!/usr/bin/env bash
# The committed attack run (docs/results/attack-fmnist/): the paper's threat model on Fashion-MNIST.
# The whole training set (60,000 images) is the transfer set; a LeNet-5 student is distilled with every
# strategy from a normal server and from a stingy server (r = 0.2, N = 2) serving the same teacher.
# Run from the repository root after `source scripts/bootstrap.sh` (or with .venv/bin on PATH).
set -euo pipefail
OUT=${OUT:-runs/attack-fmnist}
TEACHER=${TEACHER:-runs/teacher/teacher.safetensors}
[ -f "$TEACHER" ] || stingy-train teacher --dataset fashion-mnist --arch cnn_small --epochs 10 --out "$(dirname "$TEACHER")"

serve_and_attack() {  # policy, port, extra serve flags...
  local policy=$1 port=$2; shift 2
  stingy-serve --checkpoint "$TEACHER" --policy "$policy" "$@" --port "$port" --access-log "" --log-level warning &
  local server=$!
  trap 'kill $server 2>/dev/null || true' RETURN
  for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.5; done
  stingy-attack run --url "http://127.0.0.1:$port" --dataset fashion-mnist --student lenet5 --out "$OUT/$policy"
}

serve_and_attack normal 8101 --allow-disclosing-policy
serve_and_attack stingy 8102 --sparse-ratio 0.2
stingy-attack compare "$OUT/normal" "$OUT/stingy"
