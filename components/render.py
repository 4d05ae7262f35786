"""Renders every text artifact (cloud-init, kubeadm config, remote scripts) from `templates/`.

Pure functions of the validated config: the same config always renders the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from components import hostkeys
from components.config import ClusterConfig, NodeSpec
from components.hostkeys import HostKey

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

KERNEL_MODULES = ("overlay", "br_netfilter")
SYSCTLS = {
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.bridge.bridge-nf-call-ip6tables": "1",
    "net.ipv4.ip_forward": "1",
}
# kubeadm 1.31+ expects this pause image; containerd's own default is older.
SANDBOX_IMAGE = "registry.k8s.io/pause:3.10"
JOIN_TOKEN_TTL = "24h"
DRAIN_TIMEOUT = "120s"


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        # Shell templates are full of `${#array[@]}`; keep Jinja's comment syntax out of their way.
        comment_start_string="{##",
        comment_end_string="##}",
        autoescape=False,
    )


def render(template: str, **context: Any) -> str:
    return _environment().get_template(template).render(**context)


def install_script(config: ClusterConfig) -> str:
    return render(
        "scripts/install-kubernetes.sh.j2",
        kubernetes_version=config.kubernetes_version,
        kubernetes_minor=config.kubernetes_minor,
    )


def user_data(config: ClusterConfig, node: NodeSpec, host_key: HostKey) -> str:
    return render(
        "cloud-init/user-data.yaml.j2",
        hostname=node.name,
        fqdn=config.fqdn(node),
        role=node.role,
        ssh_user=config.ssh_user,
        ssh_public_key=config.ssh_public_key,
        host_key_type=hostkeys.KEY_TYPE,
        host_private_key=host_key.private,
        host_public_key=host_key.public,
        kernel_modules=KERNEL_MODULES,
        sysctls=SYSCTLS,
        containerd_config=render("cloud-init/containerd-config.toml.j2", sandbox_image=SANDBOX_IMAGE).rstrip("\n"),
        prebaked=config.prebaked,
        install_script="" if config.prebaked else install_script(config).rstrip("\n"),
    )


def meta_data(node: NodeSpec, instance_id: str) -> str:
    # instance-id: see components/identity.py (new with every change of the node's seed, else stable).
    return render("cloud-init/meta-data.yaml.j2", instance_id=instance_id, hostname=node.name)


def network_config(config: ClusterConfig, node: NodeSpec) -> str:
    return render(
        "cloud-init/network-config.yaml.j2",
        mac=node.mac,
        address=f"{node.ip}/{config.prefix_length}",
        gateway=config.gateway,
        dns_domain=config.dns_domain,
    )


def wait_ready_script(node: NodeSpec) -> str:
    return render("scripts/wait-ready.sh.j2", hostname=node.name, kernel_modules=KERNEL_MODULES, sysctls=SYSCTLS)


def kubeadm_config(config: ClusterConfig) -> str:
    cp = config.control_plane
    return render(
        "kubeadm/kubeadm-config.yaml.j2",
        advertise_address=cp.ip,
        node_name=cp.name,
        untaint_control_plane=not config.workers,
        kubernetes_version=config.kubernetes_version,
        cluster_name=f"kube-on-air-{config.stack}",
        pod_cidr=config.pod_cidr,
        service_cidr=config.service_cidr,
        cert_sans=[cp.name, config.fqdn(cp), cp.ip],
    )


def join_config(config: ClusterConfig, node: NodeSpec, token: str, ca_cert_hash: str) -> str:
    return render(
        "kubeadm/join-config.yaml.j2",
        api_server_endpoint=f"{config.control_plane.ip}:6443",
        token=token,
        ca_cert_hash=ca_cert_hash,
        node_name=node.name,
        node_ip=node.ip,
    )


def kubeadm_init_script() -> str:
    return render("scripts/kubeadm-init.sh.j2")


def join_credentials_script() -> str:
    return render("scripts/join-credentials.sh.j2", token_ttl=JOIN_TOKEN_TTL)


def kubeadm_join_script(node: NodeSpec) -> str:
    return render("scripts/kubeadm-join.sh.j2", hostname=node.name)


def fetch_kubeconfig_script() -> str:
    return render("scripts/fetch-kubeconfig.sh.j2")


def remove_worker_script(config: ClusterConfig, node: NodeSpec, host_keys: Mapping[str, HostKey]) -> str:
    # The two hosts it talks to, pinned: the script runs at delete time, long after this evaluation.
    pinned = {config.control_plane.name: host_keys[config.control_plane.name], node.name: host_keys[node.name]}
    return render(
        "scripts/remove-worker.sh.j2",
        hostname=node.name,
        ip=node.ip,
        control_plane_ip=config.control_plane.ip,
        ssh_user=config.ssh_user,
        ssh_key_path=config.ssh_key_path,
        known_hosts=hostkeys.known_hosts(config, pinned).rstrip("\n"),
        drain_timeout=DRAIN_TIMEOUT,
    )


def hosts_snippet(config: ClusterConfig) -> str:
    lines = [f"{node.ip}\t{config.fqdn(node)} {node.name}" for node in config.nodes]
    return "\n".join(lines) + "\n"
