"""Check what the program hands out with the tools that will consume it (issue 3).

Every `validate_*` function returns a list of readable problems (empty = valid); `require_valid`
turns a non-empty list into an AssertionError. The consumers:

* cloud-init user-data: `cloud-init schema --config-file`, plus an explicit allow-list of top-level
  keys (cloud-init ignores unknown ones) and consistency with the node (hostname, fqdn, SSH user).
* network-config / meta-data: structural checks of netplan v2 and NoCloud meta-data against the
  node's declared address, MAC and name (cloud-init does not validate these).
* Kubernetes objects: kubernetes-validate's strict JSON schemas for the pinned minor; objects of an
  add-on's own kinds (MetalLB's pool) against the openAPIV3Schema of the CRDs the program applies.
* Shell: shellcheck (`--shell=bash`, warnings and errors, plus SC2086 which shellcheck ranks "info").
* kubeadm: apiVersion/kind of kubeadm's v1beta4 config API and consistency with the stack; the
  fields themselves are judged by the real kubeadm (`kubeadm config validate`, make test-toolchain).

A missing tool is an error (`ToolMissing`), never a skip.
"""

from __future__ import annotations

import concurrent.futures
import functools
import importlib.resources
import ipaddress
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from components.config.settings import DEFAULTS, NAMESPACE

Problems = list[str]

# ---- tools ------------------------------------------------------------------------------------


class ToolMissing(RuntimeError):
    """A validating tool is not installed: CI must install it (never skip)."""


