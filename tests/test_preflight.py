"""Host preflight: one fake-host test per failure, plus gathering facts on this real machine."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
import time
import types
import typing
from pathlib import Path
from typing import Any

import pytest

from components import preflight as pf
from components.config import ClusterConfig, load
from components.preflight import HostFacts, HostRoute, LibvirtNetwork, PreflightError, PreflightProblem
from tests.harness import ROOT, make_ssh_key

OUTSIDE_POOL = "/data/koa"
LOCAL_QEMU_ABSTRACTION = "/etc/apparmor.d/local/abstractions/libvirt-qemu"  # read by every VM's profile


@pytest.fixture(scope="module")
def key_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_ssh_key(tmp_path_factory.mktemp("ssh")))


def make_config(key_path: str, uri: str | None = None, **raw: str) -> ClusterConfig:
    return load({"sshKeyPath": key_path, **raw}, stack="t", libvirt_uri=uri)


@pytest.fixture
def config(key_path: str) -> ClusterConfig:
    return make_config(key_path)


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
        mkisofs_path="/usr/bin/mkisofs",
        genisoimage_path="/usr/bin/genisoimage",
        xorrisofs_path=None,
        ssh_key_error=None,
        kvm_device=True,
        kvm_accessible=True,
        machine="x86_64",
        cpu_virt_flag="vmx",
        cpu_hypervisor=False,
        kvm_modules=("kvm", "kvm_intel"),
        kvm_nested="Y",
        apparmor_enabled=True,
        security_driver="",
        apparmor_pool_allowed=True,
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


def test_virsh_missing_is_unknown_not_a_problem(config: ClusterConfig) -> None:
    facts = healthy(
        virsh_path=None, libvirt_reachable=None, libvirt_error="virsh is not on PATH", libvirt_networks=None
    )
    assert pf.check(config, facts) == []


def test_kvm_missing_with_domain_type_kvm(config: ClusterConfig) -> None:
    facts = healthy(kvm_device=False, kvm_accessible=False, cpu_virt_flag="", cpu_hypervisor=True, kvm_modules=())
    problem = only(pf.check(config, facts), "kvm")
    assert_says(
        problem, ["/dev/kvm does not exist", "neither vmx nor svm", "itself a VM"], ["nested=1", "domainType to qemu"]
    )


def test_kvm_module_not_loaded_says_modprobe(config: ClusterConfig) -> None:
    problem = only(pf.check(config, healthy(kvm_device=False, cpu_virt_flag="svm", kvm_modules=())), "kvm")
    assert_says(problem, ["CPU flags: svm", "kvm modules loaded: none"], ["modprobe kvm_amd", "domainType to qemu"])


def test_kvm_missing_but_domain_type_qemu_is_fine(key_path: str) -> None:
    qemu = make_config(key_path, domainType="qemu")
    assert pf.check(qemu, healthy(kvm_device=False, kvm_accessible=False, cpu_virt_flag="")) == []


def test_kvm_without_vmx_or_svm_is_not_hardware_kvm(config: ClusterConfig) -> None:
    # This machine: /dev/kvm from kvm-pvm, no vmx/svm; type='kvm' domains die with "KVM internal error".
    facts = healthy(cpu_virt_flag="", cpu_hypervisor=True, kvm_modules=("kvm", "kvm_pvm"), kvm_nested=None)
    problem = only(pf.check(config, facts), "kvm")
    assert_says(problem, ["lacks vmx/svm", "kvm_pvm"], ["kube-on-air:domainType to qemu"])


def test_kvm_not_writable_matters_only_for_session(key_path: str) -> None:
    facts = healthy(kvm_accessible=False)
    assert pf.check(make_config(key_path), facts) == []  # qemu:///system: libvirtd opens /dev/kvm
    session = make_config(key_path, uri="qemu:///session")
    problem = only(pf.check(session, dataclasses.replace(facts, libvirt_uri="qemu:///session")), "kvm")
    assert_says(problem, ["not readable and writable"], ["usermod -aG kvm"])


def test_mkisofs_missing(config: ClusterConfig) -> None:
    problem = only(pf.check(config, healthy(mkisofs_path=None, genisoimage_path=None)), "mkisofs")
    assert_says(problem, ["mkisofs is not on PATH"], ["apt-get install genisoimage"])


def test_mkisofs_missing_but_genisoimage_present_suggests_a_link(config: ClusterConfig) -> None:
    problem = only(pf.check(config, healthy(mkisofs_path=None)), "mkisofs")
    assert_says(problem, ["found /usr/bin/genisoimage"], ["ln -s /usr/bin/genisoimage /usr/local/bin/mkisofs"])


def test_apparmor_denies_pool_outside_libvirt_images(key_path: str) -> None:
    outside = make_config(key_path, poolPath=OUTSIDE_POOL)
    problem = only(pf.check(outside, healthy(apparmor_pool_allowed=False)), "apparmor")
    assert_says(
        problem,
        ["AppArmor confines QEMU", f"{OUTSIDE_POOL}/*", "Permission denied"],
        ["kube-on-air:poolPath under /var/lib/libvirt/images/", LOCAL_QEMU_ABSTRACTION, '/**" rwk,'],
    )


@pytest.mark.parametrize(("enabled", "driver"), [(False, ""), (True, "none"), (True, "selinux"), (None, "")])
def test_apparmor_not_confining_qemu_is_fine(key_path: str, enabled: bool | None, driver: str) -> None:
    outside = make_config(key_path, poolPath=OUTSIDE_POOL)
    facts = healthy(apparmor_enabled=enabled, security_driver=driver, apparmor_pool_allowed=False)
    assert pf.check(outside, facts) == []


# The file rules of Debian 12's /etc/apparmor.d/usr.lib.libvirt.virt-aa-helper (libvirt 9.0).
VIRT_AA_HELPER_RULES = """
  audit deny @{HOME}/.* mrwkl,
  audit deny @{HOME}/.*/ rw,
  audit deny @{HOME}/.*/** mrwkl,
  @{HOME}/ r,
  @{HOME}/** r,
  /var/lib/libvirt/images/ r,
  /var/lib/libvirt/images/** r,
  /{media,mnt,opt,srv}/** r,
  /**.img r,
  /**.qcow{,2} r,
  /**.[iI][sS][oO] r,
  /**/disk{,.*} r,
