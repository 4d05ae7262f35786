"""Host preflight: one fake-host test per failure; the facts themselves are tests/test_host_facts.py."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from components.artifacts import identity
from components.artifacts.hostkeys import HostKey
from components.config.settings import BASE_VOLUME, ClusterConfig, load
from components.preflight import checks as pf
from components.preflight.checks import PreflightError, PreflightProblem
from components.preflight.facts import HostFacts, HostRoute, LibvirtNetwork, StackDomain, StackVolume
from tests.conftest import cluster_config
from tools.dryrun import ROOT

OUTSIDE_POOL = "/data/koa"
LOCAL_QEMU_ABSTRACTION = "/etc/apparmor.d/local/abstractions/libvirt-qemu"  # read by every VM's profile


def healthy(**changes: Any) -> HostFacts:
    """A bare-metal VT-x Debian host with room to spare."""
    facts = HostFacts(
        libvirt_uri="qemu:///system",
        remote=False,
        virsh_path="/usr/bin/virsh",
        libvirt_reachable=True,
        libvirt_error="",
        libvirt_kvm=True,
        libvirt_networks=(LibvirtNetwork("default", "192.168.122.0/24", "virbr0"),),
        stack_domains=(),  # a first `up`: nothing of this stack exists yet
        stack_volumes=(),
        mkisofs_path="/usr/bin/mkisofs",
        genisoimage_path="/usr/bin/genisoimage",
        xorrisofs_path=None,
        ssh_path="/usr/bin/ssh",
        ssh_key_error=None,
        kvm_verdicts=(),
        kvm_accessible=True,
        kvm_device_mode="crw-rw---- root:kvm",
        qemu_kvm_accessible=True,
        apparmor_enabled=True,
        security_driver="",
        apparmor_pool_allowed=True,
        apparmor_qemu_pool_allowed=True,
        qemu_user="libvirt-qemu",
        pool_blocked_dir="",
        selinux_mode="disabled",
        mem_available_mib=32768,
        disk_probe_path="/var/lib/libvirt/images",
        disk_free_mib=100_000,
        host_routes=(HostRoute("0.0.0.0/0", "eth0"), HostRoute("192.168.1.0/24", "eth0")),
    )
    return dataclasses.replace(facts, **changes)


def only(problems: list[PreflightProblem], check: str) -> PreflightProblem:
    assert [p.check for p in problems] == [check], problems
    return problems[0]


def assert_says(problem: PreflightProblem, observed: list[str], fix: list[str]) -> None:
    for text in observed:
        assert text in problem.observed, (text, problem)
    for text in fix:
        assert text in problem.fix, (text, problem)


# --- fake hosts -------------------------------------------------------------------------------


def test_healthy_host_has_no_problems(config: ClusterConfig) -> None:
    assert pf.check(config, healthy()) == []
    assert pf.run_preflight(config, healthy()) == healthy()


def test_libvirt_unreachable(config: ClusterConfig) -> None:
    error = "error: Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory"
    problem = only(pf.check(config, healthy(libvirt_reachable=False, libvirt_error=error)), "libvirt")
    assert_says(problem, ["qemu:///system", "libvirt-sock"], ["libvirtd -d", "systemctl enable --now libvirtd"])


def test_libvirt_permission_denied_points_at_the_group(config: ClusterConfig) -> None:
    error = "error: Failed to connect socket to '/var/run/libvirt/libvirt-sock': Permission denied"
    problem = only(pf.check(config, healthy(libvirt_reachable=False, libvirt_error=error)), "libvirt")
    assert_says(problem, ["Permission denied"], ["usermod -aG libvirt"])


def test_virsh_missing_is_a_problem_not_a_pass(config: ClusterConfig) -> None:
    # Without virsh nothing about libvirt is known; a dead socket must not slip through.
    facts = healthy(
        virsh_path=None,
        libvirt_reachable=None,
        libvirt_error="virsh is not on PATH",
        libvirt_kvm=None,
        libvirt_networks=None,
    )
    problem = only(pf.check(config, facts), "libvirt")
    assert_says(
        problem,
        ["virsh is not on PATH", "libvirt:uri qemu:///system"],
        ["apt-get install libvirt-clients", "dnf install libvirt-client", pf.SKIP_ENV + "=1"],
    )


NO_KVM_MODULE = "device /dev/kvm exists: Check that the 'kvm-intel' or 'kvm-amd' modules are loaded"


def test_kvm_refused_by_virt_host_validate_with_domain_type_kvm(config: ClusterConfig) -> None:
    problem = only(pf.check(config, healthy(kvm_verdicts=(NO_KVM_MODULE,), kvm_accessible=False)), "kvm")
    assert_says(
        problem,
        ["virt-host-validate: device /dev/kvm exists: Check that the 'kvm-intel'"],
        ["nested virtualisation", "kube-on-air:domainType to qemu"],
    )


def test_kvm_missing_but_domain_type_qemu_is_fine(ssh_key: Path) -> None:
    qemu = cluster_config(ssh_key, domainType="qemu")
    assert pf.check(qemu, healthy(kvm_verdicts=(NO_KVM_MODULE,), kvm_accessible=False)) == []


def test_kvm_not_writable_matters_only_for_session(ssh_key: Path) -> None:
    facts = healthy(kvm_accessible=False)
    assert pf.check(cluster_config(ssh_key), facts) == []  # qemu:///system: libvirtd opens /dev/kvm
    session = cluster_config(ssh_key, uri="qemu:///session")
    problem = only(pf.check(session, dataclasses.replace(facts, libvirt_uri="qemu:///session")), "kvm")
    assert_says(problem, ["not readable and writable"], ["usermod -aG kvm"])


def test_mkisofs_missing(config: ClusterConfig) -> None:
    problem = only(pf.check(config, healthy(mkisofs_path=None, genisoimage_path=None)), "mkisofs")
    assert_says(problem, ["none of genisoimage, mkisofs, xorrisofs is on PATH"], ["apt-get install genisoimage"])


def test_ssh_client_missing(config: ClusterConfig) -> None:
    problem = only(pf.check(config, healthy(ssh_path=None)), "ssh")
    assert_says(problem, ["ssh is not on PATH", "join and leave steps"], ["apt-get install openssh-client"])


@pytest.mark.parametrize("tool", ["mkisofs_path", "genisoimage_path", "xorrisofs_path"])
def test_any_one_iso_tool_is_enough(config: ClusterConfig, tool: str) -> None:
    none = {"mkisofs_path": None, "genisoimage_path": None, "xorrisofs_path": None}
    assert pf.check(config, healthy(**{**none, tool: "/usr/bin/x"})) == []


def test_apparmor_denies_pool_outside_libvirt_images(ssh_key: Path) -> None:
    outside = cluster_config(ssh_key, poolPath=OUTSIDE_POOL)
    problem = only(pf.check(outside, healthy(apparmor_pool_allowed=False)), "apparmor")
    assert_says(
        problem,
        ["AppArmor confines QEMU", f"{OUTSIDE_POOL}/*", "Permission denied"],
        ["kube-on-air:poolPath under /var/lib/libvirt/images/", LOCAL_QEMU_ABSTRACTION, '/**" rwk,'],
    )


def test_apparmor_without_the_qemu_rule_for_the_pool(config: ClusterConfig) -> None:
    problem = only(pf.check(config, healthy(apparmor_qemu_pool_allowed=False)), "apparmor")
    rule = f"echo '\"{config.pool_path}/**\" rwk,' | sudo tee -a {LOCAL_QEMU_ABSTRACTION}"
    assert_says(
        problem,
        ["AppArmor confines QEMU", f"kube-on-air:poolPath {config.pool_path}", LOCAL_QEMU_ABSTRACTION, "Permission"],
        [rule],
    )
    assert pf.check(config, healthy(apparmor_qemu_pool_allowed=None)) == []  # unknown never blocks


def test_apparmor_refusing_both_helper_and_qemu_is_one_problem(ssh_key: Path) -> None:
    outside = cluster_config(ssh_key, poolPath=OUTSIDE_POOL)
    facts = healthy(apparmor_pool_allowed=False, apparmor_qemu_pool_allowed=False)
    problem = only(pf.check(outside, facts), "apparmor")
    assert_says(problem, ["virt-aa-helper"], ["kube-on-air:poolPath under /var/lib/libvirt/images/", '/**" rwk,'])


@pytest.mark.parametrize(("enabled", "driver"), [(False, ""), (True, "none"), (True, "selinux"), (None, "")])
def test_apparmor_not_confining_qemu_is_fine(ssh_key: Path, enabled: bool | None, driver: str) -> None:
    outside = cluster_config(ssh_key, poolPath=OUTSIDE_POOL)
    refused = {"apparmor_pool_allowed": False, "apparmor_qemu_pool_allowed": False}
    facts = healthy(apparmor_enabled=enabled, security_driver=driver, **refused)
    assert pf.check(outside, facts) == []


# The file rules of Debian 12's /etc/apparmor.d/usr.lib.libvirt.virt-aa-helper (libvirt 9.0).
def test_pool_directory_qemu_cannot_enter(ssh_key: Path) -> None:
    home = cluster_config(ssh_key, poolPath="/root/koa")
    problem = only(pf.check(home, healthy(pool_blocked_dir="/root (mode 0700)")), "pool-permissions")
    assert_says(problem, ["libvirt-qemu", "/root (mode 0700)", "/root/koa"], ["chmod o+x", "kube-on-air:poolPath"])


def test_session_uri_skips_system_confinement_checks(ssh_key: Path) -> None:
    session = cluster_config(ssh_key, uri="qemu:///session", poolPath=OUTSIDE_POOL)
    facts = healthy(
        apparmor_pool_allowed=False,
        apparmor_qemu_pool_allowed=False,
        pool_blocked_dir="/root (mode 0700)",
        selinux_mode="enforcing",
    )
    assert pf.check(session, facts) == []


def test_selinux_enforcing_with_pool_outside_libvirt_images(ssh_key: Path) -> None:
    outside = cluster_config(ssh_key, poolPath=OUTSIDE_POOL)
    problem = only(pf.check(outside, healthy(selinux_mode="enforcing")), "selinux")
    assert_says(problem, ["SELinux is enforcing", OUTSIDE_POOL], ["semanage fcontext -a -t virt_image_t", "restorecon"])
    assert pf.check(cluster_config(ssh_key), healthy(selinux_mode="enforcing")) == []


def test_memory_short(config: ClusterConfig) -> None:
    # Defaults: control plane 2048 MiB + 3 workers x 1536 MiB.
    problem = only(pf.check(config, healthy(mem_available_mib=4000)), "memory")
    assert_says(problem, ["4000 MiB", "4 nodes need 6656 MiB"], ["kube-on-air:workerCount", "workerMemoryMiB"])


def test_disk_short(config: ClusterConfig) -> None:
    problem = only(pf.check(config, healthy(disk_free_mib=3000)), "disk")
    assert_says(problem, ["/var/lib/libvirt/images has 3000 MiB free", "need about 10240 MiB"], ["poolPath"])


def vm(name: str, memory_mib: int, running: bool = True) -> StackDomain:
    return StackDomain(f"t-{name}", memory_mib, running, (f"{name}-0123456789.qcow2",), "")


# What the default cluster (head10 + work11..13) holds after its first `up`.
CLUSTER_VMS = (vm("head10", 2048), vm("work11", 1536), vm("work12", 1536), vm("work13", 1536))
CLUSTER_VOLUMES = (
    StackVolume(BASE_VOLUME, 900),
    *(StackVolume(f"{n}-0123456789.qcow2", 1800) for n in ("head10", "work11", "work12", "work13")),
    *(StackVolume(f"{n}-seed-0123456789.iso", 1) for n in ("head10", "work11", "work12", "work13")),
)


def test_a_rerun_counts_the_memory_this_stacks_vms_hold(ssh_key: Path, config: ClusterConfig) -> None:
    # The first `up` fit 6656 MiB into 7000 MiB; the VMs now use most of it.
    assert pf.check(config, healthy(mem_available_mib=500, stack_domains=CLUSTER_VMS)) == []
    # Scale-down 3 -> 1: two more running VMs than the config wants, still fine.
    one = cluster_config(ssh_key, workerCount="1")
    assert pf.check(one, healthy(mem_available_mib=0, stack_domains=CLUSTER_VMS)) == []
    # Scale-up 3 -> 5 needs 2 x 1536 MiB on top of what is held.
    five = cluster_config(ssh_key, workerCount="5")
    assert pf.check(five, healthy(mem_available_mib=3072, stack_domains=CLUSTER_VMS)) == []
    problem = only(pf.check(five, healthy(mem_available_mib=3000, stack_domains=CLUSTER_VMS)), "memory")
    assert_says(problem, ["3000 MiB", "6 nodes need 9728 MiB", "running VMs hold 6656 MiB already"], ["workerCount"])
    # Shut-off VMs hold no host memory.
    stopped = tuple(dataclasses.replace(d, running=False) for d in CLUSTER_VMS)
    problem = only(pf.check(config, healthy(mem_available_mib=500, stack_domains=stopped)), "memory")
    assert "hold" not in problem.observed


def test_a_rerun_counts_the_disk_this_stacks_volumes_hold(ssh_key: Path, config: ClusterConfig) -> None:
    # The first `up` fit its 10240 MiB estimate exactly; 8104 MiB of it is now used by its volumes.
    used = sum(v.allocation_mib for v in CLUSTER_VOLUMES)
    assert pf.check(config, healthy(disk_free_mib=10240 - used, stack_volumes=CLUSTER_VOLUMES)) == []
    one = cluster_config(ssh_key, workerCount="1")
    assert pf.check(one, healthy(disk_free_mib=0, stack_volumes=CLUSTER_VOLUMES)) == []
    # A volume counts only up to its share of the estimate: full overlays leave no room for new nodes.
    grown = tuple(dataclasses.replace(v, allocation_mib=9000) for v in CLUSTER_VOLUMES if v.name.endswith(".qcow2"))
    five = cluster_config(ssh_key, workerCount="5")  # needs 2048 + 6 x 2048
    assert pf.disk_held_mib(healthy(stack_volumes=grown)) == 2048 + 4 * 2048
    assert pf.check(five, healthy(disk_free_mib=2 * 2048, stack_volumes=grown)) == []
    problem = only(pf.check(five, healthy(disk_free_mib=4000, stack_volumes=grown)), "disk")
    assert_says(problem, ["4000 MiB free", "need about 14336 MiB", "volumes hold 10240 MiB already"], ["workerCount"])


HOST_KEY = HostKey(private="", public="ssh-ed25519 AAAAC3Nza head10")


def built(config: ClusterConfig, disk: str | None = None, description: str | None = None) -> StackDomain:
    """The control plane's domain as `config` built it (or with another disk / description)."""
    cp = config.control_plane
    made = identity.node_identity(config, cp, HOST_KEY)
    disk = identity.disk_volume_name(cp, made.generation) if disk is None else disk
    seed = identity.seed_volume_name(cp, made.generation)
    description = made.description if description is None else description
    return StackDomain(cp.libvirt_name, cp.memory_mib, True, (disk, seed), description, cp.vcpu, config.domain_type)