def find_tool(name: str) -> str:
    """The tool next to the running interpreter (venv bin) first, then on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        hint = "apt-get install cloud-init" if name == "cloud-init" else "pip install -r requirements-dev.txt"
        raise ToolMissing(f"`{name}` is not installed (looked in {beside.parent} and PATH); install it: {hint}")
    return found


def require_valid(problems: Sequence[str]) -> None:
    if problems:
        raise AssertionError(f"{len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))


def _load_mapping(text: str, label: str, problems: Problems) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        problems.append(f"{label}: not valid YAML: {err}")
        return {}
    if not isinstance(data, dict):
        problems.append(f"{label}: expected a YAML mapping, got {type(data).__name__}")
        return {}
    return data


# ---- what the stack declares ------------------------------------------------------------------


@dataclass(frozen=True)
class NodeFacts:
    name: str
    role: str
    ip: str
    mac: str
    fqdn: str
    host_key: str  # what the program pins for this node ("ssh-ed25519 AAAA... comment")


@dataclass(frozen=True)
class StackFacts:
    """The stack config (with the program's defaults) and summary.json, as artifacts must reflect them."""

    stack: str
    network: ipaddress.IPv4Network
    gateway: str
    ssh_user: str
    nodes: dict[str, NodeFacts]
    pod_cidr: str
    service_cidr: str
    kubernetes_version: str
    worker_count: int
    control_plane_id: int
    first_worker_id: int
    prebaked: bool
    cni: str

    @property
    def control_plane(self) -> NodeFacts:
        (node,) = (n for n in self.nodes.values() if n.role == "control-plane")
        return node

    @property
    def workers(self) -> list[NodeFacts]:
        return [n for n in self.nodes.values() if n.role == "worker"]

    @property
    def schema_version(self) -> str:
        """kubernetes-validate's schema version for the pinned minor: 1.34.2 -> 1.34.0."""
        major, minor, _patch = self.kubernetes_version.split(".")
        return f"{major}.{minor}.0"


def config_value(config: Mapping[str, str], key: str, stack: str) -> str:
    """A config value as the program reads it: the stack's, else the program's default."""
    value = config.get(f"{NAMESPACE}:{key}", DEFAULTS[key])
    return value.replace("{stack}", stack)


def stack_facts(stack: str, config: Mapping[str, str], summary: Mapping[str, Any]) -> StackFacts:
    def value(key: str) -> str:
        return config_value(config, key, stack)

    nodes = {
        n["name"]: NodeFacts(
            name=n["name"], role=n["role"], ip=n["ip"], mac=n["mac"], fqdn=n["fqdn"], host_key=n["host_key"]
        )
        for n in summary["nodes"]
    }
    return StackFacts(
        stack=stack,
        network=ipaddress.IPv4Network(value("networkCidr")),
        gateway=summary["network"]["gateway"],
        ssh_user=summary["ssh_user"],
        nodes=nodes,
        pod_cidr=value("podCidr"),
        service_cidr=value("serviceCidr"),
        kubernetes_version=value("kubernetesVersion").removeprefix("v"),
        worker_count=int(value("workerCount")),
        control_plane_id=int(value("controlPlaneId")),
        first_worker_id=int(value("firstWorkerId")),
        prebaked=value("prebaked").lower() == "true",
        cni=value("cni"),
    )


def validate_summary(facts: StackFacts) -> Problems:
    """The declared nodes are exactly the ones the config asks for, at network + id."""
    base = facts.network.network_address
    expected = {str(base + facts.control_plane_id)} | {
        str(base + facts.first_worker_id + i) for i in range(facts.worker_count)
    }
    declared = {n.ip for n in facts.nodes.values()}
    problems: Problems = []
    if declared != expected:
        problems.append(f"summary.json: node addresses {sorted(declared)} differ from the config's {sorted(expected)}")
    roles = Counter(n.role for n in facts.nodes.values())
    if roles != Counter({"control-plane": 1, "worker": facts.worker_count}):
        problems.append(f"summary.json: roles {dict(roles)}; expected 1 control-plane, {facts.worker_count} worker(s)")
    if facts.gateway != str(base + 1):
        problems.append(f"summary.json: gateway {facts.gateway} is not {base + 1}")
    return problems


# ---- cloud-init user-data ---------------------------------------------------------------------

CLOUD_CONFIG_HEADER = "#cloud-config"
# Top-level cloud-config keys: the ones the node template uses, then other modules' keys we accept.
USER_DATA_KEYS_USED = frozenset(
    {
        "hostname", "fqdn", "prefer_fqdn_over_hostname", "manage_etc_hosts", "users", "disable_root",
        "ssh_pwauth", "ssh_deletekeys", "ssh_genkeytypes", "ssh_keys", "growpart", "resize_rootfs",
        "write_files", "runcmd",
    }
)  # fmt: skip
USER_DATA_KEYS_ACCEPTED = frozenset(
    {
        "bootcmd", "packages", "package_update", "package_upgrade", "package_reboot_if_required", "apt",
        "ssh_authorized_keys", "timezone", "locale", "ntp", "mounts",
        "swap", "preserve_hostname", "final_message", "power_state", "groups",
    }
)  # fmt: skip
USER_DATA_KEYS = USER_DATA_KEYS_USED | USER_DATA_KEYS_ACCEPTED


def cloud_init_schema(text: str, label: str) -> Problems:
    """`cloud-init schema --config-file`: non-zero exit means cloud-init rejects the file."""
    tool = find_tool("cloud-init")
    with tempfile.TemporaryDirectory(prefix="koa-user-data-") as tmp:
        path = Path(tmp) / "user-data"
        path.write_text(text)
        run = subprocess.run(
            [tool, "schema", "--config-file", str(path)], capture_output=True, text=True, timeout=60, check=False
        )
    if run.returncode == 0:
        return []
    message = " ".join((run.stderr + " " + run.stdout).split()).replace(str(path), label)
    return [f"{label}: cloud-init schema rejects it (exit {run.returncode}): {message}"]


def validate_user_data(text: str, node: NodeFacts, ssh_user: str, label: str, run_schema: bool = True) -> Problems:
    problems: Problems = []
    if text.split("\n", 1)[0].strip() != CLOUD_CONFIG_HEADER:
        problems.append(f"{label}: first line must be {CLOUD_CONFIG_HEADER!r} (cloud-init ignores the file otherwise)")
    data = _load_mapping(text, label, problems)
    unknown = sorted(set(data) - USER_DATA_KEYS)
    if unknown:
        problems.append(
            f"{label}: unknown top-level cloud-config key(s) {unknown}: not in the allow-list "
            "(cloud-init schema does not flag unknown keys; a misspelt module key is silently ignored)"
        )
    problems += _user_data_consistency(data, node, ssh_user, label)
    problems += _embedded_scripts_wired(data, label)
    if run_schema:
        problems += cloud_init_schema(text, label)
    return problems


def _user_data_consistency(data: Mapping[str, Any], node: NodeFacts, ssh_user: str, label: str) -> Problems:
    problems: Problems = []
    if data.get("hostname") != node.name:
        problems.append(f"{label}: hostname {data.get('hostname')!r} is not the node name {node.name!r}")
    if "fqdn" in data and data["fqdn"] != node.fqdn:
        problems.append(f"{label}: fqdn {data['fqdn']!r} is not the node's {node.fqdn!r}")
    users = data.get("users")
    with_keys = [u for u in users or [] if isinstance(u, dict) and u.get("ssh_authorized_keys")]
    if not any(u.get("name") == ssh_user for u in with_keys):
        problems.append(f"{label}: no user {ssh_user!r} with ssh_authorized_keys: the remote commands could not log in")
    problems += _host_key_pinned(data, node, label)
    return problems


def _host_key_pinned(data: Mapping[str, Any], node: NodeFacts, label: str) -> Problems:
    """The node must present exactly the host key the program's connections verify."""
    key_type = node.host_key.split()[0].removeprefix("ssh-")
    keys = data.get("ssh_keys") or {}
    installed = str(keys.get(f"{key_type}_public", "")).split()[:2]
    if installed != node.host_key.split()[:2]:
        return [f"{label}: ssh_keys.{key_type}_public is not the host key the program pins for {node.name}"]
    if "PRIVATE KEY" not in str(keys.get(f"{key_type}_private", "")):
        return [f"{label}: ssh_keys.{key_type}_private is missing: the node would not present the pinned key"]
    if data.get("ssh_genkeytypes") != [key_type] or data.get("ssh_deletekeys") is not True:
        return [f"{label}: set ssh_deletekeys: true and ssh_genkeytypes: [{key_type}] (the pinned key, no other)"]
    return []


def embedded_scripts(text: str) -> list[tuple[str, str]]:
    """(path, content) of every write_files entry that is a script (starts with a #! line)."""
    data = yaml.safe_load(text)
    files = data.get("write_files", []) if isinstance(data, dict) else []
    return [
        (str(f.get("path")), f["content"])
        for f in files
        if isinstance(f, dict) and isinstance(f.get("content"), str) and f["content"].startswith("#!")
    ]


def _embedded_scripts_wired(data: Mapping[str, Any], label: str) -> Problems:
    """A script written by write_files must be executable and actually run by runcmd."""
    problems: Problems = []
    runcmd = json.dumps(data.get("runcmd", []))
    for entry in data.get("write_files", []) or []:
        if not (isinstance(entry, dict) and str(entry.get("content", "")).startswith("#!")):
            continue
        path, mode = entry.get("path"), str(entry.get("permissions", "0644"))
        if not re.fullmatch(r"0?[0-7]{3}", mode) or not int(mode, 8) & 0o111:
            problems.append(f"{label}: script {path} is written with permissions {mode!r}, not executable")
        if f'"{path}"' not in runcmd:
            problems.append(f"{label}: script {path} is written but never run by runcmd")
    return problems


# ---- network-config (netplan v2) and meta-data ------------------------------------------------

NETWORK_TOP_KEYS = frozenset({"version", "ethernets"})
ETHERNET_KEYS = frozenset(
    {"match", "set-name", "dhcp4", "dhcp6", "addresses", "routes", "nameservers", "mtu", "optional", "accept-ra"}
)
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def validate_network_config(text: str, node: NodeFacts, facts: StackFacts, label: str) -> Problems:
    problems: Problems = []
    data = _load_mapping(text, label, problems)
    if not data:
        return problems
    if data.get("version") != 2:
        problems.append(f"{label}: version is {data.get('version')!r}; netplan v2 needs `version: 2`")
    unknown = sorted(set(data) - NETWORK_TOP_KEYS)
    if unknown:
        problems.append(f"{label}: unknown top-level key(s) {unknown}")
    ethernets = data.get("ethernets")
    if not isinstance(ethernets, dict) or not ethernets:
        return [*problems, f"{label}: `ethernets` must be a non-empty mapping"]
    addresses: list[str] = []
    for name, eth in ethernets.items():
        where = f"{label}: ethernets.{name}"
        if not isinstance(eth, dict):
            problems.append(f"{where} must be a mapping")
            continue
        problems += _check_ethernet(eth, node, facts, where)
        addresses += [str(a) for a in eth.get("addresses") or []]
    declared = f"{node.ip}/{facts.network.prefixlen}"
    if declared not in addresses:
        problems.append(f"{label}: no interface carries the node's declared address {declared}")
    return problems


def _check_ethernet(eth: Mapping[str, Any], node: NodeFacts, facts: StackFacts, where: str) -> Problems:
    problems: Problems = []
    unknown = sorted(set(eth) - ETHERNET_KEYS)
    if unknown:
        problems.append(f"{where}: unknown key(s) {unknown}: not among the netplan v2 keys we accept")
    mac = str((eth.get("match") or {}).get("macaddress", "")).lower()
    if not _MAC.match(mac):
        problems.append(f"{where}: match.macaddress {mac!r} is missing or not a MAC address")
    elif mac != node.mac.lower():
        problems.append(f"{where}: match.macaddress {mac} is not the node's NIC {node.mac}")
    problems += _check_addresses(eth.get("addresses"), node, facts, where)
    problems += _check_routes(eth.get("routes"), facts, where)
    problems += _check_nameservers(eth.get("nameservers"), where)
    return problems


def _check_addresses(addresses: Any, node: NodeFacts, facts: StackFacts, where: str) -> Problems:
    if not isinstance(addresses, list) or not addresses:
        return [f"{where}: addresses must be a non-empty list (the node has a static address)"]
    problems: Problems = []
    for address in addresses:
        text = str(address)
        if "/" not in text:
            problems.append(f"{where}: address {text!r} is not in CIDR form (address/prefix)")
            continue
        try:
            iface = ipaddress.IPv4Interface(text)
        except ValueError:
            problems.append(f"{where}: address {text!r} is not an IPv4 address in CIDR form")
            continue
        reserved = (facts.network.network_address, facts.network.broadcast_address)
        if iface.network != facts.network or iface.ip in reserved:
            problems.append(f"{where}: address {text} is outside the stack network {facts.network}")
        elif str(iface.ip) != node.ip:
            problems.append(f"{where}: address {text} is not the node's declared address {node.ip}")
    return problems


def _check_routes(routes: Any, facts: StackFacts, where: str) -> Problems:
    if not isinstance(routes, list):
        return [f"{where}: routes must be a list with a default route"]
    problems: Problems = []
    defaults = [r for r in routes if isinstance(r, dict) and r.get("to") in ("default", "0.0.0.0/0")]
    if not defaults:
        problems.append(f"{where}: no default route (to: default)")
    for route in routes:
        via = str(route.get("via", "")) if isinstance(route, dict) else ""
        try:
            inside = ipaddress.IPv4Address(via) in facts.network
        except ValueError:
            problems.append(f"{where}: route {route!r} has no valid `via` address")
            continue
        if not inside:
            problems.append(f"{where}: route via {via} is outside the stack network {facts.network}")
    for route in defaults:
        if str(route.get("via")) != facts.gateway:
            problems.append(f"{where}: default route via {route.get('via')} is not the network gateway {facts.gateway}")
    return problems


def _check_nameservers(nameservers: Any, where: str) -> Problems:
    if not isinstance(nameservers, dict) or not nameservers.get("addresses"):
        return [f"{where}: nameservers.addresses must list at least one DNS server"]
    problems: Problems = []
    for server in nameservers["addresses"]:
        try:
            ipaddress.ip_address(str(server))
        except ValueError:
            problems.append(f"{where}: nameserver {server!r} is not an IP address")
    search = nameservers.get("search", [])
    if not isinstance(search, list) or not all(isinstance(s, str) for s in search):
        problems.append(f"{where}: nameservers.search must be a list of domain names")
    return problems


def validate_meta_data(text: str, node: NodeFacts, label: str) -> Problems:
    problems: Problems = []
    data = _load_mapping(text, label, problems)
    if data and not (isinstance(data.get("instance-id"), str) and data["instance-id"].strip()):
        problems.append(f"{label}: instance-id is missing or empty (cloud-init needs it to tell first boot)")
    if data and data.get("local-hostname") != node.name:
        problems.append(f"{label}: local-hostname {data.get('local-hostname')!r} is not the node name {node.name!r}")
    return problems


# ---- Kubernetes objects -----------------------------------------------------------------------


def schema_dir_exists(version: str) -> bool:
    root = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    return (root / f"v{version}-local-strict").is_dir()


# The CRDs the add-ons apply (templates/addons/<add-on>/crds.yaml): their schemas judge the objects
# of those kinds, as the API server will.
CRD_FILES = tuple(sorted((Path(__file__).resolve().parent.parent / "templates" / "addons").glob("*/crds.yaml")))


def _strict(schema: Any) -> Any:
    """An OpenAPI v3 schema with unknown fields refused where it lists the properties, as the API
    server's strict field validation does (the CRDs themselves prune them silently)."""
    if isinstance(schema, dict):
        strict = {k: _strict(v) for k, v in schema.items()}
        if "properties" in strict and "additionalProperties" not in strict:
            strict["additionalProperties"] = False
        return strict
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def custom_resource_schemas(files: tuple[Path, ...] = CRD_FILES) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the served version's openAPIV3Schema, strict, from the CRD files."""
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in files:
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                if version.get("served"):
                    api_version = f"{spec['group']}/{version['name']}"
                    schemas[(api_version, spec["names"]["kind"])] = _strict(version["schema"]["openAPIV3Schema"])
    return schemas


def validate_custom_resource(obj: Mapping[str, Any], schema: Mapping[str, Any], label: str) -> Problems:
    import jsonschema  # kubernetes-validate's own dependency

    what = f"{label} ({obj.get('kind')} {(obj.get('metadata') or {}).get('name')})"
    # metadata is the API server's, not the CRD's: the schema says only `type: object`.
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(dict(obj)), key=lambda e: list(e.path))
    return [
        f"{what}: invalid against its CRD at {'.'.join(str(p) for p in e.path) or '(top level)'}: {e.message}"
        for e in errors
    ]


