"""Stack configuration: read every key, validate all of it, return one frozen object.

Pulumi's mock runtime does not apply `Pulumi.yaml` defaults, so the defaults live here too
(`DEFAULTS`); a test keeps the two in step.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from components.config import tolerances
from components.config.tolerances import Tolerances

NAMESPACE = "kube-on-air"

CONTROL_PLANE = "control-plane"
WORKER = "worker"

SUPPORTED_CNIS = ("kube-router", "calico")
SUPPORTED_WORKLOADS = ("kuard", "dnstools", "connectivity-check", "stateful")
# Cluster add-ons, each applied after the CNI (components/localpath.py, metricsserver.py, metallb.py).
SUPPORTED_ADDONS = ("local-path", "metrics-server", "metallb")
# `loadBalancerAddresses: auto`: the top quarter of the network, at most this many addresses, ending
# just below the broadcast address, far from the low node ids (for 172.31.255.0/24: .239-.254).
AUTO_LOAD_BALANCER_SIZE = 16
DOMAIN_TYPES = ("kvm", "qemu")
# kubeadm's v1beta4 config API exists from 1.31; kubernetes-validate ships schemas up to 1.37.
MIN_KUBERNETES_MINOR = 31
MAX_KUBERNETES_MINOR = 37
# kubeadm preflight refuses a control plane below these.
KUBEADM_MIN_VCPU = 2
KUBEADM_MIN_MEMORY_MIB = 1700
MAX_BRIDGE_NAME = 15  # Linux IFNAMSIZ - 1
MAX_WORKERS = 200
# How long `pulumi up` may wait for the connectivity check (image pulls included) before it fails.
CONNECTIVITY_TIMEOUT_RANGE = (30, 7200)

DEFAULT_IMAGE = "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2"
BASE_VOLUME = "base.qcow2"  # the base image's volume in the stack's pool

# Key -> default. "{stack}" is replaced by the stack name.
DEFAULTS: dict[str, str] = {
    "networkCidr": "172.31.255.0/24",
    "dnsDomain": "{stack}.internal",
    "resourcePrefix": "{stack}-",
    "controlPlanePrefix": "head",
    "workerPrefix": "work",
    "controlPlaneId": "10",
    "firstWorkerId": "11",
    "workerCount": "3",
    "controlPlaneVcpu": "2",
    "controlPlaneMemoryMiB": "2048",
    "workerVcpu": "1",
    "workerMemoryMiB": "1536",
    "diskGiB": "20",
    "podCidr": "10.244.0.0/16",
    "serviceCidr": "10.96.0.0/12",
    "kubernetesVersion": "1.34.2",
    "cni": "kube-router",
    "workloads": '["kuard", "dnstools", "connectivity-check"]',
    # A default StorageClass, as kind and k3s ship one: PVCs of charts and StatefulSets bind; the
    # metrics API, as k3s ships it: `kubectl top` and HorizontalPodAutoscalers work; LoadBalancer
    # Services get an address the host reaches, as k3s's service load balancer gives them.
    "addons": '["local-path", "metrics-server", "metallb"]',
    # The metallb add-on's pool: "auto" (see AUTO_LOAD_BALANCER_SIZE), FIRST-LAST or a CIDR.
    "loadBalancerAddresses": "auto",
    "imageSource": DEFAULT_IMAGE,
    "prebaked": "false",
    "keepBaseImage": "false",
    "sshKeyPath": "~/.ssh/kube-on-air_ed25519",
    "sshUser": "kube",
    "hostKeyDir": "~/.local/share/kube-on-air/{stack}/host-keys",
    # Where `make release VERSION=...` leaves each Kubernetes release an offline upgrade streams to
    # the nodes (tools/releases.py): v<version>/pieces/{kubernetes,images}.
    "releasesDir": "~/.cache/kube-on-air/toolchain/releases",
    "domainType": "kvm",
    "poolPath": "/var/lib/libvirt/images/kube-on-air-{stack}",
    "connectivityTimeoutSeconds": "600",
    "slowHost": "auto",
}
DEFAULT_LIBVIRT_URI = "qemu:///system"

_DNS_LABEL = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
_DNS_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_VERSION = re.compile(r"^1\.(\d+)\.(\d+)$")
_PREFIX = re.compile(r"^([a-z0-9][a-z0-9-]*)?$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


# How to change a value where the Pulumi CLI reads the config; other paths (make render) pass their own.
PULUMI_CONFIG_FIX = "fix with `pulumi config set <key> <value>`"


@dataclass(frozen=True)
class ConfigProblem:
    key: str
    value: str
    fix: str
    # False for a key given without any namespace: it is shown as given, not as kube-on-air:<key>.
    namespaced: bool = True

    def __str__(self) -> str:
        shown = f"{NAMESPACE}:{self.key}" if self.namespaced else self.key
        return f"  {shown} = {self.value!r}: {self.fix}"


class ConfigError(Exception):
    """Every problem found in the stack config, reported together."""

    def __init__(self, problems: list[ConfigProblem], how_to_fix: str = PULUMI_CONFIG_FIX) -> None:
        self.problems = problems
        lines = "\n".join(str(p) for p in problems)
        super().__init__(f"invalid stack configuration ({len(problems)} problem(s)); {how_to_fix}:\n{lines}")


@dataclass(frozen=True)
class NodeSpec:
    name: str  # hostname and Kubernetes node name, e.g. head10
    libvirt_name: str  # domain name on the host, prefixed per stack
    role: str
    node_id: int
    ip: str
    mac: str
    vcpu: int
    memory_mib: int

    @property
    def is_control_plane(self) -> bool:
        return self.role == CONTROL_PLANE


@dataclass(frozen=True)
class ClusterConfig:
    stack: str
    network_cidr: str
    gateway: str
    prefix_length: int
    dns_domain: str
    network_name: str
    bridge_name: str
    pool_name: str
    pool_path: str
    control_plane: NodeSpec
    workers: tuple[NodeSpec, ...]
    disk_gib: int
    pod_cidr: str
    service_cidr: str
    kubernetes_version: str
    cni: str
    workloads: tuple[str, ...]
    addons: tuple[str, ...]
    # The metallb add-on's pool as "first-last", inside the network and clear of every node.
    load_balancer_range: str
    image_source: str
    prebaked: bool
    keep_base_image: bool
    ssh_key_path: str
    ssh_public_key: str
    ssh_user: str
    host_key_dir: str
    releases_dir: str
    domain_type: str
    libvirt_uri: str
    connectivity_timeout_seconds: int
    tolerances: Tolerances

    @property
    def nodes(self) -> tuple[NodeSpec, ...]:
        return (self.control_plane, *self.workers)

    @property
    def kubernetes_minor(self) -> str:
        major, minor, _ = self.kubernetes_version.split(".")
        return f"{major}.{minor}"

    @property
    def api_endpoint(self) -> str:
        return f"https://{self.control_plane.ip}:6443"

    def fqdn(self, node: NodeSpec) -> str:
        return f"{node.name}.{self.dns_domain}"

    def read_private_key(self) -> str:
        return Path(self.ssh_key_path).read_text()


T = TypeVar("T")


class _Reader:
    """Reads raw string values and collects problems instead of raising on the first."""

    def __init__(self, raw: Mapping[str, str | None], stack: str) -> None:
        self.raw = raw
        self.stack = stack
        self.problems: list[ConfigProblem] = []

    def text(self, key: str) -> str:
        value = self.raw.get(key)
        if value is None:
            value = DEFAULTS[key]
        # Pulumi.yaml carries the same templated defaults, so expand wherever the value came from.
        return value.replace("{stack}", self.stack)

    def parse(self, key: str, parser: Callable[[str], T], fix: str, fallback: T) -> T:
        value = self.text(key)
        try:
            return parser(value)
        except (ValueError, TypeError):
            self.problem(key, value, fix)
            return fallback

    def problem(self, key: str, value: object, fix: str) -> None:
        self.problems.append(ConfigProblem(key, str(value), fix))


def _int(value: str) -> int:
    return int(value.strip())


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise ValueError(value)


def _string_list(value: str) -> tuple[str, ...]:
    parsed = json.loads(value)
    if not isinstance(parsed, list) or not all(isinstance(item, str) for item in parsed):
        raise ValueError(value)
    return tuple(parsed)


def _network(value: str) -> ipaddress.IPv4Network:
    network = ipaddress.ip_network(value.strip(), strict=True)
    if not isinstance(network, ipaddress.IPv4Network):
        raise ValueError(value)
    return network


def deterministic_mac(stack: str, ip: ipaddress.IPv4Address) -> str:
    """QEMU's OUI, one byte from the stack name, two from the address: stable across re-creation."""
    stack_byte = hashlib.sha256(stack.encode()).digest()[0]
    third, fourth = ip.packed[2], ip.packed[3]
    return f"52:54:00:{stack_byte:02x}:{third:02x}:{fourth:02x}"


