"""The metrics-server add-on: the metrics API behind `kubectl top` and HorizontalPodAutoscalers.

metrics-server scrapes each kubelet's /metrics/resource over TLS and checks the kubelet's serving
certificate against the cluster CA (no --kubelet-insecure-tls): the kubelets ask for certificates
the cluster CA signs (serverTLSBootstrap) and kube-on-air's approver on the control plane approves
them (components/servingcerts.py). The objects are upstream's manifests/base of the pinned version.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
from pulumi_kubernetes.apiregistration.v1 import APIService, APIServiceSpecArgs, ServiceReferenceArgs
from pulumi_kubernetes.apps.v1 import (
    Deployment,
    DeploymentSpecArgs,
    DeploymentStrategyArgs,
    RollingUpdateDeploymentArgs,
)
from pulumi_kubernetes.core.v1 import (
    CapabilitiesArgs,
    ContainerArgs,
    ContainerPortArgs,
    EmptyDirVolumeSourceArgs,
    HTTPGetActionArgs,
    PodSpecArgs,
    PodTemplateSpecArgs,
    ProbeArgs,
    ResourceRequirementsArgs,
    SeccompProfileArgs,
    SecurityContextArgs,
    Service,
    ServiceAccount,
    ServicePortArgs,
    ServiceSpecArgs,
    VolumeArgs,
    VolumeMountArgs,
)
from pulumi_kubernetes.meta.v1 import LabelSelectorArgs, ObjectMetaArgs
from pulumi_kubernetes.rbac.v1 import (
    ClusterRole,
    ClusterRoleBinding,
    PolicyRuleArgs,
    RoleBinding,
    RoleRefArgs,
    SubjectArgs,
)

# The version the Go module proxy serves here (built by `make toolchain`).
VERSION = "v0.8.0"
METRICS_SERVER_IMAGE = f"registry.k8s.io/metrics-server/metrics-server:{VERSION}"
NAME = "metrics-server"
NAMESPACE = "kube-system"
LABELS = {"k8s-app": NAME}
API_GROUP, API_VERSION = "metrics.k8s.io", "v1beta1"
# How often it scrapes every kubelet's /metrics/resource (upstream's default); `kubectl top` has
# figures after two scrapes, and its liveness check fails when a scrape starts 1.5 of these late.
RESOLUTION = "15s"
PORT = 10250
TMP = "/tmp"  # its self-signed serving certificate: the image has no other writable place


def images() -> tuple[str, ...]:
    return (METRICS_SERVER_IMAGE,)


def server_args() -> list[str]:
    """Upstream's arguments: no --kubelet-insecure-tls; the kubelets' certificates are the cluster CA's."""
    return [
        f"--cert-dir={TMP}",
        f"--secure-port={PORT}",
        "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
        "--kubelet-use-node-status-port",
        f"--metric-resolution={RESOLUTION}",
    ]


@dataclass(frozen=True)
class MetricsServerArgs:
    provider: k8s.Provider
    cni: pulumi.Resource  # its pod needs the pod network
    serving_certs: pulumi.Resource  # and kubelets whose serving certificates it can check


