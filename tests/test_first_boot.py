"""First boot: the wait-ready step makes up for an install that cloud-init did not finish, and apt waits.

The program's own scripts run for real: the installer exactly as the user-data writes it, the
wait-ready step exactly as the remote Command runs it. They run in a private mount namespace
(`unshare`) where /etc/apt, /usr/local/sbin, /var/lib and /sys/module are scratch tmpfs, against
stand-ins for the node's tools that keep their state in files. The apt-get stand-in models apt 2.6
(Debian 12): it waits for the dpkg frontend lock only when given DPkg::Lock::Timeout
(apt-pkg/deb/debsystem.cc) and never for the lists lock (apt-pkg/acquire.cc).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.artifacts import render
from tests.conftest import NS, air_config
from tests.seeds import seed_of
from tests.validators import embedded_scripts
from tools.dryrun import Evaluation, evaluate, stack_config

STAND_INS = {
    "sudo": 'exec "$@"',
    "apt-get": r"""
printf '%s\n' "$*" >> "$STATE/apt-get"
case " $* " in
  *" update "*)
    busy=$(cat "$STATE/lists-lock-busy" 2>/dev/null || echo 0)
    if [ "$busy" -gt 0 ]; then
      echo $((busy - 1)) > "$STATE/lists-lock-busy"
      echo "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 4242 (apt-get)" >&2
      exit 100
    fi ;;
  *" install "*)
    if [ -e "$STATE/upgrades-running" ] && [[ " $* " != *" DPkg::Lock::Timeout="* ]]; then
      echo "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 4243 (unattended-upgr)" >&2
      exit 100
    fi
    case " $* " in *" kubeadm="*) touch "$STATE/installed" ;; esac ;;
esac""",
    "dpkg": r"""
case "$*" in
  --audit) cat "$STATE/dpkg-audit" 2>/dev/null ;;
  "--configure -a") printf '%s\n' "$*" >> "$STATE/apt-get"; rm -f "$STATE/dpkg-audit" ;;
  *) exit 2 ;;
esac""",
    "dpkg-query": r"""
case "$2" in
  *Status-Status*) [ -e "$STATE/installed" ] && printf installed || exit 1 ;;
  *Status-Want*) [ -e "$STATE/held" ] && printf hold || printf install ;;
esac""",
    "apt-mark": 'printf \'%s\\n\' "apt-mark $*" >> "$STATE/apt-get"; touch "$STATE/held"',
    "kubeadm": '[ -e "$STATE/installed" ] && echo "v$KUBERNETES_VERSION"',
    "systemctl": r"""
printf '%s\n' "$*" >> "$STATE/systemctl"
case "$*" in
  "is-enabled --quiet kubelet") [ -e "$STATE/kubelet-enabled" ] ;;
  "enable kubelet") touch "$STATE/kubelet-enabled" ;;
  "restart containerd") [ -e "$STATE/installed" ] && touch "$STATE/containerd-active" ;;
  "is-active --quiet containerd") [ -e "$STATE/containerd-active" ] ;;
  *) exit 1 ;;
esac""",
    "curl": 'while [ "$1" != -o ]; do shift; done; echo "release key" > "$2"',
    "gpg": 'cp "${@: -1}" "$4"',
    "sleep": 'printf \'%s\\n\' "$*" >> "$STATE/sleep"',
    "cloud-init": r"""
case "$*" in
  "status --wait") exit "${CLOUD_INIT_EXIT:-0}" ;;
  "status --long") printf 'status: error\nerrors:\n\t- runcmd failed\n' ; exit "${CLOUD_INIT_EXIT:-0}" ;;
esac""",
    "hostname": "echo work11",
    "swapon": "true",
    "sysctl": "echo 1",
}

# The node's directories persist between runs (bind mounts of the test's own directories).
SANDBOX = f"""
set -e
for dir in /etc/apt /usr/local/sbin /var/lib; do
  mkdir -p "$NODE_ROOT$dir" && mount --bind "$NODE_ROOT$dir" "$dir"
