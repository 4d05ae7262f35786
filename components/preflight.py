"""Host preflight: check the libvirt host before `pulumi preview`/`up` registers anything.

`gather_host_facts` reads the machine (never raises; a fact it cannot read is None = unknown),
`check` is a pure function from config + facts to problems, `run_preflight` raises one
`PreflightError` listing them all.

Where the checks run:
- always (they concern the Pulumi host or go through virsh): libvirt reachable, mkisofs (the
  provider builds the cloud-init ISO on the Pulumi host), ssh-key, network overlap with other
  libvirt networks, KVM offered by libvirt's capabilities (remote URIs only).
- local URIs only (qemu:///system, qemu:///session, qemu+unix://): /dev/kvm and CPU flags,
  AppArmor, pool directory permissions, SELinux, memory, disk, host routes. Over qemu+ssh://
  these would describe the Pulumi host, not the libvirt host, so they are skipped.
- qemu:///session additionally skips AppArmor, SELinux and pool permissions (domains run as you,
  unconfined) but requires /dev/kvm to be read/writable by you.
An unknown fact never produces a problem: preflight blocks only on what it has observed.
"""

from __future__ import annotations

import ipaddress
import os
import platform
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from components.config import NAMESPACE, ClusterConfig

SKIP_ENV = "KUBE_ON_AIR_SKIP_PREFLIGHT"
VIRSH_TIMEOUT_S = 10.0
LIBVIRT_IMAGES = "/var/lib/libvirt/images"
MIB = 1024 * 1024
# Thin overlays: base image (~0.5-1 GiB) plus containerd images and logs per node.
DISK_BASE_MIB = 2048
DISK_PER_NODE_MIB = 2048

# Read at call time, so a test can point them at a fake tree.
PROC = Path("/proc")
SYS = Path("/sys")
ETC = Path("/etc")
DEV_KVM = Path("/dev/kvm")

LOCAL_ONLY_CHECKS = ("apparmor", "pool-permissions", "selinux", "memory", "disk", "host-route")
# kvm: from /dev/kvm and CPU flags locally, from libvirt's capabilities over a remote URI.
ALWAYS_CHECKS = ("libvirt", "kvm", "mkisofs", "ssh-key", "network")

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
class HostFacts:
    """What preflight observed. None means unknown (unreadable, or not applicable to a remote URI)."""

    libvirt_uri: str
    remote: bool
    # Through virsh: valid for local and remote URIs.
    virsh_path: str | None  # None: virsh not on PATH
    libvirt_reachable: bool | None  # None: no virsh to ask
    libvirt_error: str  # virsh's complaint when unreachable
    libvirt_kvm: bool | None  # capabilities offer <domain type='kvm'>
    libvirt_networks: tuple[LibvirtNetwork, ...] | None  # every network except ours
    # The Pulumi host.
    mkisofs_path: str | None
    genisoimage_path: str | None
    xorrisofs_path: str | None
    ssh_key_error: str | None  # None: private key readable
    # The libvirt host, read only when it is this machine.
    kvm_device: bool | None  # /dev/kvm exists
    kvm_accessible: bool | None  # this user may read+write it
    machine: str | None  # platform.machine(), e.g. x86_64
    cpu_virt_flag: str | None  # "vmx", "svm" or "" (neither)
    cpu_hypervisor: bool | None  # this machine is itself a VM
    kvm_modules: tuple[str, ...] | None
    kvm_nested: str | None  # kvm_intel/kvm_amd nested parameter
    apparmor_enabled: bool | None
    security_driver: str | None  # qemu.conf security_driver; "" = unset (libvirt's default)
    apparmor_pool_allowed: bool | None  # virt-aa-helper may read volumes in the pool
    qemu_user: str | None  # the user QEMU runs as under qemu:///system; None: no such account
    pool_blocked_dir: str | None  # an existing ancestor of the pool QEMU cannot enter; "" = none
    selinux_mode: str | None  # "enforcing", "permissive" or "disabled"
    mem_available_mib: int | None
    disk_probe_path: str | None  # the pool path or its nearest existing parent
    disk_free_mib: int | None
    host_routes: tuple[HostRoute, ...] | None
    gather_seconds: float = 0.0


