#!/usr/bin/env bash
# The test suite: unit, API, end-to-end (slow ones included). Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
ensure_fashion_mnist || echo "note: tests that need the real Fashion-MNIST will be skipped" >&2
ensure_redis_server || echo "note: the Redis tests will be skipped" >&2
ensure_hey || echo "note: the serving benchmark's end-to-end test will be skipped" >&2
exec python -m pytest "$@"
