#!/usr/bin/env bash
# Installs the NATS server that tests/backplane.rs starts (Debian's
# `nats-server` package), if it is not installed yet. Run as root or with
# passwordless sudo; CI runs it before the tests (.ci/run).
set -euo pipefail
if command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ]; then
    exit 0
fi
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo -n"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nats-server >/dev/null
nats-server --version || /usr/sbin/nats-server --version
