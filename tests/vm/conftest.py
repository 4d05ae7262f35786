"""Fixtures for the node VM boot test (issue 4): image, rendered stack, libvirt lab, figures.

Run as root on a machine with QEMU and libvirt: `python -m pytest -m vm tests/vm -v`.
Knobs: KOA_VM_ACCEL=kvm|qemu (skip the KVM probe), KOA_VM_BOOT=disk|kernel (GRUB from the disk, the
default, like the program's domains; or direct kernel boot), KOA_VM_CACHE (image cache root).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.vm import libvirt_host as lh
from tests.vm.guest import BootWatch, Ssh

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BUILD_SCRIPT = HERE.parents[1] / "tools" / "build-image.sh"
FIGURES_PATH = REPO / "build" / "vm-figures.json"
STACK = "air"
GIB = 1024**3

# Filled by the fixtures, written to build/vm-figures.json and printed after the run.
FIGURES: dict[str, Any] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vm: boots a real node VM under libvirt (root, QEMU, minutes)")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    FIGURES_PATH.parent.mkdir(parents=True, exist_ok=True)
    FIGURES_PATH.write_text(json.dumps(FIGURES, indent=2, sort_keys=True) + "\n")
    terminalreporter.section("node VM figures")
    for line in json.dumps(FIGURES, indent=2, sort_keys=True).splitlines():
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"(written to {FIGURES_PATH})")


# --- inputs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaseImage:
    directory: Path
    qcow2: Path
    kernel: Path
    initrd: Path
    info: dict[str, Any]


@dataclass(frozen=True)
class Rendered:
    directory: Path
    summary: dict[str, Any]
    key: Path
    known_hosts: Path  # the file the program writes and tells users to ssh with (knownHostsFile)

    def node(self, name: str) -> dict[str, Any]:
        for node in self.summary["nodes"]:
            if node["name"] == name:
                return dict(node)
        raise KeyError(f"{name} is not in {self.directory / 'summary.json'}")

    def seed_dir(self, name: str) -> Path:
        return self.directory / "nodes" / name

    def wait_ready_script(self, name: str) -> str:
        return (self.directory / "scripts" / f"{name}-wait-ready.sh").read_text()


@pytest.fixture(scope="session")
def vm_prereqs() -> None:
    missing = lh.missing_tools()
    if missing:
        pytest.skip(f"VM boot test needs {', '.join(missing)}: apt-get install {lh.APT_PACKAGES}")
    if os.geteuid() != 0:
        pytest.fail("the VM boot test must run as root (debootstrap, libvirtd, /var/lib/libvirt/images)")


def build_image(figures_key: str, env: dict[str, str] | None = None) -> BaseImage:
    """Run build-image.sh (a cached image comes back in about a second); figures go to FIGURES[figures_key].

    `env` selects a variant of the image (e.g. {"KOA_IMAGE_WITHOUT": "containerd"}), cached separately.
    """
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
        env={**os.environ, **(env or {})},
    )
    seconds = round(time.monotonic() - started, 1)
    if proc.returncode != 0:
        pytest.fail(f"build-image.sh {env or ''} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    directory = Path(proc.stdout.strip().splitlines()[-1])
    info = json.loads((directory / "image.json").read_text())
    qcow2 = directory / "base.qcow2"
    FIGURES[figures_key] = {
        "cache_dir": str(directory),
        "reused_from_cache": "reusing" in proc.stderr,
        "this_run_seconds": seconds,
        "cold_build_seconds": info["build_seconds"],
        "virtual_size_bytes": info["virtual_size_bytes"],
        "qcow2_on_disk_bytes": qcow2.stat().st_blocks * 512,
        "root_fs_size_bytes": info["fs_size_bytes"],
        "kernel": info["kernel_version"],
    }
    return BaseImage(directory, qcow2, directory / "vmlinuz", directory / "initrd.img", info)


@pytest.fixture(scope="session")
def base_image(vm_prereqs: None) -> BaseImage:
    return build_image("image")


@pytest.fixture(scope="session")
def rendered(vm_prereqs: None, tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    try:
        from tools.render import render_stack
    except ImportError as err:
        pytest.fail(f"the VM test renders its inputs with tools.render.render_stack(stack, overrides, out_dir): {err}")

    tmp = tmp_path_factory.mktemp("stack")
    key = tmp / "id_ed25519"
    lh.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kube-on-air-vm-test", "-f", str(key)])
    host_keys = tmp / "host-keys"
    overrides = {"prebaked": "true", "sshKeyPath": str(key), "hostKeyDir": str(host_keys), "domainType": "qemu"}
    out = render_stack(STACK, overrides, tmp / "render")
    summary = json.loads((out / "summary.json").read_text())
    return Rendered(out, summary, key, host_keys / "known_hosts")


@pytest.fixture(scope="session")
def domain_type(base_image: BaseImage) -> str:
    chosen, why = lh.detect_domain_type(base_image.kernel, base_image.initrd)
    FIGURES["accelerator"] = {"domain_type": chosen, "kvm_or_tcg": "kvm" if chosen == "kvm" else "tcg", "why": why}
    return chosen


# --- the lab: daemons + network + pool + base volume ------------------------------------------


@dataclass
class Booted:
    """A running node VM and the handles a test needs."""

    watch: BootWatch
    node: dict[str, Any]
    overlay: Path
    figures: dict[str, Any]

    @property
    def ssh(self) -> Ssh:
        return self.watch.ssh


@dataclass
class Lab:
    host: lh.LibvirtHost
    pool: str
    base_volume: Path
    network: lh.NetworkSpec
    image: BaseImage
    rendered: Rendered
    domain_type: str
    workdir: Path
    boot_mode: str = field(default_factory=lambda: os.environ.get("KOA_VM_BOOT", "disk"))

    @contextmanager
    def boot(self, node: dict[str, Any], seed_dir: Path, label: str | None = None) -> Iterator[Booted]:
        """Overlay + seed + DHCP host + domain for `node`; everything is removed again on exit."""
        label = label or node["name"]
        mark = self.host.mark()
        figures: dict[str, Any] = FIGURES.setdefault("nodes", {}).setdefault(label, {})
        try:
            overlay = self.host.create_overlay(
                self.pool, f"{node['name']}.qcow2", self.base_volume, int(node["disk_gib"]) * GIB
            )
            figures["overlay_bytes_at_creation"] = overlay.stat().st_blocks * 512
            iso = lh.make_seed_iso(seed_dir, self.workdir / f"{label}-seed.iso")
            self.host.upload_volume(self.pool, f"{node['name']}-seed.iso", iso, "raw")
            self.host.add_dhcp_host(self.network.name, node["mac"], node["name"], node["ip"])
            serial_log = self.workdir / f"{label}-console.log"
            kernel_boot = None
            if self.boot_mode == "kernel":
                # Next to the volumes: libvirt's QEMU user cannot read the cache under /root.
                kernel = self.base_volume.parent / f"{label}-vmlinuz"
                initrd = self.base_volume.parent / f"{label}-initrd.img"
                for source, dest in ((self.image.kernel, kernel), (self.image.initrd, initrd)):
                    shutil.copyfile(source, dest)
                    dest.chmod(0o644)
                    self.host.on_close(f"remove {dest}", dest.unlink)
                kernel_boot = lh.KernelBoot(kernel, initrd, "root=LABEL=rootfs ro console=tty0 console=ttyS0,115200")
            spec = lh.DomainSpec(
                name=node["libvirt_name"],
                domain_type=self.domain_type,
                vcpu=int(node["vcpu"]),
                memory_mib=int(node["memory_mib"]),
                pool=self.pool,
                disk_volume=f"{node['name']}.qcow2",
                seed_volume=f"{node['name']}-seed.iso",
                network=self.network.name,
                mac=node["mac"],
                serial_log=serial_log,
                kernel_boot=kernel_boot,
            )
            started = self.host.start_domain(spec, self.workdir)
            figures.update(
                {
                    "domain_type": self.domain_type,
                    "boot": self.boot_mode,
                    "vcpu": spec.vcpu,
                    "memory_mib": spec.memory_mib,
                }
            )
            watch = BootWatch(
                name=spec.name,
                ssh=Ssh(self.rendered.summary["ssh_user"], node["ip"], self.rendered.key, self.rendered.known_hosts),
                serial_log=serial_log,
                started=started,
                domain_state=lambda: self.host.domain_state(spec.name),
                timings=figures,
            )
            yield Booted(watch, node, overlay, figures)
        finally:
            errors_before = len(self.host.cleanup_errors)
            self.host.close(down_to=mark)
            new_errors = self.host.cleanup_errors[errors_before:]
            if new_errors:
                raise lh.HostError("cleanup of " + label + " failed: " + "; ".join(new_errors))


@pytest.fixture(scope="session")
def lab(
    rendered: Rendered, base_image: BaseImage, domain_type: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Lab]:
    workdir = tmp_path_factory.mktemp("lab")
    net = rendered.summary["network"]
    network = lh.NetworkSpec(
        name=net["name"],
        bridge=net["bridge"],
        cidr=net["cidr"],
        gateway=net["gateway"],
        domain=net["domain"],
        dns_hosts=tuple(lh.DnsHost(h["hostname"], h["ip"]) for h in net["dns_hosts"]),
    )
    pool = f"koa-vmtest-{secrets.token_hex(3)}"
    with lh.LibvirtHost() as host:
        FIGURES["libvirt_daemons_started_by_test"] = list(host.started_daemons)
        host.create_network(network, workdir)
        host.create_pool(pool)
        started = time.monotonic()
        # The program uploads its base image into the pool too (Volume(source=...)); a copy in the
        # pool is also what libvirt's QEMU user can read without touching the cache's permissions.
        base_volume = host.upload_volume(pool, "base.qcow2", base_image.qcow2, "qcow2")
        FIGURES.setdefault("image", {})["upload_to_pool_seconds"] = round(time.monotonic() - started, 1)
        yield Lab(host, pool, base_volume, network, base_image, rendered, domain_type, workdir)
    if host.cleanup_errors:
        raise lh.HostError("libvirt cleanup failed: " + "; ".join(host.cleanup_errors))