def plan(config: ClusterConfig) -> identity.NodeIdentity:
    return identity.node_identity(config, config.control_plane, HOST_KEY)


def test_a_change_that_would_rebuild_the_control_plane_is_refused(ssh_key: Path, config: ClusterConfig) -> None:
    running = healthy(stack_domains=(built(config),))
    assert pf.check(config, running, plan(config)) == []  # a re-run
    newer = cluster_config(ssh_key, kubernetesVersion="1.35.0")
    assert pf.check(newer, healthy(), plan(newer)) == []  # a first `up` builds whatever is configured
    problem = only(pf.check(newer, running, plan(newer)), "control-plane")
    assert_says(
        problem,
        ["t-head10 runs on head10-", "kube-on-air:kubernetesVersion: 1.34.2 -> 1.35.0", "new, empty cluster"],
        ["undo the change", "`pulumi destroy`, then `pulumi up`"],
    )
    rekeyed = identity.node_identity(config, config.control_plane, HostKey("", "ssh-ed25519 BBBB head10"))
    problem = only(pf.check(config, running, rekeyed), "control-plane")
    assert_says(problem, ["what the node is on the network or who logs in", "hostKeyDir"], ["pulumi destroy"])
    # Preflight cannot know what the program would build: it does not guess.
    assert pf.check(newer, running) == []


