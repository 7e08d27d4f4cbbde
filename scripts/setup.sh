#!/usr/bin/env bash
# Installs the system packages wstap needs to build and run (Debian). Safe to run repeatedly:
# it only calls apt-get when something is missing.
set -euo pipefail
source "$(dirname "$0")/lib/apt.sh"
ensure_debian_packages setup zlib1g-dev libpcap-dev
