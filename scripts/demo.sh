#!/usr/bin/env bash
# The demo: train (or reuse) a Fashion-MNIST teacher and show what the stingy defense releases.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
ensure_fashion_mnist
exec python scripts/demo.py "$@"