@dataclass(frozen=True)
class PreflightProblem:
    check: str
    observed: str
    fix: str

    def __str__(self) -> str:
        return f"  [{self.check}] {self.observed}\n      fix: {self.fix}"


class PreflightError(Exception):
    """Every host problem found, reported together."""

    def __init__(self, problems: list[PreflightProblem], uri: str) -> None:
        self.problems = problems
        lines = "\n".join(str(p) for p in problems)
        super().__init__(
            f"host preflight found {len(problems)} problem(s) for libvirt URI {uri}; "
            f"fix them, or set {SKIP_ENV}=1 to skip the preflight:\n{lines}"
        )


# ---------------------------------------------------------------------------------------------
# Gathering


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


def _split_xml(text: str, closing: str) -> list[str]:
    return [part + closing for part in text.split(closing) if part.strip()]


@dataclass(frozen=True)
class _LibvirtView:
    virsh: str | None = None
    reachable: bool | None = None
    error: str = ""
    kvm: bool | None = None
    networks: tuple[LibvirtNetwork, ...] | None = None


def _libvirt_facts(uri: str, own_network: str) -> _LibvirtView:
    virsh = shutil.which("virsh")
    if virsh is None:
        return _LibvirtView(error="virsh is not on PATH (install libvirt-clients to let preflight ask libvirt)")
    code, out, err = _virsh_batch(virsh, uri, ["net-list --all --name"])
    if code != 0:
        return _LibvirtView(virsh, False, _first_line(err))
    names = [n.strip() for n in out.splitlines() if n.strip() and n.strip() != own_network]
    commands = ["capabilities"] + [f"net-dumpxml {shlex.quote(n)}" for n in names]
    code, out, _ = _virsh_batch(virsh, uri, commands)
    if code != 0:
        return _LibvirtView(virsh, True)
    capabilities, _, networks_xml = out.partition("</capabilities>")
    kvm = _safe(lambda: _offers_kvm(capabilities + "</capabilities>"), None)
    networks = tuple(n for x in _split_xml(networks_xml, "</network>") if (n := _parse_or_none(x)) is not None)
    return _LibvirtView(virsh, True, "", kvm, networks)


def _parse_or_none(xml_text: str) -> LibvirtNetwork | None:
    # One odd network (no IPv4, malformed) must not hide the others.
    try:
        return parse_network_xml(xml_text)
    except (ET.ParseError, ValueError):
        return None


def _offers_kvm(capabilities_xml: str) -> bool:
    root = ET.fromstring(capabilities_xml)
    return any(d.get("type") == "kvm" for d in root.iter("domain"))


def _cpu_facts() -> tuple[str | None, bool | None]:
    text = _read(PROC / "cpuinfo")
    if text is None:
        return None, None
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    virt = "vmx" if "vmx" in flags else "svm" if "svm" in flags else ""
    return virt, "hypervisor" in flags


def _kvm_modules() -> tuple[str, ...] | None:
    modules = SYS / "module"
    if not modules.is_dir():
        return None
    return tuple(sorted(p.name for p in modules.iterdir() if p.name == "kvm" or p.name.startswith("kvm_")))


def _kvm_nested() -> str | None:
    for module in ("kvm_intel", "kvm_amd"):
        value = _read(SYS / "module" / module / "parameters" / "nested")
        if value is not None:
            return value.strip()
    return None


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


_AA_RULE = re.compile(r"^(?:audit\s+)?(deny\s+)?(?:owner\s+)?(?:file\s+)?((?:/|@\{)\S*)\s+([a-zA-Z]+)\s*,\s*$")


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


def apparmor_allows(profile_text: str, paths: Iterable[str]) -> bool:
    """True if every path is readable under the profile's file rules (allow matches, no deny matches)."""
    allow: list[re.Pattern[str]] = []
    deny: list[re.Pattern[str]] = []
    for line in profile_text.splitlines():
        match = _AA_RULE.match(line.split("#", 1)[0].strip())
        if not match or "r" not in match.group(3):
            continue
        regex = apparmor_glob(match.group(2))
        if regex is not None:
            (deny if match.group(1) else allow).append(regex)
    return all(any(r.fullmatch(p) for r in allow) and not any(r.fullmatch(p) for r in deny) for p in paths)


