#!/usr/bin/env bash
# Build the virtualenv that serves real nova to the OpenStack driver's tests (idempotent).
#   scripts/nova-env.sh [VENV]     default VENV: .venv-nova (gitignored), or $METAVMM_NOVA_VENV
# nova and placement stay out of the project's own venv: they pin old libraries and eventlet.
# Takes ~70 s with a warm pip cache (~400 MB); a no-op once its stamp file exists.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-${METAVMM_NOVA_VENV:-.venv-nova}}
pkgs=(nova openstack-placement fixtures testtools oslotest requests-mock wsgi-intercept testscenarios "SQLAlchemy<2.1")
stamp="$venv/.metavmm-nova-$(printf '%s\n' "${pkgs[@]}" | sha256sum | cut -c1-16)"
[ -f "$stamp" ] && exit 0
echo "nova-env: building $venv (nova, placement and their test fixtures)"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q "${pkgs[@]}"
# nova looks for api-paste.ini under <site-packages>/etc/nova; pip puts it in <venv>/etc/nova.
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ln -sfn "$(cd "$venv" && pwd)/etc" "$site/etc"
rm -f "$venv"/.metavmm-nova-*
touch "$stamp"
