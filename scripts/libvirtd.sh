#!/usr/bin/env bash
# Start the system libvirt daemon if it is not answering (machines without systemd, CI containers).
set -euo pipefail
if virsh -c qemu:///system version >/dev/null 2>&1; then exit 0; fi
if [ -e /dev/kvm ]; then
  # libvirt re-probes QEMU on every define when /dev/kvm is 0600 (44 s each): open it to the kvm group.
  chgrp kvm /dev/kvm 2>/dev/null && chmod 660 /dev/kvm 2>/dev/null || true
fi
if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
  systemctl start libvirtd || true
else
  pgrep -x virtlogd >/dev/null || virtlogd -d
  pgrep -x libvirtd >/dev/null || libvirtd -d
fi
for _ in $(seq 1 60); do
  virsh -c qemu:///system version >/dev/null 2>&1 && exit 0
  sleep 0.5
done
echo "libvirtd did not start: see /var/log/libvirt" >&2
exit 1
