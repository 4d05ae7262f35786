"""Host facts: parsers and probes on fake trees, and gathering on this real machine."""

from __future__ import annotations

import dataclasses
import http.server
import json
import os
import re
import shutil
import ssl
import tempfile
import threading
import time
import types
import typing
from pathlib import Path

import pytest

from components.config.settings import ClusterConfig, load
from components.preflight import checks as pf
from components.preflight import facts as hf
from components.preflight.facts import HostFacts, HostRoute, LibvirtNetwork, StackDomain, StackVolume
from tests.conftest import cluster_config
from tests.test_preflight import OUTSIDE_POOL, assert_says, only
from tools.dryrun import ROOT

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
    assert hf.apparmor_allows(VIRT_AA_HELPER_RULES, [path]) is allowed


def test_apparmor_pool_fact_reads_the_profile_and_its_local_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ssh_key: Path
) -> None:
    (tmp_path / "apparmor.d" / "local").mkdir(parents=True)
    profile = tmp_path / "apparmor.d" / "usr.lib.libvirt.virt-aa-helper"
    profile.write_text("profile virt-aa-helper {\n  /var/lib/libvirt/images/** r,\n}\n")
    monkeypatch.setattr(hf, "ETC", tmp_path)
    outside = cluster_config(ssh_key, poolPath=OUTSIDE_POOL)
    assert hf._apparmor_pool_allowed(outside) is False
    (tmp_path / "apparmor.d" / "local" / "usr.lib.libvirt.virt-aa-helper").write_text(f"{OUTSIDE_POOL}/** r,\n")
    assert hf._apparmor_pool_allowed(outside) is True
    profile.unlink()
    assert hf._apparmor_pool_allowed(outside) is None


# Lines of Debian 12's /etc/apparmor.d/abstractions/libvirt-qemu (libvirt 9.0) that match broad paths.
QEMU_ABSTRACTION_RULES = """
  / r, # harmless on any lsb compliant system
  /{,var/}tmp/ r,
  owner /{,var/}tmp/**/ r,
  audit deny /{var/,}run/qemu/*/*.so w,
  owner /var/lib/libvirt/qemu/nvram/*_VARS.fd rwk,
  #include <local/abstractions/libvirt-qemu>
"""
POOL = "/var/lib/libvirt/images/kube-on-air-t"  # the default poolPath of stack "t"


def qemu_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local: str | None) -> None:
    """A fake /etc with libvirt's QEMU abstraction and, unless None, its local file holding `local`."""
    for name in (hf.QEMU_ABSTRACTION, hf.QEMU_LOCAL_ABSTRACTION):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / hf.QEMU_ABSTRACTION).write_text(QEMU_ABSTRACTION_RULES)
    if local is not None:
        (tmp_path / hf.QEMU_LOCAL_ABSTRACTION).write_text(local)
    monkeypatch.setattr(hf, "ETC", tmp_path)


@pytest.mark.parametrize(
    ("local", "allowed"),
    [
        (f'"{POOL}/**" rwk,\n', True),  # the README's rule
        (f"{POOL}/* rwk,\n", True),  # the volumes are the pool's direct children
        (f"rwk {POOL}/**,\n", True),  # permissions first is a file rule too
        ("/var/lib/libvirt/images/** rwk,\n", True),
        ("/var/lib/libvirt/images/* rwk,\n", False),  # `*` stops at the pool directory
        ('"/srv/koa/**" rwk,\n', False),  # another pool's rule
        (f'"{POOL}/**" r,\n', False),  # read-only: QEMU writes the overlay
        (f'"{POOL}/**" rw,\n', False),  # no `k`: QEMU locks its images
        (f'"{POOL}/**" rk,\n', False),  # the overlay is written
        (f'"{POOL}/**" rk,\n"{POOL}/head10-*" rwk,\n', True),  # writable where it writes
        (f'"{POOL}/**" rk,\n"{POOL}/head10-[0-9a-f]*.qcow2" rwk,\n', False),  # the seed disk is writable too
        (f'"{POOL}/**" rwk,\ndeny {POOL}/*.iso k,\n', False),  # a deny takes away what it names
        (f'# "{POOL}/**" rwk,\n', False),  # commented out
        ("", False),  # the file Debian ships: empty
        (None, False),  # no local file: AppArmor still confines QEMU, and nothing lets it in
    ],
)
def test_apparmor_qemu_fact_reads_the_qemu_abstraction_and_its_local_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: ClusterConfig, local: str | None, allowed: bool
) -> None:
    assert config.pool_path == POOL
    qemu_rules(tmp_path, monkeypatch, local)
    assert hf._apparmor_qemu_pool_allowed(config) is allowed


