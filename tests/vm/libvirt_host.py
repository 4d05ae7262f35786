"""A libvirt host for the node VM boot test: daemons, NAT network, dir pool, volumes, seed ISO, domain.

Everything is created through `virsh` (the same libvirt objects pulumi-libvirt creates) and
registered for cleanup as it is made; `LibvirtHost.close()` removes it all in reverse order, daemons
it started included, and keeps going past individual failures.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from components.artifacts import seed

URI = "qemu:///system"
LIBVIRTD_PIDFILE = Path("/run/libvirtd.pid")
VIRTLOGD_PIDFILE = Path("/run/virtlogd.pid")
VIRTLOGD_SOCKET = Path("/run/libvirt/virtlogd-sock")
# A pool directory libvirt's QEMU user (libvirt-qemu on Debian) can traverse; also the AppArmor-safe place.
POOL_PARENT = Path("/var/lib/libvirt/images")
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")

REQUIRED_TOOLS = (
    "qemu-system-x86_64",
    "qemu-img",
    "virsh",
    "libvirtd",
    "virtlogd",
    "genisoimage",
    "debootstrap",
    "mke2fs",
    "sfdisk",
    "ssh",
    "ssh-keygen",
)
APT_PACKAGES = (
    "qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients genisoimage "
    "debootstrap e2fsprogs fdisk openssh-client"
)


def missing_tools() -> list[str]:
    return [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]


class HostError(RuntimeError):
    """A libvirt or QEMU step failed; the message says which and why."""


def run(args: Sequence[str], timeout: float = 120, input_text: str | None = None) -> str:
    """Run a command (argument list, no shell); return stdout, raise HostError with stderr on failure."""
    try:
        proc = subprocess.run(
            list(args), input=input_text, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as err:
        raise HostError(f"{' '.join(args)}: no answer within {timeout:.0f} s") from err
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise HostError(f"{' '.join(args)}: exit {proc.returncode}: {detail}")
    return proc.stdout


SYS_NET = Path("/sys/class/net")


def started_networks(active: Sequence[str], bridges_before: set[str]) -> list[str]:
    """Of the networks active once libvirtd is up, those whose bridge it has just made."""
    return [name for name in active if network_bridge(name) not in bridges_before]


def network_bridge(name: str) -> str:
    info = dict(line.split(":", 1) for line in virsh("net-info", name).splitlines() if ":" in line)
    return info.get("Bridge", "").strip()


def virsh(*args: str, timeout: float = 120) -> str:
    return run(["virsh", "-q", "-c", URI, *args], timeout=timeout)


def _virsh_action(*args: str) -> Callable[[], None]:
    def action() -> None:
        virsh(*args)

    return action


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0): look at its state.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _read_pid(path: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = int(path.read_text().strip())
            if _pid_alive(pid):
                return pid
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise HostError(f"{path} did not name a running process within {timeout:.0f} s")


def _socket_answers(path: Path) -> bool:
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
            return True
        except OSError:
            return False


def _libvirtd_answers() -> bool:
    proc = subprocess.run(["virsh", "-q", "-c", URI, "uri"], capture_output=True, text=True, timeout=30, check=False)
    return proc.returncode == 0


def _restore_text(path: Path, value: str) -> None:
    if path.read_text().strip() != value:
        path.write_text(value + "\n")


def _stop_pid(pid: int, name: str, timeout: float = 15) -> None:
    if not _pid_alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    raise HostError(f"{name} (pid {pid}) ignored SIGTERM for {timeout:.0f} s; killed")


# --- descriptions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DnsHost:
    hostname: str
    ip: str


@dataclass(frozen=True)
class NetworkSpec:
    """A libvirt NAT network as pulumi-libvirt's Network(mode='nat', domain=..., dns.hosts=...) makes it."""

    name: str
    bridge: str
    cidr: str
    gateway: str
    domain: str
    dns_hosts: tuple[DnsHost, ...] = ()

    def xml(self) -> str:
        net = ipaddress.IPv4Network(self.cidr)
        root = ET.Element("network")
        ET.SubElement(root, "name").text = self.name
        ET.SubElement(root, "forward", mode="nat")
        ET.SubElement(root, "bridge", name=self.bridge, stp="on", delay="0")
        ET.SubElement(root, "domain", name=self.domain, localOnly="yes")
        dns = ET.SubElement(root, "dns")
        for host in self.dns_hosts:
            ET.SubElement(ET.SubElement(dns, "host", ip=host.ip), "hostname").text = host.hostname
        ip = ET.SubElement(root, "ip", address=self.gateway, netmask=str(net.netmask))
        dhcp = ET.SubElement(ip, "dhcp")
        hosts = list(net.hosts())
        # libvirt's default: the whole subnet but the gateway.
        first = hosts[1] if hosts[0] == ipaddress.IPv4Address(self.gateway) else hosts[0]
        ET.SubElement(dhcp, "range", start=str(first), end=str(hosts[-1]))
        return ET.tostring(root, encoding="unicode")


