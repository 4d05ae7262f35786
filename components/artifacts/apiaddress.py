"""The API's one address over several control planes: keepalived holds a virtual IP on one healthy
node, and HAProxy there passes TCP on to every healthy kube-apiserver (kubeadm's high-availability
guide, its keepalived + HAProxy option, both run as Debian services on the control planes).

Pure functions of their arguments: the same members render the same bytes on every node.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from components.artifacts import render

# HAProxy listens here on every control plane; kube-apiserver keeps 6443 on the node's own address.
FRONT_DOOR_PORT = 8443
APISERVER_PORT = 6443
# Where the node image's packages read their configuration, and keepalived's check.
HAPROXY_CONFIG = "/etc/haproxy/haproxy.cfg"
KEEPALIVED_CONFIG = "/etc/keepalived/keepalived.conf"
CHECK_PATH = "/etc/keepalived/check-front-door.sh"
# The node's one interface (templates/cloud-init/network-config.yaml.j2 names it).
INTERFACE = "eth0"
# A kube-apiserver out of the rotation after 2 failed checks 2 s apart, back after 2 good ones.
BACKEND_CHECK = {"check_interval": "2s", "check_fall": 2, "check_rise": 2, "check_timeout": "2s"}
# The virtual address leaves a node after 3 failed checks 1 s apart (VRRP's own failover, when the
# node itself is gone, is 3 missed adverts plus skew: about 3-4 s).
FRONT_DOOR_CHECK = {"check_every_seconds": 1, "check_timeout_seconds": 2, "check_fall": 3, "check_rise": 2}
# Idle limit of a connection through HAProxy: kube-apiserver ends watches itself after 30-60 min.
IDLE_TIMEOUT = "1h"
CONNECT_TIMEOUT = "5s"


@dataclass(frozen=True)
class Member:
    name: str  # the control plane's node name, e.g. head10
    address: str  # its own address on the cluster network


@dataclass(frozen=True)
class ApiAddress:
    virtual_ip: str
    prefix_length: int
    members: tuple[Member, ...]  # every control plane, in node-id order

    @property
    def endpoint(self) -> str:
        return f"{self.virtual_ip}:{FRONT_DOOR_PORT}"

    def router_id(self) -> int:
        """VRRP's id of the address, 1..255: its host part, unique on the network that carries it."""
        network = ipaddress.IPv4Network(f"{self.virtual_ip}/{self.prefix_length}", strict=False)
        return (int(ipaddress.IPv4Address(self.virtual_ip)) - int(network.network_address)) % 255 or 255

    def member(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)


def haproxy_config(api: ApiAddress) -> str:
    return render.render(
        "api-address/haproxy.cfg.j2",
        members=api.members,
        port=FRONT_DOOR_PORT,
        apiserver_port=APISERVER_PORT,
        idle_timeout=IDLE_TIMEOUT,
        connect_timeout=CONNECT_TIMEOUT,
        **BACKEND_CHECK,
    )


def keepalived_config(api: ApiAddress, node_name: str, check_path: str = CHECK_PATH) -> str:
    """Lower node ids get higher priorities, so on a fresh start the first control plane holds the address."""
    node = api.member(node_name)
    rank = api.members.index(node)
    return render.render(
        "api-address/keepalived.conf.j2",
        node_name=node.name,
        node_address=node.address,
        peers=[m.address for m in api.members if m != node],
        virtual_ip=api.virtual_ip,
        prefix_length=api.prefix_length,
        interface=INTERFACE,
        router_id=api.router_id(),
        priority=150 - 10 * rank,
        check_path=check_path,
        **FRONT_DOOR_CHECK,
    )


def check_script() -> str:
    return render.render(
        "api-address/check-front-door.sh.j2",
        port=FRONT_DOOR_PORT,
        timeout_seconds=FRONT_DOOR_CHECK["check_timeout_seconds"],
    )


def node_files(api: ApiAddress, node_name: str) -> dict[str, str]:
    """Path -> content of what one control plane needs for the virtual address."""
    return {
        HAPROXY_CONFIG: haproxy_config(api),
        KEEPALIVED_CONFIG: keepalived_config(api, node_name),
        CHECK_PATH: check_script(),
    }


def members_of(nodes: Sequence[tuple[str, str]]) -> tuple[Member, ...]:
    """(name, address) pairs, ordered by address, as Members."""
    ordered = sorted(nodes, key=lambda pair: ipaddress.IPv4Address(pair[1]))
    return tuple(Member(name, address) for name, address in ordered)