class MetricsServer(pulumi.ComponentResource):
    """metrics-server, awaited until it serves, then the metrics API registered in front of it.

    Registered only once it serves: an APIService without its server breaks every client's
    discovery and holds up the deletion of any namespace (the namespace controller must list every
    API). On destroy the APIService goes first for the same reason."""

    def __init__(self, name: str, args: MetricsServerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kube-on-air:metricsserver:MetricsServer", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[args.cni])
        self.account = ServiceAccount(
            f"{name}-sa", metadata=ObjectMetaArgs(name=NAME, namespace=NAMESPACE, labels=LABELS), opts=child
        )
        grants = self._grants(name, child)
        self.service = Service(
            f"{name}-service",
            metadata=ObjectMetaArgs(name=NAME, namespace=NAMESPACE, labels=LABELS),
            spec=ServiceSpecArgs(
                selector=LABELS,
                ports=[
                    ServicePortArgs(name="https", port=443, protocol="TCP", target_port="https", app_protocol="https")
                ],
            ),
            opts=child,
        )
        self.deployment = Deployment(
            f"{name}-deployment",
            metadata=ObjectMetaArgs(name=NAME, namespace=NAMESPACE, labels=LABELS),
            spec=DeploymentSpecArgs(
                selector=LabelSelectorArgs(match_labels=LABELS),
                strategy=DeploymentStrategyArgs(rolling_update=RollingUpdateDeploymentArgs(max_unavailable=0)),
                template=PodTemplateSpecArgs(metadata=ObjectMetaArgs(labels=LABELS), spec=_server_pod()),
            ),
            opts=pulumi.ResourceOptions.merge(
                child, pulumi.ResourceOptions(depends_on=[self.account, *grants, args.serving_certs])
            ),
        )
        self.api_service = APIService(
            f"{name}-api",
            metadata=ObjectMetaArgs(name=f"{API_VERSION}.{API_GROUP}", labels=LABELS),
            spec=APIServiceSpecArgs(
                service=ServiceReferenceArgs(name=NAME, namespace=NAMESPACE),
                group=API_GROUP,
                version=API_VERSION,
                # As upstream: the aggregator does not check metrics-server's self-signed certificate.
                insecure_skip_tls_verify=True,
                group_priority_minimum=100,
                version_priority=100,
            ),
            opts=pulumi.ResourceOptions.merge(
                child, pulumi.ResourceOptions(depends_on=[self.deployment, self.service])
            ),
        )
        self.register_outputs({"apiService": self.api_service.metadata.name})

    def _grants(self, name: str, child: pulumi.ResourceOptions) -> list[pulumi.Resource]:
        read = ["get", "list", "watch"]
        subject = SubjectArgs(kind="ServiceAccount", name=NAME, namespace=NAMESPACE)
        metrics_reader = ClusterRole(
            f"{name}-reader",
            # Aggregated into view, edit and admin: whoever may read pods may read their figures.
            metadata=ObjectMetaArgs(
                name="system:aggregated-metrics-reader",
                labels={
                    **LABELS,
                    **{f"rbac.authorization.k8s.io/aggregate-to-{r}": "true" for r in ("view", "edit", "admin")},
                },
            ),
            rules=[PolicyRuleArgs(api_groups=[API_GROUP], resources=["pods", "nodes"], verbs=read)],
            opts=child,
        )
        scraper = ClusterRole(
            f"{name}-role",
            metadata=ObjectMetaArgs(name="system:metrics-server", labels=LABELS),
            rules=[
                PolicyRuleArgs(api_groups=[""], resources=["nodes/metrics"], verbs=["get"]),
                PolicyRuleArgs(api_groups=[""], resources=["pods", "nodes"], verbs=read),
            ],
            opts=child,
        )

        def cluster_binding(suffix: str, binding: str, role: str, after: list[pulumi.Resource]) -> pulumi.Resource:
            return ClusterRoleBinding(
                f"{name}-{suffix}",
                metadata=ObjectMetaArgs(name=binding, labels=LABELS),
                role_ref=RoleRefArgs(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role),
                subjects=[subject],
                opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=after)),
            )

        auth_reader = RoleBinding(
            f"{name}-auth-reader",
            # To read the front proxy's CA, with which it checks the aggregator's requests.
            metadata=ObjectMetaArgs(name="metrics-server-auth-reader", namespace=NAMESPACE, labels=LABELS),
            role_ref=RoleRefArgs(
                api_group="rbac.authorization.k8s.io", kind="Role", name="extension-apiserver-authentication-reader"
            ),
            subjects=[subject],
            opts=child,
        )
        return [
            metrics_reader,
            auth_reader,
            cluster_binding("delegator", "metrics-server:system:auth-delegator", "system:auth-delegator", []),
            cluster_binding("binding", "system:metrics-server", "system:metrics-server", [scraper]),
        ]


def _probe(path: str, initial_delay: int | None) -> ProbeArgs:
    return ProbeArgs(
        http_get=HTTPGetActionArgs(path=path, port="https", scheme="HTTPS"),
        period_seconds=10,
        failure_threshold=3,
        initial_delay_seconds=initial_delay,
    )


def _server_pod() -> PodSpecArgs:
    return PodSpecArgs(
        service_account_name=NAME,
        priority_class_name="system-cluster-critical",
        node_selector={"kubernetes.io/os": "linux"},
        volumes=[VolumeArgs(name="tmp-dir", empty_dir=EmptyDirVolumeSourceArgs())],
        containers=[
            ContainerArgs(
                name=NAME,
                image=METRICS_SERVER_IMAGE,
                image_pull_policy="IfNotPresent",
                args=server_args(),
                resources=ResourceRequirementsArgs(requests={"cpu": "100m", "memory": "200Mi"}),
                ports=[ContainerPortArgs(name="https", container_port=PORT, protocol="TCP")],
                readiness_probe=_probe("/readyz", 20),
                liveness_probe=_probe("/livez", None),
                security_context=SecurityContextArgs(
                    read_only_root_filesystem=True,
                    run_as_non_root=True,
                    run_as_user=1000,
                    allow_privilege_escalation=False,
                    seccomp_profile=SeccompProfileArgs(type="RuntimeDefault"),
                    capabilities=CapabilitiesArgs(drop=["ALL"]),
                ),
                volume_mounts=[VolumeMountArgs(name="tmp-dir", mount_path=TMP)],
            )
        ],
    )
