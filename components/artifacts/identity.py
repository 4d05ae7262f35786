"""What makes a node a new machine, and the generation that names it.

cloud-init acts on user-data once per instance-id, so a changed seed swapped under a running node
would never reach it. Instead each node has an identity: its seed (user-data, network-config), image
and disk size. Its digest, the generation, is part of the node's disk and seed volume names and its
instance-id, so a change replaces the disk and with it the domain (`disks` is ForceNew), and the new
node boots as a new instance. The identity is written into the domain's description, where preflight
reads it back to name what changed (see `changed_settings`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from components.artifacts import render
from components.artifacts.hostkeys import HostKey
from components.config.settings import NAMESPACE, ClusterConfig, NodeSpec

GENERATION_HEX = 10
OWNER = NAMESPACE  # the description key that marks a domain as one of ours
SEED = "seed"  # the description key of the seed digest
# What else goes into a seed besides the named settings: said when only the digest differs.
SEED_INPUTS = (
    "sshKeyPath (its public key), sshUser, dnsDomain, networkCidr, hostKeyDir (the node's host key) "
    "or the templates of a newer kube-on-air"
)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class NodeIdentity:
    node: str  # "<stack>/<node name>"
    settings: Mapping[str, str]  # config key (without namespace) -> value, as far as it shapes the disk
    seed_digest: str

    def record(self) -> dict[str, str]:
        return {OWNER: self.node, **self.settings, SEED: self.seed_digest}

    @property
    def description(self) -> str:
        """The domain description: readable in `virsh dumpxml`, parsed again by `changed_settings`."""
        return json.dumps(self.record(), sort_keys=True)

    @property
    def generation(self) -> str:
        return _digest(self.description)[:GENERATION_HEX]


def node_identity(config: ClusterConfig, node: NodeSpec, host_key: HostKey) -> NodeIdentity:
    # The host key by its public half: a plain value must never be derived from a private key.
    public_only = dataclasses.replace(host_key, private="")
    seed = _digest(render.user_data(config, node, public_only), render.network_config(config, node))
    settings = {"imageSource": config.image_source, "diskGiB": str(config.disk_gib)}
    settings["prebaked"] = str(config.prebaked).lower()
    if not config.prebaked:  # a pre-baked image brings its own packages: the version is not in the seed
        settings["kubernetesVersion"] = config.kubernetes_version
    return NodeIdentity(f"{config.stack}/{node.name}", settings, seed[:GENERATION_HEX])


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
        for key in sorted((set(wanted) | set(recorded)) - {OWNER, SEED})
        if recorded.get(key) != wanted.get(key)
    ]
    if not changed and recorded.get(SEED) != wanted[SEED]:
        changed.append(f"the cloud-init seed: {SEED_INPUTS}")
    return changed