@dataclass(frozen=True)
class KernelBoot:
    kernel: Path
    initrd: Path
    cmdline: str


@dataclass(frozen=True)
class DomainSpec:
    """Mirrors components/node.py's Domain: pc machine, virtio disk, seed disk and NIC, pty serial console, VNC."""

    name: str
    domain_type: str  # "kvm" or "qemu"
    vcpu: int
    memory_mib: int
    pool: str
    disk_volume: str
    seed_volume: str
    network: str
    mac: str
    serial_log: Path
    kernel_boot: KernelBoot | None = None

    def xml(self) -> str:
        root = ET.Element("domain", type=self.domain_type)
        ET.SubElement(root, "name").text = self.name
        ET.SubElement(root, "memory", unit="MiB").text = str(self.memory_mib)
        ET.SubElement(root, "vcpu").text = str(self.vcpu)
        os_el = ET.SubElement(root, "os")
        ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
        if self.kernel_boot is not None:
            ET.SubElement(os_el, "kernel").text = str(self.kernel_boot.kernel)
            ET.SubElement(os_el, "initrd").text = str(self.kernel_boot.initrd)
            ET.SubElement(os_el, "cmdline").text = self.kernel_boot.cmdline
        else:
            ET.SubElement(os_el, "boot", dev="hd")
        features = ET.SubElement(root, "features")
        ET.SubElement(features, "acpi")
        ET.SubElement(features, "apic")
        # TCG: the richest CPU QEMU can emulate (x86-64-v2+, what Debian userland and containerd like).
        ET.SubElement(root, "cpu", mode="host-passthrough" if self.domain_type == "kvm" else "maximum")
        ET.SubElement(root, "on_poweroff").text = "destroy"
        ET.SubElement(root, "on_reboot").text = "restart"
        ET.SubElement(root, "on_crash").text = "destroy"
        devices = ET.SubElement(root, "devices")
        disk = ET.SubElement(devices, "disk", type="volume", device="disk")
        ET.SubElement(disk, "driver", name="qemu", type="qcow2")
        ET.SubElement(disk, "source", pool=self.pool, volume=self.disk_volume)
        ET.SubElement(disk, "target", dev="vda", bus="virtio")
        # As provider v0.8.1 attaches a raw volume_id disk: the next virtio disk, writable.
        seed = ET.SubElement(devices, "disk", type="volume", device="disk")
        ET.SubElement(seed, "driver", name="qemu", type="raw")
        ET.SubElement(seed, "source", pool=self.pool, volume=self.seed_volume)
        ET.SubElement(seed, "target", dev="vdb", bus="virtio")
        nic = ET.SubElement(devices, "interface", type="network")
        ET.SubElement(nic, "mac", address=self.mac)
        ET.SubElement(nic, "source", network=self.network)
        ET.SubElement(nic, "model", type="virtio")
        serial = ET.SubElement(devices, "serial", type="pty")
        ET.SubElement(serial, "log", file=str(self.serial_log), append="off")
        ET.SubElement(serial, "target", port="0")
        console = ET.SubElement(devices, "console", type="pty")
        ET.SubElement(console, "target", type="serial", port="0")
        # As components/node.py declares it (the provider's own default, SPICE, is missing from EL9's QEMU).
        graphics = ET.SubElement(devices, "graphics", type="vnc", autoport="yes")
        ET.SubElement(graphics, "listen", type="address", address="127.0.0.1")
        return ET.tostring(root, encoding="unicode")


# --- acceleration -------------------------------------------------------------------------------


