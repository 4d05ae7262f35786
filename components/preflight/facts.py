"""Host facts: what preflight reads from this machine and from libvirt, and nothing else.

Ours where no upstream checker answers: libvirt's `virt-host-validate` judges KVM (used here), but not
this stack's pool path (AppArmor, SELinux, directory permissions), its memory and disk, its address
range against other networks and routes, or what already runs of it; kubeadm's preflight runs on the
nodes, after the VMs exist, too late to stop `up` before anything is registered.

`gather_host_facts` reads files, runs commands and asks virsh; it never raises and never hangs (virsh
calls are bounded): a fact it cannot read is None, unknown. `components/preflight/checks.py` judges them.

What is read where:
- always (the Pulumi host, or libvirt through virsh): virsh itself, libvirt reachable, its networks and
  KVM capability, this stack's domains (those with a disk in its pool) and pool volumes, mkisofs, the
  ssh key.
- local URIs only (qemu:///system, qemu:///session, qemu+unix://): /dev/kvm, libvirt's own verdict on
  KVM (`virt-host-validate qemu`, only when `domainType` is kvm), AppArmor,
  pool directory permissions, SELinux, memory, disk, host routes. Over qemu+ssh:// these would describe
  the Pulumi host, not the libvirt host, so they stay unknown.
"""

from __future__ import annotations

import grp
import ipaddress
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import ssl
import stat
import subprocess
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from components.artifacts import identity
from components.config.settings import BASE_VOLUME, ClusterConfig

VIRSH_TIMEOUT_S = 10.0
MIB = 1024 * 1024

# Read at call time, so a test can point them at a fake tree.
PROC = Path("/proc")
SYS = Path("/sys")
ETC = Path("/etc")
# libvirt's rules for every VM's QEMU, and the file for site additions that it includes (relative to ETC).
QEMU_ABSTRACTION = "apparmor.d/abstractions/libvirt-qemu"
QEMU_LOCAL_ABSTRACTION = "apparmor.d/local/abstractions/libvirt-qemu"
DEV_KVM = Path("/dev/kvm")

T = TypeVar("T")


@dataclass(frozen=True)
class LibvirtNetwork:
    name: str
    cidr: str  # IPv4 network of the first <ip> element
    bridge: str


@dataclass(frozen=True)
class HostRoute:
    destination: str  # IPv4 network
    device: str


@dataclass(frozen=True)
class StackDomain:
    """A libvirt domain with a disk in this stack's pool: one of this stack's nodes."""

    name: str
    memory_mib: int
    running: bool
    disk_volumes: tuple[str, ...]  # names of its disk volumes in the stack's pool
    description: str
    vcpu: int | None = None  # None: not read
    domain_type: str = ""  # kvm or qemu (libvirt's test driver: test); "": not read


@dataclass(frozen=True)
class StackVolume:
    """A volume in this stack's pool (base image, node disks, cloud-init ISOs)."""

    name: str
    allocation_mib: int  # what it occupies on the pool's filesystem now