def bridge_name_for(stack: str) -> str:
    readable = f"koa-{stack}"
    if len(readable) <= MAX_BRIDGE_NAME and re.fullmatch(r"[a-zA-Z0-9-]+", stack):
        return readable
    return "koa-" + hashlib.sha256(stack.encode()).hexdigest()[: MAX_BRIDGE_NAME - 4]


def _check_range(reader: _Reader, key: str, value: int, low: int, high: int, fix: str) -> None:
    if not low <= value <= high:
        reader.problem(key, value, fix)


def _node_address(reader: _Reader, key: str, node_id: int, network: ipaddress.IPv4Network | None) -> str:
    if network is None:
        return ""
    usable = f"pick an id in 2..{network.num_addresses - 2}"
    if not 0 < node_id < network.num_addresses - 1:
        reader.problem(key, node_id, f"no usable address of {network} has this id; {usable}")
        return ""
    address = network.network_address + node_id
    if address == network.network_address + 1:
        reader.problem(key, node_id, f"node address {address} is the network gateway; pick another id")
    return str(address)


def _read_network(reader: _Reader) -> ipaddress.IPv4Network | None:
    network = reader.parse(
        "networkCidr", _network, "use an IPv4 network in CIDR form with host bits zero, e.g. 172.31.255.0/24", None
    )
    if network is not None and network.prefixlen > 28:
        reader.problem("networkCidr", network, "use a prefix of /28 or larger so nodes fit")
        return None
    return network