def test_a_control_plane_from_an_earlier_kube_on_air_is_not_rebuilt_silently(config: ClusterConfig) -> None:
    earlier = healthy(stack_domains=(built(config, disk="head10.qcow2", description=""),))
    problem = only(pf.check(config, earlier, plan(config)), "control-plane")
    assert_says(problem, ["head10.qcow2", "earlier kube-on-air"], ["kube-on-air version that built", "pulumi destroy"])


def test_a_control_plane_seeded_by_a_cloud_init_disk_is_not_given_a_new_domain_silently(
    config: ClusterConfig,
) -> None:
    """Before the seeds were volumes, the provider's CloudInitDisk was a cdrom, not among the domain's disk
    volumes: the same disk, but the seed disk the program now adds would replace the domain."""
    current = built(config)
    earlier = dataclasses.replace(current, disk_volumes=current.disk_volumes[:1])
    problem = only(pf.check(config, healthy(stack_domains=(earlier,)), plan(config)), "control-plane")
    assert_says(problem, ["earlier kube-on-air", "cloud-init disk", "new domain"], ["pulumi destroy"])
    assert pf.check(config, healthy(stack_domains=(current,)), plan(config)) == []


def test_workers_are_rebuilt_not_refused(ssh_key: Path, config: ClusterConfig) -> None:
    newer = cluster_config(ssh_key, kubernetesVersion="1.35.0")
    old_worker = dataclasses.replace(built(config), name="t-work11", disk_volumes=("work11-0123456789.qcow2",))
    facts = healthy(stack_domains=(old_worker, built(newer)))
    assert pf.check(newer, facts, plan(newer)) == []


