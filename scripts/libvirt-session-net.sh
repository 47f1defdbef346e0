#!/usr/bin/env bash
# Let libvirt *session* daemons give their guests interfaces on the networks they make (isolated
# bridges with dnsmasq), for the two-host tests. Idempotent; needs root. The daemon itself gets
# CAP_NET_ADMIN, CAP_NET_RAW and CAP_NET_BIND_SERVICE as ambient capabilities when started
# (bench/libvirt_hosts.py); a session QEMU plugs its tap into a bridge through qemu-bridge-helper,
# which needs CAP_NET_ADMIN (a file capability, narrower than the setuid bit Debian's docs suggest)
# and a bridge ACL (/etc/qemu/bridge.conf; created with "allow all" only when the machine has none).
set -euo pipefail
helper=/usr/lib/qemu/qemu-bridge-helper
[ -x "$helper" ] || { echo "no $helper (qemu-system-common)" >&2; exit 1; }
command -v setcap >/dev/null || apt-get install -y --no-install-recommends libcap2-bin >/dev/null
getcap "$helper" | grep -q cap_net_admin || setcap cap_net_admin+ep "$helper"
mkdir -p /etc/qemu /var/lib/libvirt/dnsmasq
[ -e /etc/qemu/bridge.conf ] || echo "allow all" >/etc/qemu/bridge.conf
grep -qx "allow all" /etc/qemu/bridge.conf || { echo "/etc/qemu/bridge.conf does not allow all bridges" >&2; exit 1; }
