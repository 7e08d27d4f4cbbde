#!/usr/bin/env bash
# The whole test suite: installs the test peers, builds, runs the Swift unit tests, then the
# real-peer tests over loopback sockets, then every fuzz target briefly. Used by .ci/run and by
# README's second command.
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
# Every fuzz target for a few thousand inputs from a fixed seed: the harnesses build and run, and
# every kept regression input goes through the sanitizer build too (scripts/fuzz.sh, docs/reliability.md).
"$root/scripts/fuzz.sh" --runs 3000 --seed 1 --jobs 2
