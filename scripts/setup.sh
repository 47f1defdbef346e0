#!/usr/bin/env bash
# Install everything metavmm needs on a fresh Debian 12 machine, idempotently.
#   scripts/setup.sh run    system packages for the broker, .venv with the libvirt extra
#   scripts/setup.sh test   the above plus what the tests use (PostgreSQL, dev tools, all extras)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-run}

apt_pkgs=(python3 python3-venv python3-dev gcc pkg-config libvirt-dev libvirt-daemon-system libvirt-clients
          qemu-system-x86 qemu-utils)
if [ "$mode" = test ]; then
  apt_pkgs+=(postgresql)
fi
[ -f scripts/setup.d/apt-"$mode".txt ] && mapfile -t extra < <(grep -v '^#' scripts/setup.d/apt-"$mode".txt) && apt_pkgs+=("${extra[@]}")

missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

extras="libvirt"
[ "$mode" = test ] && extras="all,dev"
stamp=".venv/.metavmm-$mode-$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if [ ! -f "$stamp" ]; then
  echo "setup: installing Python packages (.[$extras])"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".[$extras]"
  rm -f .venv/.metavmm-"$mode"-*
  touch "$stamp"
fi
if [ "$mode" = test ]; then scripts/nova-env.sh; scripts/glance-env.sh; fi  # real nova and glance for the OpenStack tests
# the two-daemon libvirt tests plug guests into the networks their session daemons make
if [ "$mode" = test ]; then SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"; $SUDO scripts/libvirt-session-net.sh; fi