def _read_sizes(reader: _Reader) -> tuple[int, int, int, int]:
    """vCPUs and MiB of the control plane and of each worker."""
    cp_vcpu = reader.parse("controlPlaneVcpu", _int, "use a whole number of vCPUs", KUBEADM_MIN_VCPU)
    cp_mem = reader.parse("controlPlaneMemoryMiB", _int, "use a whole number of MiB", KUBEADM_MIN_MEMORY_MIB)
    w_vcpu = reader.parse("workerVcpu", _int, "use a whole number of vCPUs", 1)
    w_mem = reader.parse("workerMemoryMiB", _int, "use a whole number of MiB", 1024)
    if cp_vcpu < KUBEADM_MIN_VCPU:
        reader.problem(
            "controlPlaneVcpu", cp_vcpu, f"kubeadm needs at least {KUBEADM_MIN_VCPU} vCPUs on the control plane"
        )
    if cp_mem < KUBEADM_MIN_MEMORY_MIB:
        reader.problem(
            "controlPlaneMemoryMiB", cp_mem, f"kubeadm needs at least {KUBEADM_MIN_MEMORY_MIB} MiB on the control plane"
        )
    _check_range(reader, "workerVcpu", w_vcpu, 1, 64, "use 1..64 vCPUs")
    _check_range(reader, "workerMemoryMiB", w_mem, 512, 262144, "use at least 512 MiB per worker")

    return cp_vcpu, cp_mem, w_vcpu, w_mem


