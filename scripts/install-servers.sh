#!/usr/bin/env bash
# Install the PostgreSQL and Redis servers the storage-pillar tests run against (Debian
# packages). Idempotent: does nothing when both are present. The packages' own system
# services are not needed: tests start private instances on loopback ports.
set -euo pipefail
have_pg() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; }
have_redis() { command -v redis-server >/dev/null 2>&1; }
if have_pg && have_redis; then
  echo "install-servers: postgresql and redis-server already installed"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
pkgs=()
have_pg || pkgs+=(postgresql)
have_redis || pkgs+=(redis-server)
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
# Debian starts the packaged services on install where an init system runs; stop them
# (the tests use their own instances on free ports).
$SUDO service redis-server stop >/dev/null 2>&1 || true
$SUDO service postgresql stop >/dev/null 2>&1 || true
echo "install-servers: installed ${pkgs[*]}"
