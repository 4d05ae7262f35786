"""The pod network: kube-router (default, as in the seed) or calico."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
from pulumi_kubernetes.apps.v1 import DaemonSet, DaemonSetSpecArgs
from pulumi_kubernetes.core.v1 import (
    ConfigMap,
    ConfigMapVolumeSourceArgs,
    ContainerArgs,
    EnvVarArgs,
    EnvVarSourceArgs,
    HostPathVolumeSourceArgs,
    HTTPGetActionArgs,
    ObjectFieldSelectorArgs,
    PodSpecArgs,
    PodTemplateSpecArgs,
    ProbeArgs,
    ResourceRequirementsArgs,
    SecurityContextArgs,
    ServiceAccount,
    TolerationArgs,
    VolumeArgs,
    VolumeMountArgs,
)
from pulumi_kubernetes.meta.v1 import LabelSelectorArgs, ObjectMetaArgs
from pulumi_kubernetes.rbac.v1 import (
    ClusterRole,
    ClusterRoleBinding,
    PolicyRuleArgs,
    RoleRefArgs,
    SubjectArgs,
)

from components.config.settings import ClusterConfig
from components.config.tolerances import Probe, Tolerances

KUBE_ROUTER_IMAGE = "docker.io/cloudnativelabs/kube-router:v2.11.1"
CALICO_MANIFEST = "https://raw.githubusercontent.com/projectcalico/calico/v3.29.3/manifests/calico.yaml"
NAMESPACE = "kube-system"
CNI_CONF_FILE = "/etc/cni/net.d/10-kuberouter.conflist"
LABELS = {"k8s-app": "kube-router", "tier": "node"}

# kube-router fills "usePodCidr" with the node's spec.podCIDR (allocated by kubeadm from podCidr).
CNI_CONFLIST = {
    "cniVersion": "0.3.0",
    "name": "kube-on-air",
    "plugins": [
        {
            "name": "kubernetes",
            "type": "bridge",
            "bridge": "kube-bridge",
            "isDefaultGateway": True,
            "hairpinMode": True,
            "ipam": {"type": "host-local"},
        },
        {"type": "portmap", "capabilities": {"snat": True, "portMappings": True}},
    ],
}

# Copies the CNI config onto the host once; kube-router's image ships a shell.
INSTALL_CNI = (
    "set -eu; "
    f"if [ ! -f {CNI_CONF_FILE} ]; then "
    "tmp=/etc/cni/net.d/.tmp-kuberouter-cfg; "
    f'cp /etc/kube-router/cni-conf.json "$tmp"; mv "$tmp" {CNI_CONF_FILE}; fi'
)


def images(cni: str) -> tuple[str, ...]:
    """The images a node runs for this CNI (calico's come from its manifest and are not listed)."""
    return (KUBE_ROUTER_IMAGE,) if cni == "kube-router" else ()


@dataclass(frozen=True)
class CniArgs:
    config: ClusterConfig
    provider: k8s.Provider
    # What must settle before the first object (the add-ons' CRDs); everything else waits for the CNI.
    after: Sequence[pulumi.Resource] = ()


class Cni(pulumi.ComponentResource):
    """Installs the configured CNI; depend on this component to wait until pod networking is up."""

    def __init__(self, name: str, args: CniArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kube-on-air:cni:Cni", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=list(args.after))
        if args.config.cni == "calico":
            # Calico auto-detects kubeadm's pod subnet; its manifest is applied as published upstream.
            self.calico = k8s.yaml.v2.ConfigFile(f"{name}-calico", file=CALICO_MANIFEST, opts=child)
        else:
            self._kube_router(name, child, args.config.tolerances)
        self.register_outputs({"cni": args.config.cni})

    def _kube_router(self, name: str, child: pulumi.ResourceOptions, patience: Tolerances) -> None:
        meta = ObjectMetaArgs(name="kube-router", namespace=NAMESPACE, labels=LABELS)
        self.service_account = ServiceAccount(f"{name}-sa", metadata=meta, opts=child)
        self.cluster_role = ClusterRole(
            f"{name}-role",
            metadata=ObjectMetaArgs(name="kube-router", labels=LABELS),
            rules=_kube_router_rules(),
            opts=child,
        )
        self.binding = ClusterRoleBinding(
            f"{name}-binding",
            metadata=ObjectMetaArgs(name="kube-router", labels=LABELS),
            role_ref=RoleRefArgs(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="kube-router"),
            subjects=[SubjectArgs(kind="ServiceAccount", name="kube-router", namespace=NAMESPACE)],
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[self.cluster_role])),
        )
        self.cni_config = ConfigMap(
            f"{name}-cfg",
            metadata=ObjectMetaArgs(name="kube-router-cfg", namespace=NAMESPACE, labels=LABELS),
            data={"cni-conf.json": json.dumps(CNI_CONFLIST, indent=2)},
            opts=child,
        )
        self.daemon_set = DaemonSet(
            f"{name}-ds",
            metadata=meta,
            spec=DaemonSetSpecArgs(
                selector=LabelSelectorArgs(match_labels=LABELS),
                template=PodTemplateSpecArgs(
                    metadata=ObjectMetaArgs(labels=LABELS), spec=_kube_router_pod(patience.kube_router_liveness)
                ),
            ),
            opts=pulumi.ResourceOptions.merge(
                child,
                pulumi.ResourceOptions(
                    depends_on=[self.service_account, self.binding, self.cni_config],
                    # Ready on every node, images started included: the one CNI wait of `pulumi up`.
                    custom_timeouts=pulumi.CustomTimeouts(
                        create=f"{patience.cni_await_seconds}s", update=f"{patience.cni_await_seconds}s"
                    ),
                ),
            ),
        )


