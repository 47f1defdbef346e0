#!/usr/bin/env bash
# An unprivileged user for libvirt *session* daemons (two of them make two "hosts" for migration
# tests). Idempotent. Root runs the tests and connects to the daemons' sockets.
set -euo pipefail
user="${1:-metavmm-lv}"
id -u "$user" >/dev/null 2>&1 || useradd --system --create-home --shell /usr/sbin/nologin "$user"
echo "$user"
