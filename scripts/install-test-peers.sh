#!/usr/bin/env bash
# Installs the third-party WebSocket peers the tests talk to: Python websockets, aiohttp and
# websocket-client (PyPI, in a venv under .build/), Node ws (Debian node-ws), socat (raw relay for
# the benchmark), openssl, headless Chromium, chromium-driver and Selenium (PyPI) and certutil (libnss3-tools) for the browser tests, tshark as a decoding oracle.
# Idempotent.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/setup.sh"
source "$root/scripts/lib/apt.sh"
ensure_debian_packages peers python3 python3-venv nodejs node-ws socat openssl chromium chromium-driver libnss3-tools tshark tcpdump jq
venv="$root/.build/test-venv"
# Prefer Debian's python3 so the venv works on a machine with nothing else; fall back to PATH.
python=/usr/bin/python3
[ -x "$python" ] || python="$(command -v python3)"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check \
  'websockets>=13' 'aiohttp>=3.9' 'websocket-client>=1.7' 'python-socketio>=5.11' 'pytest>=7' 'schemathesis>=4' 'selenium>=4.10'