def pool_volume_paths(config: ClusterConfig) -> list[str]:
    # The names components/storage.py and node.py give their volumes: virt-aa-helper must read each.
    pool = config.pool_path.rstrip("/")
    node = config.control_plane.name
    return [f"{pool}/base.qcow2", f"{pool}/{node}.qcow2", f"{pool}/{node}-seed.iso"]


def _apparmor_pool_allowed(config: ClusterConfig) -> bool | None:
    # virt-aa-helper probes every disk (and its backing chain) before writing the domain's profile;
    # what its own profile cannot read ends as "Permission denied" when the domain starts.
    profile = _read(ETC / "apparmor.d" / "usr.lib.libvirt.virt-aa-helper")
    if profile is None:
        return None
    local = _read(ETC / "apparmor.d" / "local" / "usr.lib.libvirt.virt-aa-helper") or ""
    return apparmor_allows(profile + "\n" + local, pool_volume_paths(config))


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


def gather_host_facts(config: ClusterConfig) -> HostFacts:
    """Read everything `check` needs from this machine and libvirt; never raises, never hangs (virsh timeouts)."""
    started = time.monotonic()
    remote = is_remote_uri(config.libvirt_uri)
    view = _safe(lambda: _libvirt_facts(config.libvirt_uri, config.network_name), _LibvirtView())

    def local(read: Callable[[], T]) -> T | None:
        return None if remote else _safe(read, None)

    cpu_flag, hypervisor = local(_cpu_facts) or (None, None)
    qemu_user = local(_qemu_user)
    probe, free = local(lambda: _disk_free(config.pool_path)) or (None, None)
    return HostFacts(
        libvirt_uri=config.libvirt_uri,
        remote=remote,
        virsh_path=view.virsh,
        libvirt_reachable=view.reachable,
        libvirt_error=view.error,
        libvirt_kvm=view.kvm,
        libvirt_networks=view.networks,
        mkisofs_path=shutil.which("mkisofs"),
        genisoimage_path=shutil.which("genisoimage"),
        xorrisofs_path=shutil.which("xorrisofs"),
        ssh_key_error=_safe(lambda: _ssh_key_error(config.ssh_key_path), None),
        kvm_device=local(DEV_KVM.exists),
        kvm_accessible=local(lambda: os.access(DEV_KVM, os.R_OK | os.W_OK)),
        machine=local(platform.machine),
        cpu_virt_flag=cpu_flag,
        cpu_hypervisor=hypervisor,
        kvm_modules=local(_kvm_modules),
        kvm_nested=local(_kvm_nested),
        apparmor_enabled=local(_apparmor_enabled),
        security_driver=local(lambda: _qemu_conf_value("security_driver")),
        apparmor_pool_allowed=local(lambda: _apparmor_pool_allowed(config)),
        qemu_user=qemu_user,
        pool_blocked_dir=local(lambda: _pool_blocked_dir(config, qemu_user)),
        selinux_mode=local(_selinux_mode),
        mem_available_mib=local(_mem_available_mib),
        disk_probe_path=probe,
        disk_free_mib=free,
        host_routes=local(_host_routes),
        gather_seconds=round(time.monotonic() - started, 3),
    )


# ---------------------------------------------------------------------------------------------
# Checking (pure)


def _key(name: str) -> str:
    return f"{NAMESPACE}:{name}"


def _session(config: ClusterConfig) -> bool:
    # qemu:///session runs domains as the calling user, unconfined, and opens /dev/kvm as that user.
    return urlsplit(config.libvirt_uri).path.rstrip("/") == "/session"


def _check_libvirt(config: ClusterConfig, facts: HostFacts) -> list[PreflightProblem]:
    if facts.libvirt_reachable is not False:
        return []
    error = facts.libvirt_error
    if facts.remote:
        fix = (
            f"make `virsh -c {config.libvirt_uri} version` work without a prompt "
            "(ssh key in the agent or keyfile= in the URI, user in the remote libvirt group), or fix libvirt:uri"
        )
    elif "No such file" in error or "Connection refused" in error:
        fix = "start libvirtd: `systemctl enable --now libvirtd` (without systemd: `virtlogd -d && libvirtd -d`)"
    elif "Permission denied" in error or "access denied" in error.lower():
        fix = "add yourself to the libvirt group (`sudo usermod -aG libvirt $USER`, then log in again)"
    else:
        fix = f"run `virsh -c {config.libvirt_uri} version` and fix what it reports, or set libvirt:uri"
    return [PreflightProblem("libvirt", f"cannot connect to {config.libvirt_uri}: {error}", fix)]