done
mkdir -p /etc/apt/sources.list.d && install -m 0755 "$INSTALLER" {render.INSTALLER_PATH}
mount -t tmpfs koa /sys/module && mkdir /sys/module/overlay /sys/module/br_netfilter
set +e
/bin/bash -c "$SCRIPT" koa "$@"
"""


@dataclass
class Node:
    """A stand-in node: its tools' state lives in `state`; `run` executes a program script on it."""

    root: Path
    installer: Path
    kubernetes_version: str

    @property
    def state(self) -> Path:
        return self.root / "state"

    def run(self, script: str, *args: str, cloud_init_exit: int = 0) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "PATH": f"{self.root / 'bin'}:{os.environ['PATH']}",
            "STATE": str(self.state),
            "NODE_ROOT": str(self.root / "node"),
            "INSTALLER": str(self.installer),
            "SCRIPT": script,
            "CLOUD_INIT_EXIT": str(cloud_init_exit),
            "KUBERNETES_VERSION": self.kubernetes_version,
        }
        command = ["unshare", "--mount", "--map-root-user", "/bin/bash", "-c", SANDBOX, "sandbox", *args]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)

    def log(self, name: str) -> list[str]:
        path = self.state / name
        return path.read_text().splitlines() if path.exists() else []

    def set(self, name: str, value: str = "") -> None:
        (self.state / name).write_text(value)


def installer_script(evaluation: Evaluation) -> str:
    """The installer exactly as work11's user-data writes it."""
    user_data = seed_of(evaluation, "work11")["user-data"]
    (installer,) = [content for path, content in embedded_scripts(user_data) if path == render.INSTALLER_PATH]
    return installer


def ready_script(evaluation: Evaluation) -> str:
    """work11's wait-ready step exactly as its remote Command runs it."""
    script = evaluation.named("work11-ready").plain("create")
    assert isinstance(script, str)
    return script


@pytest.fixture
def node(tmp_path: Path, air: Evaluation) -> Node:
    probe = subprocess.run(["unshare", "--mount", "--map-root-user", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"needs a private mount namespace (unshare --mount --map-root-user): {probe.stderr!r}")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STAND_INS.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body.strip()}\n")
        (bin_dir / name).chmod(0o755)
    (tmp_path / "state").mkdir()
    (tmp_path / "installer").write_text(installer_script(air))
    return Node(tmp_path, tmp_path / "installer", stack_config("air")[f"{NS}:kubernetesVersion"])


def run_installer(node: Node, *args: str) -> subprocess.CompletedProcess[str]:
    return node.run(f'exec {render.INSTALLER_PATH} "$@"', *args)


def test_installer_waits_for_apt_locks_held_at_boot(node: Node) -> None:
    node.set("upgrades-running")  # unattended-upgrades holds dpkg's lock
    node.set("lists-lock-busy", "2")  # ... and refreshes the package lists
    done = run_installer(node)
    assert done.returncode == 0, done.stderr
    calls = node.log("apt-get")
    apt_calls = [call for call in calls if not call.startswith("apt-mark")]
    assert all(f"DPkg::Lock::Timeout={render.APT_LOCK_WAIT_SECONDS}" in call for call in apt_calls), apt_calls
    assert all(f"Acquire::Retries={render.APT_DOWNLOAD_RETRIES}" in call for call in apt_calls), apt_calls
    assert sum(" update " in f" {call} " for call in apt_calls) == 4, "two refused updates retried, then two more"
    assert node.log("sleep") == [str(render.APT_RETRY_PAUSE_SECONDS)] * 2
    assert "apt-mark hold kubelet kubeadm kubectl" in calls
    assert node.log("systemctl")[-2:] == ["enable kubelet", "restart containerd"]


