"""Issue 4: boot work11 from the program's own cloud-init seed and check it over SSH, for real.

The seed, the network and the wait-ready script are exactly what `tools.render.render_stack`
renders for stack `air` (prebaked); the VM is a libvirt domain shaped like the program's.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.vm.conftest import FIGURES, GIB, Booted, Lab, Rendered
from tests.vm.guest import Ssh, parse_status

pytestmark = pytest.mark.vm

NODE = "work11"


@pytest.fixture(scope="module")
def work11(lab: Lab, rendered: Rendered) -> Iterator[Booted]:
    node = rendered.node(NODE)
    with lab.boot(node, rendered.seed_dir(NODE)) as booted:
        booted.watch.wait_ready()
        booted.figures["overlay_bytes_after_boot"] = booted.overlay.stat().st_blocks * 512
        yield booted


@pytest.fixture(scope="module")
def ssh(work11: Booted) -> Ssh:
    return work11.ssh


def test_cloud_init_done_without_errors(ssh: Ssh) -> None:
    status, detail = parse_status(ssh.out("cloud-init status --long"))
    assert status == "done", detail
    result = json.loads(ssh.out("sudo cat /run/cloud-init/result.json"))
    assert result["v1"]["errors"] == []
    assert "DataSourceNoCloud" in result["v1"]["datasource"]


def test_hostname_and_fqdn(ssh: Ssh, work11: Booted) -> None:
    assert ssh.out("hostname").strip() == work11.node["name"]
    assert ssh.out("hostname -f").strip() == work11.node["fqdn"]


def test_static_address_on_the_nic(ssh: Ssh, work11: Booted, rendered: Rendered) -> None:
    links = json.loads(ssh.out("ip -j addr show"))
    nic = next((link for link in links if link.get("address") == work11.node["mac"]), None)
    assert nic is not None, f"no interface with MAC {work11.node['mac']}: {[link['ifname'] for link in links]}"
    prefix = ipaddress.ip_network(rendered.summary["network"]["cidr"]).prefixlen
    inet = [(a["local"], a["prefixlen"], a.get("dynamic", False)) for a in nic["addr_info"] if a["family"] == "inet"]
    assert inet == [(work11.node["ip"], prefix, False)], f"{nic['ifname']}: {inet}"
    routes = json.loads(ssh.out("ip -j route show default"))
    assert [r.get("gateway") for r in routes] == [rendered.summary["network"]["gateway"]]


def test_node_presents_only_the_pinned_host_key(ssh: Ssh, work11: Booted, rendered: Rendered) -> None:
    # Every check here already connects with StrictHostKeyChecking=yes against the program's known_hosts;
    # ssh-keyscan also shows the node offers no other key type a client could be handed.
    scan = subprocess.run(
        ["ssh-keyscan", "-T", "10", "-t", "rsa,ecdsa,ed25519", work11.node["ip"]],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    offered = sorted(" ".join(line.split()[1:3]) for line in scan.stdout.splitlines() if line.strip())
    assert offered == [" ".join(work11.node["host_key"].split()[:2])], scan.stderr
    assert ssh.known_hosts == rendered.known_hosts and rendered.known_hosts.is_file()


def test_password_login_disabled(ssh: Ssh) -> None:
    config = ssh.out("sudo sshd -T").splitlines()
    assert "passwordauthentication no" in config
    # And sshd really offers no password method to a client that asks for one.
    probe = ssh.run_argv(
        ["-o", "PreferredAuthentications=password,keyboard-interactive", "-o", "PubkeyAuthentication=no"], "true"
    )
    assert probe.returncode == 255
    assert "Permission denied (publickey)" in probe.stderr


@pytest.mark.parametrize("module", ["overlay", "br_netfilter"])
def test_kernel_module_loaded_and_persistent(ssh: Ssh, module: str) -> None:
    assert ssh.run(f"test -d /sys/module/{module}").returncode == 0, f"{module} not loaded"
    persistent = ssh.out("cat /etc/modules-load.d/*.conf").split()
    assert module in persistent


@pytest.mark.parametrize(
    "key", ["net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables", "net.ipv4.ip_forward"]
)
def test_sysctl_is_one(ssh: Ssh, key: str) -> None:
    # /proc/sys, not sysctl(8): /usr/sbin is not on a Debian user's PATH in an ssh session command.
    assert ssh.out(f"cat /proc/sys/{key.replace('.', '/')}").strip() == "1"


def test_swap_off(ssh: Ssh) -> None:
    assert ssh.out("/usr/sbin/swapon --show --noheadings").strip() == ""
    assert ssh.out("cat /proc/swaps").strip().count("\n") == 0  # the header line only
    assert "swap" not in ssh.out("cat /etc/fstab")


def test_containerd_active_with_systemd_cgroup(ssh: Ssh) -> None:
    assert ssh.out("systemctl is-active containerd").strip() == "active"
    dump = ssh.out("sudo containerd config dump")
    assert "SystemdCgroup = true" in dump
    FIGURES["nodes"][NODE]["containerd_active"] = True  # test_prebaked_saving.py may reuse this boot's figure


def test_growpart_grew_the_root_filesystem(ssh: Ssh, work11: Booted, lab: Lab) -> None:
    size = int(ssh.out("df -B1 --output=size /").split()[-1])
    base_fs = int(lab.image.info["fs_size_bytes"])
    disk = int(work11.node["disk_gib"]) * GIB
    FIGURES["nodes"][NODE]["root_fs_bytes_after_growpart"] = size
    assert size > base_fs
    assert size > 0.9 * disk, f"root fs {size} B is far below the {work11.node['disk_gib']} GiB disk"


@pytest.mark.parametrize("other", ["head10", "work12"])
def test_resolves_cluster_names_through_libvirt_dns(ssh: Ssh, rendered: Rendered, other: str) -> None:
    node: dict[str, Any] = rendered.node(other)
    answer = ssh.out(f"getent ahostsv4 {node['fqdn']}").split()
    assert answer and answer[0] == node["ip"], answer
    # From the network's DNS (dnsmasq on the gateway), not from /etc/hosts.
    assert other not in ssh.out("cat /etc/hosts")
    assert node["ip"] in ssh.out(f"resolvectl query --legend=no {node['fqdn']}")


def test_wait_ready_script_passes_twice(ssh: Ssh, rendered: Rendered) -> None:
    """The program's own remote.Command `create` string, run as the ssh session command; idempotent."""
    script = rendered.wait_ready_script(NODE)
    seconds = []
    for attempt in (1, 2):
        started = time.monotonic()
        proc = ssh.run(script, timeout=600)
        seconds.append(round(time.monotonic() - started, 1))
        code = proc.returncode
        assert code == 0, f"wait-ready run {attempt} exited {code}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    FIGURES["nodes"][NODE]["wait_ready_seconds"] = seconds