def detect_domain_type(kernel: Path, initrd: Path, timeout: float = 30) -> tuple[str, str]:
    """("kvm" | "qemu", why): try booting the image's kernel under KVM for a few seconds.

    /dev/kvm can exist and still be unusable (kvm-pvm stops stock kernels with a KVM internal
    error), so only a kernel that gets as far as starting init counts as KVM working.
    KOA_VM_ACCEL=kvm|qemu skips the probe.
    """
    forced = os.environ.get("KOA_VM_ACCEL", "")
    if forced in ("kvm", "qemu"):
        return forced, f"forced by KOA_VM_ACCEL={forced}"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "qemu", "/dev/kvm is absent or not accessible"
    with tempfile.TemporaryDirectory(prefix="koa-kvm-probe-") as tmp:
        serial = Path(tmp) / "serial.log"
        args = [
            "qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults",
            "-display", "none", "-no-reboot", "-serial", f"file:{serial}",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", "console=ttyS0 panic=-1 rdinit=/bin/true",
        ]  # fmt: skip
        stderr_path = Path(tmp) / "stderr"
        with stderr_path.open("w") as stderr:
            proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr)
            try:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    console = serial.read_text(errors="replace") if serial.exists() else ""
                    if "Run /bin/true as init process" in console or "Attempted to kill init" in console:
                        return "kvm", "a kernel started init under KVM"
                    errors = stderr_path.read_text(errors="replace")
                    if "KVM internal error" in errors or proc.poll() is not None:
                        first = next((line for line in errors.splitlines() if line.strip()), "exited")
                        return "qemu", f"KVM unusable ({first.strip()})"
                    time.sleep(0.2)
                return "qemu", f"KVM probe kernel did not reach init within {timeout:.0f} s"
            finally:
                proc.kill()
                proc.wait(timeout=10)


# --- the host -----------------------------------------------------------------------------------