@pytest.mark.parametrize(
    ("key", "value"), [("controlPlaneVcpu", "4"), ("controlPlaneMemoryMiB", "4096"), ("domainType", "qemu")]
)
def test_resizing_the_running_control_plane_is_a_reboot_not_refused(
    ssh_key: Path, config: ClusterConfig, key: str, value: str
) -> None:
    # Provider v0.8.1 makes a new domain for these, on the same disk: the cluster boots again on it, and
    # the Kubernetes provider, identified by that disk, is kept (components/cluster.py).
    running = healthy(stack_domains=(built(config),))
    resized = cluster_config(ssh_key, **{key: value})
    assert plan(resized).generation == plan(config).generation, "the same disk: only the domain changes"
    assert pf.check(resized, running, plan(resized)) == []


def test_worker_sizes_are_not_refused(ssh_key: Path, config: ClusterConfig) -> None:
    # A worker's new domain boots on its old disk and is still joined (docs/operations.md).
    worker = dataclasses.replace(built(config), name="t-work11", disk_volumes=("work11-0123456789.qcow2",), vcpu=1)
    resized = cluster_config(ssh_key, workerVcpu="2", workerMemoryMiB="4096")
    assert pf.check(resized, healthy(stack_domains=(built(config), worker)), plan(resized)) == []


