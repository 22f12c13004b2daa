#!/usr/bin/env bash
# Sourced by demo.sh and test.sh: create .venv with Python 3.11, install the exact versions in requirements.lock
# and then the project without resolving dependencies (again only when pyproject.toml or the lock changed), and
# define the helpers that install the real Fashion-MNIST, redis-server and hey where apt can install them.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
FMNIST_DIR=/usr/share/datasets/fashion-mnist

find_python() {
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "error: Python 3.11 is required (torch==2.14.1 wheels are for 3.11); install python3.11" >&2
  return 1
}

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$(find_python)" -m venv "$VENV"
fi

pip_install() {  # quiet, without the local-index location warnings; the status is pip's
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }
}

stamp="$VENV/.installed-$(cat "$ROOT/pyproject.toml" "$ROOT/requirements.lock" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "==> installing requirements.lock and stingy-teacher into $VENV (torch takes a minute or two)"
  pip_install --upgrade pip || true
  pip_install -r "$ROOT/requirements.lock" || { echo "error: installing requirements.lock failed" >&2; exit 1; }
  pip_install --no-deps -e "$ROOT" || { echo "error: installing stingy-teacher failed" >&2; exit 1; }
  "$VENV/bin/python" -c 'import torch, torchvision, fastapi, safetensors' || { echo "error: installation failed" >&2; exit 1; }
  rm -f "$VENV"/.installed-* && touch "$stamp"
fi

# apt_install PACKAGE WHAT: install a Debian package where apt-get can (as root); fails otherwise.
apt_install() {
  command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] || return 1
  echo "==> installing $2 (apt-get install $1)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1") >/dev/null
}

ensure_fashion_mnist() {
  [ -f "$FMNIST_DIR/t10k-images-idx3-ubyte.gz" ] && return 0
  apt_install dataset-fashion-mnist Fashion-MNIST && return 0
  echo "note: the real Fashion-MNIST is not installed in $FMNIST_DIR and apt-get could not install it here." >&2
  echo "      Install it with 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu), or use" >&2
  echo "      '--data-root DIR --download' with the stingy-* commands on a machine with a network." >&2
  return 1
}

# The Redis tests (tests/state) start a real redis-server on 127.0.0.1.
ensure_redis_server() {
  command -v redis-server >/dev/null 2>&1 && return 0
  apt_install redis-server redis-server && return 0
  echo "note: redis-server is not installed and apt-get could not install it here;" >&2
  echo "      install it with 'sudo apt-get install redis-server' (Debian/Ubuntu)." >&2
  return 1
}

# The serving benchmark (bench/serving.py, and its end-to-end test) sends its load with hey.
ensure_hey() {
  command -v hey >/dev/null 2>&1 && return 0
  apt_install hey "the load generator hey" && return 0
  echo "note: hey is not installed and apt-get could not install it here;" >&2
  echo "      install it with 'sudo apt-get install hey' (Debian/Ubuntu)." >&2
  return 1
}

export PATH="$VENV/bin:$PATH"
cd "$ROOT"