def _kvm_context(facts: HostFacts) -> str:
    flag = facts.cpu_virt_flag
    flags = "unknown" if flag is None else flag or "neither vmx nor svm"
    modules = "unknown" if facts.kvm_modules is None else ", ".join(facts.kvm_modules) or "none"
    vm = " (this machine is itself a VM)" if facts.cpu_hypervisor else ""
    return f"CPU flags: {flags}{vm}; kvm modules loaded: {modules}; nested: {facts.kvm_nested or 'unknown'}"


def _kvm_missing_fix(facts: HostFacts) -> str:
    qemu = f"or set {_key('domainType')} to qemu for software emulation"
    if facts.cpu_virt_flag:
        module = "kvm_intel" if facts.cpu_virt_flag == "vmx" else "kvm_amd"
        return f"load the module (`sudo modprobe {module}`), {qemu}"
    if facts.cpu_hypervisor:
        return (
            "enable nested virtualisation on the machine hosting this VM "
            f"(`options kvm_intel nested=1` or `options kvm_amd nested=1`, CPU mode host-passthrough), {qemu}"
        )
    return f"enable VT-x/AMD-V in the firmware setup and `sudo modprobe kvm_intel` (or kvm_amd), {qemu}"


def _check_kvm(config: ClusterConfig, facts: HostFacts) -> list[PreflightProblem]:
    if config.domain_type != "kvm":
        return []
    qemu = f"set {_key('domainType')} to qemu for software emulation"
    if facts.remote:
        if facts.libvirt_kvm is False:
            return [PreflightProblem("kvm", f"libvirt at {config.libvirt_uri} offers no kvm domains", qemu)]
        return []
    if facts.kvm_device is False:
        return [PreflightProblem("kvm", f"/dev/kvm does not exist ({_kvm_context(facts)})", _kvm_missing_fix(facts))]
    if facts.kvm_device and facts.cpu_virt_flag == "" and facts.machine in ("x86_64", "i686"):
        # kvm_intel/kvm_amd need vmx/svm; a /dev/kvm without them (e.g. kvm-pvm) fails kvm guests at boot.
        observed = f"/dev/kvm exists but the CPU lacks vmx/svm, so it is not hardware KVM ({_kvm_context(facts)})"
        return [PreflightProblem("kvm", observed, qemu)]
    if facts.kvm_accessible is False and _session(config):
        # Under qemu:///system libvirtd opens /dev/kvm itself; under /session the domain runs as you.
        return [
            PreflightProblem(
                "kvm",
                "/dev/kvm is not readable and writable by you, and qemu:///session runs domains as you",
                "add yourself to the kvm group (`sudo usermod -aG kvm $USER`, then log in again) or " + qemu,
            )
        ]
    return []


def _check_mkisofs(config: ClusterConfig, facts: HostFacts) -> list[PreflightProblem]:
    # terraform-provider-libvirt v0.8.x runs exactly `mkisofs` (libvirt/cloudinit_def.go) on the Pulumi host.
    if facts.mkisofs_path is not None:
        return []
    alternative = facts.genisoimage_path or facts.xorrisofs_path
    if alternative:
        fix = f"link it: `sudo ln -s {alternative} /usr/local/bin/mkisofs`"
    else:
        fix = "`sudo apt-get install genisoimage` (Debian/Ubuntu: it provides mkisofs; Fedora: dnf install genisoimage)"
    observed = "mkisofs is not on PATH; the libvirt provider runs it on this machine to build cloud-init disks"
    if alternative:
        observed += f" (found {alternative}, which the provider does not look for)"
    return [PreflightProblem("mkisofs", observed, fix)]


def _apparmor_confines_qemu(facts: HostFacts) -> bool:
    driver = facts.security_driver or ""  # unset: libvirt picks AppArmor when the kernel has it
    return bool(facts.apparmor_enabled) and (driver == "" or "apparmor" in driver.split(","))