def _read_nodes(reader: _Reader, network: ipaddress.IPv4Network | None) -> tuple[NodeSpec | None, tuple[NodeSpec, ...]]:
    cp_prefix = reader.text("controlPlanePrefix")
    worker_prefix = reader.text("workerPrefix")
    for key, prefix in (("controlPlanePrefix", cp_prefix), ("workerPrefix", worker_prefix)):
        if not _DNS_LABEL.match(prefix + "1"):
            reader.problem(key, prefix, "use lowercase letters, digits and '-', starting with a letter")
    if cp_prefix == worker_prefix:
        reader.problem("workerPrefix", worker_prefix, "must differ from controlPlanePrefix")
    cp_id = reader.parse("controlPlaneId", _int, "use a whole number, e.g. 10", 10)
    first_worker = reader.parse("firstWorkerId", _int, "use a whole number, e.g. 11", 11)
    count = reader.parse("workerCount", _int, "use a whole number of workers, e.g. 3", 0)
    if not 0 <= count <= MAX_WORKERS:
        reader.problem("workerCount", count, f"use 0..{MAX_WORKERS} workers")
        count = 0  # keep checking the rest without building an absurd worker list
    cp_vcpu, cp_mem, w_vcpu, w_mem = _read_sizes(reader)
    stack_prefix = reader.text("resourcePrefix")
    if not _PREFIX.match(stack_prefix):
        reader.problem("resourcePrefix", stack_prefix, "use lowercase letters, digits and '-' (or empty)")
    worker_ids = [first_worker + i for i in range(count)]
    if cp_id in worker_ids:
        reader.problem(
            "firstWorkerId",
            first_worker,
            f"worker ids {worker_ids[0]}..{worker_ids[-1]} include controlPlaneId {cp_id}; start workers after it",
        )

    def spec(prefix: str, node_id: int, role: str, vcpu: int, mem: int, key: str) -> NodeSpec:
        ip = _node_address(reader, key, node_id, network)
        mac = deterministic_mac(reader.stack, ipaddress.IPv4Address(ip)) if ip else ""
        name = f"{prefix}{node_id}"
        return NodeSpec(name, f"{stack_prefix}{name}", role, node_id, ip, mac, vcpu, mem)

    control_plane = spec(cp_prefix, cp_id, CONTROL_PLANE, cp_vcpu, cp_mem, "controlPlaneId")
    # Report a range problem once, not once per worker.
    before = len(reader.problems)
    workers = tuple(spec(worker_prefix, i, WORKER, w_vcpu, w_mem, "firstWorkerId") for i in worker_ids)
    del reader.problems[before + 1 :]
    if len(reader.problems) > before:
        reader.problems[-1] = ConfigProblem(
            "firstWorkerId",
            str(first_worker),
            f"with workerCount {count} the worker addresses leave {network}'s usable hosts or hit the gateway; "
            "lower workerCount or move firstWorkerId",
        )
    return control_plane, workers


def _read_kubernetes(reader: _Reader, network: ipaddress.IPv4Network | None) -> tuple[str, str, str]:
    version = reader.text("kubernetesVersion").removeprefix("v")
    match = _VERSION.match(version)
    if not match:
        reader.problem("kubernetesVersion", version, "use a full version like 1.34.2")
    elif not MIN_KUBERNETES_MINOR <= int(match.group(1)) <= MAX_KUBERNETES_MINOR:
        reader.problem(
            "kubernetesVersion",
            version,
            f"use a minor between 1.{MIN_KUBERNETES_MINOR} and 1.{MAX_KUBERNETES_MINOR} (kubeadm v1beta4 config)",
        )
    fix = "use an IPv4 network in CIDR form with host bits zero, e.g. 10.244.0.0/16"
    pods = reader.parse("podCidr", _network, fix, None)
    services = reader.parse("serviceCidr", _network, fix.replace("10.244.0.0/16", "10.96.0.0/12"), None)
    if pods and services and pods.overlaps(services):
        reader.problem("serviceCidr", services, f"must not overlap podCidr {pods}")
    for key, cidr in (("podCidr", pods), ("serviceCidr", services)):
        if cidr and network and cidr.overlaps(network):
            reader.problem(key, cidr, f"must not overlap networkCidr {network}")
    return version, str(pods or ""), str(services or "")


