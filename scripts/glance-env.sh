#!/usr/bin/env bash
# Build the virtualenv that serves real glance to the OpenStack driver's tests (idempotent).
#   scripts/glance-env.sh [VENV]     default VENV: .venv-glance (gitignored), or $METAVMM_GLANCE_VENV
# glance gets its own venv (not nova's): its releases pin oslo libraries independently of nova's.
# It is served by scripts/glance_api.py (glance.wsgi.api under a stdlib WSGI server; glance 33 dropped
# its standalone eventlet server). Takes ~60 s with a warm pip cache; a no-op once its stamp file exists.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-${METAVMM_GLANCE_VENV:-.venv-glance}}
pkgs=(glance "SQLAlchemy<2.1")
stamp="$venv/.metavmm-glance-$(printf '%s\n' "${pkgs[@]}" | sha256sum | cut -c1-16)"
[ -f "$stamp" ] && exit 0
echo "glance-env: building $venv (glance, glance_store)"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q "${pkgs[@]}"
rm -f "$venv"/.metavmm-glance-*
touch "$stamp"
