"""The libvirt NAT network every node of one stack sits on."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_libvirt as libvirt

from components.config.settings import ClusterConfig


@dataclass(frozen=True)
class ClusterNetworkArgs:
    config: ClusterConfig


class ClusterNetwork(pulumi.ComponentResource):
    """NAT network with a DNS record per node (replaces the seed's /etc/hosts) and a fixed name per stack."""

    network: libvirt.Network

    def __init__(self, name: str, args: ClusterNetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kube-on-air:network:ClusterNetwork", name, None, opts)
        config = args.config
        self.network = libvirt.Network(
            f"{name}-net",
            name=config.network_name,
            bridge=config.bridge_name,
            mode="nat",
            domain=config.dns_domain,
            addresses=[config.network_cidr],
            autostart=True,
            # Nodes have static addresses and never ask DHCP. It stays on as every stack was made:
            # the dhcp block forces a new network (v0.8.1), which would rebuild every node.
            dhcp=libvirt.NetworkDhcpArgs(enabled=True),
            dns=libvirt.NetworkDnsArgs(
                enabled=True,
                local_only=True,
                hosts=[libvirt.NetworkDnsHostArgs(hostname=config.fqdn(node), ip=node.ip) for node in config.nodes],
            ),
            # A fixed name: never two at once (see Node).
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )
        self.network_id = self.network.id
        self.register_outputs({"network_id": self.network.id, "name": config.network_name})
