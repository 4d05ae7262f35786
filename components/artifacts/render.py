"""Renders every text artifact (cloud-init, kubeadm config, remote scripts) from `templates/`.

Pure functions of the validated config: the same config always renders the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from components.artifacts import access, hostkeys
from components.artifacts.hostkeys import HostKey
from components.config.settings import ClusterConfig, NodeSpec

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"

KERNEL_MODULES = ("overlay", "br_netfilter")
SYSCTLS = {
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.bridge.bridge-nf-call-ip6tables": "1",
    "net.ipv4.ip_forward": "1",
}
# The pause image kubeadm names per minor (PauseVersion in its constants.go, read at 1.31.4, 1.32.0,
# 1.33.0, 1.34.2, 1.35.4, 1.36.1, 1.37.2). containerd must sandbox pods with the same image: otherwise
# kubeadm warns and a node with preloaded images still pulls another pause.
PAUSE_TAG_BY_MINOR = {31: "3.10", 32: "3.10", 33: "3.10", 34: "3.10.1", 35: "3.10.1", 36: "3.10.2", 37: "3.10.2"}


def sandbox_image(kubernetes_version: str) -> str:
    minor = int(kubernetes_version.split(".")[1])
    return f"registry.k8s.io/pause:{PAUSE_TAG_BY_MINOR[minor]}"


# Minted right before each join: long enough for kubeadm join and the kubelet's TLS bootstrap.
JOIN_TOKEN_TTL = "30m"
# Stand in for the join credentials in the rendered JoinConfiguration until the join mints them.
TOKEN_PLACEHOLDER = "KOA_BOOTSTRAP_TOKEN"
CA_CERT_HASH_PLACEHOLDER = "KOA_CA_CERT_HASH"
# Written by cloud-init, run by its runcmd at first boot and again by the wait-ready step if needed.
INSTALLER_PATH = "/usr/local/sbin/koa-install-kubernetes"
# apt at first boot: wait for dpkg's lock (unattended-upgrades), retry downloads, retry whole commands.
APT_LOCK_WAIT_SECONDS = 600
APT_DOWNLOAD_RETRIES = 5
APT_ATTEMPTS = 5
APT_RETRY_PAUSE_SECONDS = 15
# The wait-ready step's re-runs of an install that cloud-init did not finish.
INSTALL_ATTEMPTS = 3
INSTALL_RETRY_PAUSE_SECONDS = 30
TOKEN_WAIT_SECONDS = 60
# kubeadm's cluster CA on the control plane, readable by every user there.
CLUSTER_CA = "/etc/kubernetes/pki/ca.crt"
# kubeadm's admin kubeconfig on the control plane (root only).
ADMIN_CONF = "/etc/kubernetes/admin.conf"
# The API watch's program, and its log, pid and stop files (tmpfs: a reboot ends any streak).
WATCH_PROGRAM = "/var/lib/kube-on-air/api-watch.py"
WATCH_DIRECTORY = "/run/kube-on-air"
# The approver of kubelet serving certificates (components/servingcerts.py).
APPROVER_PROGRAM = "/var/lib/kube-on-air/serving-approver.py"
APPROVER_UNIT = "kube-on-air-serving-approver.service"
SYSTEMD_UNITS = "/etc/systemd/system"
APPROVER_POLL_SECONDS = 5
KUBELET_CONFIG = "/var/lib/kubelet/config.yaml"


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
        apt_lock_wait_seconds=APT_LOCK_WAIT_SECONDS,
        apt_download_retries=APT_DOWNLOAD_RETRIES,
        apt_attempts=APT_ATTEMPTS,
        apt_retry_pause_seconds=APT_RETRY_PAUSE_SECONDS,
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
        containerd_config=render(
            "cloud-init/containerd-config.toml.j2", sandbox_image=sandbox_image(config.kubernetes_version)
        ).rstrip("\n"),
        prebaked=config.prebaked,
        installer_path=INSTALLER_PATH,
        install_script="" if config.prebaked else install_script(config).rstrip("\n"),
    )


def meta_data(node: NodeSpec, instance_id: str) -> str:
    # instance-id: see components/artifacts/identity.py (new with every change of the node's seed, else stable).
    return render("cloud-init/meta-data.yaml.j2", instance_id=instance_id, hostname=node.name)


def network_config(config: ClusterConfig, node: NodeSpec) -> str:
    return render(
        "cloud-init/network-config.yaml.j2",
        mac=node.mac,
        address=f"{node.ip}/{config.prefix_length}",
        gateway=config.gateway,
        dns_domain=config.dns_domain,
    )


def wait_ready_script(config: ClusterConfig, node: NodeSpec) -> str:
    return render(
        "scripts/wait-ready.sh.j2",
        hostname=node.name,
        kernel_modules=KERNEL_MODULES,
        sysctls=SYSCTLS,
        # A pre-baked image has no installer: nothing to re-run.
        installer="" if config.prebaked else INSTALLER_PATH,
        install_attempts=INSTALL_ATTEMPTS,
        install_retry_pause_seconds=INSTALL_RETRY_PAUSE_SECONDS,
    )


# kubeadm reads its static pod patches from here at init (InitConfiguration.patches).
PATCHES_DIRECTORY = "/var/lib/kube-on-air/patches"
CONTROL_PLANE_COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd")


def static_pod_patches(config: ClusterConfig) -> dict[str, str]:
    """File name -> strategic merge patch for each control-plane static pod, on a slow host only."""
    patience = config.tolerances
    if patience.control_plane_liveness_failures is None or patience.control_plane_startup_failures is None:
        return {}
    return {
        f"{component}+strategic.yaml": render(
            "kubeadm/static-pod-patch.yaml.j2",
            component=component,
            liveness_failures=patience.control_plane_liveness_failures,
            startup_failures=patience.control_plane_startup_failures,
        ).rstrip("\n")
        for component in CONTROL_PLANE_COMPONENTS
    }


def _etcd_args(config: ClusterConfig) -> dict[str, str]:
    patience = config.tolerances
    if patience.etcd_heartbeat_ms is None or patience.etcd_election_ms is None:
        return {}
    return {"heartbeat-interval": str(patience.etcd_heartbeat_ms), "election-timeout": str(patience.etcd_election_ms)}


def kubeadm_config(config: ClusterConfig) -> str:
    cp = config.control_plane
    return render(
        "kubeadm/kubeadm-config.yaml.j2",
        timeouts=config.tolerances.kubeadm_timeouts,
        patches_directory=PATCHES_DIRECTORY if static_pod_patches(config) else "",
        etcd_args=_etcd_args(config),
        leader_election=config.tolerances.leader_election,
        runtime_request_timeout=config.tolerances.kubelet_runtime_request_timeout,
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
        timeouts=config.tolerances.kubeadm_timeouts,
    )


def kubeadm_init_script(config: ClusterConfig) -> str:
    return render(
        "scripts/kubeadm-init.sh.j2",
        patches=static_pod_patches(config),
        patches_directory=PATCHES_DIRECTORY,
        api_wait_seconds=config.tolerances.api_steady_timeout_seconds,
        **_api_watch(config),
    )


def api_steady_script(config: ClusterConfig, occasion: str = "") -> str:
    """The API gate; `occasion` (e.g. "after the upgrade to v1.34.4") is said in its last line, so
    a gate that belongs to one event runs again, as an update, when the event does."""
    return render("scripts/api-steady.sh.j2", occasion=occasion, **_api_watch(config))


def upgrade_settled_new_script(config: ClusterConfig) -> str:
    """What the gate after an upgrade does when its step is made with the cluster: nothing."""
    return render("scripts/upgrade-settled-new.sh.j2", kubernetes_version=config.kubernetes_version)


def api_watch_program(config: ClusterConfig) -> str:
    """The python3 program both scripts above put on the control plane (its `watch` and `gate`)."""
    return render("scripts/lib/api-watch.py.j2", **_api_watch(config))


def _api_watch(config: ClusterConfig) -> dict[str, Any]:
    """What the API watch that kubeadm init starts and the gate after it reads are rendered with."""
    patience = config.tolerances
    return {
        "checks": patience.api_steady_checks,
        "interval_seconds": patience.api_steady_interval_seconds,
        "timeout_seconds": patience.api_steady_timeout_seconds,
        "openapi_within_seconds": patience.openapi_within_seconds,
        "readyz_url": f"{config.api_endpoint}/readyz",
        "openapi_url": f"{config.api_endpoint}/openapi/v2",
        "ca_file": CLUSTER_CA,
        "admin_conf": ADMIN_CONF,
        "watch_program": WATCH_PROGRAM,
        "watch_directory": WATCH_DIRECTORY,
    }


def serving_approver_program(config: ClusterConfig) -> str:
    return render("scripts/lib/serving-approver.py.j2", **_serving_approver(config))


def install_serving_approver_script(config: ClusterConfig) -> str:
    return render("scripts/install-serving-approver.sh.j2", **_serving_approver(config))


def _serving_approver(config: ClusterConfig) -> dict[str, Any]:
    return {
        "api_endpoint": config.api_endpoint,
        "poll_seconds": APPROVER_POLL_SECONDS,
        "program_path": APPROVER_PROGRAM,
        "unit_name": APPROVER_UNIT,
        "unit_directory": SYSTEMD_UNITS,
        "ca_file": CLUSTER_CA,
        "admin_conf": ADMIN_CONF,
    }


# How long the metallb gate waits for the webhook to admit the pool, and between its tries.
METALLB_WEBHOOK_TIMEOUT_SECONDS = 300
METALLB_WEBHOOK_RETRY_SECONDS = 5


def metallb_webhook_ready_script(pool: Mapping[str, Any]) -> str:
    return render(
        "scripts/metallb-webhook-ready.sh.j2",
        pool_name=pool["metadata"]["name"],
        pool_json=json.dumps(pool, sort_keys=True),
        admin_conf=ADMIN_CONF,
        timeout_seconds=METALLB_WEBHOOK_TIMEOUT_SECONDS,
        retry_seconds=METALLB_WEBHOOK_RETRY_SECONDS,
    )


def kubelet_serving_script() -> str:
    return render("scripts/kubelet-serving.sh.j2", kubelet_config=KUBELET_CONFIG)


def join_credentials_script(node: NodeSpec) -> str:
    return render("scripts/join-credentials.sh.j2", token_ttl=JOIN_TOKEN_TTL, hostname=node.name)


def revoke_token_script(node: NodeSpec) -> str:
    return render("scripts/revoke-join-token.sh.j2", hostname=node.name)


def stale_node_script(node: NodeSpec) -> str:
    return render("scripts/delete-stale-node.sh.j2", hostname=node.name)


def kubeadm_join_script(node: NodeSpec) -> str:
    return render("scripts/kubeadm-join.sh.j2", hostname=node.name)


def join_worker_script(config: ClusterConfig, node: NodeSpec, host_keys: Mapping[str, HostKey]) -> str:
    return render(
        "scripts/join-worker.sh.j2",
        **_pinned_ssh(config, node, host_keys),
        token_ttl=JOIN_TOKEN_TTL,
        mint_script=join_credentials_script(node).rstrip("\n"),
        revoke_script=revoke_token_script(node).rstrip("\n"),
        stale_node_script=stale_node_script(node).rstrip("\n"),
        join_script=kubeadm_join_script(node).rstrip("\n"),
        join_config=join_config(config, node, TOKEN_PLACEHOLDER, CA_CERT_HASH_PLACEHOLDER).rstrip("\n"),
        token_placeholder=TOKEN_PLACEHOLDER,
        ca_cert_hash_placeholder=CA_CERT_HASH_PLACEHOLDER,
    )


def fetch_kubeconfig_script(config: ClusterConfig) -> str:
    return render(
        "scripts/fetch-kubeconfig.sh.j2",
        api_wait_seconds=config.tolerances.api_steady_timeout_seconds,
        manifests=access.access_manifests().rstrip("\n"),
        namespace=access.ACCESS_NAMESPACE,
        service_account=access.SERVICE_ACCOUNT,
        secret=access.TOKEN_SECRET,
        token_wait_seconds=TOKEN_WAIT_SECONDS,
    )


def _pinned_ssh(config: ClusterConfig, node: NodeSpec, host_keys: Mapping[str, HostKey]) -> dict[str, str]:
    """What a script on the Pulumi host needs to reach a worker and the control plane over SSH."""
    # The two hosts it talks to, pinned in the script itself: it may run long after this evaluation.
    pinned = {config.control_plane.name: host_keys[config.control_plane.name], node.name: host_keys[node.name]}
    return {
        "hostname": node.name,
        "ip": node.ip,
        "control_plane_ip": config.control_plane.ip,
        "ssh_user": config.ssh_user,
        "ssh_key_path": config.ssh_key_path,
        "known_hosts": hostkeys.known_hosts(config, pinned).rstrip("\n"),
    }


def remove_worker_script(config: ClusterConfig, node: NodeSpec, host_keys: Mapping[str, HostKey]) -> str:
    return render(
        "scripts/remove-worker.sh.j2",
        **_pinned_ssh(config, node, host_keys),
        drain_timeout=f"{config.tolerances.drain_timeout_seconds}s",
        libvirt_uri=config.libvirt_uri,
        network=config.network_name,
        # The entry as the domain's create added it: the MAC the domain was given (components/node.py).
        mac=node.mac.upper(),
    )


def hosts_snippet(config: ClusterConfig) -> str:
    lines = [f"{node.ip}\t{config.fqdn(node)} {node.name}" for node in config.nodes]
    return "\n".join(lines) + "\n"


# A clean guest shutdown before the provider powers a domain off (shut-down.sh.j2).
SHUTDOWN_WAIT_SECONDS = 180


def _maintenance(config: ClusterConfig, node: NodeSpec) -> dict[str, Any]:
    return {"hostname": node.name, "api_wait_seconds": config.tolerances.api_steady_timeout_seconds}


def _on_control_plane(
    config: ClusterConfig, node: NodeSpec, host_keys: Mapping[str, HostKey], script: str, unreachable_is_fine: bool
) -> str:
    return render(
        "scripts/on-control-plane.sh.j2",
        **_pinned_ssh(config, node, host_keys),
        script=script.rstrip("\n"),
        unreachable_is_fine=unreachable_is_fine,
    )


def take_out_of_service_script(config: ClusterConfig, node: NodeSpec, host_keys: Mapping[str, HostKey]) -> str:
    script = render(
        "scripts/take-out-of-service.sh.j2",
        **_maintenance(config, node),
        drain_timeout=f"{config.tolerances.drain_timeout_seconds}s",
    )
    return _on_control_plane(config, node, host_keys, script, unreachable_is_fine=True)


def return_to_service_script(config: ClusterConfig, node: NodeSpec, host_keys: Mapping[str, HostKey]) -> str:
    script = render(
        "scripts/return-to-service.sh.j2",
        **_maintenance(config, node),
        ready_wait_seconds=config.tolerances.cni_await_seconds,
    )
    return _on_control_plane(config, node, host_keys, script, unreachable_is_fine=False)


def shut_down_script(config: ClusterConfig, node: NodeSpec) -> str:
    return render(
        "scripts/shut-down.sh.j2",
        domain=node.libvirt_name,
        libvirt_uri=config.libvirt_uri,
        wait_seconds=SHUTDOWN_WAIT_SECONDS,
    )


# Where a node keeps a staged Kubernetes release (the stage step), one directory per version.
STAGED_RELEASES = "/var/lib/kube-on-air/releases"
# kubeadm's wait for the upgraded static pods: 5 m upstream, like its other waits under emulation.
EMULATED_UPGRADE_MANIFESTS_TIMEOUT = "20m0s"


def staged_release(config: ClusterConfig) -> str:
    return f"{STAGED_RELEASES}/v{config.kubernetes_version}"


def release_on_host(config: ClusterConfig) -> str:
    return f"{config.releases_dir}/v{config.kubernetes_version}"


def stage_release_script(config: ClusterConfig, node: NodeSpec, host_keys: Mapping[str, HostKey]) -> str:
    receive = render("scripts/receive-release.sh.j2", hostname=node.name, staged=staged_release(config))
    return render(
        "scripts/stage-release.sh.j2",
        **_pinned_ssh(config, node, host_keys),
        version=config.kubernetes_version,
        staged=staged_release(config),
        release=release_on_host(config),
        control_plane=node == config.control_plane,
        receive_script=receive.rstrip("\n"),
    )


def upgrade_config(config: ClusterConfig) -> str:
    timeouts = dict(config.tolerances.kubeadm_timeouts)
    if timeouts:
        timeouts["upgradeManifests"] = EMULATED_UPGRADE_MANIFESTS_TIMEOUT
    return render(
        "kubeadm/upgrade-config.yaml.j2",
        kubernetes_version=config.kubernetes_version,
        patches_directory=PATCHES_DIRECTORY if static_pod_patches(config) else "",
        timeouts=timeouts,
        ignore_preflight_errors=config.tolerances.upgrade_ignore_preflight_errors,
    )


def upgrade_control_plane_script(config: ClusterConfig) -> str:
    return render(
        "scripts/upgrade-control-plane.sh.j2",
        hostname=config.control_plane.name,
        version=config.kubernetes_version,
        staged=staged_release(config),
        admin_conf=ADMIN_CONF,
        api_wait_seconds=config.tolerances.api_steady_timeout_seconds,
        drain_timeout=f"{config.tolerances.drain_timeout_seconds}s",
        ready_wait_seconds=config.tolerances.cni_await_seconds,
    )


def upgrade_worker_script(config: ClusterConfig, node: NodeSpec, host_keys: Mapping[str, HostKey]) -> str:
    version, staged = config.kubernetes_version, staged_release(config)
    upgrade_node = render("scripts/upgrade-node.sh.j2", hostname=node.name, version=version, staged=staged)
    return render(
        "scripts/upgrade-worker.sh.j2",
        **_pinned_ssh(config, node, host_keys),
        version=version,
        admin_conf=ADMIN_CONF,
        ready_wait_seconds=config.tolerances.cni_await_seconds,
        take_out_of_service_script=take_out_of_service_script(config, node, host_keys).rstrip("\n"),
        upgrade_node_script=upgrade_node.rstrip("\n"),
        return_to_service_script=return_to_service_script(config, node, host_keys).rstrip("\n"),
    )