def validate_manifest(obj: Mapping[str, Any], version: str, label: str) -> Problems:
    """kubernetes-validate --strict against exactly `version` (e.g. 1.34.0); an add-on's own kinds
    against its CRD; unknown kinds fail."""
    custom = custom_resource_schemas().get((str(obj.get("apiVersion")), str(obj.get("kind"))))
    if custom is not None:
        return validate_custom_resource(obj, custom, label)
    try:
        from kubernetes_validate import utils as kv
    except ImportError as err:
        raise ToolMissing("kubernetes-validate is not installed: pip install -r requirements-dev.txt") from err
    if not schema_dir_exists(version):
        return [f"{label}: kubernetes-validate has no strict schemas for {version}"]
    what = f"{label} ({obj.get('kind')} {(obj.get('metadata') or {}).get('name')})"
    try:
        kv.validate(dict(obj), version, strict=True)
    except kv.ValidationError as err:
        path = ".".join(str(p) for p in err.path) or "(top level)"
        return [f"{what}: invalid against Kubernetes {version} at {path}: {err.message}"]
    except kv.SchemaNotFoundError as err:
        return [f"{what}: {err.message}"]
    except (kv.VersionNotSupportedError, kv.InvalidSchemaError) as err:
        return [f"{what}: kubernetes-validate cannot check it: {getattr(err, 'message', err)}"]
    except KeyError as err:
        return [f"{what}: missing {err} (every object needs apiVersion and kind)"]
    return []


