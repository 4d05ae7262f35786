"""What makes a node a new machine, and the generation that names it.

cloud-init acts on user-data once per instance-id, so a changed seed swapped under a running node
would never reach it. Instead each node has an identity: its image, disk size, the Kubernetes it
installs at first boot, and what it is as a machine on the network (address, names, login user and
key, host key). Its digest, the generation, is part of the node's disk and seed volume names and its
instance-id, so a change replaces the disk and with it the domain (`disks` is ForceNew), and the new
node boots as a new instance. The identity is written into the domain's description, where preflight
reads it back to name what changed (see `changed_settings`).

The text of the templates is not part of it: what a newer kube-on-air renders differently for first
boot reaches new nodes only, and running nodes keep their disks. A node built before (its record has
no version and digests the rendered seed) keeps the identity it was given, as read back from libvirt,
as long as its named settings are still the configured ones (`node_identity(..., deployed=...)`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from components.artifacts.hostkeys import HostKey
from components.config.settings import NAMESPACE, ClusterConfig, NodeSpec

GENERATION_HEX = 10
OWNER = NAMESPACE  # the description key that marks a domain as one of ours
SEED = "seed"  # the description key of the machine digest (before version 2: of the rendered seed)
VERSION_KEY = "identity"  # absent from records made before version 2
VERSION = "2"
# What the machine digest covers besides the named settings: said when only the digest differs.
SEED_INPUTS = "sshKeyPath (its public key), sshUser, dnsDomain, networkCidr or hostKeyDir (the node's host key)"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class NodeIdentity:
    node: str  # "<stack>/<node name>"
    settings: Mapping[str, str]  # config key (without namespace) -> value, as far as it shapes the disk
    seed_digest: str
    version: str = VERSION  # "": a record made before version 2, kept as it was

    def record(self) -> dict[str, str]:
        versioned = {VERSION_KEY: self.version} if self.version else {}
        return {OWNER: self.node, **self.settings, SEED: self.seed_digest, **versioned}

    @property
    def description(self) -> str:
        """The domain description: readable in `virsh dumpxml`, parsed again by `changed_settings`."""
        return json.dumps(self.record(), sort_keys=True)

    @property
    def generation(self) -> str:
        return _digest(self.description)[:GENERATION_HEX]


def machine_digest(config: ClusterConfig, node: NodeSpec, host_key: HostKey) -> str:
    """What the node is on the network and who may log in: the inputs of its seed, not their rendering."""
    # The host key by its public half: a plain value must never be derived from a private key.
    machine = {
        "hostname": node.name,
        "fqdn": config.fqdn(node),
        "address": f"{node.ip}/{config.prefix_length}",
        "gateway": config.gateway,
        "mac": node.mac,
        "sshUser": config.ssh_user,
        "sshPublicKey": config.ssh_public_key,
        "hostKey": host_key.public,
    }
    return _digest(json.dumps(machine, sort_keys=True))[:GENERATION_HEX]


def node_identity(
    config: ClusterConfig, node: NodeSpec, host_key: HostKey, deployed: Mapping[str, str] | None = None
) -> NodeIdentity:
    """The identity to build `node` with; `deployed`: the record its running domain carries, if any."""
    settings = {"imageSource": config.image_source, "diskGiB": str(config.disk_gib)}
    settings["prebaked"] = str(config.prebaked).lower()
    if not config.prebaked:  # a pre-baked image brings its own packages: the version is not in the seed
        settings["kubernetesVersion"] = config.kubernetes_version
    owner = f"{config.stack}/{node.name}"
    if deployed is not None and _kept_from_before_version_2(deployed, owner, settings):
        return NodeIdentity(owner, settings, deployed[SEED], version="")
    return NodeIdentity(owner, settings, machine_digest(config, node, host_key))


def _kept_from_before_version_2(deployed: Mapping[str, str], owner: str, settings: Mapping[str, str]) -> bool:
    """A record without a version digests the seed as an older kube-on-air rendered it, which this one
    cannot render again: the node keeps it while its named settings are still the configured ones."""
    if VERSION_KEY in deployed or deployed.get(OWNER) != owner or SEED not in deployed:
        return False
    return {k: v for k, v in deployed.items() if k not in (OWNER, SEED)} == dict(settings)


def deployed_records(domains: Iterable[str]) -> dict[str, dict[str, str]]:
    """Owner ("<stack>/<node>") -> the identity recorded in each description that is one of ours."""
    records = (parse_description(text) for text in domains)
    return {record[OWNER]: record for record in records if record is not None}


def disk_volume_name(node: NodeSpec, generation: str) -> str:
    return f"{node.name}-{generation}.qcow2"


def seed_volume_name(node: NodeSpec, generation: str) -> str:
    # Not "-seed-": that was the provider's CloudInitDisk, which an older stack deletes only after
    # this volume is made (a different resource), by its path.
    return f"{node.name}-cidata-{generation}.iso"


def instance_id(config: ClusterConfig, node: NodeSpec, generation: str) -> str:
    # cloud-init treats a new instance-id as a new machine and runs first boot again.
    return f"{config.stack}-{node.name}-{generation}"


def parse_description(text: str) -> dict[str, str] | None:
    """The identity recorded by `NodeIdentity.description`; None for any other description."""
    try:
        recorded = json.loads(text)
    except ValueError:
        return None
    if not isinstance(recorded, dict) or OWNER not in recorded:
        return None
    return {str(key): str(value) for key, value in recorded.items()}


def changed_settings(recorded: Mapping[str, str], expected: NodeIdentity) -> list[str]:
    """`key: old -> new` for every named setting that differs; the seed as one entry when only it does."""
    wanted = expected.record()
    changed = [
        f"{NAMESPACE}:{key}: {recorded.get(key, '(unset)')} -> {wanted.get(key, '(unset)')}"
        for key in sorted((set(wanted) | set(recorded)) - {OWNER, SEED, VERSION_KEY})
        if recorded.get(key) != wanted.get(key)
    ]
    if not changed and recorded.get(SEED) != wanted[SEED]:
        changed.append(f"what the node is on the network or who logs in: {SEED_INPUTS}")
    return changed