def test_installer_is_a_no_op_once_complete_and_says_so_with_check(node: Node) -> None:
    assert run_installer(node, "--check").returncode == 1
    assert run_installer(node).returncode == 0
    calls = node.log("apt-get")
    assert run_installer(node, "--check").returncode == 0
    again = run_installer(node)
    assert again.returncode == 0 and "already installed" in again.stdout
    assert node.log("apt-get") == calls, "nothing reinstalled"
    (node.state / "held").unlink()  # cut short before apt-mark: incomplete, so the next run finishes it
    assert run_installer(node, "--check").returncode == 1
    assert run_installer(node).returncode == 0 and (node.state / "held").exists()


def test_installer_finishes_an_interrupted_dpkg_run_first(node: Node) -> None:
    node.set("dpkg-audit", "The following packages are only half configured: containerd\n")
    done = run_installer(node)
    assert done.returncode == 0, done.stderr
    calls = node.log("apt-get")
    assert calls[0] == "--configure -a" and " update " in f" {calls[1]} "


def test_installer_gives_up_after_its_attempts(node: Node) -> None:
    node.set("lists-lock-busy", "99")
    done = run_installer(node)
    assert done.returncode == 1
    assert len(node.log("apt-get")) == render.APT_ATTEMPTS
    assert f"gave up after {render.APT_ATTEMPTS} attempts: apt-get" in done.stderr


def test_ready_step_re_runs_an_install_that_failed_at_first_boot(node: Node, air: Evaluation) -> None:
    # First boot: runcmd's install hit a dead network, so cloud-init ended in error and nothing is
    # installed. Now apt works again, but unattended-upgrades holds the lock for a while.
    node.set("upgrades-running")
    node.set("lists-lock-busy", "1")
    done = node.run(ready_script(air), cloud_init_exit=1)
    assert done.returncode == 0, done.stderr
    assert "install on work11 is incomplete (cloud-init exit 1): running it again" in done.stderr
    assert "cloud-init failed on work11" in done.stderr and "the install has since completed" in done.stderr
    assert done.stdout == "node work11 ready (cloud-init exit 1)\n"
    assert (node.state / "containerd-active").exists() and (node.state / "held").exists()
    # A later run (the step's inputs changed) finds cloud-init's old error and the completed install.
    calls = node.log("apt-get")
    again = node.run(ready_script(air), cloud_init_exit=1)
    assert again.returncode == 0, again.stderr
    assert node.log("apt-get") == calls, "nothing reinstalled"


def test_ready_step_completes_an_install_cloud_init_did_not_report(node: Node, air: Evaluation) -> None:
    done = node.run(ready_script(air), cloud_init_exit=0)
    assert done.returncode == 0, done.stderr
    assert "running it again" in done.stderr and (node.state / "installed").exists()


def test_ready_step_still_fails_on_a_cloud_init_error_the_install_does_not_explain(node: Node, air: Evaluation) -> None:
    assert run_installer(node).returncode == 0
    calls = node.log("apt-get")
    done = node.run(ready_script(air), cloud_init_exit=1)
    assert done.returncode == 1
    assert "cloud-init failed on work11" in done.stderr and "status: error" in done.stderr
    assert node.log("apt-get") == calls


def test_ready_step_gives_up_after_its_install_attempts(node: Node, air: Evaluation) -> None:
    node.set("lists-lock-busy", "999")
    done = node.run(ready_script(air), cloud_init_exit=1)
    assert done.returncode == 1
    assert f"installing Kubernetes on work11 failed {render.INSTALL_ATTEMPTS} times" in done.stderr
    assert len(node.log("apt-get")) == render.INSTALL_ATTEMPTS * render.APT_ATTEMPTS
    assert node.log("sleep").count(str(render.INSTALL_RETRY_PAUSE_SECONDS)) == render.INSTALL_ATTEMPTS - 1


def test_prebaked_ready_step_has_nothing_to_re_run(node: Node, ssh_key: Path) -> None:
    prebaked = evaluate("air", air_config(ssh_key, prebaked="true"))
    done = node.run(prebaked.named("work11-ready").plain("create"), cloud_init_exit=1)
    assert done.returncode == 1 and "cloud-init failed on work11" in done.stderr
    assert node.log("apt-get") == [] and "running it again" not in done.stderr