"""


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/var/lib/libvirt/images/koa-t/base", True),
        ("/srv/koa/base", True),
        ("/home/alice/koa/base", True),
        ("/data/koa/base.qcow2", True),  # extension rules cover our volume names anywhere
        ("/data/koa/seed.ISO", True),
        ("/data/koa/base", False),
        ("/root/.local/koa/base.qcow2", False),  # the deny rule wins
    ],
)
def test_apparmor_glob_matches_like_apparmor(path: str, allowed: bool) -> None:
    assert pf.apparmor_allows(VIRT_AA_HELPER_RULES, [path]) is allowed


def test_apparmor_pool_fact_reads_the_profile_and_its_local_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key_path: str
) -> None:
    (tmp_path / "apparmor.d" / "local").mkdir(parents=True)
    profile = tmp_path / "apparmor.d" / "usr.lib.libvirt.virt-aa-helper"
    profile.write_text("profile virt-aa-helper {\n  /var/lib/libvirt/images/** r,\n}\n")
    monkeypatch.setattr(pf, "ETC", tmp_path)
    outside = make_config(key_path, poolPath=OUTSIDE_POOL)
    assert pf._apparmor_pool_allowed(outside) is False
    (tmp_path / "apparmor.d" / "local" / "usr.lib.libvirt.virt-aa-helper").write_text(f"{OUTSIDE_POOL}/** r,\n")
    assert pf._apparmor_pool_allowed(outside) is True
    profile.unlink()
    assert pf._apparmor_pool_allowed(outside) is None


def test_pool_directory_qemu_cannot_enter(key_path: str) -> None:
    home = make_config(key_path, poolPath="/root/koa")
    problem = only(pf.check(home, healthy(pool_blocked_dir="/root (mode 0700)")), "pool-permissions")
    assert_says(problem, ["libvirt-qemu", "/root (mode 0700)", "/root/koa"], ["chmod o+x", "kube-on-air:poolPath"])


def test_pool_blocked_dir_on_a_real_tree(key_path: str) -> None:
    # Outside pytest's 0700 tmp root; nobody owns nothing here, so only the "other" bits count for it.
    with tempfile.TemporaryDirectory() as top:
        Path(top).chmod(0o711)
        locked = Path(top) / "locked"
        (locked / "pool").mkdir(parents=True)
        locked.chmod(0o700)
        config = make_config(key_path, poolPath=str(locked / "pool" / "koa"))
        assert pf._pool_blocked_dir(config, "nobody") == f"{locked} (mode 0700)"
        locked.chmod(0o711)
        assert pf._pool_blocked_dir(config, "nobody") == ""
        assert pf._pool_blocked_dir(config, None) is None


def test_session_uri_skips_system_confinement_checks(key_path: str) -> None:
    session = make_config(key_path, uri="qemu:///session", poolPath=OUTSIDE_POOL)
    facts = healthy(apparmor_pool_allowed=False, pool_blocked_dir="/root (mode 0700)", selinux_mode="enforcing")
    assert pf.check(session, facts) == []


def test_selinux_enforcing_with_pool_outside_libvirt_images(key_path: str) -> None:
    outside = make_config(key_path, poolPath=OUTSIDE_POOL)
    problem = only(pf.check(outside, healthy(selinux_mode="enforcing")), "selinux")
    assert_says(problem, ["SELinux is enforcing", OUTSIDE_POOL], ["semanage fcontext -a -t virt_image_t", "restorecon"])
    assert pf.check(make_config(key_path), healthy(selinux_mode="enforcing")) == []


def test_memory_short(config: ClusterConfig) -> None:
    # Defaults: control plane 2048 MiB + 3 workers x 1536 MiB.
    problem = only(pf.check(config, healthy(mem_available_mib=4000)), "memory")
    assert_says(problem, ["4000 MiB", "4 nodes need 6656 MiB"], ["kube-on-air:workerCount", "workerMemoryMiB"])


def test_disk_short(config: ClusterConfig) -> None:
    problem = only(pf.check(config, healthy(disk_free_mib=3000)), "disk")
    assert_says(problem, ["/var/lib/libvirt/images has 3000 MiB free", "need about 10240 MiB"], ["poolPath"])


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


def test_remote_uri_skips_local_checks(key_path: str) -> None:
    remote = make_config(key_path, uri="qemu+ssh://admin@kvm1.example/system?keyfile=/k")
    # Every local fact says "broken": none of it describes the remote libvirt host.
    facts = healthy(
        remote=True,
        libvirt_uri=remote.libvirt_uri,
        kvm_device=False,
        cpu_virt_flag="",
        apparmor_pool_allowed=False,
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
        ssh_key_error="No such file or directory: /k",
    )
    assert [p.check for p in pf.check(remote, broken)] == ["kvm", "mkisofs", "ssh-key", "network"]
    unreachable = dataclasses.replace(facts, libvirt_reachable=False, libvirt_error="Host key verification failed.")
    problem = only(pf.check(remote, unreachable), "libvirt")
    assert_says(problem, ["kvm1.example", "Host key verification failed."], ["without a prompt"])


def test_error_lists_every_problem_and_the_skip_switch(config: ClusterConfig) -> None:
    facts = healthy(mkisofs_path=None, mem_available_mib=1, disk_free_mib=1)
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


@pytest.mark.parametrize(
    ("uri", "remote"),
    [
        ("qemu:///system", False),
        ("qemu:///session", False),
        ("qemu+unix:///system", False),
        ("qemu+ssh://root@h/system?keyfile=/k&sshauth=privkey", True),
        ("qemu+tcp://h/system", True),
        ("qemu://h/system", True),
    ],
)
def test_uri_locality(uri: str, remote: bool) -> None:
    assert pf.is_remote_uri(uri) is remote


def test_parsers() -> None:
    route_table = (
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        "koa-air\t00FF1FAC\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
    )
    assert pf.parse_proc_net_route(route_table) == (
        HostRoute("0.0.0.0/0", "eth0"),
        HostRoute("172.31.255.0/24", "koa-air"),
    )
    xml = (
        "<network><name>lab</name><bridge name='virbr9'/>"
        "<ip family='ipv6' address='fd00::1' prefix='64'/><ip address='10.9.0.1' prefix='16'/></network>"
    )
    assert pf.parse_network_xml(xml) == LibvirtNetwork("lab", "10.9.0.0/16", "virbr9")
    assert pf.parse_network_xml("<network><name>br</name><forward mode='bridge'/></network>") is None


def test_subprocess_timeout_kills_the_whole_group() -> None:
    # A grandchild holding the pipes (ssh under virsh) must not keep us waiting.
    started = time.monotonic()
    code, _, error = pf._run(["sh", "-c", "sleep 30 & sleep 30"], timeout=0.3)
    assert code is None and "timed out" in error
    assert time.monotonic() - started < 5


# --- this machine -----------------------------------------------------------------------------


def assert_concrete_or_unknown(facts: HostFacts) -> None:
    hints = typing.get_type_hints(HostFacts)
    for field in dataclasses.fields(HostFacts):
        value = getattr(facts, field.name)
        hint = hints[field.name]
        allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        concrete = tuple(typing.get_origin(t) or t for t in allowed if t is not type(None))
        assert (value is None and type(None) in allowed) or isinstance(value, concrete), (field.name, value)


def test_gather_on_this_machine(config: ClusterConfig) -> None:
    started = time.monotonic()
    facts = pf.gather_host_facts(config)
    elapsed = time.monotonic() - started
    print(f"\ngathered in {elapsed:.3f} s\n{pf.describe(facts)}")
    assert elapsed < 2 * pf.VIRSH_TIMEOUT_S + 2  # at most two virsh calls, each bounded
    assert_concrete_or_unknown(facts)
    assert facts.remote is False
    assert facts.ssh_key_error is None
    assert facts.mem_available_mib is not None and facts.mem_available_mib > 0
    assert facts.disk_probe_path is not None and Path(facts.disk_probe_path).exists()
    assert facts.host_routes is not None
    if facts.virsh_path is None:
        assert facts.libvirt_reachable is None and "virsh" in facts.libvirt_error
    elif facts.libvirt_reachable is False:
        assert facts.libvirt_error  # virsh's complaint is kept for the message
    for problem in pf.check(config, facts):  # whatever this host lacks is worded completely
        assert problem.check and problem.observed and problem.fix


def test_gather_without_any_tools_on_path(config: ClusterConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    started = time.monotonic()
    facts = pf.gather_host_facts(config)
    assert time.monotonic() - started < 2
    assert_concrete_or_unknown(facts)
    assert facts.virsh_path is None and facts.libvirt_reachable is None and "not on PATH" in facts.libvirt_error
    assert facts.mkisofs_path is None
    assert "mkisofs" in [p.check for p in pf.check(config, facts)]


def test_gather_records_an_unreadable_key(key_path: str, tmp_path: Path) -> None:
    copy = tmp_path / "id"
    shutil.copy(key_path, copy)
    shutil.copy(key_path + ".pub", str(copy) + ".pub")
    config = make_config(str(copy))
    os.unlink(copy)
    facts = pf.gather_host_facts(config)
    assert facts.ssh_key_error is not None and str(copy) in facts.ssh_key_error


def test_gather_for_a_remote_uri_reads_nothing_local(key_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")  # no virsh, so no SSH connection is attempted
    remote = make_config(key_path, uri="qemu+ssh://nobody@kvm1.example/system")
    facts = pf.gather_host_facts(remote)
    assert facts.remote is True
    local = ["kvm_device", "cpu_virt_flag", "apparmor_enabled", "selinux_mode", "mem_available_mib", "host_routes"]
    assert all(getattr(facts, name) is None for name in local)
    assert facts.ssh_key_error is None  # the key is on this machine either way


@pytest.mark.skipif(shutil.which("virsh") is None, reason="virsh not installed")
def test_gather_through_real_virsh_with_the_test_driver(key_path: str) -> None:
    # libvirt's in-process test driver: real virsh, no daemon; it has a 'default' network on 192.168.122.0/24.
    clashing = make_config(key_path, uri="test:///default", networkCidr="192.168.122.0/24")
    facts = pf.gather_host_facts(clashing)
    assert facts.libvirt_reachable is True and facts.libvirt_kvm is False
    assert facts.libvirt_networks == (LibvirtNetwork("default", "192.168.122.0/24", "virbr0"),)
    problems = [p for p in pf.check(clashing, facts) if p.check == "network"]
    assert_says(only(problems, "network"), ["'default'", "192.168.122.0/24"], ["kube-on-air:networkCidr"])


def test_readme_gives_the_apparmor_fix_the_preflight_gives(key_path: str) -> None:
    outside = make_config(key_path, poolPath=OUTSIDE_POOL)
    fix = only(pf.check(outside, healthy(apparmor_pool_allowed=False)), "apparmor").fix
    readme = (ROOT / "README.md").read_text()
    profiles = re.compile(r"/etc/apparmor\.d/[\w./-]+\w")
    assert set(profiles.findall(fix)) == set(profiles.findall(readme)) == {LOCAL_QEMU_ABSTRACTION}
    assert '/**" rwk,` in' in fix and f"/**\" rwk,' | sudo tee -a {LOCAL_QEMU_ABSTRACTION}" in readme
