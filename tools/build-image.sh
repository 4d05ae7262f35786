#!/usr/bin/env bash
# Build (or reuse) a small Debian bookworm cloud-style base image for the node VM boot test.
#
# Also the user-facing node image builder (`make image`): with KOA_KUBERNETES_VERSION the image
# additionally holds the pinned kubelet/kubeadm/kubectl (held, kubelet enabled) and, by default, the
# control-plane images in containerd's k8s.io namespace, for `prebaked: true`.
#
# Output: a cache directory, printed as the only line on stdout, holding
#   base.qcow2   partitioned disk (MBR, one ext4 partition labelled "rootfs", GRUB in the MBR gap)
#   vmlinuz      kernel and initramfs of the image, for direct kernel boot
#   initrd.img
#   image.json   sizes, build time and variant
#   debs/        only with KOA_IMAGE_WITHOUT: the .debs `apt-get install <left-out packages>` would
#                fetch into this image (what a node would download at first boot)
# The directory is keyed by a hash of this script (which holds the package list) and of the variant
# below, so editing the script or changing the variant builds a new image; an unchanged script
# reuses the cached one in about a second.
#
# Needs root, debootstrap, e2fsprogs (mke2fs -d), fdisk (sfdisk), qemu-utils (qemu-img), flock;
# curl for the Kubernetes variant. No loop devices: the ext4 file system is built from a directory
# with `mke2fs -d` and copied into the partition with dd (the Kubernetes variant mounts /proc in the
# build tree while containerd pre-pulls images).
#
# Environment:
#   KOA_VM_CACHE     cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/kube-on-air/vm)
#   DEBIAN_MIRROR    Debian mirror URL (default: the first bookworm source in /etc/apt)
#   KOA_VM_REBUILD=1 ignore a cached image
#   KOA_IMAGE_OUT    also copy the finished qcow2 to this path (e.g. build/node-image.qcow2)
#   KOA_KUBERNETES_VERSION=1.34.2
#                    add the pkgs.k8s.io apt repository of that minor and install kubelet, kubeadm,
#                    kubectl =<version>-* (+ kubernetes-cni, cri-tools, conntrack), held; needs
#                    https://pkgs.k8s.io (and https://registry.k8s.io for the images) from this host
#   KOA_TOOLCHAIN=DIR offline source for the Kubernetes variant: kubeadm/kubelet/kubectl, their units
#                    (templates/image/) and the image archives of `make toolchain` (DIR is its
#                    toolchain/current) instead of pkgs.k8s.io and registry.k8s.io; CNI plugins,
#                    conntrack and the other node tools come from Debian
#   KOA_IMAGE_DIR=DIR with KOA_TOOLCHAIN: every docker-archive (*.tar) in DIR is imported too (the
#                    CNI's and workloads' images, which the toolchain cannot build; docs/offline.md)
#   KOA_REQUIRED_IMAGES="REF ..." with KOA_TOOLCHAIN: image references the stack runs; the build stops
#                    with one line naming those in neither the toolchain nor KOA_IMAGE_DIR
#   KOA_PREPULL_IMAGES=1 (default with a version) fetch `kubeadm config images list` plus the
#                    program's containerd sandbox image into containerd (k8s.io namespace) inside the
#                    image; 0: leave them to `kubeadm init`/`join` at first use
#   KOA_SANDBOX_IMAGE another sandbox (pause) image to pre-pull besides the one kubeadm lists
#   KOA_IMAGE_WITHOUT=containerd
#                    leave packages of the list below out (comma-separated) and keep their .debs in
#                    debs/: the "bare" image of the boot-time saving test (tests/vm/test_prebaked_saving.py)
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
repo_root=$(dirname "$(dirname "$script_path")")
cache_root=${KOA_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-on-air/vm}