@dataclass(frozen=True)
class HostFacts:
    """What preflight observed. None means unknown (unreadable, or not applicable to a remote URI)."""

    libvirt_uri: str
    remote: bool
    # Through virsh: valid for local and remote URIs.
    virsh_path: str | None  # None: virsh not on PATH
    libvirt_reachable: bool | None  # None: no virsh to ask, or it failed oddly
    libvirt_error: str  # virsh's complaint when unreachable
    libvirt_kvm: bool | None  # capabilities offer <domain type='kvm'>
    libvirt_networks: tuple[LibvirtNetwork, ...] | None  # every network except ours
    # What this stack already holds (a re-run, a scale-down): its domains and its pool's volumes.
    stack_domains: tuple[StackDomain, ...] | None
    stack_volumes: tuple[StackVolume, ...] | None
    # The Pulumi host.
    mkisofs_path: str | None
    genisoimage_path: str | None
    xorrisofs_path: str | None
    ssh_path: str | None  # the join and leave steps run ssh here
    ssh_key_error: str | None  # None: private key readable
    # The libvirt host, read only when it is this machine.
    kvm_verdicts: tuple[str, ...] | None  # virt-host-validate's KVM checks that FAIL, with its reasons
    kvm_accessible: bool | None  # this user may read+write it
    kvm_device_mode: str | None  # e.g. "crw------- root:root"
    qemu_kvm_accessible: bool | None  # QEMU's user under qemu:///system may read+write it
    apparmor_enabled: bool | None
    security_driver: str | None  # qemu.conf security_driver; "" = unset (libvirt's default)
    apparmor_pool_allowed: bool | None  # virt-aa-helper may read volumes in the pool
    apparmor_qemu_pool_allowed: bool | None  # QEMU's rules let it read, write and lock the pool's volumes
    qemu_user: str | None  # the user QEMU runs as under qemu:///system; None: no such account
    pool_blocked_dir: str | None  # an existing ancestor of the pool QEMU cannot enter; "" = none
    selinux_mode: str | None  # "enforcing", "permissive" or "disabled"
    mem_available_mib: int | None
    disk_probe_path: str | None  # the pool path or its nearest existing parent
    disk_free_mib: int | None
    host_routes: tuple[HostRoute, ...] | None
    # net.bridge.bridge-nf-call-iptables (br_netfilter loaded): False when the module is not loaded.
    bridge_nf_call_iptables: bool | None = None
    # The running cluster's version as its API server says (`/version`, public in kubeadm clusters);
    # None: no control plane running, or it did not answer.
    cluster_version: str | None = None
    # Kubernetes releases built into releasesDir (tools/releases.py), e.g. ("1.34.4",).
    releases_built: tuple[str, ...] | None = None
    gather_seconds: float = 0.0


def is_remote_uri(uri: str) -> bool:
    """qemu:///system, qemu:///session and qemu+unix:// talk to this machine; anything with a host does not."""
    parts = urlsplit(uri)
    transport = parts.scheme.partition("+")[2]
    return bool(parts.hostname) or transport not in ("", "unix")


def _safe(read: Callable[[], T], unknown: T) -> T:
    # A broken fact must not stop `pulumi preview`: record it as unknown.
    try:
        return read()
    except Exception:
        return unknown


def _run(argv: list[str], timeout: float = VIRSH_TIMEOUT_S) -> tuple[int | None, str, str]:
    """Run without a terminal (ssh cannot prompt) and kill the whole group on timeout (ssh children too)."""
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env={**os.environ, "LC_ALL": "C"},
        )
    except OSError as err:
        return None, "", f"cannot run {argv[0]}: {err.strerror}"
    try:
        out, err_text = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None, "", f"`{shlex.join(argv)}` timed out after {timeout:g} s"
    return proc.returncode, out, err_text


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # virsh prints "failed to connect to the hypervisor" first and the cause last.
    return "; ".join(lines[-2:]) if lines else "no error text"


def _virsh_batch(virsh: str, uri: str, commands: list[str]) -> tuple[int | None, str, str]:
    # One virsh process per batch: over qemu+ssh:// every process is an SSH connection.
    return _run([virsh, "-q", "-c", uri, "; ".join(commands)])


SECTION = "KOA-PREFLIGHT-SECTION"


def _virsh_sections(virsh: str, uri: str, groups: list[list[str]]) -> tuple[list[str] | None, str]:
    """Each group's output; None when virsh stopped before the last group (no connection, a dropped one).

    A failing command inside a group only empties its part: virsh goes on with the next one."""
    commands = list(groups[0])
    for group in groups[1:]:
        commands += [f"echo {SECTION}", *group]
    _, out, err = _virsh_batch(virsh, uri, commands)
    parts = out.split(SECTION)
    return (parts if len(parts) == len(groups) else None), err


def parse_network_xml(xml_text: str) -> LibvirtNetwork | None:
    root = ET.fromstring(xml_text)
    name = root.findtext("name") or ""
    bridge_el = root.find("bridge")
    bridge = bridge_el.get("name", "") if bridge_el is not None else ""
    for ip in root.findall("ip"):
        if ip.get("family", "ipv4") != "ipv4" or not ip.get("address"):
            continue
        mask = ip.get("prefix") or ip.get("netmask") or "24"
        network = ipaddress.ip_interface(f"{ip.get('address')}/{mask}").network
        return LibvirtNetwork(name, str(network), bridge)
    return None