def test_ssh_key_unreadable(config: ClusterConfig) -> None:
    error = f"Permission denied: {config.ssh_key_path}"
    problem = only(pf.check(config, healthy(ssh_key_error=error)), "ssh-key")
    assert_says(problem, [error], ["ssh-keygen -t ed25519", "kube-on-air:sshKeyPath"])


def test_network_overlaps_another_libvirt_network(config: ClusterConfig) -> None:
    other = LibvirtNetwork("koa-air", "172.31.255.0/24", "koa-air")
    facts = healthy(libvirt_networks=(other,), host_routes=(HostRoute("172.31.255.0/24", "koa-air"),))
    # The route belongs to that network's bridge: reported once, as the network.
    problem = only(pf.check(config, facts), "network")
    assert_says(
        problem, ["'koa-air'", "172.31.255.0/24"], ["pulumi config set kube-on-air:networkCidr 172.31.254.0/24"]
    )


def test_network_overlaps_a_host_route(config: ClusterConfig) -> None:
    facts = healthy(host_routes=(HostRoute("0.0.0.0/0", "eth0"), HostRoute("172.16.0.0/12", "wg0")))
    problem = only(pf.check(config, facts), "host-route")
    assert_says(problem, ["172.16.0.0/12 via wg0", "172.31.255.0/24"], ["kube-on-air:networkCidr"])
    # Nothing in 172.16/12 is free: the fix still names the key, without an example.
    assert "e.g." not in problem.fix


def test_our_own_bridge_route_is_not_a_collision(config: ClusterConfig) -> None:
    # A second `pulumi up`: our network exists and routes its range over our bridge.
    facts = healthy(host_routes=(HostRoute("172.31.255.0/24", config.bridge_name),))
    assert pf.check(config, facts) == []


