"""Issue 5: how much first-boot time a pre-baked image saves, measured on a real node VM.

Two boots of work11 from the program's own prebaked seed (`render_stack("air", {"prebaked": "true"})`):

- pre-baked: the test image, containerd already inside (the figure of test_node_vm.py's work11 boot
  in this run, or a boot here when that file did not run or failed before checking containerd);
- bare: the same image built without containerd (`KOA_IMAGE_WITHOUT=containerd`), and one step
  added to the seed that installs containerd at boot before `systemctl restart containerd`, from a
  local apt repository on the libvirt network's gateway holding exactly the .debs apt would fetch
  into that image (containerd, runc, criu and criu's dependencies: runc recommends criu, and the
  program's install script keeps apt's Recommends).

What the non-prebaked path really installs also needs pkgs.k8s.io (kubelet, kubeadm, kubectl,
kubernetes-cni, cri-tools), which is not reachable here; and its `apt-get update` reads the full
Debian and Kubernetes indexes over the Internet instead of a four-package local one. So the saving
measured here is a lower bound of what `prebaked: true` saves.

Figures go to build/vm-figures-prebaked.json (and into the run's node VM figures).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.vm.conftest import FIGURES, REPO, BaseImage, Booted, Lab, Rendered, build_image
from tests.vm.guest import Ssh

pytestmark = pytest.mark.vm

NODE = "work11"
LEFT_OUT = "containerd"
FIGURES_PATH = REPO / "build" / "vm-figures-prebaked.json"
SOURCE_LIST = "/etc/apt/koa-local.list"
TIMES_FILE = "/var/log/koa-containerd-install.times"
# The added runcmd step. apt reads only the local list (the image's sources.list names the Debian
# mirror, which the VM must not use); --force-confold keeps the containerd config.toml that the
# seed's write_files put there, as templates/scripts/install-kubernetes.sh.j2 does.
APT_LOCAL = f"-o Dir::Etc::SourceList={SOURCE_LIST} -o Dir::Etc::SourceParts=- -o APT::Get::List-Cleanup=0"
INSTALL_STEP = (
    "set -e; start=$(date +%s.%N); export DEBIAN_FRONTEND=noninteractive; "
    f"apt-get -q {APT_LOCAL} update; "
    f"apt-get install -y -q {APT_LOCAL} -o Dpkg::Options::=--force-confold {LEFT_OUT}; "
    f'echo "$start $(date +%s.%N)" >{TIMES_FILE}'
)


@pytest.fixture(scope="module")
def bare_image(vm_prereqs: None) -> BaseImage:
    image = build_image(f"image_without_{LEFT_OUT}", {"KOA_IMAGE_WITHOUT": LEFT_OUT})
    if not list((image.directory / "debs").glob("*.deb")):
        pytest.fail(f"{image.directory}/debs holds no .debs for {LEFT_OUT}")
    return image


# --- the local apt repository -------------------------------------------------------------------


def index_repository(debs: Path, dest: Path) -> Path:
    """A flat apt repository (`deb [trusted=yes] URL ./`) of the image's left-out .debs."""
    if shutil.which("dpkg-scanpackages") is None:
        pytest.skip("the saving test indexes its local apt repository with dpkg-scanpackages: apt-get install dpkg-dev")
    shutil.copytree(debs, dest)
    packages = subprocess.run(
        ["dpkg-scanpackages", "--multiversion", ".", "/dev/null"],
        cwd=dest,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    (dest / "Packages").write_text(packages)
    return dest


@dataclasses.dataclass
class Served:
    url: str
    requests: list[str]


@contextmanager
def serve(directory: Path, address: str) -> Iterator[Served]:
    """Serve `directory` over HTTP on `address` (the network's gateway) only, on a free port."""
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            requests.append(f"{self.requestline} {code}")  # 'GET /path HTTP/1.1 200'

        def log_message(self, format: str, *args: Any) -> None:
            pass  # no stderr noise for apt's probes of compressed indexes (404s)

    server = ThreadingHTTPServer((address, 0), functools.partial(Handler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, name="koa-local-apt", daemon=True)
    thread.start()
    try:
        yield Served(f"http://{address}:{server.server_address[1]}/", requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def seed_installing_at_boot(rendered: Rendered, dest: Path, repo_url: str) -> Path:
    """NODE's rendered prebaked seed plus the two things a bare image needs: the apt source and the install step.

    The step goes right before `systemctl restart containerd`, where the non-prebaked seed runs
    koa-install-kubernetes.
    """
    shutil.copytree(rendered.seed_dir(NODE), dest)
    user_data = dest / "user-data"
    text = user_data.read_text()
    assert text.startswith("#cloud-config\n")
    config = yaml.safe_load(text)
    config["write_files"].append(
        {"path": SOURCE_LIST, "permissions": "0644", "content": f"deb [trusted=yes] {repo_url} ./\n"}
    )
    runcmd: list[Any] = config["runcmd"]
    restart = ["systemctl", "restart", "containerd"]
    assert restart in runcmd, runcmd
    runcmd.insert(runcmd.index(restart), ["sh", "-c", INSTALL_STEP])
    user_data.write_text("#cloud-config\n" + yaml.safe_dump(config, sort_keys=False))
    return dest


# --- checks and boots ---------------------------------------------------------------------------


def assert_containerd_active(ssh: Ssh) -> None:
    assert ssh.out("systemctl is-active containerd").strip() == "active"
    assert "SystemdCgroup = true" in ssh.out("sudo containerd config dump")


@contextmanager
def booted_node(lab: Lab, rendered: Rendered, seed: Path, label: str) -> Iterator[Booted]:
    with lab.boot(rendered.node(NODE), seed, label=label) as booted:
        booted.watch.wait_ready()
        booted.figures["overlay_bytes_after_boot"] = booted.overlay.stat().st_blocks * 512
        assert_containerd_active(booted.ssh)
        yield booted


def prebaked_figure(lab: Lab, rendered: Rendered) -> dict[str, Any]:
    """cloud-init done seconds of the pre-baked image: test_node_vm.py's boot in this run, else one here."""
    earlier = FIGURES.get("nodes", {}).get(NODE, {})
    if (
        earlier.get("containerd_active")
        and "cloud_init_done_seconds" in earlier
        and not os.environ.get("KOA_VM_REMEASURE")
    ):
        return {**earlier, "measured_by": "test_node_vm.py (same run, same node, seed and image)"}
    with booted_node(lab, rendered, rendered.seed_dir(NODE), f"{NODE}-prebaked") as booted:
        return {**booted.figures, "measured_by": "test_prebaked_saving.py"}


def test_prebaked_image_saves_first_boot_time(
    lab: Lab, rendered: Rendered, bare_image: BaseImage, tmp_path: Path
) -> None:
    prebaked = prebaked_figure(lab, rendered)

    repo = index_repository(bare_image.directory / "debs", tmp_path / "repo")
    debs = sorted(p.name for p in repo.glob("*.deb"))
    mark = lab.host.mark()
    try:
        base_volume = lab.host.upload_volume(lab.pool, f"base-without-{LEFT_OUT}.qcow2", bare_image.qcow2, "qcow2")
        bare_lab = dataclasses.replace(lab, base_volume=base_volume, image=bare_image)
        with serve(repo, lab.network.gateway) as served:
            seed = seed_installing_at_boot(rendered, tmp_path / "seed", served.url)
            with booted_node(bare_lab, rendered, seed, f"{NODE}-bare-{LEFT_OUT}-at-boot") as booted:
                start, end = (float(x) for x in booted.ssh.out(f"cat {TIMES_FILE}").split())
                installed = booted.ssh.out("dpkg-query -W -f='${Package} ' containerd runc").split()
                bare = {**booted.figures, "install_step_seconds": round(end - start, 1)}
        fetched = [r for r in served.requests if r.startswith("GET ") and ".deb " in r and r.endswith(" 200")]
    finally:
        lab.host.close(down_to=mark)

    assert installed == ["containerd", "runc"]
    assert any("/containerd_" in r for r in fetched), served.requests  # really from the local repository

    saving = round(bare["cloud_init_done_seconds"] - prebaked["cloud_init_done_seconds"], 1)
    keys = ("cloud_init_done_seconds", "ssh_banner_seconds", "ssh_login_seconds", "overlay_bytes_after_boot")
    figures = {
        "node": NODE,
        "domain_type": lab.domain_type,
        "boot": lab.boot_mode,
        "prebaked": {
            "image": FIGURES.get("image", {}),
            "measured_by": prebaked["measured_by"],
            **{k: prebaked[k] for k in keys if k in prebaked},
        },
        "bare_plus_install_at_boot": {
            "image": FIGURES.get(f"image_without_{LEFT_OUT}", {}),
            "installed_at_boot": debs,
            "debs_bytes": sum(p.stat().st_size for p in repo.glob("*.deb")),
            "debs_fetched_from_local_repository": len(fetched),
            "install_step_seconds": bare["install_step_seconds"],
            **{k: bare[k] for k in keys if k in bare},
        },
        "saving_seconds": saving,
        "saving_percent_of_bare_boot": round(100 * saving / bare["cloud_init_done_seconds"], 1),
        "note": "lower bound: containerd only, from a local repository; pkgs.k8s.io packages not reachable here",
    }
    FIGURES["prebaked_saving"] = {k: figures[k] for k in ("saving_seconds", "saving_percent_of_bare_boot")}
    FIGURES_PATH.parent.mkdir(parents=True, exist_ok=True)
    FIGURES_PATH.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    print(json.dumps(figures, indent=2, sort_keys=True))