_BYTES = {"B": 1, "bytes": 1, "b": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
_BYTES |= {"k": 1 << 10, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "PiB": 1 << 50, "EiB": 1 << 60}


def parse_domain_xml(xml_text: str, pool: str, running: Collection[str]) -> StackDomain | None:
    """The domain if one of its disks is a volume of `pool` (how provider v0.8.1 attaches volume_id)."""
    root = ET.fromstring(xml_text)
    sources = root.findall("devices/disk[@device='disk']/source")
    volumes = tuple(s.get("volume", "") for s in sources if s.get("pool") == pool)
    if not volumes:
        return None
    name = root.findtext("name") or ""
    memory = root.find("memory")
    if memory is None or memory.text is None:
        return None
    memory_mib = int(memory.text) * _BYTES[memory.get("unit", "KiB")] // MIB
    vcpu = root.findtext("vcpu")
    return StackDomain(
        name,
        memory_mib,
        name in running,
        volumes,
        root.findtext("description") or "",
        vcpu=int(vcpu) if vcpu and vcpu.strip().isdigit() else None,
        domain_type=root.get("type", ""),
    )


_VOLUME_ROW = re.compile(r"^\s*(\S+)\s.*\s([\d.]+) (\S+)\s+([\d.]+) (\S+)\s*$")


def parse_volume_list(text: str) -> tuple[StackVolume, ...]:
    """`virsh -q vol-list --details`: name, path, type, capacity, allocation (sizes as "1.50 GiB")."""
    volumes = []
    for line in text.splitlines():
        match = _VOLUME_ROW.match(line)
        if match and match.group(5) in _BYTES:
            allocation = float(match.group(4)) * _BYTES[match.group(5)]
            volumes.append(StackVolume(match.group(1), round(allocation / MIB)))
    return tuple(volumes)


def _names(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _split_xml(text: str, closing: str) -> list[str]:
    return [part + closing for part in text.split(closing) if part.strip()]


@dataclass(frozen=True)
class _LibvirtView:
    reachable: bool | None = None
    error: str = ""
    kvm: bool | None = None
    networks: tuple[LibvirtNetwork, ...] | None = None
    domains: tuple[StackDomain, ...] | None = None
    volumes: tuple[StackVolume, ...] | None = None


NO_VIRSH = _LibvirtView(error="virsh is not on PATH")


def _libvirt_facts(virsh: str, uri: str, config: ClusterConfig) -> _LibvirtView:
    pool = shlex.quote(config.pool_name)
    # vol-list fails while the pool does not exist yet (a first `up`): not the last command, so the
    # exit status does not matter; the section markers tell a complete answer from none.
    listing, err = _virsh_sections(
        virsh,
        uri,
        [[f"vol-list --pool {pool} --details"], ["net-list --all --name"], ["list --all --name"], ["list --name"]],
    )
    if listing is None:
        return _LibvirtView(False, _first_line(err))
    volumes_text, networks_text, domains_text, running_text = listing
    networks = [n for n in _names(networks_text) if n != config.network_name]
    domains = _names(domains_text)
    network_dumps = [f"net-dumpxml {shlex.quote(n)}" for n in networks]
    domain_dumps = [f"dumpxml {shlex.quote(d)}" for d in domains]
    details, _ = _virsh_sections(virsh, uri, [["capabilities"], network_dumps, domain_dumps])
    if details is None:
        return _LibvirtView(True)
    capabilities, networks_xml, domains_xml = details
    running = _names(running_text)
    return _LibvirtView(
        True,
        "",
        _safe(lambda: _offers_kvm(capabilities.strip()), None),
        tuple(n for x in _split_xml(networks_xml, "</network>") if (n := _parse_or_none(x)) is not None),
        tuple(d for x in _split_xml(domains_xml, "</domain>") if (d := _ours_or_none(x, config, running)) is not None),
        parse_volume_list(volumes_text),
    )


def _parse_or_none(xml_text: str) -> LibvirtNetwork | None:
    # One odd network (no IPv4, malformed) must not hide the others.
    try:
        return parse_network_xml(xml_text)
    except (ET.ParseError, ValueError):
        return None


def _ours_or_none(xml_text: str, config: ClusterConfig, running: list[str]) -> StackDomain | None:
    # Someone else's odd domain must not hide ours.
    try:
        return parse_domain_xml(xml_text, config.pool_name, running)
    except (ET.ParseError, ValueError, KeyError):
        return None


def _offers_kvm(capabilities_xml: str) -> bool:
    root = ET.fromstring(capabilities_xml)
    return any(d.get("type") == "kvm" for d in root.iter("domain"))


# libvirt's own checker answers "can this host run KVM guests?" (CPU virtualisation, the kvm modules,
# /dev/kvm) with its reasons; it also refuses kvm-pvm's /dev/kvm, whose CPU lacks vmx/svm.
VALIDATE_LINE = re.compile(
    r"^\s*QEMU: Checking (?:for |if )?(?P<check>.+?)\s+:\s+(?P<verdict>PASS|WARN|FAIL)(?: \((?P<why>.*)\))?$"
)


def parse_kvm_verdicts(output: str) -> tuple[str, ...]:
    """The failed KVM checks in `virt-host-validate qemu` output, as "check: reason"."""
    failed = []
    for line in output.splitlines():
        match = VALIDATE_LINE.match(line)
        if match and match["verdict"] == "FAIL" and re.search(r"hardware virtualization|/dev/kvm", match["check"]):
            failed.append(f"{match['check']}: {match['why'] or 'FAIL'}")
    return tuple(failed)


def _kvm_verdicts() -> tuple[str, ...] | None:
    validate = shutil.which("virt-host-validate")
    if validate is None:
        return None
    code, out, _ = _run([validate, "qemu"], timeout=60)
    # Exit 1 means some check failed, not only KVM's: the lines say which. No line at all: unknown.
    if code is None or not any(VALIDATE_LINE.match(line) for line in out.splitlines()):
        return None
    return parse_kvm_verdicts(out)


def _apparmor_enabled() -> bool | None:
    if not (SYS / "module" / "apparmor").exists():
        return False  # not in this kernel
    value = _read(SYS / "module" / "apparmor" / "parameters" / "enabled")
    return None if value is None else value.strip().upper().startswith("Y")


def _qemu_conf_value(key: str) -> str | None:
    """The uncommented value in qemu.conf, "" when unset, None when the file is unreadable."""
    text = _read(ETC / "libvirt" / "qemu.conf")
    if text is None:
        return None
    match = re.search(rf"^\s*{key}\s*=\s*(.+?)\s*$", text, re.MULTILINE)
    if not match:
        return ""
    return re.sub(r"[\"'\[\]]", "", match.group(1)).replace(" ", "")


# A file rule: `[audit] [allow|deny] [owner] [file] GLOB PERMS,` or with PERMS first; GLOB may be quoted.
_AA_QUALIFIERS = r"(?:audit\s+)?(?:(?P<deny>deny)\s+|allow\s+)?(?:owner\s+)?(?:file\s+)?"
_AA_GLOB = r'"(?:/|@\{)[^"]*"|(?:/|@\{)[^\s"]*'
_AA_RULE = re.compile(
    rf"^{_AA_QUALIFIERS}(?:(?P<glob>{_AA_GLOB})\s+(?P<perms>[a-zA-Z]+)|(?P<perms_first>[a-zA-Z]+)\s+(?P<glob_last>{_AA_GLOB}))"
    r"\s*,$"
)


def apparmor_glob(pattern: str) -> re.Pattern[str] | None:
    """AppArmor path glob -> regex; None for variables other than @{HOME} (too rare to expand)."""
    pattern = pattern.replace("@{HOME}", "\0").replace("@{HOMEDIRS}", "/home/")
    if "@{" in pattern:
        return None
    out: list[str] = []
    i, depth = 0, 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if ch == "\0":
            out.append("(?:/home/[^/]+|/root)")
        elif ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "{":
            out.append("(?:")
            depth += 1
        elif ch == "}" and depth:
            out.append(")")
            depth -= 1
        elif ch == "," and depth:
            out.append("|")
        elif ch == "[":
            end = pattern.find("]", i)
            out.append(pattern[i : end + 1] if end > i else re.escape(ch))
            i = end if end > i else i
        else:
            out.append(re.escape(ch))
        i += 1
    try:
        return re.compile("".join(out).replace("//", "/"))
    except re.error:
        return None


@dataclass(frozen=True)
class _FileRule:
    deny: bool
    path: re.Pattern[str]
    permissions: frozenset[str]


def _file_rules(profile_text: str) -> list[_FileRule]:
    rules = []
    for line in profile_text.splitlines():
        match = _AA_RULE.match(line.split("#", 1)[0].strip())
        if not match:
            continue
        glob = (match.group("glob") or match.group("glob_last")).strip('"')
        regex = apparmor_glob(glob)
        if regex is not None:
            permissions = frozenset(match.group("perms") or match.group("perms_first"))
            rules.append(_FileRule(bool(match.group("deny")), regex, permissions))
    return rules


def _granted(rules: list[_FileRule], path: str) -> frozenset[str]:
    # AppArmor adds up the permissions of every allow rule that matches, then takes away every matching deny.
    allowed = frozenset[str]().union(*(r.permissions for r in rules if not r.deny and r.path.fullmatch(path)))
    denied = frozenset[str]().union(*(r.permissions for r in rules if r.deny and r.path.fullmatch(path)))
    return allowed - denied


def apparmor_allows(profile_text: str, paths: Iterable[str], permissions: str = "r") -> bool:
    """True if the profile's file rules give every path each permission letter (as written in rules: r, w, k)."""
    rules = _file_rules(profile_text)
    return all(set(permissions) <= _granted(rules, path) for path in paths)


def pool_volume_paths(config: ClusterConfig) -> list[str]:
    # The names components/storage.py and node.py give their volumes: virt-aa-helper must read each.
    # A node's generation varies; the shape of the name is what profile rules match.
    pool = config.pool_path.rstrip("/")
    node, generation = config.control_plane, "0" * identity.GENERATION_HEX
    disk, seed = identity.disk_volume_name(node, generation), identity.seed_volume_name(node, generation)
    return [f"{pool}/{BASE_VOLUME}", f"{pool}/{disk}", f"{pool}/{seed}"]


def _apparmor_pool_allowed(config: ClusterConfig) -> bool | None:
    # virt-aa-helper probes every disk (and its backing chain) before writing the domain's profile;
    # what its own profile cannot read ends as "Permission denied" when the domain starts.
    profile = _read(ETC / "apparmor.d" / "usr.lib.libvirt.virt-aa-helper")
    if profile is None:
        return None
    local = _read(ETC / "apparmor.d" / "local" / "usr.lib.libvirt.virt-aa-helper") or ""
    return apparmor_allows(profile + "\n" + local, pool_volume_paths(config))


def qemu_volume_permissions(config: ClusterConfig) -> dict[str, str]:
    """What QEMU needs on each volume: it writes the node's overlay and its seed disk (attached writable, as
    provider v0.8.1 attaches every volume disk) and reads the base image behind the overlay, locking each
    (`k`); the letters virt-aa-helper grants a writable disk and a read-only one."""
    base, disk, seed = pool_volume_paths(config)
    return {base: "rk", disk: "rwk", seed: "rwk"}


def _apparmor_qemu_pool_allowed(config: ClusterConfig) -> bool | None:
    # Every VM's profile includes libvirt's QEMU abstraction, which includes the local one. virt-aa-helper
    # adds no rule for the provider's <disk type='volume'> disks, so these two files must let QEMU in.
    abstraction = _read(ETC / QEMU_ABSTRACTION)
    local_path = ETC / QEMU_LOCAL_ABSTRACTION
    local = _read(local_path)
    if abstraction is None or (local is None and local_path.exists()):
        return None  # no libvirt AppArmor policy to judge, or a local file we cannot read
    rules = abstraction + "\n" + (local or "")
    return all(apparmor_allows(rules, [path], needed) for path, needed in qemu_volume_permissions(config).items())


def _existing_ancestors(path: str) -> list[Path]:
    return [p for p in reversed(Path(path).parents) if p.exists()] + ([Path(path)] if Path(path).exists() else [])


def _qemu_user() -> str | None:
    """The user qemu:///system runs QEMU as: qemu.conf `user`, else the distribution's default account."""
    configured = _qemu_conf_value("user")
    if configured:
        uid = configured.lstrip("+")
        return pwd.getpwuid(int(uid)).pw_name if uid.isdigit() else configured
    for name in ("libvirt-qemu", "qemu"):  # Debian/Ubuntu, Fedora/RHEL
        try:
            return pwd.getpwnam(name).pw_name
        except KeyError:
            continue
    return None


def _can_enter(directory: Path, uid: int, groups: set[int]) -> bool:
    st = directory.stat()
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in groups:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _kvm_device_mode() -> str | None:
    if not DEV_KVM.exists():
        return None
    st = DEV_KVM.stat()
    return f"{stat.filemode(st.st_mode)} {_user_name(st.st_uid)}:{_group_name(st.st_gid)}"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _qemu_kvm_accessible(qemu_user: str | None) -> bool | None:
    """Whether QEMU, run by libvirtd as `qemu_user` with its groups and qemu.conf's `group`, may open /dev/kvm."""
    if qemu_user is None or not DEV_KVM.exists():
        return None
    entry = pwd.getpwnam(qemu_user)
    groups = set(os.getgrouplist(entry.pw_name, entry.pw_gid))
    configured = (_qemu_conf_value("group") or "").lstrip("+")
    if configured:
        groups.add(int(configured) if configured.isdigit() else grp.getgrnam(configured).gr_gid)
    st = DEV_KVM.stat()
    if entry.pw_uid == 0:
        return True
    if st.st_uid == entry.pw_uid:
        wanted = stat.S_IRUSR | stat.S_IWUSR
    elif st.st_gid in groups:
        wanted = stat.S_IRGRP | stat.S_IWGRP
    else:
        wanted = stat.S_IROTH | stat.S_IWOTH
    return st.st_mode & wanted == wanted


def _pool_blocked_dir(config: ClusterConfig, qemu_user: str | None) -> str | None:
    """First existing directory on the pool path that QEMU's user may not enter (DAC, not AppArmor).

    libvirt chowns the image files to that user but never opens up their parent directories."""
    if qemu_user is None:
        return None
    entry = pwd.getpwnam(qemu_user)
    groups = set(os.getgrouplist(entry.pw_name, entry.pw_gid))
    for directory in _existing_ancestors(config.pool_path):
        if not _can_enter(directory, entry.pw_uid, groups):
            return f"{directory} (mode {stat.S_IMODE(directory.stat().st_mode):04o})"
    return ""


def _selinux_mode() -> str | None:
    selinuxfs = SYS / "fs" / "selinux"
    if not selinuxfs.exists():
        return "disabled"
    value = _read(selinuxfs / "enforce")
    if value is None:
        return None
    return "enforcing" if value.strip() == "1" else "permissive"


def _mem_available_mib() -> int | None:
    text = _read(PROC / "meminfo") or ""
    match = re.search(r"^MemAvailable:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(match.group(1)) // 1024 if match else None


def _disk_free(path: str) -> tuple[str | None, int | None]:
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    st = os.statvfs(probe)
    return str(probe), st.f_bavail * st.f_frsize // MIB


def parse_proc_net_route(text: str) -> tuple[HostRoute, ...]:
    """/proc/net/route (the main table, as `ip -4 route` shows it); addresses are little-endian hex."""
    routes = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        dest = ipaddress.IPv4Address(int(fields[1], 16).to_bytes(4, "little"))
        mask = ipaddress.IPv4Address(int(fields[7], 16).to_bytes(4, "little"))
        routes.append(HostRoute(str(ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)), fields[0]))
    return tuple(routes)


def _host_routes() -> tuple[HostRoute, ...] | None:
    text = _read(PROC / "net" / "route")
    return None if text is None else parse_proc_net_route(text)


def _ssh_key_error(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as err:
        return f"{err.strerror}: {path}"
    return None


BRIDGE_NF_CALL_IPTABLES = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


def _bridge_nf_call_iptables() -> bool:
    return BRIDGE_NF_CALL_IPTABLES.exists() and BRIDGE_NF_CALL_IPTABLES.read_text().strip() == "1"


VERSION_ASK_TIMEOUT_S = 5.0


def control_plane_running(config: ClusterConfig, domains: tuple[StackDomain, ...] | None) -> bool:
    return any(d.name == config.control_plane.libvirt_name and d.running for d in domains or ())


def api_server_version(api_endpoint: str) -> str | None:
    """gitVersion (without the v) from the API server's `/version`.

    The version is public (kubeadm binds system:public-info-viewer to everyone) and only decides a
    refusal, so the answer is read without the cluster CA, which the host may not hold yet."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(f"{api_endpoint}/version", context=context, timeout=VERSION_ASK_TIMEOUT_S) as answer:
        version = json.load(answer).get("gitVersion")
    return str(version).removeprefix("v") if version else None


def releases_built(directory: Path) -> tuple[str, ...]:
    """Every release `make release` finished in `directory` (its release.json is written last)."""
    found = (p.parent.name.removeprefix("v") for p in directory.glob("v*/release.json"))
    return tuple(sorted(found))


def gather_host_facts(config: ClusterConfig) -> HostFacts:
    """Read everything `check` needs from this machine and libvirt; never raises, never hangs (virsh timeouts)."""
    started = time.monotonic()
    uri = config.libvirt_uri
    remote = is_remote_uri(uri)
    virsh = shutil.which("virsh")
    view = NO_VIRSH if virsh is None else _safe(lambda: _libvirt_facts(virsh, uri, config), _LibvirtView())

    def local(read: Callable[[], T]) -> T | None:
        return None if remote else _safe(read, None)

    qemu_user = local(_qemu_user)
    probe, free = local(lambda: _disk_free(config.pool_path)) or (None, None)
    return HostFacts(
        libvirt_uri=config.libvirt_uri,
        remote=remote,
        virsh_path=virsh,
        libvirt_reachable=view.reachable,
        libvirt_error=view.error,
        libvirt_kvm=view.kvm,
        libvirt_networks=view.networks,
        stack_domains=view.domains,
        stack_volumes=view.volumes,
        mkisofs_path=shutil.which("mkisofs"),
        genisoimage_path=shutil.which("genisoimage"),
        xorrisofs_path=shutil.which("xorrisofs"),
        ssh_path=shutil.which("ssh"),
        ssh_key_error=_safe(lambda: _ssh_key_error(config.ssh_key_path), None),
        kvm_verdicts=local(_kvm_verdicts) if config.domain_type == "kvm" else None,
        kvm_accessible=local(lambda: os.access(DEV_KVM, os.R_OK | os.W_OK)),
        kvm_device_mode=local(_kvm_device_mode),
        qemu_kvm_accessible=local(lambda: _qemu_kvm_accessible(qemu_user)),
        apparmor_enabled=local(_apparmor_enabled),
        security_driver=local(lambda: _qemu_conf_value("security_driver")),
        apparmor_pool_allowed=local(lambda: _apparmor_pool_allowed(config)),
        apparmor_qemu_pool_allowed=local(lambda: _apparmor_qemu_pool_allowed(config)),
        qemu_user=qemu_user,
        pool_blocked_dir=local(lambda: _pool_blocked_dir(config, qemu_user)),
        selinux_mode=local(_selinux_mode),
        mem_available_mib=local(_mem_available_mib),
        disk_probe_path=probe,
        disk_free_mib=free,
        host_routes=local(_host_routes),
        bridge_nf_call_iptables=local(_bridge_nf_call_iptables),
        cluster_version=_safe(
            lambda: api_server_version(config.api_endpoint) if control_plane_running(config, view.domains) else None,
            None,
        ),
        releases_built=_safe(lambda: releases_built(Path(config.releases_dir)), None),
        gather_seconds=round(time.monotonic() - started, 3),
    )


def describe(facts: HostFacts) -> str:
    """One line per fact, for logs (`pulumi.log.info`) and bug reports."""
    return "\n".join(f"{name}: {value!r}" for name, value in vars(facts).items())


@dataclass(frozen=True)
class KeptStore:
    """The pool and base image a `keepBaseImage: true` destroy left behind, as libvirt names them."""

    pool_uuid: str
    base_volume_key: str | None


def kept_store(config: ClusterConfig) -> KeptStore | None:
    """The stack's pool and base volume when libvirt holds them but no control-plane domain: what a
    destroy with keepBaseImage leaves. None otherwise, or when libvirt cannot say."""
    virsh = shutil.which("virsh") if config.keep_base_image else None
    if virsh is None:
        return None
    code, out, _ = _virsh_batch(virsh, config.libvirt_uri, [f"pool-uuid {config.pool_name}"])
    pool_uuid = out.strip()
    if code != 0 or not pool_uuid:
        return None
    code, _, _ = _virsh_batch(virsh, config.libvirt_uri, [f"domuuid {config.control_plane.libvirt_name}"])
    if code != 1:  # 0: a cluster runs on this store; None: virsh did not answer
        return None
    code, out, _ = _virsh_batch(virsh, config.libvirt_uri, [f"vol-key {BASE_VOLUME} --pool {config.pool_name}"])
    return KeptStore(pool_uuid, out.strip() if code == 0 and out.strip() else None)