def _check_apparmor(config: ClusterConfig, facts: HostFacts) -> list[PreflightProblem]:
    # Session domains are not confined by virt-aa-helper profiles (that needs a privileged libvirtd).
    if _session(config) or facts.remote or not _apparmor_confines_qemu(facts):
        return []
    if facts.apparmor_pool_allowed is not False:
        return []
    pool = config.pool_path.rstrip("/")
    return [
        PreflightProblem(
            "apparmor",
            f"AppArmor confines QEMU (security_driver {facts.security_driver or 'default'}) and virt-aa-helper's "
            f"profile does not allow {pool}/*, so the domains fail with 'Permission denied'",
            f"set {_key('poolPath')} under {LIBVIRT_IMAGES}/ (Debian's and Ubuntu's virt-aa-helper profile denies "
            "hidden directories in home directories, and no local rule lifts a deny); QEMU itself needs "
            '`"<poolPath>/**" rwk,` in /etc/apparmor.d/local/abstractions/libvirt-qemu on any AppArmor host (README)',
        )
    ]


def _check_pool_permissions(config: ClusterConfig, facts: HostFacts) -> list[PreflightProblem]:
    if _session(config) or facts.remote or not facts.pool_blocked_dir:
        return []
    return [
        PreflightProblem(
            "pool-permissions",
            f"QEMU runs as {facts.qemu_user} and cannot enter {facts.pool_blocked_dir} above {config.pool_path}",
            f"set {_key('poolPath')} under {LIBVIRT_IMAGES}/, or `sudo chmod o+x` that directory",
        )
    ]


def _check_selinux(config: ClusterConfig, facts: HostFacts) -> list[PreflightProblem]:
    inside = (config.pool_path.rstrip("/") + "/").startswith(LIBVIRT_IMAGES + "/")
    if _session(config) or facts.remote or facts.selinux_mode != "enforcing" or inside:
        return []
    pool = config.pool_path.rstrip("/")
    return [
        PreflightProblem(
            "selinux",
            f"SELinux is enforcing and {pool} is outside {LIBVIRT_IMAGES}, so its files lack the virt_image_t label",
            f"set {_key('poolPath')} under {LIBVIRT_IMAGES}/, or label it: `sudo semanage fcontext -a -t "
            f"virt_image_t '{pool}(/.*)?' && sudo mkdir -p {pool} && sudo restorecon -R {pool}`",
        )
    ]


def _check_memory(config: ClusterConfig, facts: HostFacts) -> list[PreflightProblem]:
    needed = sum(node.memory_mib for node in config.nodes)
    if facts.remote or facts.mem_available_mib is None or facts.mem_available_mib >= needed:
        return []
    return [
        PreflightProblem(
            "memory",
            f"MemAvailable is {facts.mem_available_mib} MiB but the {len(config.nodes)} nodes need {needed} MiB",
            f"lower {_key('workerCount')} or {_key('workerMemoryMiB')} (or {_key('controlPlaneMemoryMiB')}), "
            "or free memory on the host",
        )
    ]


def disk_needed_mib(config: ClusterConfig) -> int:
    return DISK_BASE_MIB + DISK_PER_NODE_MIB * len(config.nodes)


def _check_disk(config: ClusterConfig, facts: HostFacts) -> list[PreflightProblem]:
    needed = disk_needed_mib(config)
    if facts.remote or facts.disk_free_mib is None or facts.disk_free_mib >= needed:
        return []
    return [
        PreflightProblem(
            "disk",
            f"{facts.disk_probe_path} has {facts.disk_free_mib} MiB free but the base image and "
            f"{len(config.nodes)} node overlays need about {needed} MiB",
            f"free space there, set {_key('poolPath')} on a larger filesystem, or lower {_key('workerCount')}",
        )
    ]


def _check_ssh_key(config: ClusterConfig, facts: HostFacts) -> list[PreflightProblem]:
    if facts.ssh_key_error is None:
        return []
    return [
        PreflightProblem(
            "ssh-key",
            f"cannot read the private key ({facts.ssh_key_error})",
            f"create it with `ssh-keygen -t ed25519 -N '' -f {config.ssh_key_path}` or set {_key('sshKeyPath')}",
        )
    ]