def test_apparmor_qemu_fact_is_unknown_without_libvirts_policy_or_an_unreadable_local_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: ClusterConfig
) -> None:
    qemu_rules(tmp_path, monkeypatch, f'"{POOL}/**" rwk,\n')
    (tmp_path / hf.QEMU_ABSTRACTION).unlink()
    assert hf._apparmor_qemu_pool_allowed(config) is None
    (tmp_path / hf.QEMU_ABSTRACTION).write_text(QEMU_ABSTRACTION_RULES)
    (tmp_path / hf.QEMU_LOCAL_ABSTRACTION).unlink()
    (tmp_path / hf.QEMU_LOCAL_ABSTRACTION).mkdir()  # there but unreadable as a file, even for root
    assert hf._apparmor_qemu_pool_allowed(config) is None


def test_gather_reads_qemus_rules_for_a_local_uri_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ssh_key: Path, config: ClusterConfig
) -> None:
    monkeypatch.setenv("PATH", "")  # no virsh: nothing to wait for
    qemu_rules(tmp_path, monkeypatch, "")
    assert hf.gather_host_facts(config).apparmor_qemu_pool_allowed is False
    remote = cluster_config(ssh_key, uri="qemu+ssh://nobody@kvm1.example/system")
    assert hf.gather_host_facts(remote).apparmor_qemu_pool_allowed is None


SHIPPED_QEMU_ABSTRACTION = Path("/etc") / hf.QEMU_ABSTRACTION


@pytest.mark.skipif(not SHIPPED_QEMU_ABSTRACTION.is_file(), reason="libvirt's AppArmor abstraction not installed")
def test_the_shipped_qemu_abstraction_needs_the_readmes_rule(ssh_key: Path, tmp_path: Path) -> None:
    # libvirt's own rules on this machine do not reach the pool; the README's line for the default stack does.
    rules = SHIPPED_QEMU_ABSTRACTION.read_text()
    readme_rule = re.search(r"^echo '(.+)' \| sudo tee -a ", (ROOT / "README.md").read_text(), re.MULTILINE)
    assert readme_rule is not None
    air = load({"sshKeyPath": str(ssh_key)}, stack="air")
    for path, needed in hf.qemu_volume_permissions(air).items():
        assert not hf.apparmor_allows(rules, [path], needed)
        assert hf.apparmor_allows(rules + "\n" + readme_rule.group(1), [path], needed), path


def test_pool_blocked_dir_on_a_real_tree(ssh_key: Path) -> None:
    # Outside pytest's 0700 tmp root; nobody owns nothing here, so only the "other" bits count for it.
    with tempfile.TemporaryDirectory() as top:
        Path(top).chmod(0o711)
        locked = Path(top) / "locked"
        (locked / "pool").mkdir(parents=True)
        locked.chmod(0o700)
        config = cluster_config(ssh_key, poolPath=str(locked / "pool" / "koa"))
        assert hf._pool_blocked_dir(config, "nobody") == f"{locked} (mode 0700)"
        locked.chmod(0o711)
        assert hf._pool_blocked_dir(config, "nobody") == ""
        assert hf._pool_blocked_dir(config, None) is None


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
    assert hf.is_remote_uri(uri) is remote


def test_parsers() -> None:
    route_table = (
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        "koa-air\t00FF1FAC\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
    )
    assert hf.parse_proc_net_route(route_table) == (
        HostRoute("0.0.0.0/0", "eth0"),
        HostRoute("172.31.255.0/24", "koa-air"),
    )
    xml = (
        "<network><name>lab</name><bridge name='virbr9'/>"
        "<ip family='ipv6' address='fd00::1' prefix='64'/><ip address='10.9.0.1' prefix='16'/></network>"
    )
    assert hf.parse_network_xml(xml) == LibvirtNetwork("lab", "10.9.0.0/16", "virbr9")
    assert hf.parse_network_xml("<network><name>br</name><forward mode='bridge'/></network>") is None


def provider_domain_xml(name: str, pool: str, memory: str = "<memory unit='KiB'>2097152</memory>") -> str:
    """A domain as provider v0.8.1 defines it: volume_id disks (the node's, then its seed) by pool and volume."""
    return (
        f"<domain type='kvm'><name>{name}</name>{memory}<vcpu placement='static'>2</vcpu><devices>"
        f"<disk type='volume' device='disk'><source pool='{pool}' volume='{name}-0123456789.qcow2'/></disk>"
        f"<disk type='volume' device='disk'><source pool='{pool}' volume='{name}-cidata-0123456789.iso'/></disk>"
        "</devices></domain>"
    )


