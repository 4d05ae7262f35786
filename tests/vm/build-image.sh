#!/usr/bin/env bash
# Build (or reuse) a small Debian bookworm cloud-style base image for the node VM boot test.
#
# Output: a cache directory, printed as the only line on stdout, holding
#   base.qcow2   partitioned disk (MBR, one ext4 partition labelled "rootfs", GRUB in the MBR gap)
#   vmlinuz      kernel and initramfs of the image, for direct kernel boot
#   initrd.img
#   image.json   sizes and build time
# The directory is keyed by a hash of this script (which holds the package list), so editing the
# script builds a new image; an unchanged script reuses the cached one in about a second.
#
# Needs root, debootstrap, e2fsprogs (mke2fs -d), fdisk (sfdisk), qemu-utils (qemu-img), flock.
# No loop devices or mounts: the ext4 file system is built from a directory with `mke2fs -d` and
# copied into the partition with dd.
#
# Environment:
#   KOA_VM_CACHE     cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/kube-on-air/vm)
#   DEBIAN_MIRROR    Debian mirror URL (default: the first bookworm source in /etc/apt)
#   KOA_VM_REBUILD=1 ignore a cached image
set -euo pipefail

SUITE=bookworm
PACKAGES=(
    linux-image-cloud-amd64 systemd-sysv systemd-resolved udev dbus locales
    cloud-init python3-cffi-backend cloud-guest-utils fdisk e2fsprogs
    openssh-server netplan.io containerd iproute2 sudo kmod procps iputils-ping
    ca-certificates grub-pc-bin
)

log() { printf '[build-image] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

script_path=$(readlink -f "${BASH_SOURCE[0]}")
cache_root=${KOA_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-on-air/vm}
hash=$(sha256sum "$script_path" | cut -c1-16)
out_dir=$cache_root/$hash

if [[ -f $out_dir/image.json && ${KOA_VM_REBUILD:-0} != 1 ]]; then
    log "reusing $out_dir"
    printf '%s\n' "$out_dir"
    exit 0
fi

[[ $(id -u) == 0 ]] || die "must run as root (debootstrap, chroot, file ownership in the image)"
for tool in debootstrap mke2fs sfdisk qemu-img flock chroot; do
    command -v "$tool" >/dev/null || die "missing $tool (apt-get install debootstrap e2fsprogs fdisk qemu-utils util-linux)"
done

# The mirror that serves $SUITE, read from this machine's apt sources (deb822 or one-line format).
find_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        awk -v suite="$SUITE" '
            function flush() {
                if (uri != "" && deb && has_suite && enabled) { print uri; found = 1; exit }
                uri = ""; deb = 0; has_suite = 0; enabled = 1
            }
            BEGIN { enabled = 1 }
            /^[[:space:]]*$/ { flush(); next }
            /^#/ { next }
            tolower($1) == "types:" { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
            tolower($1) == "uris:" { uri = $2 }
            tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == suite) has_suite = 1 }
            tolower($1) == "enabled:" { if (tolower($2) == "no") enabled = 0 }
            END { if (!found) flush() }
        ' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        awk -v suite="$SUITE" '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) { print $i; exit }
            }
        ' "$f"
    done
}
mirror=${DEBIAN_MIRROR:-$(find_mirror | head -n1)}
[[ -n $mirror ]] || die "no apt source for $SUITE found in /etc/apt; set DEBIAN_MIRROR"

mkdir -p "$cache_root"
exec 9>"$cache_root/.lock"
flock 9
if [[ -f $out_dir/image.json && ${KOA_VM_REBUILD:-0} != 1 ]]; then
    log "reusing $out_dir (built by a concurrent run)"
    printf '%s\n' "$out_dir"
    exit 0
fi

# Remove a build directory; never delete through a mount (debootstrap mounts /proc and /sys).
remove_build_dir() {
    local dir=$1 m
    while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done < <(awk -v r="$dir/" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r)
    rm -rf --one-file-system "$dir"
}
# Leftovers of killed builds (we hold the lock, so none is running).
for stale in "$cache_root"/.build-*; do
    if [[ -d $stale ]]; then remove_build_dir "$stale"; fi
done

start=$(date +%s.%N)
work=$(mktemp -d "$cache_root/.build-XXXXXX")
rootfs=$work/rootfs
cleanup() { remove_build_dir "$work"; }
trap cleanup EXIT

log "debootstrap $SUITE from $mirror into $rootfs"
mkdir -p "$cache_root/debootstrap-cache"
include=$(IFS=,; printf '%s' "${PACKAGES[*]}")
debootstrap --variant=minbase --include="$include" --cache-dir="$cache_root/debootstrap-cache" \
    "$SUITE" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    die "debootstrap failed"
}

log "preparing the image"
# Locale: without a generated en_US.UTF-8 cloud-init's locale module fails (update-locale 255).
echo 'en_US.UTF-8 UTF-8' >"$rootfs/etc/locale.gen"
chroot "$rootfs" locale-gen >/dev/null
echo 'LANG=en_US.UTF-8' >"$rootfs/etc/default/locale"