def _taken_networks(config: ClusterConfig, facts: HostFacts) -> list[ipaddress.IPv4Network]:
    taken = [ipaddress.IPv4Network(n.cidr) for n in facts.libvirt_networks or ()]
    taken += [ipaddress.IPv4Network(r.destination) for r in _foreign_routes(config, facts)]
    return taken


def suggest_cidr(config: ClusterConfig, facts: HostFacts) -> str | None:
    """A free network of the same size, counting down from 172.31.255.0 (the default's neighbourhood)."""
    taken = _taken_networks(config, facts)
    private = ipaddress.IPv4Network("172.16.0.0/12")
    candidates = private.subnets(new_prefix=max(config.prefix_length, private.prefixlen))
    # subnets() counts up; walk from the top by reversing a bounded list.
    for candidate in reversed(list(islice(candidates, 1 << 16))):
        if not any(candidate.overlaps(t) for t in taken):
            return str(candidate)
    return None


def _network_fix(config: ClusterConfig, facts: HostFacts) -> str:
    free = suggest_cidr(config, facts)
    example = f", e.g. `pulumi config set {_key('networkCidr')} {free}`" if free else ""
    return f"set {_key('networkCidr')} to a range nothing else on the host uses{example}"


def _check_network(config: ClusterConfig, facts: HostFacts) -> list[PreflightProblem]:
    ours = ipaddress.IPv4Network(config.network_cidr)
    problems = []
    for network in facts.libvirt_networks or ():
        if ipaddress.IPv4Network(network.cidr).overlaps(ours):
            observed = f"libvirt network '{network.name}' uses {network.cidr}, which overlaps {config.network_cidr}"
            problems.append(PreflightProblem("network", observed, _network_fix(config, facts)))
    return problems


def _foreign_routes(config: ClusterConfig, facts: HostFacts) -> list[HostRoute]:
    """Routes not explained by our own bridge (a re-run) or another libvirt network (reported already)."""
    bridges = {config.bridge_name} | {n.bridge for n in facts.libvirt_networks or () if n.bridge}
    return [
        r
        for r in facts.host_routes or ()
        if r.device not in bridges and ipaddress.IPv4Network(r.destination).prefixlen > 0
    ]


def _check_host_routes(config: ClusterConfig, facts: HostFacts) -> list[PreflightProblem]:
    if facts.remote:
        return []
    ours = ipaddress.IPv4Network(config.network_cidr)
    return [
        PreflightProblem(
            "host-route",
            f"the host routes {route.destination} via {route.device}, which overlaps {config.network_cidr}",
            _network_fix(config, facts),
        )
        for route in _foreign_routes(config, facts)
        if ipaddress.IPv4Network(route.destination).overlaps(ours)
    ]


CHECKS: tuple[Callable[[ClusterConfig, HostFacts], list[PreflightProblem]], ...] = (
    _check_libvirt,
    _check_kvm,
    _check_mkisofs,
    _check_apparmor,
    _check_pool_permissions,
    _check_selinux,
    _check_memory,
    _check_disk,
    _check_ssh_key,
    _check_network,
    _check_host_routes,
)


def check(config: ClusterConfig, facts: HostFacts) -> list[PreflightProblem]:
    """Every problem the facts show; unknown facts are given the benefit of the doubt."""
    return [problem for run in CHECKS for problem in run(config, facts)]


def describe(facts: HostFacts) -> str:
    """One line per fact, for logs (`pulumi.log.info`) and bug reports."""
    return "\n".join(f"{name}: {value!r}" for name, value in vars(facts).items())


def should_run(config: ClusterConfig, environ: Mapping[str, str] | None = None) -> bool:
    """False when the user opted out with KUBE_ON_AIR_SKIP_PREFLIGHT=1."""
    env = os.environ if environ is None else environ
    return env.get(SKIP_ENV, "").strip() != "1"


def run_preflight(config: ClusterConfig, facts: HostFacts | None = None) -> HostFacts:
    """Gather (unless given) and check; raise PreflightError listing every problem, else return the facts."""
    facts = gather_host_facts(config) if facts is None else facts
    problems = check(config, facts)
    if problems:
        raise PreflightError(problems, config.libvirt_uri)
    return facts