def _kube_router_rules() -> list[PolicyRuleArgs]:
    read = ["get", "list", "watch"]
    return [
        PolicyRuleArgs(api_groups=[""], resources=["namespaces", "pods", "services", "nodes", "endpoints"], verbs=read),
        PolicyRuleArgs(api_groups=["networking.k8s.io"], resources=["networkpolicies"], verbs=read),
        PolicyRuleArgs(api_groups=["discovery.k8s.io"], resources=["endpointslices"], verbs=read),
        PolicyRuleArgs(api_groups=["coordination.k8s.io"], resources=["leases"], verbs=["get", "create", "update"]),
        PolicyRuleArgs(api_groups=[""], resources=["services/status"], verbs=["update"]),
        PolicyRuleArgs(api_groups=[""], resources=["events"], verbs=["create", "patch"]),
    ]


def _host_path(name: str, path: str, kind: str | None = None) -> VolumeArgs:
    return VolumeArgs(name=name, host_path=HostPathVolumeSourceArgs(path=path, type=kind))


def _kube_router_pod(liveness: Probe) -> PodSpecArgs:
    cni_mount = VolumeMountArgs(name="cni-conf-dir", mount_path="/etc/cni/net.d")
    return PodSpecArgs(
        service_account_name="kube-router",
        priority_class_name="system-node-critical",
        host_network=True,
        # Runs everywhere, the control plane and not-ready nodes included: it is what makes them ready.
        tolerations=[TolerationArgs(operator="Exists")],
        init_containers=[
            ContainerArgs(
                name="install-cni",
                image=KUBE_ROUTER_IMAGE,
                command=["/bin/sh", "-c", INSTALL_CNI],
                volume_mounts=[cni_mount, VolumeMountArgs(name="kube-router-cfg", mount_path="/etc/kube-router")],
            )
        ],
        containers=[
            ContainerArgs(
                name="kube-router",
                image=KUBE_ROUTER_IMAGE,
                args=[
                    "--run-router=true",
                    "--run-firewall=true",
                    "--run-service-proxy=false",
                    "--bgp-graceful-restart=true",
                ],
                env=[
                    EnvVarArgs(
                        name="NODE_NAME",
                        value_from=EnvVarSourceArgs(field_ref=ObjectFieldSelectorArgs(field_path="spec.nodeName")),
                    ),
                    EnvVarArgs(name="KUBE_ROUTER_CNI_CONF_FILE", value=CNI_CONF_FILE),
                ],
                liveness_probe=ProbeArgs(
                    http_get=HTTPGetActionArgs(path="/healthz", port=20244),
                    initial_delay_seconds=liveness.initial_delay_seconds,
                    period_seconds=liveness.period_seconds,
                    timeout_seconds=liveness.timeout_seconds,
                    failure_threshold=liveness.failure_threshold,
                ),
                resources=ResourceRequirementsArgs(requests={"cpu": "250m", "memory": "250Mi"}),
                security_context=SecurityContextArgs(privileged=True),
                volume_mounts=[
                    VolumeMountArgs(name="lib-modules", mount_path="/lib/modules", read_only=True),
                    cni_mount,
                    VolumeMountArgs(name="xtables-lock", mount_path="/run/xtables.lock"),
                ],
            )
        ],
        volumes=[
            _host_path("lib-modules", "/lib/modules"),
            _host_path("cni-conf-dir", "/etc/cni/net.d"),
            _host_path("xtables-lock", "/run/xtables.lock", "FileOrCreate"),
            VolumeArgs(name="kube-router-cfg", config_map=ConfigMapVolumeSourceArgs(name="kube-router-cfg")),
        ],
    )