def test_join_script_refuses_clearly_without_kubeadm(ssh: Ssh, rendered: Rendered) -> None:
    """This image has no kubeadm (it cannot be downloaded here): the program's join step must say so, not crash."""
    script = (rendered.directory / "scripts" / f"{NODE}-kubeadm-join-on-worker.sh").read_text()
    proc = ssh.run(script, timeout=120)
    assert proc.returncode == 1, f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
    assert f"kubeadm is not installed on {NODE}" in proc.stderr
    assert "make image" in proc.stderr
    assert ssh.run("sudo test -e /var/lib/kube-on-air/join-config.yaml").returncode == 1, "nothing written on refusal"


# --- the program's kubeadm steps, run for real on the node against a stand-in kubeadm ---------------

STAND_IN = Path(__file__).with_name("stand-in-kubeadm.sh")
STAND_IN_STATE = "/var/lib/stand-in-kubeadm"


@pytest.fixture
def stand_in_kubeadm(ssh: Ssh) -> Iterator[None]:
    """kubeadm cannot be downloaded here: a recording stand-in lets the scripts' own logic run on the node."""
    installed = ssh.run("sudo tee /usr/local/bin/kubeadm >/dev/null && sudo chmod 0755 /usr/local/bin/kubeadm",
                        stdin=STAND_IN.read_text())  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    try:
        yield
    finally:
        ssh.out(f"sudo rm -rf /usr/local/bin/kubeadm {STAND_IN_STATE} /etc/kubernetes /var/lib/kube-on-air /etc/cni")


def kubeadm_calls(ssh: Ssh) -> list[str]:
    return ssh.out(f"sudo cat {STAND_IN_STATE}/calls").splitlines()


def program_text(rendered: Rendered, relative: str) -> str:
    """A script or stdin exactly as the program hands it to pulumi-command (see tools.render)."""
    return (rendered.directory / relative).read_text()


def run_twice(ssh: Ssh, script: str, stdin: str | None = None) -> list[subprocess.CompletedProcess[str]]:
    runs = [ssh.run(script, timeout=120, stdin=stdin) for _ in range(2)]
    for proc in runs:
        assert proc.returncode == 0, f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
    return runs