def _read_addons(reader: _Reader, workloads: tuple[str, ...]) -> tuple[str, ...]:
    none: tuple[str, ...] = ()
    addons = reader.parse("addons", _string_list, 'use a JSON list, e.g. ["local-path"], or [] for none', none)
    unknown = [a for a in addons if a not in SUPPORTED_ADDONS]
    if unknown:
        reader.problem("addons", ", ".join(unknown), f"unknown add-on; choose from: {', '.join(SUPPORTED_ADDONS)}")
    if "stateful" in workloads and "local-path" not in addons:
        reader.problem(
            "addons", json.dumps(list(addons)), 'the stateful workload claims volumes: add "local-path" to addons'
        )
    return addons


def _address_range(value: str, network: ipaddress.IPv4Network) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    """The first and last address of "auto", "FIRST-LAST" or a CIDR."""
    text = value.strip()
    if text == "auto":
        usable = network.num_addresses - 3  # less the network, gateway and broadcast addresses
        size = max(1, min(AUTO_LOAD_BALANCER_SIZE, usable // 4))
        last = network.broadcast_address - 1
        return last - (size - 1), last
    if "-" in text:
        first_text, last_text = text.split("-", 1)
        first, last = ipaddress.IPv4Address(first_text.strip()), ipaddress.IPv4Address(last_text.strip())
        if first > last:
            raise ValueError(value)
        return first, last
    block = ipaddress.ip_network(text, strict=True)
    if not isinstance(block, ipaddress.IPv4Network):
        raise ValueError(value)
    return block.network_address, block.broadcast_address


def _read_load_balancer(
    reader: _Reader, network: ipaddress.IPv4Network | None, nodes: tuple[NodeSpec, ...], addons: tuple[str, ...]
) -> str:
    """The pool, checked like the other ranges: inside networkCidr, clear of its reserved addresses
    and of every node (only when the add-on is on: a pool nobody uses cannot collide)."""
    key = "loadBalancerAddresses"
    value = reader.text(key)
    example = "auto, a range such as 172.31.255.200-172.31.255.220, or a CIDR such as 172.31.255.224/28"
    if network is None:
        return ""
    try:
        first, last = _address_range(value, network)
    except ValueError:
        reader.problem(key, value, f"use {example}")
        return ""
    shown = f"{first}-{last}"
    reserved = {network.network_address, network.network_address + 1, network.broadcast_address}
    if "metallb" not in addons:
        return shown
    if first not in network or last not in network:
        reader.problem(key, value, f"must lie inside networkCidr {network}; use {example}")
    elif any(first <= address <= last for address in reserved):
        reader.problem(key, value, f"must leave out {network}'s network, gateway and broadcast addresses")
    else:
        taken = [n.name for n in nodes if n.ip and first <= ipaddress.IPv4Address(n.ip) <= last]
        if taken:
            reader.problem(
                key,
                value,
                f"{shown} holds the address of {', '.join(taken)}; choose addresses no node has "
                "(or lower workerCount / move firstWorkerId)",
            )
    return shown


def _read_choices(reader: _Reader) -> tuple[str, tuple[str, ...], tuple[str, ...], str]:
    cni = reader.text("cni")
    if cni not in SUPPORTED_CNIS:
        reader.problem("cni", cni, f"use one of: {', '.join(SUPPORTED_CNIS)}")
    no_workloads: tuple[str, ...] = ()
    workloads = reader.parse(
        "workloads", _string_list, 'use a JSON list, e.g. ["kuard", "dnstools", "connectivity-check"]', no_workloads
    )
    unknown = [w for w in workloads if w not in SUPPORTED_WORKLOADS]
    if unknown:
        reader.problem(
            "workloads", ", ".join(unknown), f"unknown workload; choose from: {', '.join(SUPPORTED_WORKLOADS)}"
        )
    addons = _read_addons(reader, workloads)
    domain_type = reader.text("domainType")
    if domain_type not in DOMAIN_TYPES:
        reader.problem("domainType", domain_type, "use 'kvm' (hardware virtualisation) or 'qemu' (software emulation)")
    return cni, workloads, addons, domain_type


def _read_slow_host(reader: _Reader, domain_type: str) -> Tolerances:
    slow_host = reader.text("slowHost").strip().lower()
    if slow_host not in tolerances.SLOW_HOST_CHOICES:
        reader.problem("slowHost", slow_host, "use auto (slow exactly when domainType is qemu), true or false")
    return tolerances.for_host(slow_host, domain_type)


def _read_ssh(reader: _Reader) -> tuple[str, str, str]:
    user = reader.text("sshUser")
    if not _USER.match(user) or user == "root":
        reader.problem("sshUser", user, "use a lowercase login name other than root")
    key_path = os.path.expanduser(reader.text("sshKeyPath"))
    public_key = ""
    try:
        Path(key_path).read_text()
        public_key = Path(key_path + ".pub").read_text().strip()
    except OSError as err:
        reader.problem(
            "sshKeyPath",
            key_path,
            f"cannot read the key pair ({err.strerror}: {err.filename}); create it with "
            f"`ssh-keygen -t ed25519 -N '' -f {key_path}`",
        )
    return user, key_path, public_key


def _read_host_directory(reader: _Reader, key: str) -> str:
    directory = os.path.expanduser(reader.text(key))
    if not directory.startswith("/"):
        reader.problem(key, directory, "use an absolute directory on the Pulumi host (~ is allowed)")
    return directory


def _read_connectivity_timeout(reader: _Reader) -> int:
    low, high = CONNECTIVITY_TIMEOUT_RANGE
    fix = f"use whole seconds from {low} to {high}, e.g. 600"
    seconds = reader.parse("connectivityTimeoutSeconds", _int, fix, low)
    _check_range(reader, "connectivityTimeoutSeconds", seconds, low, high, fix)
    return seconds


def _nearest_key(name: str) -> str | None:
    """The project key `name` most likely meant; compared in lower case, so workercount finds workerCount."""
    by_lower = {key.lower(): key for key in DEFAULTS}
    close = difflib.get_close_matches(name.lower(), by_lower, n=1)
    return by_lower[close[0]] if close else None


def key_problems(given: Mapping[str, object]) -> list[ConfigProblem]:
    """Keys in the project's namespace it does not read, and keys without any namespace.

    Pulumi hands a program every key of the stack and ignores those nobody reads, so a misspelt key
    would silently leave its default in place. Other namespaces (libvirt:, pulumi:, ...) are not ours.
    """
    found: list[ConfigProblem] = []
    for full_key, value in sorted(given.items()):
        namespace, sep, name = full_key.partition(":")
        if not sep:
            name = full_key  # partition leaves a key without ":" in the namespace part
        elif namespace != NAMESPACE or name in DEFAULTS:
            continue
        nearest = _nearest_key(name)
        hint = f"did you mean {NAMESPACE}:{nearest}?" if nearest else "this project's keys are listed in Pulumi.yaml"
        if sep:
            found.append(ConfigProblem(name, str(value), f"unknown key; {hint}"))
            continue
        fix = f"use {NAMESPACE}:{name}" if name in DEFAULTS else hint
        found.append(ConfigProblem(name, str(value), f"config keys need a namespace; {fix}", namespaced=False))
    return found


def load(
    raw: Mapping[str, str | None],
    stack: str,
    libvirt_uri: str | None = None,
    given: Mapping[str, object] | None = None,
) -> ClusterConfig:
    """Validate everything in `raw` (key -> string, None = unset); raise one ConfigError listing all problems.

    `given` is the whole config as Pulumi holds it (namespaced key -> value), checked for unknown keys.
    """
    reader = _Reader(raw, stack)
    reader.problems.extend(key_problems(given or {}))
    network = _read_network(reader)
    before_nodes = len(reader.problems)
    control_plane, workers = _read_nodes(reader, network)
    # Nodes already out of place make the pool's collision check noise: one problem, not two.
    placed = len(reader.problems) == before_nodes
    version, pods, services = _read_kubernetes(reader, network)
    cni, workloads, addons, domain_type = _read_choices(reader)
    nodes = tuple(n for n in (control_plane, *workers) if n is not None and placed)
    load_balancer_range = _read_load_balancer(reader, network, nodes, addons)
    user, key_path, public_key = _read_ssh(reader)
    host_key_dir = _read_host_directory(reader, "hostKeyDir")
    releases_dir = _read_host_directory(reader, "releasesDir")
    connectivity_timeout = _read_connectivity_timeout(reader)
    patience = _read_slow_host(reader, domain_type)
    domain = reader.text("dnsDomain").lower()
    if not _DNS_NAME.match(domain):
        reader.problem("dnsDomain", domain, "use a DNS name such as air.internal")
    disk = reader.parse("diskGiB", _int, "use a whole number of GiB", 20)
    _check_range(reader, "diskGiB", disk, 4, 2048, "use 4..2048 GiB (the base image must fit)")
    prebaked = reader.parse("prebaked", _bool, "use true or false", False)
    keep_base = reader.parse("keepBaseImage", _bool, "use true or false", False)
    image = reader.text("imageSource")
    if not image.startswith(("http://", "https://", "/")):
        reader.problem("imageSource", image, "use an http(s) URL or an absolute path on the Pulumi host")
    pool_path = reader.text("poolPath")
    if not pool_path.startswith("/"):
        reader.problem("poolPath", pool_path, "use an absolute directory path on the libvirt host")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", stack):
        reader.problem("(stack name)", stack, "use letters, digits, '-', '_' or '.' in the stack name")

    if reader.problems or control_plane is None or network is None:
        raise ConfigError(reader.problems)
    return ClusterConfig(
        stack=stack,
        network_cidr=str(network),
        gateway=str(network.network_address + 1),
        prefix_length=network.prefixlen,
        dns_domain=domain,
        network_name=f"koa-{stack}",
        bridge_name=bridge_name_for(stack),
        pool_name=f"koa-{stack}",
        pool_path=pool_path,
        control_plane=control_plane,
        workers=workers,
        disk_gib=disk,
        pod_cidr=pods,
        service_cidr=services,
        kubernetes_version=version,
        cni=cni,
        workloads=workloads,
        addons=addons,
        load_balancer_range=load_balancer_range,
        image_source=image,
        prebaked=prebaked,
        keep_base_image=keep_base,
        ssh_key_path=key_path,
        ssh_public_key=public_key,
        ssh_user=user,
        host_key_dir=host_key_dir,
        releases_dir=releases_dir,
        domain_type=domain_type,
        libvirt_uri=libvirt_uri or DEFAULT_LIBVIRT_URI,
        connectivity_timeout_seconds=connectivity_timeout,
        tolerances=patience,
    )


def load_namespaced(given: Mapping[str, str], stack: str) -> ClusterConfig:
    """Validate config as a stack file holds it (namespaced key -> text), as the program would."""
    raw = {key: given.get(f"{NAMESPACE}:{key}") for key in DEFAULTS}
    return load(raw, stack, given.get("libvirt:uri"), given)


def _all_pulumi_config() -> dict[str, object]:
    """Every key the program was given: the engine passes them in $PULUMI_CONFIG, mocks and inline
    Automation API programs through set_all_config; the latter wins, as in pulumi.Config.get."""
    from pulumi.runtime import config as runtime_config

    return {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}


def load_from_pulumi() -> ClusterConfig:
    """Read the stack config through Pulumi (works under the engine and under mocks)."""
    import pulumi

    config = pulumi.Config(NAMESPACE)
    raw = {key: config.get(key) for key in DEFAULTS}
    return load(raw, pulumi.get_stack(), pulumi.Config("libvirt").get("uri"), _all_pulumi_config())