def test_bridged_frames_through_the_hosts_iptables_are_refused(config: ClusterConfig) -> None:
    problem = only(pf.check(config, healthy(bridge_nf_call_iptables=True)), "bridge-netfilter")
    assert_says(
        problem,
        ["net.bridge.bridge-nf-call-iptables is 1", config.bridge_name, "masquerades"],
        ["sysctl -w net.bridge.bridge-nf-call-iptables=0", "/etc/sysctl.d/"],
    )
    # br_netfilter not loaded, or the setting off: nothing to say.
    assert pf.check(config, healthy(bridge_nf_call_iptables=False)) == []


def test_remote_uri_skips_local_checks(ssh_key: Path) -> None:
    remote = cluster_config(ssh_key, uri="qemu+ssh://admin@kvm1.example/system?keyfile=/k")
    # Every local fact says "broken": none of it describes the remote libvirt host.
    facts = healthy(
        remote=True,
        libvirt_uri=remote.libvirt_uri,
        kvm_verdicts=(NO_KVM_MODULE,),
        apparmor_pool_allowed=False,
        apparmor_qemu_pool_allowed=False,
        pool_blocked_dir="/root",
        selinux_mode="enforcing",
        mem_available_mib=1,
        disk_free_mib=1,
        host_routes=(HostRoute("172.31.0.0/16", "eth1"),),
    )
    assert pf.check(remote, facts) == []
    # What does apply remotely: libvirt, libvirt's own networks and KVM support, mkisofs and the key (local).
    broken = dataclasses.replace(
        facts,
        libvirt_kvm=False,
        libvirt_networks=(LibvirtNetwork("lab", "172.31.0.0/16", "virbr1"),),
        mkisofs_path=None,
        genisoimage_path=None,
        ssh_key_error="No such file or directory: /k",
    )
    assert [p.check for p in pf.check(remote, broken)] == ["kvm", "mkisofs", "ssh-key", "network"]
    unreachable = dataclasses.replace(facts, libvirt_reachable=False, libvirt_error="Host key verification failed.")
    problem = only(pf.check(remote, unreachable), "libvirt")
    assert_says(problem, ["kvm1.example", "Host key verification failed."], ["without a prompt"])


def test_error_lists_every_problem_and_the_skip_switch(config: ClusterConfig) -> None:
    facts = healthy(mkisofs_path=None, genisoimage_path=None, mem_available_mib=1, disk_free_mib=1)
    with pytest.raises(PreflightError) as caught:
        pf.run_preflight(config, facts)
    message = str(caught.value)
    assert "3 problem(s)" in message and pf.SKIP_ENV + "=1" in message
    for check in ("[mkisofs]", "[memory]", "[disk]"):
        assert check in message
    assert [p.check for p in caught.value.problems] == ["mkisofs", "memory", "disk"]


def test_should_run_honours_the_skip_variable(config: ClusterConfig) -> None:
    assert pf.should_run(config, {})
    assert pf.should_run(config, {pf.SKIP_ENV: "0"})
    assert not pf.should_run(config, {pf.SKIP_ENV: "1"})


def test_readme_gives_the_apparmor_fix_the_preflight_gives(ssh_key: Path) -> None:
    outside = cluster_config(ssh_key, poolPath=OUTSIDE_POOL)
    fix = only(pf.check(outside, healthy(apparmor_pool_allowed=False)), "apparmor").fix
    readme = (ROOT / "README.md").read_text()
    profiles = re.compile(r"/etc/apparmor\.d/[\w./-]+\w")
    assert set(profiles.findall(fix)) == set(profiles.findall(readme)) == {LOCAL_QEMU_ABSTRACTION}
    assert '/**" rwk,` in' in fix and f"/**\" rwk,' | sudo tee -a {LOCAL_QEMU_ABSTRACTION}" in readme
    # The README's command for the default stack is the one the preflight gives when QEMU's rule is missing.
    air = load({"sshKeyPath": str(ssh_key)}, stack="air")
    qemu_fix = only(pf.check(air, healthy(apparmor_qemu_pool_allowed=False)), "apparmor").fix
    command = f"echo '\"/var/lib/libvirt/images/kube-on-air-air/**\" rwk,' | sudo tee -a {LOCAL_QEMU_ABSTRACTION}"
    assert command in qemu_fix and f"\n{command}\n" in readme