def test_domain_and_volume_parsers() -> None:
    volumes = ("head10-0123456789.qcow2", "head10-cidata-0123456789.iso")
    ours = hf.parse_domain_xml(provider_domain_xml("head10", "koa-t"), "koa-t", running=["head10"])
    assert ours == StackDomain("head10", 2048, True, volumes, "", vcpu=2, domain_type="kvm")
    other_stack = provider_domain_xml("head10", "koa-lab", "<memory unit='MiB'>4096</memory>")
    assert hf.parse_domain_xml(other_stack, "koa-lab", running=[]) == StackDomain(
        "head10", 4096, False, volumes, "", vcpu=2, domain_type="kvm"
    )
    # An earlier kube-on-air's seed, the provider's cloud-init disk: a cdrom, not among the disk volumes.
    earlier = provider_domain_xml("head10", "koa-t").replace(
        "device='disk'><source pool='koa-t' volume='head10-cidata",
        "device='cdrom'><source pool='koa-t' volume='head10-seed",
    )
    assert hf.parse_domain_xml(earlier, "koa-t", running=[]) == StackDomain(
        "head10", 2048, False, volumes[:1], "", vcpu=2, domain_type="kvm"
    )
    assert hf.parse_domain_xml(other_stack, "koa-t", running=["head10"]) is None
    # `virsh -q vol-list --details` as libvirt 9 prints it.
    listing = (
        " base.qcow2         /var/lib/libvirt/images/kube-on-air-t/base.qcow2         file   2.00 GiB    900.00 MiB\n"
        " head10-abc.qcow2   /var/lib/libvirt/images/kube-on-air-t/head10-abc.qcow2   file   20.00 GiB   1.76 GiB\n"
        " head10-seed.iso    /var/lib/libvirt/images/kube-on-air-t/head10-seed.iso    file   364.00 KiB  364.00 KiB\n"
    )
    assert hf.parse_volume_list(listing) == (
        StackVolume("base.qcow2", 900),
        StackVolume("head10-abc.qcow2", 1802),
        StackVolume("head10-seed.iso", 0),
    )


def test_subprocess_timeout_kills_the_whole_group() -> None:
    # A grandchild holding the pipes (ssh under virsh) must not keep us waiting.
    started = time.monotonic()
    code, _, error = hf._run(["sh", "-c", "sleep 30 & sleep 30"], timeout=0.3)
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
    facts = hf.gather_host_facts(config)
    elapsed = time.monotonic() - started
    print(f"\ngathered in {elapsed:.3f} s\n{hf.describe(facts)}")
    assert elapsed < 2 * hf.VIRSH_TIMEOUT_S + 2  # at most two virsh calls, each bounded
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
    facts = hf.gather_host_facts(config)
    assert time.monotonic() - started < 2
    assert_concrete_or_unknown(facts)
    assert facts.virsh_path is None and facts.libvirt_reachable is None and "not on PATH" in facts.libvirt_error
    assert facts.mkisofs_path is None
    checks = [p.check for p in pf.check(config, facts)]
    assert "libvirt" in checks and "mkisofs" in checks


def test_gather_records_an_unreadable_key(ssh_key: Path, tmp_path: Path) -> None:
    copy = tmp_path / "id"
    shutil.copy(ssh_key, copy)
    shutil.copy(f"{ssh_key}.pub", f"{copy}.pub")
    config = cluster_config(copy)
    os.unlink(copy)
    facts = hf.gather_host_facts(config)
    assert facts.ssh_key_error is not None and str(copy) in facts.ssh_key_error


