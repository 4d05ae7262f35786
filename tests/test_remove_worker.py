"""Scale-down and destroy: a leaving worker is drained and deleted, then reset, and never blocks.

The delete script is run for real with a stand-in `ssh` on PATH that records its arguments.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import air_config
from tests.harness import Evaluation, evaluate

FAKE_SSH = """#!/bin/bash
printf '%s\\n' "$*" >> "$SSH_LOG"
for arg in "$@"; do
  case "$arg" in
    UserKnownHostsFile=*)
      cat "${arg#UserKnownHostsFile=}" >> "$SSH_LOG.known_hosts"
      echo "${arg#UserKnownHostsFile=}" >> "$SSH_LOG.paths" ;;
  esac
done
exit "${SSH_EXIT:-0}"
"""


def remove_script(air: Evaluation, node: str = "work13") -> str:
    """The delete script exactly as the program hands it to pulumi-command."""
    script = air.named(f"{node}-kubeadm-leave").plain("delete")
    assert isinstance(script, str)
    return script


def run_with_fake_ssh(tmp_path: Path, script: str, ssh_exit: int) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "ssh").write_text(FAKE_SSH)
    (bin_dir / "ssh").chmod(0o755)
    log = tmp_path / "ssh.log"
    log.unlink(missing_ok=True)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SSH_LOG": str(log), "SSH_EXIT": str(ssh_exit)}
    done = subprocess.run(["/bin/bash", "-c", script], capture_output=True, text=True, env=env, timeout=30)
    return done, log.read_text().splitlines() if log.exists() else []


def test_drains_and_deletes_on_the_control_plane_then_resets_the_worker(
    tmp_path: Path, ssh_key: Path, air: Evaluation
) -> None:
    done, calls = run_with_fake_ssh(tmp_path, remove_script(air), ssh_exit=0)
    assert done.returncode == 0, done.stderr
    assert len(calls) == 2
    assert "kube@172.31.255.10" in calls[0]
    assert "drain work13 --ignore-daemonsets --delete-emptydir-data" in calls[0]
    assert calls[0].index("drain work13") < calls[0].index("delete node work13 --ignore-not-found")
    assert "kube@172.31.255.13" in calls[1] and "kubeadm reset --force" in calls[1]
    assert f"-i {ssh_key}" in calls[0] and "BatchMode=yes" in calls[0] and "ConnectTimeout=10" in calls[0]


def test_talks_only_to_the_pinned_hosts(tmp_path: Path, air: Evaluation) -> None:
    done, calls = run_with_fake_ssh(tmp_path, remove_script(air), ssh_exit=0)
    assert done.returncode == 0, done.stderr
    assert all("StrictHostKeyChecking=yes" in call for call in calls)
    seen = (tmp_path / "ssh.log.known_hosts").read_text().splitlines()
    pinned = {
        node: " ".join(air.named(f"{node}-ready").plain("connection")["hostKey"].split()[:2])
        for node in ("head10", "work13")
    }
    assert len(seen) == 4, "one known_hosts file with both hosts, read by each of the two ssh calls"
    assert any(line.startswith("172.31.255.10,head10,") and line.endswith(pinned["head10"]) for line in seen)
    assert any(line.startswith("172.31.255.13,work13,") and line.endswith(pinned["work13"]) for line in seen)
    assert not any("work12" in line for line in seen)
    paths = set((tmp_path / "ssh.log.paths").read_text().split())
    assert len(paths) == 1 and not Path(paths.pop()).exists(), "the temporary known_hosts file is removed"


@pytest.mark.parametrize("ssh_exit", [255, 1])
def test_unreachable_hosts_never_block_destroy(tmp_path: Path, air: Evaluation, ssh_exit: int) -> None:
    done, calls = run_with_fake_ssh(tmp_path, remove_script(air), ssh_exit=ssh_exit)
    assert done.returncode == 0
    assert len(calls) == 2, "the reset is still attempted when the drain failed"
    assert "not drained" in done.stderr and "skipped kubeadm reset" in done.stderr


@pytest.fixture(scope="module")
def scaled_down(ssh_key: Path) -> Evaluation:
    return evaluate("air", air_config(ssh_key, workerCount="1"))


def test_leave_runs_before_the_vm_and_while_the_control_plane_exists(air: Evaluation) -> None:
    for worker in ("work11", "work12", "work13"):
        leave = air.named(f"{worker}-kubeadm-leave")
        assert leave.plain("create") is None, "nothing runs at create time"
        assert f"drain {worker}" in leave.plain("delete")
        before = {air.by_urn[u].name for u in air.transitive_dependencies(leave) if u in air.by_urn}
        # Pulumi deletes in reverse dependency order: leave goes first, then join, the VM, the control plane.
        assert {f"{worker}-kubeadm-join", f"{worker}-vm", "head10-vm", "kube-on-air-control-plane-init"} <= before


def test_scale_down_keeps_the_surviving_nodes_untouched(air: Evaluation, scaled_down: Evaluation) -> None:
    names = {r.name for r in scaled_down.resources}
    assert "work12-kubeadm-leave" not in names and "work12-vm" not in names
    for name in ("head10-vm", "work11-vm", "work11-kubeadm-leave", "kube-on-air-control-plane-init"):
        assert scaled_down.named(name).inputs == air.named(name).inputs
