"""How the program reaches a node over SSH (pulumi-command connection)."""

from __future__ import annotations

import pulumi
from pulumi_command import remote

from components.config import ClusterConfig, NodeSpec

# Fresh VMs take a minute or more (much more under software emulation) before sshd answers.
DIAL_ERROR_LIMIT = 120
PER_DIAL_TIMEOUT_SECONDS = 10


def connection(config: ClusterConfig, node: NodeSpec, private_key: pulumi.Output[str]) -> remote.ConnectionArgs:
    return remote.ConnectionArgs(
        host=node.ip,
        user=config.ssh_user,
        private_key=private_key,
        dial_error_limit=DIAL_ERROR_LIMIT,
        per_dial_timeout=PER_DIAL_TIMEOUT_SECONDS,
    )


def ssh_command(config: ClusterConfig, node: NodeSpec) -> str:
    return f"ssh -i {config.ssh_key_path} {config.ssh_user}@{node.ip}"