def test_gather_for_a_remote_uri_reads_nothing_local(ssh_key: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")  # no virsh, so no SSH connection is attempted
    remote = cluster_config(ssh_key, uri="qemu+ssh://nobody@kvm1.example/system")
    facts = hf.gather_host_facts(remote)
    assert facts.remote is True
    local = ["kvm_accessible", "kvm_verdicts", "apparmor_enabled", "selinux_mode", "mem_available_mib", "host_routes"]
    assert all(getattr(facts, name) is None for name in local)
    assert facts.ssh_key_error is None  # the key is on this machine either way


@pytest.mark.skipif(shutil.which("virsh") is None, reason="virsh not installed")
def test_gather_through_real_virsh_with_the_test_driver(ssh_key: Path) -> None:
    # libvirt's in-process test driver: real virsh, no daemon; it has a 'default' network on 192.168.122.0/24.
    clashing = cluster_config(ssh_key, uri="test:///default", networkCidr="192.168.122.0/24")
    facts = hf.gather_host_facts(clashing)
    assert facts.libvirt_reachable is True and facts.libvirt_kvm is False
    assert facts.libvirt_networks == (LibvirtNetwork("default", "192.168.122.0/24", "virbr0"),)
    problems = [p for p in pf.check(clashing, facts) if p.check == "network"]
    assert_says(only(problems, "network"), ["'default'", "192.168.122.0/24"], ["kube-on-air:networkCidr"])
    # A first `up`: the stack's pool does not exist (vol-list fails inside the batch), which is no failure.
    assert facts.stack_domains == () and facts.stack_volumes == ()


# A libvirt host for the test driver after this stack's first `up`, beside another stack's VM.
TEST_DRIVER_HOST = """<node>
  <domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
    <name>t-head10</name>
    <description>{"kube-on-air": "t/head10"}</description>
    <memory unit='MiB'>2048</memory>
    <vcpu>2</vcpu>
    <os><type>hvm</type></os>
    <devices>
      <disk type='volume' device='disk'><source pool='koa-t' volume='head10-abc.qcow2'/><target dev='vda'/></disk>
      <disk type='volume' device='cdrom'><source pool='koa-t' volume='head10-seed-abc.iso'/><target dev='hdd'/></disk>
    </devices>
  </domain>
  <domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
    <name>t-work11</name>
    <memory unit='KiB'>1572864</memory>
    <os><type>hvm</type></os>
    <devices>
      <disk type='volume' device='disk'><source pool='koa-t' volume='work11-abc.qcow2'/><target dev='vda'/></disk>
    </devices>
    <test:runstate>5</test:runstate>
  </domain>
  <domain type='test'>
    <name>lab-head10</name>
    <memory unit='MiB'>4096</memory>
    <os><type>hvm</type></os>
    <devices>
      <disk type='volume' device='disk'><source pool='koa-lab' volume='head10-abc.qcow2'/><target dev='vda'/></disk>
    </devices>
  </domain>
  <pool type='dir'>
    <name>koa-t</name>
    <target><path>/var/lib/libvirt/images/kube-on-air-t</path></target>
    <volume type='file'>
      <name>base.qcow2</name><capacity unit='GiB'>2</capacity><allocation unit='MiB'>900</allocation>
    </volume>
    <volume type='file'>
      <name>head10-abc.qcow2</name><capacity unit='GiB'>20</capacity><allocation unit='MiB'>1800</allocation>
    </volume>
  </pool>
</node>
"""


@pytest.mark.skipif(shutil.which("virsh") is None, reason="virsh not installed")
def test_gather_reads_this_stacks_vms_and_volumes_through_real_virsh(ssh_key: Path, tmp_path: Path) -> None:
    host = tmp_path / "host.xml"
    host.write_text(TEST_DRIVER_HOST)
    facts = hf.gather_host_facts(cluster_config(ssh_key, uri=f"test://{host}"))
    assert facts.libvirt_reachable is True
    assert sorted(facts.stack_domains or (), key=lambda d: d.name) == [
        StackDomain("t-head10", 2048, True, ("head10-abc.qcow2",), '{"kube-on-air": "t/head10"}', 2, "test"),
        StackDomain("t-work11", 1536, False, ("work11-abc.qcow2",), "", 1, "test"),  # shut off; libvirt's default vcpu
    ]
    assert facts.stack_volumes == (StackVolume("base.qcow2", 900), StackVolume("head10-abc.qcow2", 1802))


def test_qemu_may_open_dev_kvm_through_its_group_only_when_the_mode_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QEMU runs as its account with that account's groups: owner, group and other bits decide."""
    device = tmp_path / "kvm"
    device.write_text("")
    monkeypatch.setattr(hf, "DEV_KVM", device)
    monkeypatch.setattr(hf, "_qemu_conf_value", lambda key: None)
    nogroup = 65534  # the group of the `nobody` account; root's group 0 is not one of its groups
    for owner_group, mode, expected in (
        (0, 0o600, False),
        (0, 0o606, True),
        (nogroup, 0o660, True),
        (nogroup, 0o600, False),
    ):
        os.chown(device, 0, owner_group)
        device.chmod(mode)
        assert hf._qemu_kvm_accessible("nobody") is expected, (owner_group, oct(mode))
    assert hf._qemu_kvm_accessible("root") is True
    assert hf._kvm_device_mode() == "-rw------- root:nogroup"
    # qemu.conf's `group` is one more group QEMU runs with.
    os.chown(device, 0, 0)
    device.chmod(0o660)
    assert hf._qemu_kvm_accessible("nobody") is False
    monkeypatch.setattr(hf, "_qemu_conf_value", lambda key: "root" if key == "group" else None)
    assert hf._qemu_kvm_accessible("nobody") is True


# ---- KVM: libvirt's own verdict (virt-host-validate) -------------------------------------------------

# `virt-host-validate qemu` on a kvm-pvm machine (this workshop's), and on a host whose kvm module is not loaded.
VALIDATE_KVM_PVM = """\
  QEMU: Checking for hardware virtualization                                 : FAIL (Host not compatible with KVM; \
HW virtualization CPU features not found. Only emulated CPUs are available; performance will be significantly limited)
  QEMU: Checking if device /dev/vhost-net exists                             : WARN (Load the 'vhost_net' module)
  QEMU: Checking for cgroup 'memory' controller support                      : PASS
"""
VALIDATE_NO_MODULE = """\
  QEMU: Checking for hardware virtualization                                 : PASS
  QEMU: Checking if device /dev/kvm exists                                   : FAIL (Check that the 'kvm-intel' or \
'kvm-amd' modules are loaded & the BIOS has enabled virtualization)
  QEMU: Checking for cgroup 'blkio' controller support                       : FAIL (Enable 'blkio' in kernel Kconfig)
"""


def test_only_the_failed_kvm_checks_of_virt_host_validate_count() -> None:
    (pvm,) = hf.parse_kvm_verdicts(VALIDATE_KVM_PVM)
    assert pvm.startswith("hardware virtualization: Host not compatible with KVM")
    # A failed cgroup controller is not a KVM problem, and a WARN is not a failure.
    assert hf.parse_kvm_verdicts(VALIDATE_NO_MODULE) == (
        "device /dev/kvm exists: Check that the 'kvm-intel' or 'kvm-amd' modules are loaded & the BIOS has enabled "
        "virtualization",
    )
    assert hf.parse_kvm_verdicts(VALIDATE_NO_MODULE.replace(": FAIL (Check", ": WARN (Check")) == ()


@pytest.mark.skipif(shutil.which("virt-host-validate") is None, reason="virt-host-validate not installed")
def test_virt_host_validate_on_this_machine_agrees_with_its_cpu(ssh_key: Path) -> None:
    cpu_flags = re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    hardware = bool(cpu_flags and {"vmx", "svm"} & set(cpu_flags.group(1).split()))
    verdicts = hf.gather_host_facts(cluster_config(ssh_key, domainType="kvm")).kvm_verdicts
    assert verdicts is not None, "virt-host-validate answered"
    assert any(v.startswith("hardware virtualization") for v in verdicts) is not hardware, verdicts
    # With software emulation nothing asks about KVM.
    assert hf.gather_host_facts(cluster_config(ssh_key, domainType="qemu")).kvm_verdicts is None


def test_the_running_clusters_version_is_read_from_its_api_servers_version(tmp_path: Path) -> None:
    from tests.test_api_steady import self_signed

    cert, key = self_signed(tmp_path, "kube-apiserver", "IP:127.0.0.1")

    class Version(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"gitVersion": "v1.34.2", "major": "1"}).encode() if self.path == "/version" else b"{}"
            self.send_response(200 if self.path == "/version" else 404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Version)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # Its own CA, unknown to the host: the public version is read all the same.
        assert hf.api_server_version(f"https://127.0.0.1:{server.server_address[1]}") == "1.34.2"
    finally:
        server.shutdown()


def test_the_version_is_asked_only_of_a_running_control_plane(ssh_key: Path) -> None:
    config = cluster_config(ssh_key)
    cp = config.control_plane.libvirt_name
    assert hf.control_plane_running(config, (StackDomain(cp, 2048, True, (), ""),))
    assert not hf.control_plane_running(config, (StackDomain(cp, 2048, False, (), ""),))
    assert not hf.control_plane_running(config, (StackDomain("t-work11", 1536, True, (), ""),))
    assert not hf.control_plane_running(config, None)


def test_releases_are_those_whose_build_finished(tmp_path: Path) -> None:
    for version, finished in (("1.34.4", True), ("1.35.4", False), ("1.36.1", True)):
        (tmp_path / f"v{version}" / "pieces").mkdir(parents=True)
        if finished:
            (tmp_path / f"v{version}" / "release.json").write_text("{}")
    assert hf.releases_built(tmp_path) == ("1.34.4", "1.36.1")
    assert hf.releases_built(tmp_path / "none") == ()
