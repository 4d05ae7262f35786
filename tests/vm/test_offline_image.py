"""The offline node image: `make image` from the toolchain, booted as work11 from the program's prebaked seed.

On a host that reaches neither pkgs.k8s.io nor registry.k8s.io, a `prebaked: true` node must bring
everything kubeadm needs: the pinned kubeadm/kubelet/kubectl with their units, and every image
`kubeadm config images list` names, already in containerd's k8s.io namespace. Needs `make toolchain`;
without it this test is skipped with the reason.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tests.vm.conftest import FIGURES, BaseImage, Lab, Rendered, build_image
from tools import toolchain as build

pytestmark = pytest.mark.vm

NODE = "work11"


@pytest.fixture(scope="module")
def toolchain() -> Path:
    current = build.CACHE / "current"
    if not (current / "pieces" / "images" / "images.txt").exists():
        pytest.skip(f"no toolchain images at {current}: run `make toolchain` to test the offline image")
    return current.resolve()


@pytest.fixture(scope="module")
def offline_image(vm_prereqs: None, toolchain: Path) -> BaseImage:
    env = {"KOA_KUBERNETES_VERSION": build.kubernetes_version(), "KOA_TOOLCHAIN": str(toolchain)}
    return build_image("image_offline", env)


def test_offline_image_node_has_kubeadm_and_every_image(
    lab: Lab, rendered: Rendered, offline_image: BaseImage, toolchain: Path
) -> None:
    version = f"v{build.kubernetes_version()}"
    mark = lab.host.mark()
    try:
        volume = lab.host.upload_volume(lab.pool, "base-offline.qcow2", offline_image.qcow2, "qcow2")
        offline_lab = dataclasses.replace(lab, base_volume=volume, image=offline_image)
        with offline_lab.boot(rendered.node(NODE), rendered.seed_dir(NODE), label=f"{NODE}-offline") as booted:
            booted.watch.wait_ready()
            ssh = booted.ssh
            kubeadm_version = ssh.out("kubeadm version -o short").strip()
            wanted = ssh.out(f"kubeadm config images list --kubernetes-version {version}").split()
            present = ssh.out("sudo ctr -n k8s.io images list -q").split()
            kubelet_enabled = ssh.out("systemctl is-enabled kubelet").strip()
            sandbox = ssh.out("sudo containerd config dump | grep sandbox_image").split("=", 1)[1].strip().strip('"')
            cni = ssh.out("ls /opt/cni/bin/").split()
            figures = {**booted.figures}
    finally:
        lab.host.close(down_to=mark)

    assert kubeadm_version == version
    assert wanted, "kubeadm listed no images"
    assert [ref for ref in wanted if ref not in present] == []
    assert sandbox in present  # the pause containerd sandboxes pods with is there too
    assert kubelet_enabled == "enabled"
    assert {"bridge", "host-local", "loopback", "portmap"} <= set(cni)
    agnhost = (toolchain / "pieces" / "agnhost" / "VERSION").read_text().strip()
    assert f"registry.k8s.io/e2e-test-images/agnhost:{agnhost}" in present
    FIGURES["offline_image"] = {
        "images_wanted_by_kubeadm": wanted,
        "images_present": sorted(present),
        "cloud_init_done_seconds": figures.get("cloud_init_done_seconds"),
    }
    print(json.dumps(FIGURES["offline_image"], indent=2))