@dataclass
class LibvirtHost:
    """Creates libvirt objects and remembers how to remove each one; use as a context manager."""

    _cleanups: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    started_daemons: list[str] = field(default_factory=list)
    cleanup_errors: list[str] = field(default_factory=list)

    def __enter__(self) -> Self:
        try:
            self.ensure_daemons()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def on_close(self, what: str, action: Callable[[], None]) -> None:
        self._cleanups.append((what, action))

    def mark(self) -> int:
        """A point to unwind to with close(down_to=...): removes only what was created after it."""
        return len(self._cleanups)

    def close(self, down_to: int = 0) -> None:
        while len(self._cleanups) > down_to:
            what, action = self._cleanups.pop()
            try:
                action()
            except (HostError, OSError, subprocess.SubprocessError) as err:  # keep going; report at the end
                self.cleanup_errors.append(f"{what}: {err}")

    # daemons

    def ensure_daemons(self) -> None:
        """Start virtlogd and libvirtd (no systemd here) unless they already answer."""
        if not _socket_answers(VIRTLOGD_SOCKET):
            run(["virtlogd", "-d"], timeout=30)
            logd_pid = _read_pid(VIRTLOGD_PIDFILE, 15)
            self.started_daemons.append(f"virtlogd (pid {logd_pid})")
            self.on_close("stop virtlogd", lambda: _stop_pid(logd_pid, "virtlogd"))
        if not _libvirtd_answers():
            bridges_before = set(os.listdir(SYS_NET))
            # A NAT network turns IPv4 forwarding on and leaves it on; put it back once libvirtd is gone.
            forward = IP_FORWARD.read_text().strip()
            self.on_close("restore net.ipv4.ip_forward", lambda: _restore_text(IP_FORWARD, forward))
            # libvirtd -d logs harmless complaints about DBus, firewalld and dmidecode.
            subprocess.run(["libvirtd", "-d"], capture_output=True, timeout=30, check=False)
            libvirtd_pid = _read_pid(LIBVIRTD_PIDFILE, 15)
            self.started_daemons.append(f"libvirtd (pid {libvirtd_pid})")
            self.on_close("stop libvirtd", lambda: _stop_pid(libvirtd_pid, "libvirtd"))
            deadline = time.monotonic() + 30
            while not _libvirtd_answers():
                if time.monotonic() > deadline:
                    raise HostError(f"libvirtd (pid {libvirtd_pid}) started but {URI} does not answer")
                time.sleep(0.3)
            # Networks it autostarted (Debian's "default") would outlive it: stop them before it. Not
            # the ones that ran before it started (a live stack whose libvirtd had stopped): their
            # bridges were there already, and libvirtd only took them up again.
            for autostarted in started_networks(virsh("net-list", "--name").split(), bridges_before):
                self.on_close(f"destroy autostarted network {autostarted}", _virsh_action("net-destroy", autostarted))

    # network

    def create_network(self, spec: NetworkSpec, workdir: Path) -> None:
        if self._exists("net-info", spec.name):
            raise HostError(
                f"a libvirt network named {spec.name} already exists (a deployed stack or a killed test run?); "
                f"remove it with `virsh net-destroy {spec.name}; virsh net-undefine {spec.name}` if it is stale"
            )
        if Path("/sys/class/net", spec.bridge).exists():
            raise HostError(f"network interface {spec.bridge} already exists on this host")
        xml_path = workdir / f"network-{spec.name}.xml"
        xml_path.write_text(spec.xml())
        virsh("net-define", str(xml_path))
        self.on_close(f"undefine network {spec.name}", _virsh_action("net-undefine", spec.name))
        virsh("net-start", spec.name)
        self.on_close(f"destroy network {spec.name}", _virsh_action("net-destroy", spec.name))

    def add_dhcp_host(self, network: str, mac: str, name: str, ip: str) -> None:
        """What pulumi-libvirt does for a NIC with addresses + mac + hostname: a live ip-dhcp-host entry."""
        host = ET.tostring(ET.Element("host", mac=mac, name=name, ip=ip), encoding="unicode")
        virsh("net-update", network, "add", "ip-dhcp-host", host, "--live", "--config")
        # Removed with the node, so a later boot of the same node (another image) can add it again.
        self.on_close(
            f"remove DHCP host {name} from {network}",
            _virsh_action("net-update", network, "delete", "ip-dhcp-host", host, "--live", "--config"),
        )

    # pool and volumes

    def create_pool(self, name: str) -> Path:
        if self._exists("pool-info", name):
            raise HostError(f"a libvirt pool named {name} already exists")
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=POOL_PARENT))
        path.chmod(0o711)
        self.on_close(f"remove pool directory {path}", lambda: shutil.rmtree(path, ignore_errors=True))
        virsh("pool-define-as", name, "dir", "--target", str(path))
        self.on_close(f"undefine pool {name}", _virsh_action("pool-undefine", name))
        virsh("pool-start", name)
        self.on_close(f"destroy pool {name}", _virsh_action("pool-destroy", name))
        return path

    def upload_volume(self, pool: str, name: str, source: Path, fmt: str) -> Path:
        """Like pulumi-libvirt's Volume(source=<local file>): create the volume, upload the bytes."""
        if fmt == "qcow2":
            info = run(["qemu-img", "info", "--output=json", str(source)], timeout=30)
            capacity = int(json.loads(info)["virtual-size"])
        else:
            capacity = source.stat().st_size
        vol = ET.Element("volume")
        ET.SubElement(vol, "name").text = name
        ET.SubElement(vol, "capacity", unit="bytes").text = str(capacity)
        ET.SubElement(vol, "allocation", unit="bytes").text = "0"
        ET.SubElement(ET.SubElement(vol, "target"), "format", type=fmt)
        self._create_volume(pool, name, ET.tostring(vol, encoding="unicode"), source.parent)
        virsh("vol-upload", "--pool", pool, name, str(source), timeout=600)
        virsh("pool-refresh", pool)
        return self.volume_path(pool, name)

    def create_overlay(self, pool: str, name: str, base_path: Path, capacity_bytes: int) -> Path:
        """Like Volume(base_volume_id=..., size=...): a qcow2 overlay with a <backingStore>."""
        vol = ET.Element("volume")
        ET.SubElement(vol, "name").text = name
        ET.SubElement(vol, "capacity", unit="bytes").text = str(capacity_bytes)
        ET.SubElement(ET.SubElement(vol, "target"), "format", type="qcow2")
        backing = ET.SubElement(vol, "backingStore")
        ET.SubElement(backing, "path").text = str(base_path)
        ET.SubElement(backing, "format", type="qcow2")
        with tempfile.TemporaryDirectory(prefix="koa-vol-") as tmp:
            self._create_volume(pool, name, ET.tostring(vol, encoding="unicode"), Path(tmp))
        return self.volume_path(pool, name)

    def _create_volume(self, pool: str, name: str, xml: str, scratch: Path) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".xml", dir=scratch if scratch.is_dir() else None) as f:
            f.write(xml)
            f.flush()
            virsh("vol-create", pool, f.name)
        self.on_close(f"delete volume {pool}/{name}", _virsh_action("vol-delete", "--pool", pool, name))

    def volume_path(self, pool: str, name: str) -> Path:
        return Path(virsh("vol-path", "--pool", pool, name).strip())

    # domains

    def start_domain(self, spec: DomainSpec, workdir: Path) -> float:
        """Define and start; returns time.monotonic() just before the start."""
        if self._exists("dominfo", spec.name):
            raise HostError(f"a libvirt domain named {spec.name} already exists")
        xml_path = workdir / f"domain-{spec.name}.xml"
        xml_path.write_text(spec.xml())
        virsh("define", str(xml_path))
        self.on_close(f"undefine domain {spec.name}", _virsh_action("undefine", spec.name))
        started = time.monotonic()
        virsh("start", spec.name)
        self.on_close(f"destroy domain {spec.name}", lambda: self._destroy_if_running(spec.name))
        return started

    def domain_state(self, name: str) -> str:
        try:
            return virsh("domstate", "--reason", name, timeout=30).strip()
        except HostError as err:
            return f"unknown ({err})"

    def _destroy_if_running(self, name: str) -> None:
        if not self.domain_state(name).startswith("shut off"):
            virsh("destroy", name)

    @staticmethod
    def _exists(command: str, name: str) -> bool:
        proc = subprocess.run(
            ["virsh", "-q", "-c", URI, command, name], capture_output=True, text=True, timeout=30, check=False
        )
        return proc.returncode == 0


