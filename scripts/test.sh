#!/usr/bin/env bash
# The whole test suite: installs the test peers, builds, runs the Swift unit tests, then the
# real-peer tests over loopback sockets. Used by .ci/run and by README's second command.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
"$root/scripts/install-test-peers.sh"
swift build --build-tests
swift test --skip-build
swift build --product wstap
export WSTAP_BIN="$root/.build/debug/wstap"
export NODE_PATH=/usr/share/nodejs
"$root/.build/test-venv/bin/python" -m pytest -q tests/peers "$@"