def validate_manifest_text(text: str, version: str, label: str) -> Problems:
    problems: Problems = []
    try:
        objects = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        return [f"{label}: not valid YAML: {err}"]
    if not objects:
        problems.append(f"{label}: no Kubernetes object in the file")
    for obj in objects:
        if not isinstance(obj, dict):
            problems.append(f"{label}: a document is not a mapping")
            continue
        problems += validate_manifest(obj, version, label)
    return problems


# ---- shell ------------------------------------------------------------------------------------

# shellcheck ranks an unquoted $var (SC2086) "info", below --severity=warning; we hold it to warning.
PROMOTED_SHELLCHECK_CODES = frozenset({2086})
_JINJA_LEFTOVER = re.compile(r"\{\{.*?\}\}|\{%.*?%\}")


def validate_shell_files(paths: Sequence[Path], labels: Mapping[Path, str] | None = None) -> Problems:
    """One shellcheck run over all files: errors and warnings (plus SC2086) are problems."""
    if not paths:
        return []
    names = {str(p): (labels or {}).get(p, str(p)) for p in paths}
    problems = [
        f"{names[str(p)]}: unrendered template text {m.group(0)!r}"
        for p in paths
        for m in _JINJA_LEFTOVER.finditer(p.read_text())
    ]
    run = subprocess.run(
        [find_tool("shellcheck"), "--norc", "--shell=bash", "--severity=info", "--format=json1", *map(str, paths)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if run.returncode not in (0, 1):
        return [*problems, f"shellcheck failed (exit {run.returncode}): {run.stderr.strip()}"]
    for comment in json.loads(run.stdout or '{"comments": []}')["comments"]:
        if comment["level"] in ("error", "warning") or comment["code"] in PROMOTED_SHELLCHECK_CODES:
            where = f"{names.get(comment['file'], comment['file'])}:{comment['line']}:{comment['column']}"
            level = "warning (info in shellcheck, held to warning)" if comment["level"] == "info" else comment["level"]
            problems.append(f"{where}: {level} SC{comment['code']}: {comment['message']}")
    return problems


def validate_shell_texts(scripts: Mapping[str, str]) -> Problems:
    """shellcheck scripts given as label -> text (e.g. extracted from user-data)."""
    with tempfile.TemporaryDirectory(prefix="koa-shell-") as tmp:
        paths: dict[Path, str] = {}
        for index, (label, text) in enumerate(scripts.items()):
            path = Path(tmp) / f"{index:03d}.sh"
            path.write_text(text)
            paths[path] = label
        return validate_shell_files(list(paths), paths)


# ---- kubeadm ----------------------------------------------------------------------------------

KUBEADM_API = "kubeadm.k8s.io/v1beta4"
KUBELET_API = "kubelet.config.k8s.io/v1beta1"
KUBEPROXY_API = "kubeproxy.config.k8s.io/v1alpha1"
CONTAINERD_SOCKET = "unix:///run/containerd/containerd.sock"
API_PORT = 6443

# The documents kubeadm takes for init and join. Which fields each may hold is kubeadm's own answer:
# `make test-toolchain` runs the built kubeadm's `config validate` on every rendered config (strict
# decoding refuses unknown fields and wrong shapes), so no hand-kept field list lives here.
INIT_KINDS = frozenset(
    {
        (KUBEADM_API, "InitConfiguration"),
        (KUBEADM_API, "ClusterConfiguration"),
        (KUBELET_API, "KubeletConfiguration"),
        (KUBEPROXY_API, "KubeProxyConfiguration"),
    }
)
JOIN_KINDS = frozenset({(KUBEADM_API, "JoinConfiguration")})
_TOKEN = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")
_CA_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass
class KubeadmDocs:
    by_kind: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: Problems = field(default_factory=list)


def parse_kubeadm(text: str, kinds: frozenset[tuple[str, str]], label: str) -> KubeadmDocs:
    """YAML documents whose apiVersion/kind the program means to hand kubeadm, by kind."""
    docs = KubeadmDocs()
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        docs.problems.append(f"{label}: not valid YAML: {err}")
        return docs
    accepted = ", ".join(f"{api} {kind}" for api, kind in sorted(kinds))
    for doc in documents:
        key = (str(doc.get("apiVersion")), str(doc.get("kind"))) if isinstance(doc, dict) else ("?", "?")
        if key not in kinds:
            docs.problems.append(f"{label}: apiVersion/kind {key[0]} {key[1]} is not one kubeadm accepts ({accepted})")
            continue
        kind = key[1]
        if kind in docs.by_kind:
            docs.problems.append(f"{label}: {kind} appears twice")
        docs.by_kind[kind] = doc
    return docs


def _get(doc: Mapping[str, Any], path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _expect(doc: Mapping[str, Any], path: str, expected: Any, where: str, why: str) -> Problems:
    actual = _get(doc, path)
    return [] if actual == expected else [f"{where}.{path} is {actual!r}, expected {expected!r} ({why})"]


def _node_ip_arg(doc: Mapping[str, Any]) -> Any:
    args = _get(doc, "nodeRegistration.kubeletExtraArgs") or []
    values = [a.get("value") for a in args if isinstance(a, dict) and a.get("name") == "node-ip"]
    return values[0] if values else None


def validate_kubeadm_init(text: str, facts: StackFacts, label: str) -> Problems:
    docs = parse_kubeadm(text, INIT_KINDS, label)
    problems = docs.problems
    for required in ("InitConfiguration", "ClusterConfiguration", "KubeletConfiguration"):
        if required not in docs.by_kind:
            problems.append(f"{label}: no {required} document")
    cp = facts.control_plane
    if init := docs.by_kind.get("InitConfiguration"):
        problems += _check_init(init, cp, facts, f"{label}: InitConfiguration")
    if cluster := docs.by_kind.get("ClusterConfiguration"):
        problems += _check_cluster(cluster, cp, facts, f"{label}: ClusterConfiguration")
    if kubelet := docs.by_kind.get("KubeletConfiguration"):
        where = f"{label}: KubeletConfiguration"
        problems += _expect(kubelet, "cgroupDriver", "systemd", where, "containerd is set to SystemdCgroup")
    return problems


def _check_init(init: Mapping[str, Any], cp: NodeFacts, facts: StackFacts, where: str) -> Problems:
    problems = _expect(init, "localAPIEndpoint.advertiseAddress", cp.ip, where, "the control-plane IP")
    problems += _expect(init, "nodeRegistration.name", cp.name, where, "the control-plane node name")
    problems += _expect(init, "nodeRegistration.criSocket", CONTAINERD_SOCKET, where, "nodes run containerd")
    if _node_ip_arg(init) not in (None, cp.ip):
        problems.append(f"{where}: kubelet node-ip {_node_ip_arg(init)!r} is not the control-plane IP {cp.ip}")
    taints = _get(init, "nodeRegistration.taints")
    if facts.worker_count == 0 and taints != []:
        problems.append(f"{where}: with no workers nodeRegistration.taints must be [] or no workload can schedule")
    return problems


def _check_cluster(cluster: Mapping[str, Any], cp: NodeFacts, facts: StackFacts, where: str) -> Problems:
    problems = _expect(cluster, "kubernetesVersion", f"v{facts.kubernetes_version}", where, "config kubernetesVersion")
    problems += _expect(cluster, "networking.podSubnet", facts.pod_cidr, where, "config podCidr")
    problems += _expect(cluster, "networking.serviceSubnet", facts.service_cidr, where, "config serviceCidr")
    endpoint = _get(cluster, "controlPlaneEndpoint")
    if endpoint not in (None, f"{cp.ip}:{API_PORT}", cp.ip):
        problems.append(f"{where}.controlPlaneEndpoint {endpoint!r} is not the control plane {cp.ip}:{API_PORT}")
    sans = _get(cluster, "apiServer.certSANs") or []
    missing = [san for san in (cp.name, cp.ip) if san not in sans]
    if missing:
        problems.append(f"{where}.apiServer.certSANs {sans} lacks {missing} (the API server certificate)")
    return problems


def validate_kubeadm_join(text: str, node: NodeFacts, facts: StackFacts, label: str) -> Problems:
    docs = parse_kubeadm(text, JOIN_KINDS, label)
    problems = docs.problems
    join = docs.by_kind.get("JoinConfiguration")
    if join is None:
        return [*problems, f"{label}: no JoinConfiguration document"]
    where = f"{label}: JoinConfiguration"
    endpoint = f"{facts.control_plane.ip}:{API_PORT}"
    problems += _expect(join, "discovery.bootstrapToken.apiServerEndpoint", endpoint, where, "control-plane IP:6443")
    problems += _expect(join, "nodeRegistration.name", node.name, where, "the worker's node name")
    problems += _expect(join, "nodeRegistration.criSocket", CONTAINERD_SOCKET, where, "nodes run containerd")
    if _node_ip_arg(join) not in (None, node.ip):
        problems.append(f"{where}: kubelet node-ip {_node_ip_arg(join)!r} is not the worker's IP {node.ip}")
    token = str(_get(join, "discovery.bootstrapToken.token"))
    if not _TOKEN.match(token):
        problems.append(f"{where}.discovery.bootstrapToken.token is not a bootstrap token (abcdef.0123456789abcdef)")
    hashes = _get(join, "discovery.bootstrapToken.caCertHashes")
    if not isinstance(hashes, list) or not hashes or not all(_CA_HASH.match(str(h)) for h in hashes):
        problems.append(f"{where}.discovery.bootstrapToken.caCertHashes {hashes!r} must be sha256:<64 hex> pins")
    if _get(join, "discovery.bootstrapToken.unsafeSkipCAVerification"):
        problems.append(f"{where}: unsafeSkipCAVerification is set: the worker would trust any API server")
    return problems


# ---- a rendered stack as a whole --------------------------------------------------------------

INIT_CONFIG = "kubeadm/kubeadm-config.yaml"
JOIN_SUFFIX = "-kubeadm-join-config.yaml"


@dataclass
class Report:
    """What was validated (artifact kind -> count) and every problem found."""

    counts: Counter[str] = field(default_factory=Counter)
    problems: Problems = field(default_factory=list)

    def add(self, kind: str, problems: Iterable[str], count: int = 1) -> None:
        self.counts[kind] += count
        self.problems.extend(problems)


def load_facts(out_dir: Path, stack: str, config: Mapping[str, str]) -> StackFacts:
    return stack_facts(stack, config, json.loads((out_dir / "summary.json").read_text()))


def validate_rendered(out_dir: Path, stack: str, config: Mapping[str, str]) -> Report:
    """Every artifact `render_stack` wrote into `out_dir`, checked against the stack config."""
    facts = load_facts(out_dir, stack, config)
    report = Report()
    report.add("summary", validate_summary(facts))
    _validate_nodes(out_dir, facts, report)
    _validate_kubeadm(out_dir, facts, report)
    _validate_manifests(out_dir, facts, report)
    _validate_scripts(out_dir, report)
    return report


def _validate_nodes(out_dir: Path, facts: StackFacts, report: Report) -> None:
    node_dirs = {p.name for p in (out_dir / "nodes").iterdir() if p.is_dir()} if (out_dir / "nodes").is_dir() else set()
    if node_dirs != set(facts.nodes):
        report.problems.append(f"nodes/: seeds for {sorted(node_dirs)}, declared nodes {sorted(facts.nodes)}")
    nodes = [facts.nodes[name] for name in sorted(node_dirs & set(facts.nodes))]
    texts = {
        (n.name, f): (out_dir / "nodes" / n.name / f).read_text()
        for n in nodes
        for f in ("user-data", "meta-data", "network-config")
    }
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        schema = pool.map(lambda n: cloud_init_schema(texts[n.name, "user-data"], f"nodes/{n.name}/user-data"), nodes)
        for node, schema_problems in zip(nodes, schema, strict=True):
            label = f"nodes/{node.name}"
            user_data = texts[node.name, "user-data"]
            report.add("user-data", validate_user_data(user_data, node, facts.ssh_user, f"{label}/user-data", False))
            report.add("user-data", schema_problems, count=0)
            report.add("meta-data", validate_meta_data(texts[node.name, "meta-data"], node, f"{label}/meta-data"))
            network = texts[node.name, "network-config"]
            report.add("network-config", validate_network_config(network, node, facts, f"{label}/network-config"))
    ids = Counter(str(yaml.safe_load(texts[n.name, "meta-data"]).get("instance-id")) for n in nodes)
    report.problems.extend(f"meta-data: instance-id {i!r} is shared by {c} nodes" for i, c in ids.items() if c > 1)


def _validate_kubeadm(out_dir: Path, facts: StackFacts, report: Report) -> None:
    init = out_dir / INIT_CONFIG
    if not init.is_file():
        report.problems.append(f"{INIT_CONFIG}: missing")
    else:
        report.add("kubeadm-init", validate_kubeadm_init(init.read_text(), facts, INIT_CONFIG))
    joins = {p.name.removesuffix(JOIN_SUFFIX): p for p in (out_dir / "kubeadm").glob(f"*{JOIN_SUFFIX}")}
    expected = {w.name for w in facts.workers}
    if set(joins) != expected:
        report.problems.append(f"kubeadm/: join configs for {sorted(joins)}, workers are {sorted(expected)}")
    for name in sorted(set(joins) & expected):
        label = f"kubeadm/{joins[name].name}"
        report.add("kubeadm-join", validate_kubeadm_join(joins[name].read_text(), facts.nodes[name], facts, label))


def _validate_manifests(out_dir: Path, facts: StackFacts, report: Report) -> None:
    identities: Counter[tuple[str, str, str]] = Counter()
    for path in sorted((out_dir / "manifests").glob("*.yaml")):
        text = path.read_text()
        report.add("manifest", validate_manifest_text(text, facts.schema_version, f"manifests/{path.name}"))
        for obj in yaml.safe_load_all(text):
            if isinstance(obj, dict):
                meta = obj.get("metadata") or {}
                identities[str(obj.get("kind")), str(meta.get("namespace", "")), str(meta.get("name"))] += 1
    for (kind, namespace, name), count in identities.items():
        if count > 1:
            report.problems.append(f"manifests/: {kind} {namespace}/{name} is declared {count} times")


def _validate_scripts(out_dir: Path, report: Report) -> None:
    scripts = sorted((out_dir / "scripts").glob("*.sh"))
    report.add("script", validate_shell_files(scripts, {p: f"scripts/{p.name}" for p in scripts}), count=len(scripts))
    embedded: dict[str, str] = {}
    for user_data in sorted((out_dir / "nodes").glob("*/user-data")):
        for path, content in embedded_scripts(user_data.read_text()):
            embedded[f"nodes/{user_data.parent.name}/user-data:{path}"] = content
    report.add("embedded-script", validate_shell_texts(embedded), count=len(embedded))
