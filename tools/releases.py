"""`make release VERSION=1.34.4`: another Kubernetes release for upgrading a running cluster offline.

The toolchain builds the one version the node image carries (its cache key pins it). An upgrade needs
the binaries and images of the target release too. Each release is built from the Go module proxy
into releases/v<version>/ beside the toolchain, keyed by nothing but the version, so building one
never touches the toolchain a cluster was made from:

    pieces/kubernetes/   kubeadm, kubelet, kubectl and the control-plane binaries, version-stamped
    pieces/images/       the images the release's own kubeadm lists (`config images list`), as
                         docker-archives, with images.txt (reference, archive) as the toolchain has
    release.json         written last: what was built, from which module, in how long

An image whose reference the toolchain already holds (etcd, CoreDNS and pause stay the same across
patch releases) is copied from it, not built again. The upgrade steps stream this directory to the
nodes (components/upgrade.py).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path

from tools import toolchain

RELEASES = toolchain.CACHE / "releases"
VERSION_FORM = re.compile(r"^1\.\d+\.\d+$")
CONTROL_PLANE = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")


def release_home(version: str) -> Path:
    return RELEASES / f"v{version}"


def is_built(version: str) -> bool:
    return (release_home(version) / "release.json").is_file()


# Built from the Go module proxy when the release's kubeadm names a version the toolchain lacks (a
# new minor's etcd and CoreDNS); pause, a C file of the Kubernetes tree, only ever comes from the toolchain.
BUILDS = {"etcd": toolchain.build_etcd, "coredns": toolchain.build_coredns}


def release_images(version: str, wanted: dict[str, str], core: Path) -> list[toolchain.Image]:
    """The images to build for this release: its own Kubernetes images, and the others its kubeadm
    names (`wanted`: image name -> tag) that the core toolchain does not hold already."""
    k8s = f"v{version}"
    images = [
        toolchain.Image(f"registry.k8s.io/{c}:{k8s}", f"kubernetes/{c}", f"/usr/local/bin/{c}", False)
        for c in CONTROL_PLANE
    ]
    images.append(
        toolchain.Image(
            f"registry.k8s.io/kube-proxy:{k8s}",
            "kubernetes/kube-proxy",
            "/usr/local/bin/kube-proxy",
            False,
            toolchain.PROXY_PACKAGES,
        )
    )
    others = {
        "etcd": toolchain.Image(f"registry.k8s.io/etcd:{wanted['etcd']}", "etcd/etcd", "/usr/local/bin/etcd", False),
        "coredns": toolchain.Image(
            f"registry.k8s.io/coredns/coredns:{wanted['coredns']}", "coredns/coredns", "/coredns", True
        ),
        "pause": toolchain.Image(f"registry.k8s.io/pause:{wanted['pause']}", "pause/pause", "/pause", True),
    }
    held = core_archives(core)
    missing = [name for name, image in others.items() if image.ref not in held]
    if "pause" in missing:
        raise toolchain.Unavailable(
            f"kubeadm v{version} wants {others['pause'].ref}, which the toolchain at {core} does not hold; "
            "build a toolchain of that minor (kubernetesVersion) first"
        )
    return images + [others[name] for name in missing]


def build_other_pieces(ctx: toolchain.Context, images: list[toolchain.Image], work: Path) -> None:
    """etcd and CoreDNS at the versions this release's kubeadm names, where an image needs them."""
    for name, build in BUILDS.items():
        if any(i.binary == f"{name}/{name}" for i in images):
            out = ctx.home / "pieces" / name
            out.mkdir(parents=True, exist_ok=True)
            build(ctx, work / name, out)


def core_archives(core: Path) -> dict[str, Path]:
    """Reference -> archive of every image the core toolchain built."""
    listing = core / "pieces" / "images" / "images.txt"
    rows = (line.split() for line in listing.read_text().splitlines() if line.strip())
    return {ref: core / "pieces" / "images" / name for ref, name in rows}


def build_release(version: str, core: Path) -> dict[str, object]:
    home = release_home(version)
    out, images_out, work = home / "pieces" / "kubernetes", home / "pieces" / "images", home / "work"
    built = home / "pieces" / "kubernetes.json"  # the binaries' record: a killed build keeps them
    if not built.exists():
        shutil.rmtree(home, ignore_errors=True)
    for folder in (out, images_out, work / "images"):
        folder.mkdir(parents=True, exist_ok=True)
    ctx = toolchain.Context(home, home / "build.log")
    started = time.monotonic()
    if not built.exists():
        source = toolchain.build_kubernetes(ctx, work / "kubernetes", out, f"v{version}")
        built.write_text(json.dumps({"source": source, "seconds": round(time.monotonic() - started)}) + "\n")
    source = json.loads(built.read_text())["source"]
    ctx.versions = toolchain.images_kubeadm_expects(out / "kubeadm", f"v{version}")
    images = release_images(version, ctx.versions, core)
    build_other_pieces(ctx, images, work)
    for image in images:
        toolchain.build_image(ctx, work / "images", images_out, image)
    wanted = set(ctx.versions.items())
    held = core_archives(core)
    # etcd, CoreDNS and pause as the toolchain made them, when this release's kubeadm names the same.
    shared = [ref for ref in held if tuple(ref.rsplit("/", 1)[1].split(":", 1)) in wanted]
    for ref in shared:
        shutil.copy2(held[ref], images_out / held[ref].name)
    listed = [(i.ref, toolchain.archive_name(i.ref)) for i in images] + [(r, held[r].name) for r in shared]
    (images_out / "images.txt").write_text("".join(f"{ref} {name}\n" for ref, name in listed))
    shutil.rmtree(work, ignore_errors=True)
    record = {
        "version": version,
        "source": source,
        "core": str(core.resolve()),
        "build_seconds": round(time.monotonic() - started),
        "outputs": {p.name: toolchain.sha256(p) for p in sorted(out.iterdir())},
        "images": [ref for ref, _ in listed],
    }
    (home / "release.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("version", help="a full Kubernetes version such as 1.34.4")
    parser.add_argument("--toolchain", type=Path, default=toolchain.CACHE / "current")
    args = parser.parse_args(argv)
    version = args.version.removeprefix("v")
    if not VERSION_FORM.match(version):
        print(f"[release] {args.version}: want a full version such as 1.34.4")
        return 1
    if is_built(version):
        print(f"[release] v{version} cached at {release_home(version)}")
        return 0
    try:
        record = build_release(version, args.toolchain)
    except toolchain.Unavailable as gone:
        print(f"[release] v{version} UNAVAILABLE: {gone}")
        return 2
    print(f"[release] v{version} built in {record['build_seconds']} s at {release_home(version)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
