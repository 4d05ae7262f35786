"""How the program reaches a node over SSH: the stack's login key and each node's pinned host key."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
from pulumi_command import remote

from components.artifacts import hostkeys
from components.artifacts.hostkeys import HostKey
from components.config.settings import ClusterConfig, NodeSpec

# Fresh VMs take a minute or more (much more under software emulation) before sshd answers.
DIAL_ERROR_LIMIT = 120
PER_DIAL_TIMEOUT_SECONDS = 10


@dataclass(frozen=True)
class Access:
    """Everything a remote step needs to log in to a node and know it is talking to that node."""

    config: ClusterConfig
    private_key: pulumi.Output[str]
    host_keys: Mapping[str, HostKey]

    def connection(self, node: NodeSpec) -> remote.ConnectionArgs:
        return remote.ConnectionArgs(
            host=node.ip,
            user=self.config.ssh_user,
            private_key=self.private_key,
            # pulumi-command refuses any other key (it skips verification when this is unset).
            host_key=self.host_keys[node.name].public,
            dial_error_limit=DIAL_ERROR_LIMIT,
            per_dial_timeout=PER_DIAL_TIMEOUT_SECONDS,
        )


def access(config: ClusterConfig, host_keys: Mapping[str, HostKey]) -> Access:
    return Access(config, pulumi.Output.secret(config.read_private_key()), host_keys)


def ssh_command(config: ClusterConfig, node: NodeSpec) -> str:
    return (
        f"ssh -i {config.ssh_key_path} -o UserKnownHostsFile={hostkeys.known_hosts_path(config)} "
        f"-o StrictHostKeyChecking=yes {config.ssh_user}@{node.ip}"
    )
