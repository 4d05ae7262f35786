"""The real Pulumi engine (the toolchain's CLI) runs the program: `make test-toolchain`.

What this proves: the engine applies Pulumi.yaml's types and defaults, the program's config checks,
preflight and host keys run under it, and the component tree reaches the providers. It stops where
the toolchain stops: a provider plugin the Go module proxy does not serve cannot be loaded, and the
test accepts exactly those failures, read from the toolchain's manifest.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.toolchain.engine import Preview, preview_in_child
from tests.vm import libvirt_host as lh
from tools import offline
from tools import toolchain as build

pytestmark = pytest.mark.toolchain


@pytest.fixture(scope="module")
def libvirtd() -> Iterator[None]:
    """Preflight asks libvirtd; started here (no systemd) unless it already answers, stopped after.
    The host is made as the preflight's advice says for the run, as make e2e does."""
    missing = lh.missing_tools()
    if missing:
        pytest.fail(f"the engine test needs libvirt: apt-get install {lh.APT_PACKAGES}")
    with lh.LibvirtHost(), lh.kvm_device_for_qemu(), lh.bridged_frames_past_iptables():
        yield


@pytest.fixture(scope="module")
def unavailable_plugins() -> set[str]:
    """Plugins not registered yet (`make plugins` takes them from a directory)."""
    home = (build.CACHE / "current").resolve()
    return {p.name for p in offline.offline_plugins() if not build.plugin_registered(home, p.name, p.version)}


def missing_plugins(result: Preview) -> set[str]:
    return set(re.findall(r"no resource plugin 'pulumi-resource-([a-z]+)' found", result.output))


def test_the_engine_runs_the_program_up_to_the_providers(
    libvirtd: None, ssh_key: Path, tmp_path: Path, unavailable_plugins: set[str]
) -> None:
    result = preview_in_child("air", {"domainType": "qemu", "sshKeyPath": str(ssh_key), "hostKeyDir": str(tmp_path)})
    assert "kube-on-air:cluster:Cluster kube-on-air" in result.output, result.output
    assert (tmp_path / "known_hosts").exists()  # host keys were made under the real engine
    if result.error is None:
        assert not unavailable_plugins
        return
    # The only acceptable failure: a provider plugin the toolchain could not build.
    assert missing_plugins(result), result.output
    assert missing_plugins(result) <= unavailable_plugins, result.output
    errors = [line for line in result.output.splitlines() if "error:" in line]
    assert all("no resource plugin" in line for line in errors), errors


def test_pulumi_yaml_types_are_enforced_by_the_engine(ssh_key: Path) -> None:
    """The mock runtime never sees this: the engine refuses a non-integer before the program runs."""
    result = preview_in_child("lab", {"workerCount": "many", "sshKeyPath": str(ssh_key)})
    assert result.error is not None
    assert "kube-on-air:workerCount' must be of type 'integer'" in result.error


def test_a_config_mistake_stops_before_any_resource(ssh_key: Path) -> None:
    result = preview_in_child("lab", {"networkCidr": "10.77.0.0/33", "sshKeyPath": str(ssh_key)})
    assert result.error is not None
    assert "networkCidr" in result.output and "10.77.0.0/33" in result.output, result.output
    assert "kube-on-air:cluster:Cluster" not in result.output  # nothing registered
    assert "Traceback" not in result.output
