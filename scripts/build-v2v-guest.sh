#!/usr/bin/env bash
# Build a small bootable Debian 12 guest disk for the real virt-v2v test, idempotently.
#   scripts/build-v2v-guest.sh [OUT_DIR]    (default /var/tmp/metavmm-v2v-guest)
# Prints the path of the raw disk. Needs root, debootstrap, libguestfs-tools and the Debian mirror
# (the package registry). The result is cached: a second run only prints the path.
# The guest is what virt-v2v needs to recognise a Linux: a dpkg database, an installed kernel package,
# initramfs-tools and GRUB on an MBR disk, with the console on ttyS0 so a test can watch it boot.
set -euo pipefail
out=${1:-/var/tmp/metavmm-v2v-guest}
disk="$out/debian12.raw"
version=2  # bump when the recipe changes, so cached guests are rebuilt
if [ -s "$disk" ] && [ "$(cat "$out/.done" 2>/dev/null)" = "$version" ]; then echo "$disk"; exit 0; fi
mkdir -p "$out"
root="$out/root"
rm -rf "$root" "$disk" "$out/.done"
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
debootstrap --variant=minbase --include=linux-image-amd64,grub-pc,initramfs-tools,systemd-sysv,udev,e2fsprogs \
  bookworm "$root" "$mirror" >"$out/debootstrap.log" 2>&1
echo metavmm-guest >"$root/etc/hostname"
printf '/dev/sda1 / ext4 defaults 0 1\n' >"$root/etc/fstab"
chroot "$root" passwd -d root >/dev/null
sed -i 's/^GRUB_CMDLINE_LINUX=.*/GRUB_CMDLINE_LINUX="console=ttyS0,115200 net.ifnames=0"/; s/^GRUB_TIMEOUT=.*/GRUB_TIMEOUT=0/' \
  "$root/etc/default/grub"
rm -rf "$root/var/cache/apt/archives/"*.deb
export LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg
# +1.5G free: virt-v2v rebuilds the initramfs inside the guest (MODULES=most stages ~300 MB); the file is sparse.
virt-make-fs --partition=mbr --type=ext4 --size=+1536M --format=raw "$root" "$disk"
guestfish -a "$disk" -m /dev/sda1 <<'EOF'
command "grub-install --target=i386-pc /dev/sda"
command "update-grub"
EOF
rm -rf "$root"
echo "$version" >"$out/.done"
echo "$disk"