def test_a_dev_kvm_qemu_cannot_open_stalls_domains_even_under_emulation(ssh_key: Path) -> None:
    """Measured here: root-only /dev/kvm (no udev) made libvirt re-probe QEMU and each create stall ~3 min."""
    facts = healthy(kvm_device_mode="crw------- root:root", qemu_kvm_accessible=False)
    for domain_type in ("kvm", "qemu"):
        problem = only(pf.check(cluster_config(ssh_key, domainType=domain_type), facts), "kvm")
        assert_says(
            problem,
            ["crw------- root:root", "libvirt-qemu", "stalls"],
            ["chgrp kvm /dev/kvm", "chmod 0660 /dev/kvm"],
        )
    # Unknown (no /dev/kvm, no QEMU account) never blocks; qemu:///session runs QEMU as you.
    assert pf.check(cluster_config(ssh_key), healthy(qemu_kvm_accessible=None)) == []
    session = cluster_config(ssh_key, uri="qemu:///session")
    assert pf.check(session, dataclasses.replace(facts, libvirt_uri="qemu:///session")) == []


# --- Kubernetes upgrades: kubeadm's rules, judged before anything is registered --------------------


def version_problems(
    ssh_key: Path, wanted: str, running: str | None, built: tuple[str, ...] = ()
) -> list[PreflightProblem]:
    config = cluster_config(ssh_key, kubernetesVersion=wanted, prebaked="true")
    return pf.check(config, healthy(cluster_version=running, releases_built=built, stack_domains=CLUSTER_VMS))


@pytest.mark.parametrize(
    ("wanted", "running", "built"),
    [
        ("1.34.2", "1.34.2", ()),  # nothing to upgrade: no release needed
        ("1.34.4", "1.34.2", ("1.34.4",)),  # a patch release, built on this host
        ("1.35.4", "1.34.4", ("1.34.4", "1.35.4")),  # the next minor
        ("1.34.4", None, ()),  # no running control plane (a first up) or no answer: nothing to judge
    ],
)
def test_an_upgrade_kubeadm_allows_passes(
    ssh_key: Path, wanted: str, running: str | None, built: tuple[str, ...]
) -> None:
    assert version_problems(ssh_key, wanted, running, built) == []


def test_a_downgrade_is_refused_with_the_running_version(ssh_key: Path) -> None:
    problem = only(version_problems(ssh_key, "1.34.2", "1.34.4", ("1.34.2",)), "kubernetes-version")
    assert_says(problem, ["kube-on-air:kubernetesVersion is 1.34.2", "runs v1.34.4", "never downgrades"], ["1.34.4"])


def test_a_skipped_minor_is_refused_naming_the_minor_to_go_through(ssh_key: Path) -> None:
    problem = only(version_problems(ssh_key, "1.36.1", "1.34.4", ("1.36.1",)), "kubernetes-version")
    assert_says(problem, ["is 1.36.1", "runs v1.34.4", "one minor at a"], ["a 1.35.x release first"])


def test_an_upgrade_without_its_release_on_this_host_names_make_release(ssh_key: Path) -> None:
    problem = only(version_problems(ssh_key, "1.34.4", "1.34.2", ("1.35.4",)), "kubernetes-version")
    assert_says(problem, ["holds no v1.34.4", "it holds: 1.35.4"], ["make release VERSION=1.34.4"])


def test_an_upgrade_of_nodes_that_installed_from_pkgs_k8s_io_is_refused(ssh_key: Path) -> None:
    config = cluster_config(ssh_key, kubernetesVersion="1.34.4", prebaked="false")
    problem = only(
        pf.check(config, healthy(cluster_version="1.34.2", releases_built=("1.34.4",))), "kubernetes-version"
    )
    assert_says(problem, ["prebaked false", "pkgs.k8s.io"], ["set it back", "1.34.2"])


def test_an_upgrade_and_new_workers_in_one_up_are_refused(ssh_key: Path) -> None:
    config = cluster_config(ssh_key, kubernetesVersion="1.34.4", prebaked="true", workerCount="2")
    running = (vm(config.control_plane.name, 2048), vm(config.workers[0].name, 1536))
    facts = healthy(cluster_version="1.34.2", releases_built=("1.34.4",), stack_domains=running)
    problem = only(pf.check(config, facts), "kubernetes-version")
    assert_says(problem, ["from 1.34.2 to 1.34.4", config.workers[1].name], ["one change per `up`"])
    all_there = (*running, vm(config.workers[1].name, 1536))
    assert pf.check(config, dataclasses.replace(facts, stack_domains=all_there)) == []