# --- variant -------------------------------------------------------------------------------------
k8s_version=${KOA_KUBERNETES_VERSION:-}
k8s_version=${k8s_version#v}
k8s_minor=
prepull=0
sandbox_image=
without=()
if [[ -n $k8s_version ]]; then
    [[ $k8s_version =~ ^1\.[0-9]+\.[0-9]+$ ]] ||
        die "KOA_KUBERNETES_VERSION=$k8s_version: want a full version such as 1.34.2 (the stack's kubernetesVersion)"
    k8s_minor=${k8s_version%.*}
    prepull=${KOA_PREPULL_IMAGES:-1}
    [[ $prepull == 0 || $prepull == 1 ]] || die "KOA_PREPULL_IMAGES=$prepull: want 0 or 1"
    # The program's containerd sandboxes pods with the pause image kubeadm lists (components/artifacts/render.py).
    sandbox_image=${KOA_SANDBOX_IMAGE:-}
fi
if [[ -n ${KOA_IMAGE_WITHOUT:-} ]]; then
    IFS=, read -r -a without <<<"$KOA_IMAGE_WITHOUT"
    [[ -z $k8s_version ]] || die "KOA_IMAGE_WITHOUT and KOA_KUBERNETES_VERSION do not go together"
    for pkg in "${without[@]}"; do
        [[ " ${PACKAGES[*]} " == *" $pkg "* ]] || die "KOA_IMAGE_WITHOUT: $pkg is not in this image's package list"
    done
    kept=()
    for pkg in "${PACKAGES[@]}"; do
        [[ ",$KOA_IMAGE_WITHOUT," == *",$pkg,"* ]] || kept+=("$pkg")
    done
    PACKAGES=("${kept[@]}")
fi
# Empty for the default image: the test image's key is the script's content, as before.
variant=
[[ -z $k8s_version ]] || variant="kubernetes=$k8s_version prepull=$prepull sandbox=$sandbox_image"
toolchain=${KOA_TOOLCHAIN:-}
if [[ -n $toolchain ]]; then
    [[ -n $k8s_version ]] || die "KOA_TOOLCHAIN needs KOA_KUBERNETES_VERSION (the stack's kubernetesVersion)"
    toolchain=$(readlink -f "$toolchain")
    [[ -x $toolchain/bin/kubeadm ]] || die "KOA_TOOLCHAIN=$toolchain holds no bin/kubeadm: run make toolchain"
    built=$("$toolchain/bin/kubeadm" version -o short)
    [[ $built == "v$k8s_version" ]] || die "the toolchain's kubeadm is $built, the stack wants v$k8s_version"
    [[ -f $toolchain/pieces/images/images.txt ]] || die "the toolchain at $toolchain has no images: run make toolchain"
    # Node tools the upstream .debs would pull in, and the CNI plugins, from Debian.
    PACKAGES+=(conntrack iptables ethtool socat ebtables containernetworking-plugins)
    # Contents only, not paths: every checkout of this repository shares the cached image.
    variant="$variant source=toolchain:$(cat "$toolchain/manifest.json" "$repo_root/templates/image/"* | sha256sum | cut -c1-16)"
    image_dir=${KOA_IMAGE_DIR:-}
    extra_archives=()
    if [[ -n $image_dir && -d $image_dir ]]; then
        mapfile -t extra_archives < <(find "$(readlink -f "$image_dir")" -maxdepth 1 -name '*.tar' -type f | sort)
        ((${#extra_archives[@]} == 0)) ||
            variant="$variant archives:$(sha256sum "${extra_archives[@]}" | cut -c1-64 | sha256sum | cut -c1-16)"
    fi
    # Every reference the toolchain's archives and the directory's carry (docker-archive manifest.json).
    archive_refs() {
        local archive
        for archive in "$@"; do
            tar -xOf "$archive" manifest.json |
                python3 -c 'import json, sys; print("\n".join(t for m in json.load(sys.stdin) for t in m.get("RepoTags") or []))'
        done
    }
    missing_images=()
    if [[ -n ${KOA_REQUIRED_IMAGES:-} ]]; then
        mapfile -t toolchain_archives < <(awk -v d="$toolchain/pieces/images/" '{ print d $2 }' "$toolchain/pieces/images/images.txt")
        offered=$(archive_refs "${toolchain_archives[@]}" "${extra_archives[@]}")
        for ref in $KOA_REQUIRED_IMAGES; do
            grep -qxF "$ref" <<<"$offered" || missing_images+=("$ref")
        done
    fi
    ((${#missing_images[@]} == 0)) ||
        die "the stack runs ${missing_images[*]}, in neither the toolchain nor KOA_IMAGE_DIR=${image_dir:-(unset)}:" \
            "put a docker-archive of each there (on a connected host: skopeo copy docker://REF docker-archive:FILE.tar:REF)"
fi
((${#without[@]} == 0)) || variant="without=$(IFS=,; printf '%s' "${without[*]}")"

hash=$({ cat "$script_path"; printf '%s' "$variant"; } | sha256sum | cut -c1-16)
out_dir=$cache_root/$hash

# KOA_IMAGE_OUT: a copy of the qcow2 where the user wants it, owned by the sudo caller.
publish() {
    local dest=${KOA_IMAGE_OUT:-}
    [[ -n $dest ]] || return 0
    mkdir -p "$(dirname "$dest")"
    cp --sparse=always "$out_dir/base.qcow2" "$dest.tmp"
    chmod 0644 "$dest.tmp"
    if [[ -n ${SUDO_UID:-} && -n ${SUDO_GID:-} ]]; then chown "$SUDO_UID:$SUDO_GID" "$dest.tmp"; fi
    mv "$dest.tmp" "$dest"
    log "image copied to $(readlink -f "$dest")"
}

if [[ -f $out_dir/image.json && ${KOA_VM_REBUILD:-0} != 1 ]]; then
    log "reusing $out_dir"
    publish
    printf '%s\n' "$out_dir"
    exit 0
fi

[[ $(id -u) == 0 ]] || die "must run as root (debootstrap, chroot, file ownership in the image)"
for tool in debootstrap mke2fs sfdisk qemu-img flock chroot; do
    command -v "$tool" >/dev/null || die "missing $tool (apt-get install debootstrap e2fsprogs fdisk qemu-utils util-linux)"
done

# The Kubernetes variant needs pkgs.k8s.io (and registry.k8s.io): find out now, not after debootstrap.
k8s_repo=
if [[ -n $k8s_version && -z $toolchain ]]; then
    command -v curl >/dev/null || die "missing curl (apt-get install curl)"
    k8s_repo="https://pkgs.k8s.io/core:/stable:/v$k8s_minor/deb/"
    if ! err=$(curl -fsS --max-time 20 -o /dev/null "${k8s_repo}Release.key" 2>&1); then
        die "cannot reach ${k8s_repo}Release.key from this host ($err). A Kubernetes node image needs" \
            "Internet access to pkgs.k8s.io (and registry.k8s.io unless KOA_PREPULL_IMAGES=0)." \
            "Build it on a connected machine and copy the qcow2 here, or use prebaked: false."
    fi
    if [[ $prepull == 1 ]] && ! err=$(curl -sS --max-time 20 -o /dev/null https://registry.k8s.io/v2/ 2>&1); then
        die "cannot reach https://registry.k8s.io from this host ($err); set KOA_PREPULL_IMAGES=0 to leave" \
            "the control-plane images to kubeadm at first init"
    fi
fi

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
containerd_pid=
cleanup() {
    if [[ -n $containerd_pid ]]; then kill "$containerd_pid" 2>/dev/null || true; wait "$containerd_pid" 2>/dev/null || true; fi
    remove_build_dir "$work"
}
trap cleanup EXIT

log "debootstrap $SUITE from $mirror into $rootfs"
mkdir -p "$cache_root/debootstrap-cache"
include=$(IFS=,; printf '%s' "${PACKAGES[*]}")
debootstrap --variant=minbase --include="$include" --cache-dir="$cache_root/debootstrap-cache" \
    "$SUITE" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    die "debootstrap failed"
}

# apt inside the build tree: the host's resolver for the moment (replaced by the stub link below),
# no service starts.
chroot_apt_begin() {
    rm -f "$rootfs/etc/resolv.conf"
    cp -L /etc/resolv.conf "$rootfs/etc/resolv.conf"
    printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
    chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
}
chroot_apt_end() { rm -f "$rootfs/usr/sbin/policy-rc.d"; }
in_chroot() { chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@"; }

# The packages left out, as the .debs a node would download at first boot (same apt defaults as
# templates/scripts/install-kubernetes.sh.j2: Recommends included).
if ((${#without[@]} > 0)); then
    log "downloading the left-out packages (${without[*]}) and what they pull in"
    chroot_apt_begin
    in_chroot apt-get update -q >"$work/apt.log" 2>&1 || { tail -n 20 "$work/apt.log" >&2; die "apt-get update in the image failed"; }
    in_chroot apt-get clean
    in_chroot apt-get install -y -q --download-only "${without[@]}" >>"$work/apt.log" 2>&1 ||
        { tail -n 20 "$work/apt.log" >&2; die "apt-get install --download-only ${without[*]} failed"; }
    mkdir -p "$work/debs"
    mv "$rootfs"/var/cache/apt/archives/*.deb "$work/debs/"
    chroot_apt_end
fi

# Pinned Kubernetes packages from pkgs.k8s.io, as install-kubernetes.sh.j2 does at boot.
# Image archives of the toolchain and of KOA_IMAGE_DIR into the image's containerd, unpacked into
# its overlayfs snapshots here: a layer left packed is unpacked by the kubelet's first container
# start, which then overran its 2-minute CreateContainer deadline under emulation.
import_archives() {
    local sock=$1 archive
    mkdir -p "$rootfs/run/koa-prepull/archives"
    mapfile -t toolchain_archives < <(awk -v d="$toolchain/pieces/images/" '{ print d $2 }' "$toolchain/pieces/images/images.txt")
    for archive in "${toolchain_archives[@]}" "${extra_archives[@]}"; do
        cp "$archive" "$rootfs/run/koa-prepull/archives/import.tar"
        in_chroot ctr --address "$sock" -n k8s.io images import --snapshotter overlayfs /run/koa-prepull/archives/import.tar \
            >>"$work/pull.log" 2>&1 || { tail -n 20 "$work/pull.log" >&2; die "importing $archive failed"; }
        rm "$rootfs/run/koa-prepull/archives/import.tar"
    done
}

# The same binaries, units and images from `make toolchain`: no pkgs.k8s.io, no registry.
install_from_toolchain() {
    log "installing kubelet, kubeadm, kubectl $k8s_version from $toolchain"
    local tool
    for tool in kubeadm kubelet kubectl crictl; do
        install -m 0755 "$toolchain/bin/$tool" "$rootfs/usr/bin/$tool"
    done
    # crictl talks to containerd without flags, as the cri-tools package sets it up.
    printf 'runtime-endpoint: unix:///run/containerd/containerd.sock\nimage-endpoint: unix:///run/containerd/containerd.sock\n' \
        >"$rootfs/etc/crictl.yaml"
    install -m 0644 "$repo_root/templates/image/kubelet.service" "$rootfs/lib/systemd/system/kubelet.service"
    install -d "$rootfs/lib/systemd/system/kubelet.service.d"
    install -m 0644 "$repo_root/templates/image/10-kubeadm.conf" "$rootfs/lib/systemd/system/kubelet.service.d/10-kubeadm.conf"
    # Debian installs the CNI plugins in /usr/lib/cni; containerd looks in /opt/cni/bin.
    install -d "$rootfs/opt/cni"
    ln -sfn /usr/lib/cni "$rootfs/opt/cni/bin"
}

if [[ -n $k8s_version && -n $toolchain ]]; then
    chroot_apt_begin
    install_from_toolchain
elif [[ -n $k8s_version ]]; then
    log "installing kubelet, kubeadm, kubectl $k8s_version from $k8s_repo"
    chroot_apt_begin
    keyring=/etc/apt/keyrings/kubernetes-apt-keyring.gpg
    # (&&, not a { } group: set -e does not apply inside a group whose status is tested)
    in_chroot apt-get update -q >"$work/apt.log" 2>&1 &&
        in_chroot apt-get install -y -q curl gpg >>"$work/apt.log" 2>&1 &&
        install -d -m 0755 "$rootfs/etc/apt/keyrings" &&
        in_chroot curl -fsSL -o /tmp/kubernetes-release.key "${k8s_repo}Release.key" &&
        in_chroot gpg --dearmor --yes -o "$keyring" /tmp/kubernetes-release.key &&
        rm -f "$rootfs/tmp/kubernetes-release.key" &&
        echo "deb [signed-by=$keyring] $k8s_repo /" >"$rootfs/etc/apt/sources.list.d/kubernetes.list" &&
        in_chroot apt-get update -q >>"$work/apt.log" 2>&1 ||
        { tail -n 20 "$work/apt.log" >&2; die "adding $k8s_repo to the image failed"; }
    available=$(in_chroot apt-cache madison kubeadm | awk '{ print $3 }')
    grep -q "^$k8s_version-" <<<"$available" ||
        die "kubeadm $k8s_version is not in $k8s_repo (available: $(tr '\n' ' ' <<<"$available"))"
    in_chroot apt-get install -y -q -o Dpkg::Options::=--force-confold \
        "kubelet=$k8s_version-*" "kubeadm=$k8s_version-*" "kubectl=$k8s_version-*" \
        kubernetes-cni cri-tools conntrack >>"$work/apt.log" 2>&1 ||
        { tail -n 20 "$work/apt.log" >&2; die "installing the Kubernetes $k8s_version packages failed"; }
    in_chroot apt-mark hold kubelet kubeadm kubectl >/dev/null
fi
if [[ -n $k8s_version ]]; then
    in_chroot systemctl enable kubelet >/dev/null
    [[ $(in_chroot kubeadm version -o short) == "v$k8s_version" ]] || die "kubeadm in the image is not v$k8s_version"

    if [[ $prepull == 1 ]]; then
        # containerd of the image, run in the build tree for the duration of the pulls. `content
        # fetch` stores the blobs and the image record (what the CRI lists) without unpacking
        # layers into snapshots, which needs overlay mounts; containerd's CRI unpacks an image on
        # its first use (the no-snapshot fallback of its WithNewSnapshot).
        mapfile -t images < <(in_chroot kubeadm config images list --kubernetes-version "v$k8s_version" 2>/dev/null)
        ((${#images[@]} > 0)) || die "kubeadm config images list gave no images"
        [[ -z $sandbox_image || " ${images[*]} " == *" $sandbox_image "* ]] || images+=("$sandbox_image")
        log "pre-pulling ${#images[@]} images into the image's containerd: ${images[*]}"
        sock=/run/koa-prepull/containerd.sock
        mkdir -p "$rootfs/run/koa-prepull"
        cat >"$rootfs/run/koa-prepull/config.toml" <<EOF
version = 2
root = "/var/lib/containerd"
state = "/run/koa-prepull/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$sock"
EOF
        mount -t proc proc "$rootfs/proc"
        chroot "$rootfs" containerd --config /run/koa-prepull/config.toml >"$work/containerd.log" 2>&1 &
        containerd_pid=$!
        ready=0
        for _ in $(seq 60); do
            if in_chroot ctr --address "$sock" version >/dev/null 2>&1; then ready=1; break; fi
            kill -0 "$containerd_pid" 2>/dev/null || { tail -n 20 "$work/containerd.log" >&2; die "containerd in the image exited"; }
            sleep 0.5
        done
        ((ready)) || { tail -n 20 "$work/containerd.log" >&2; die "containerd in the image did not answer within 30 s"; }
        if [[ -n $toolchain ]]; then
            import_archives "$sock"
        else
            for ref in "${images[@]}"; do
                in_chroot ctr --address "$sock" -n k8s.io content fetch --platform linux/amd64 "$ref" >>"$work/pull.log" 2>&1 ||
                    { tail -n 20 "$work/pull.log" >&2; die "pulling $ref failed"; }
            done
        fi
        listed=$(in_chroot ctr --address "$sock" -n k8s.io images list -q)
        # shellcheck disable=SC2206 # a list of references, split on spaces
        [[ -z $toolchain ]] || images+=(${KOA_REQUIRED_IMAGES:-})
        for ref in "${images[@]}"; do
            grep -qxF "$ref" <<<"$listed" || die "$ref is not in the image's containerd after the pre-pull"
        done
        printf '%s\n' "$listed" >&2
        kill "$containerd_pid"
        wait "$containerd_pid" || true
        containerd_pid=
        umount "$rootfs/proc"
        rm -rf "$rootfs/run/koa-prepull"
    fi
    chroot_apt_end
fi

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
  "variant": "$variant",
  "kubernetes_version": "$k8s_version",
  "prepulled_images": $prepull,
  "left_out_packages": "${without[*]}",
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
if [[ -d $work/debs ]]; then mv "$work/debs" "$out_dir/debs"; fi
mv "$work/image.json" "$out_dir/image.json"  # last: its presence marks a complete image
log "built $out_dir in $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.0f", b - a }') s"
publish
printf '%s\n' "$out_dir"