@pytest.mark.usefixtures("stand_in_kubeadm")
def test_init_step_runs_kubeadm_once_and_keeps_its_config(ssh: Ssh, rendered: Rendered) -> None:
    config = program_text(rendered, "kubeadm/kubeadm-config.yaml")
    first, second = run_twice(ssh, program_text(rendered, "scripts/kube-on-air-control-plane-init.sh"), config)
    assert "already initialised" not in first.stdout and "already initialised" in second.stdout
    assert kubeadm_calls(ssh) == ["init --config /var/lib/kube-on-air/kubeadm-config.yaml --skip-token-print"]
    assert ssh.out(f"sudo cat {STAND_IN_STATE}/init-config.yaml") == config, "kubeadm read what stdin carried"
    assert ssh.out("sudo stat -c %a /var/lib/kube-on-air").strip() == "700"
    # The provider-credentials step needs a live API server; tests/test_provider_access.py runs it
    # against a stand-in kubectl.


@pytest.mark.usefixtures("stand_in_kubeadm")
def test_join_step_takes_the_token_on_stdin_once_and_leaves_no_copy(ssh: Ssh, rendered: Rendered) -> None:
    config = program_text(rendered, f"kubeadm/{NODE}-kubeadm-join-config.yaml")
    token = yaml.safe_load(config)["discovery"]["bootstrapToken"]["token"]
    first, second = run_twice(ssh, program_text(rendered, f"scripts/{NODE}-kubeadm-join-on-worker.sh"), config)
    assert f"{NODE} already joined" in second.stdout and "already joined" not in first.stdout
    calls = kubeadm_calls(ssh)
    assert calls == ["join --config /var/lib/kube-on-air/join-config.yaml"]
    assert token not in "\n".join(calls), "the token never reaches kubeadm's argv"
    assert ssh.out(f"sudo cat {STAND_IN_STATE}/join-config.yaml") == config
    assert ssh.run("sudo test -e /var/lib/kube-on-air/join-config.yaml").returncode == 1, "config with token removed"


@pytest.mark.usefixtures("stand_in_kubeadm")
def test_join_credentials_are_a_token_and_the_ca_public_key_hash(ssh: Ssh, rendered: Rendered) -> None:
    ssh.out(
        "sudo mkdir -p /etc/kubernetes/pki && sudo openssl req -x509 -newkey rsa:2048 -nodes -days 1 "
        "-subj /CN=kubernetes -keyout /etc/kubernetes/pki/ca.key -out /etc/kubernetes/pki/ca.crt 2>/dev/null",
        timeout=120,
    )
    # kubeadm's discovery hash is SHA-256 over the CA's DER SubjectPublicKeyInfo: computed here independently.
    public_pem = ssh.out("openssl x509 -pubkey -noout -in /etc/kubernetes/pki/ca.crt")
    der = base64.b64decode("".join(line for line in public_pem.splitlines() if not line.startswith("-----")))
    expected = hashlib.sha256(der).hexdigest()
    printed = ssh.out(program_text(rendered, f"scripts/{NODE}-kubeadm-join-on-control-plane.sh"))
    assert printed.splitlines() == ["stndin.0123456789abcdef", f"sha256:{expected}"]
    assert kubeadm_calls(ssh)[0].startswith("token create --ttl ")


@pytest.mark.usefixtures("stand_in_kubeadm")
def test_leave_step_resets_the_worker_over_the_pinned_key_even_without_a_control_plane(
    ssh: Ssh, rendered: Rendered
) -> None:
    """The delete-time script runs on the Pulumi host (here: this host) exactly as rendered; head10 is not booted."""
    ssh.out("sudo mkdir -p /etc/kubernetes /etc/cni/net.d && sudo touch /etc/kubernetes/kubelet.conf /etc/cni/net.d/x")
    script = program_text(rendered, f"scripts/{NODE}-kubeadm-leave-delete.sh")
    for attempt in (1, 2):
        done = subprocess.run(["/bin/bash", "-c", script], capture_output=True, text=True, timeout=180, check=False)
        assert done.returncode == 0, f"attempt {attempt}: {done.stderr}"
        assert "control plane 172.31.255.10 unreachable" in done.stderr, done.stderr
        assert f"reset kubeadm on {NODE}" in done.stdout, f"attempt {attempt}: {done.stdout}\n{done.stderr}"
    assert kubeadm_calls(ssh) == ["reset --force", "reset --force"]
    assert ssh.run("sudo test -e /etc/kubernetes/kubelet.conf || sudo test -e /etc/cni/net.d").returncode == 1