cat >"$rootfs/etc/cloud/cloud.cfg.d/90_kube_on_air_test.cfg" <<'EOF'
# Only the NoCloud seed (or nothing): no probing of cloud metadata services.
datasource_list: [ NoCloud, None ]
EOF

echo 'LABEL=rootfs / ext4 errors=remount-ro 0 1' >"$rootfs/etc/fstab"
echo localhost >"$rootfs/etc/hostname"
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' >"$rootfs/etc/hosts"
# A fresh identity on first boot.
: >"$rootfs/etc/machine-id"
rm -f "$rootfs/var/lib/dbus/machine-id" "$rootfs"/etc/ssh/ssh_host_*
chroot "$rootfs" systemctl enable systemd-networkd systemd-resolved >/dev/null 2>&1
# Never carry this machine's resolver into the image.
ln -sf ../run/systemd/resolve/stub-resolv.conf "$rootfs/etc/resolv.conf"

# GRUB for BIOS boot without grub-install (which wants a block device): core.img in the MBR gap.
kver=$(basename "$(find "$rootfs/boot" -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n1)")
kver=${kver#vmlinuz-}
[[ -n $kver ]] || die "no kernel in the image"
mkdir -p "$rootfs/boot/grub/i386-pc"
cp "$rootfs"/usr/lib/grub/i386-pc/*.mod "$rootfs"/usr/lib/grub/i386-pc/*.lst "$rootfs/boot/grub/i386-pc/"
cat >"$rootfs/boot/grub/grub.cfg" <<EOF
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=0
menuentry 'Debian GNU/Linux' {
    linux /boot/vmlinuz-$kver root=LABEL=rootfs ro console=tty0 console=ttyS0,115200
    initrd /boot/initrd.img-$kver
}
EOF
chroot "$rootfs" grub-mkimage -O i386-pc -o /tmp/core.img -p '(hd0,msdos1)/boot/grub' \
    biosdisk part_msdos ext2 normal configfile linux serial terminal echo test
mv "$rootfs/tmp/core.img" "$work/core.img"
cp "$rootfs/usr/lib/grub/i386-pc/boot.img" "$work/boot.img"

install -m 0644 "$rootfs/boot/vmlinuz-$kver" "$work/vmlinuz"
install -m 0644 "$rootfs/boot/initrd.img-$kver" "$work/initrd.img"

# Smaller image: no package caches, lists, documentation or foreign locales.
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/debconf/*-old \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/tmp/* "$rootfs"/var/tmp/*
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'en*' ! -name locale.alias -exec rm -rf {} +
find "$rootfs/var/log" -type f -exec truncate -s 0 {} +

# File system sized to the content plus headroom; growpart/resize2fs grow it on first boot.
used_mib=$(du -sxm "$rootfs" | cut -f1)
fs_mib=$(((used_mib * 5 / 4 + 256 + 63) / 64 * 64))
log "rootfs ${used_mib} MiB -> ext4 ${fs_mib} MiB"
mke2fs -q -t ext4 -L rootfs -d "$rootfs" "$work/fs.img" "${fs_mib}M" >&2

# Partitioned raw disk: MBR, partition 1 from 1 MiB to the end, GRUB in the gap before it.
truncate -s "$((fs_mib + 1))M" "$work/disk.raw"
printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q "$work/disk.raw"
dd if="$work/fs.img" of="$work/disk.raw" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$work/boot.img" of="$work/disk.raw" bs=440 count=1 conv=notrunc status=none
dd if="$work/core.img" of="$work/disk.raw" bs=512 seek=1 conv=notrunc status=none
core_sectors=$((($(stat -c %s "$work/core.img") + 511) / 512))
((core_sectors < 2047)) || die "core.img does not fit before the partition"
# zstd-compressed clusters: about a third of the size, 2-3 s to write, cheap to read.
qemu-img convert -c -o compression_type=zstd -O qcow2 "$work/disk.raw" "$work/base.qcow2"

end=$(date +%s.%N)
fs_bytes=$((fs_mib * 1024 * 1024))
virtual=$(stat -c %s "$work/disk.raw")
on_disk=$(($(stat -c %b "$work/base.qcow2") * 512))
cat >"$work/image.json" <<EOF
{
  "hash": "$hash",
  "suite": "$SUITE",
  "kernel_version": "$kver",
  "rootfs_used_mib": $used_mib,
  "fs_size_bytes": $fs_bytes,
  "virtual_size_bytes": $virtual,
  "qcow2_on_disk_bytes": $on_disk,
  "build_seconds": $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
}
EOF

rm -rf "$out_dir"
mkdir -p "$out_dir"
mv "$work/base.qcow2" "$work/vmlinuz" "$work/initrd.img" "$out_dir/"
mv "$work/image.json" "$out_dir/image.json"  # last: its presence marks a complete image
log "built $out_dir in $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.0f", b - a }') s"
printf '%s\n' "$out_dir"