def make_seed_iso(source_dir: Path, dest: Path) -> Path:
    """The NoCloud seed exactly as the program builds it (components/artifacts/seed.py) from a rendered node dir."""
    missing = [name for name in seed.FILES if not (source_dir / name).is_file()]
    if missing:
        raise HostError(f"{source_dir} lacks {', '.join(missing)}")
    return seed.write_iso(dest.parent, dest.name, {name: (source_dir / name).read_text() for name in seed.FILES})


DEV_KVM = Path("/dev/kvm")


BRIDGE_NF_CALL_IPTABLES = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


@contextlib.contextmanager
def bridged_frames_past_iptables() -> Iterator[str]:
    """net.bridge.bridge-nf-call-iptables 0 for as long as the block runs, as the preflight's advice
    says (a host where Docker or a CNI loaded br_netfilter has it 1); then put back. Yields what changed."""
    if not BRIDGE_NF_CALL_IPTABLES.exists():
        yield "br_netfilter not loaded"
        return
    before = BRIDGE_NF_CALL_IPTABLES.read_text().strip()
    BRIDGE_NF_CALL_IPTABLES.write_text("0\n")
    try:
        yield f"bridge-nf-call-iptables {before} -> 0 for the run"
    finally:
        BRIDGE_NF_CALL_IPTABLES.write_text(f"{before}\n")


@contextlib.contextmanager
def kvm_device_for_qemu() -> Iterator[str]:
    """/dev/kvm given to group kvm, 0660, as udev does, for as long as the block runs; then put back.

    Without udev the kernel's root-only device makes libvirt probe QEMU again on every call (each
    domain create stalls for minutes) and the preflight refuses it; this fixes it the way the
    preflight's advice says. Yields what was changed, for reports."""
    if not DEV_KVM.exists():
        yield "no /dev/kvm"
        return
    before = DEV_KVM.stat()
    subprocess.run(["chgrp", "kvm", str(DEV_KVM)], check=True)
    DEV_KVM.chmod(0o660)
    try:
        yield f"{stat.filemode(before.st_mode)} gid {before.st_gid} -> group kvm 0660 for the run"
    finally:
        os.chown(DEV_KVM, before.st_uid, before.st_gid)
        DEV_KVM.chmod(stat.S_IMODE(before.st_mode))
