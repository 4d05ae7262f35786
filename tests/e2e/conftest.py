"""Fixtures of `make e2e`: libvirtd, /dev/kvm, the stack and the report under build/e2e/.

Needs root, the toolchain with its registered plugins and language host (`make toolchain`,
`make plugins`) and the offline node image of the e2e stack (`make image STACK=e2e`); the Makefile
target checks all of it first. A step that cannot run is skipped with the reason, never passed.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import report as report_module
from tests.e2e.stack import BUILD, REPO, STACK, E2EStack, toolchain_home
from tests.vm import libvirt_host as lh
from tools import offline

IMAGE = REPO / "build" / "node-image.qcow2"
PREFIX = "e2e-"
NETWORK = f"koa-{STACK}"
POOL = f"koa-{STACK}"
POOL_PATH = Path(f"/var/lib/libvirt/images/kube-on-air-{STACK}")

# Filled as the steps run; written by pytest_terminal_summary.
REPORT: dict[str, Any] = {}
_STACK: list[E2EStack] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _STACK:
        return
    data = report_module.build(_STACK[0], REPORT)
    BUILD.mkdir(parents=True, exist_ok=True)
    (BUILD / "report.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    terminalreporter.section("e2e report")
    for line in report_module.table(data).splitlines():
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"(written to {BUILD / 'report.json'})")


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keeps each step's outcome on its item, for the in-order skip of the steps after a failure."""
    outcome = yield
    result = outcome.get_result()
    if result.when == "call":
        item.rep_call = result  # type: ignore[attr-defined]


def stack_domains() -> list[str]:
    return [name for name in lh.virsh("list", "--all", "--name").split() if name.startswith(PREFIX)]


def leftovers() -> dict[str, Any]:
    """Everything of the stack that libvirt or the disk still holds."""
    networks = [n for n in lh.virsh("net-list", "--all", "--name").split() if n == NETWORK]
    pools = [p for p in lh.virsh("pool-list", "--all", "--name").split() if p == POOL]
    files = sorted(str(p) for p in POOL_PATH.iterdir()) if POOL_PATH.exists() else []
    return {
        "domains": stack_domains(),
        "networks": networks,
        "pools": pools,
        "pool_dir": POOL_PATH.exists(),
        "files": files,
    }


def pool_volumes() -> list[str]:
    return [line.split()[0] for line in lh.virsh("vol-list", POOL).splitlines() if line.split()]


def wipe_leftovers() -> None:
    """A run killed earlier may leave the stack behind: start from nothing, as a new user does."""
    for domain in stack_domains():
        subprocess.run(["virsh", "destroy", domain], capture_output=True, check=False)
        subprocess.run(["virsh", "undefine", domain], capture_output=True, check=False)
    subprocess.run(["virsh", "net-destroy", NETWORK], capture_output=True, check=False)
    subprocess.run(["virsh", "net-undefine", NETWORK], capture_output=True, check=False)
    if POOL in lh.virsh("pool-list", "--all", "--name").split():
        for volume in pool_volumes():
            subprocess.run(["virsh", "vol-delete", volume, "--pool", POOL], capture_output=True, check=False)
        subprocess.run(["virsh", "pool-destroy", POOL], capture_output=True, check=False)
        subprocess.run(["virsh", "pool-undefine", POOL], capture_output=True, check=False)
    subprocess.run(["rm", "-rf", str(POOL_PATH)], check=False)


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[lh.LibvirtHost]:
    missing = lh.missing_tools()
    if missing:
        pytest.fail(f"make e2e needs {', '.join(missing)}: apt-get install {lh.APT_PACKAGES}")
    with lh.LibvirtHost() as host:
        yield host


@pytest.fixture(scope="session")
def kvm_for_qemu() -> Iterator[None]:
    with lh.kvm_device_for_qemu() as changed:
        REPORT["dev_kvm"] = changed
        yield


@pytest.fixture(scope="session")
def bridge_netfilter_off() -> Iterator[None]:
    with lh.bridged_frames_past_iptables() as changed:
        REPORT["bridge_nf_call_iptables"] = changed
        yield


@pytest.fixture(scope="session")
def e2e(libvirtd: lh.LibvirtHost, kvm_for_qemu: None, bridge_netfilter_off: None) -> E2EStack:
    home = toolchain_home()
    lacking = offline.registered_problems(home)
    if lacking:
        pytest.fail(f"missing for a real pulumi up: {'; '.join(lacking)}")
    if not IMAGE.exists():
        pytest.fail(f"no node image at {IMAGE}: make image STACK={STACK}")
    wipe_leftovers()
    stack = E2EStack(home)
    stack.prepare(IMAGE)
    _STACK.append(stack)
    return stack
