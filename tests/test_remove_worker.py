"""Scale-down and destroy: a leaving worker is drained and deleted, then reset, its DHCP host entry
removed from the network, and it never blocks.

The delete script is run for real with a stand-in `ssh` (and `virsh`) on PATH that records its
arguments; the DHCP step also runs against libvirt's own network code through virsh's test driver.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from components.artifacts import render
from components.artifacts.hostkeys import HostKey
from tests.conftest import air_config, cluster_config
from tools.dryrun import Evaluation, evaluate

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

FAKE_VIRSH = r"""#!/bin/bash
printf '%s\0' "$@" >> "$SSH_LOG.virsh"
echo >> "$SSH_LOG.virsh"
if [[ " $* " == *" --live "* && -n "${NETWORK_INACTIVE:-}" ]]; then
  echo "error: Requested operation is not valid: network is not running"
  exit 1
fi
[ -z "${VIRSH_SAYS:-}" ] || { echo "$VIRSH_SAYS"; exit 1; }
"""


def remove_script(air: Evaluation, node: str = "work13") -> str:
    """The delete script exactly as the program hands it to pulumi-command."""
    script = air.named(f"{node}-kubeadm-leave").plain("delete")
    assert isinstance(script, str)
    return script


def run_with_fake_ssh(
    tmp_path: Path, script: str, ssh_exit: int, real_virsh: bool = False, **extra: str
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stand_ins = {"ssh": FAKE_SSH} if real_virsh else {"ssh": FAKE_SSH, "virsh": FAKE_VIRSH}
    for name, text in stand_ins.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "ssh.log"
    log.unlink(missing_ok=True)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SSH_LOG": str(log), "SSH_EXIT": str(ssh_exit)}
    env.update(extra)
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


def virsh_calls(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "ssh.log.virsh"
    return [line.split("\0")[:-1] for line in log.read_text().splitlines()] if log.exists() else []


def test_the_dhcp_host_entry_the_vm_added_is_removed(tmp_path: Path, air: Evaluation) -> None:
    done, _calls = run_with_fake_ssh(tmp_path, remove_script(air), ssh_exit=0)
    assert done.returncode == 0, done.stderr
    delete = ["net-update", "koa-air", "delete", "ip-dhcp-host", entry_of(air), "--live", "--config"]
    assert virsh_calls(tmp_path) == [["-q", "-c", "qemu:///system", *delete]]
    assert "removed the DHCP host entry of work13 from network koa-air" in done.stdout


def test_an_inactive_network_loses_the_entry_from_its_persistent_config(tmp_path: Path, air: Evaluation) -> None:
    done, _calls = run_with_fake_ssh(tmp_path, remove_script(air), ssh_exit=0, NETWORK_INACTIVE="1")
    assert done.returncode == 0
    assert [call[-2:] for call in virsh_calls(tmp_path)] == [["--live", "--config"], [entry_of(air), "--config"]]
    assert "removed the DHCP host entry" in done.stdout


def entry_of(air: Evaluation) -> str:
    (nic,) = air.named("work13-vm").plain("networkInterfaces")
    return f"<host mac='{nic['mac']}' ip='172.31.255.13'/>"


@pytest.mark.parametrize(
    ("says", "outcome"),
    [
        ("error: Requested operation is not valid: couldn't locate a matching dhcp host entry in network", "holds no"),
        ("error: Network not found: no network with matching name 'koa-air'", "holds no"),
        ("error: failed to connect to the hypervisor", "could not remove"),
    ],
)
def test_a_missing_entry_is_fine_and_a_failure_never_blocks(
    tmp_path: Path, air: Evaluation, says: str, outcome: str
) -> None:
    done, _calls = run_with_fake_ssh(tmp_path, remove_script(air), ssh_exit=0, VIRSH_SAYS=says)
    assert done.returncode == 0
    assert outcome in done.stdout + done.stderr


# libvirt's test driver, through the real virsh: the network as the provider leaves it after work11's
# create (an ip-dhcp-host entry with mac, name and ip), and as a fresh `up` would make it.
def network_on_test_driver(dhcp_hosts: str) -> str:
    return f"""<node><network><name>koa-t</name><bridge name='koa-t'/><forward mode='nat'/>
<ip address='172.31.255.1' prefix='24'><dhcp><range start='172.31.255.2' end='172.31.255.254'/>
{dhcp_hosts}</dhcp></ip></network></node>"""


@pytest.mark.skipif(shutil.which("virsh") is None, reason="virsh not installed")
@pytest.mark.parametrize(("present", "outcome"), [(True, "removed the"), (False, "holds no")])
def test_libvirt_accepts_the_removal(tmp_path: Path, ssh_key: Path, present: bool, outcome: str) -> None:
    config = cluster_config(ssh_key, uri=f"test://{tmp_path / 'host.xml'}", workerCount="1")
    work11 = config.workers[0]
    added = f"<host mac='{work11.mac}' name='work11' ip='{work11.ip}'/>" if present else ""
    (tmp_path / "host.xml").write_text(network_on_test_driver(added))
    keys = {node.name: HostKey("", f"ssh-ed25519 AAAA{node.name} {node.name}") for node in config.nodes}
    script = render.remove_worker_script(config, work11, keys)
    done, _calls = run_with_fake_ssh(tmp_path, script, ssh_exit=0, real_virsh=True)
    assert done.returncode == 0
    assert f"{outcome} DHCP host entry of work11" in done.stdout, done.stderr


@pytest.mark.skipif(shutil.which("virsh") is None, reason="virsh not installed")
def test_what_a_scale_up_meets_when_the_entry_is_left(tmp_path: Path, ssh_key: Path) -> None:
    # Provider v0.8.1's domain create calls updateOrAddHost: virNetworkUpdate MODIFY, and ADD only when
    # MODIFY finds no entry (VIR_ERR_OPERATION_INVALID). With the old entry left, MODIFY rewrites it in
    # place, so the scale-up succeeds; a plain ADD would fail. Either way the network differs from a
    # fresh `up` until the leave step removes the entry.
    work11 = cluster_config(ssh_key, workerCount="1").workers[0]
    entry = f"<host mac='{work11.mac}' name='work11' ip='{work11.ip}'/>"
    (tmp_path / "host.xml").write_text(network_on_test_driver(entry))
    update = f'net-update koa-t {{}} ip-dhcp-host "{entry}" --live --config'
    done = subprocess.run(
        ["virsh", "-c", f"test://{tmp_path / 'host.xml'}", f"{update.format('modify')}; {update.format('add-last')}"],
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C"},
        timeout=30,
    )
    assert done.stdout.count("Updated network koa-t persistent config and live state") == 1, done.stdout
    assert "there is an existing dhcp host entry in network 'koa-t' that matches" in done.stderr
