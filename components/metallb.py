"""The metallb add-on: LoadBalancer Services get an address of the stack's own NAT network.

MetalLB in layer-2 mode: its controller hands each LoadBalancer Service an address of the pool
(`loadBalancerAddresses`), and the speaker on one node answers ARP for it, so the host reaches the
Service on the network it already routes to. The objects are upstream's config/manifests/
metallb-native.yaml of the pinned version: the CRDs as upstream's text (templates/addons/metallb/),
the rest typed here, with images this toolchain builds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
from pulumi_command import remote
from pulumi_kubernetes.admissionregistration.v1 import (
    RuleWithOperationsArgs,
    ServiceReferenceArgs,
    ValidatingWebhookArgs,
    ValidatingWebhookConfiguration,
    WebhookClientConfigArgs,
)
from pulumi_kubernetes.apiextensions import CustomResource
from pulumi_kubernetes.apps.v1 import DaemonSet, DaemonSetSpecArgs, Deployment, DeploymentSpecArgs
from pulumi_kubernetes.core.v1 import (
    CapabilitiesArgs,
    ConfigMap,
    ConfigMapVolumeSourceArgs,
    ContainerArgs,
    ContainerPortArgs,
    EnvVarArgs,
    EnvVarSourceArgs,
    HTTPGetActionArgs,
    Namespace,
    ObjectFieldSelectorArgs,
    PodSecurityContextArgs,
    PodSpecArgs,
    PodTemplateSpecArgs,
    ProbeArgs,
    Secret,
    SecretVolumeSourceArgs,
    SecurityContextArgs,
    Service,
    ServiceAccount,
    ServicePortArgs,
    ServiceSpecArgs,
    TolerationArgs,
    VolumeArgs,
    VolumeMountArgs,
)
from pulumi_kubernetes.meta.v1 import LabelSelectorArgs, ObjectMetaArgs
from pulumi_kubernetes.rbac.v1 import (
    ClusterRole,
    ClusterRoleBinding,
    PolicyRuleArgs,
    Role,
    RoleBinding,
    RoleRefArgs,
    SubjectArgs,
)

from components.artifacts import render, ssh
from components.artifacts.render import TEMPLATES
from components.config.settings import NodeSpec
from components.config.tolerances import Probe

# The version the Go module proxy serves here (go.universe.tf/metallb, built by `make toolchain`).
VERSION = "v0.15.2"
CONTROLLER_IMAGE = f"quay.io/metallb/controller:{VERSION}"
SPEAKER_IMAGE = f"quay.io/metallb/speaker:{VERSION}"


def images() -> tuple[str, ...]:
    return (CONTROLLER_IMAGE, SPEAKER_IMAGE)


NAMESPACE = "metallb-system"
APP = {"app": "metallb"}
CONTROLLER_LABELS = {**APP, "component": "controller"}
SPEAKER_LABELS = {**APP, "component": "speaker"}
CRDS = TEMPLATES / "addons" / "metallb" / "crds.yaml"
POOL = "default"  # the IPAddressPool every LoadBalancer Service takes its address from
MONITORING_PORT = 7472
WEBHOOK_PORT = 9443
MEMBERLIST_PORT = 7946
WEBHOOK_SERVICE = "metallb-webhook-service"
WEBHOOK_CERT = "metallb-webhook-cert"  # filled and rotated by the controller; it must exist first
WEBHOOK_CONFIGURATION = "metallb-webhook-configuration"
MEMBERLIST = "memberlist"  # the speakers' shared key: the controller creates this Secret
EXCLUDE_L2 = "metallb-excludel2"
# Interfaces a speaker never answers ARP on (upstream's list): bridges, veths and tunnels of
# containers and CNIs; only the node's own NIC on the NAT network remains.
EXCLUDED_INTERFACES = (
    "^docker.*", "^cbr.*", "^dummy.*", "^virbr.*", "^lxcbr.*", "^veth.*", "^lo$",
    "^cali.*", "^tunl.*", "^flannel.*", "^kube-ipvs.*", "^cni.*", "^nodelocaldns.*",
)  # fmt: skip
CONTROL_PLANE_TAINTS = ("node-role.kubernetes.io/master", "node-role.kubernetes.io/control-plane")
# The admission checks upstream registers: (webhook, version, kind's plural, operations).
WEBHOOKS = (
    ("bgppeers", "v1beta2", "bgppeer", ("CREATE", "UPDATE")),
    ("bfdprofile", "v1beta1", "bfdprofile", ("CREATE", "DELETE")),
    ("bgpadvertisement", "v1beta1", "bgpadvertisement", ("CREATE", "UPDATE")),
    ("community", "v1beta1", "community", ("CREATE", "UPDATE")),
    ("ipaddresspool", "v1beta1", "ipaddresspool", ("CREATE", "UPDATE")),
    ("l2advertisement", "v1beta1", "l2advertisement", ("CREATE", "UPDATE")),
)
PLURALS = {"bgppeer": "bgppeers", "bfdprofile": "bfdprofiles", "bgpadvertisement": "bgpadvertisements",
           "community": "communities", "ipaddresspool": "ipaddresspools",
           "l2advertisement": "l2advertisements"}  # fmt: skip
READ = ("get", "list", "watch")
WRITE = ("create", "delete", "get", "list", "patch", "update", "watch")


def speaker_args(has_workers: bool) -> list[str]:
    """Upstream's; with no workers the control plane must announce too, though kubeadm labels it
    node.kubernetes.io/exclude-from-external-load-balancers (with workers it stays out, as upstream)."""
    args = [f"--port={MONITORING_PORT}", "--log-level=info"]
    return args if has_workers else [*args, "--ignore-exclude-lb"]


def excluded_interfaces() -> str:
    quoted = ", ".join(f'"{pattern}"' for pattern in EXCLUDED_INTERFACES)
    return f"announcedInterfacesToExclude: [{quoted}]\n"


def _rule(groups: str, resources: str, verbs: tuple[str, ...], names: str = "") -> PolicyRuleArgs:
    """One RBAC rule; groups, resources and names as space-separated words ("" is the core group)."""
    return PolicyRuleArgs(
        api_groups=groups.split() if groups else [""],
        resources=resources.split(),
        verbs=list(verbs),
        resource_names=names.split() or None,
    )


def controller_rules() -> list[PolicyRuleArgs]:
    """Role controller: its webhook certificate and the memberlist key, the configuration kinds."""
    return [
        _rule("", "secrets", WRITE),
        _rule("", "secrets", ("list",), MEMBERLIST),
        _rule("apps", "deployments", ("get",), "controller"),  # the memberlist Secret's owner
        _rule("metallb.io", "bgppeers", ("get", "list")),
        *[_rule("metallb.io", kind, READ) for kind in ("bfdprofiles", "ipaddresspools")],
        _rule("metallb.io", "ipaddresspools/status", ("update",)),
        *[_rule("metallb.io", kind, READ) for kind in ("bgpadvertisements", "l2advertisements", "communities")],
    ]


def speaker_rules() -> list[PolicyRuleArgs]:
    """Role pod-lister: the speakers find each other, read the key and the configuration kinds."""
    return [
        _rule("", "pods", ("list", "get")),
        *[_rule("", kind, READ) for kind in ("secrets", "configmaps")],
        *[_rule("metallb.io", kind, READ) for kind in
          ("bfdprofiles", "bgppeers", "l2advertisements", "bgpadvertisements", "ipaddresspools", "communities")],
        _rule("metallb.io", "servicebgpstatuses servicebgpstatuses/status", ("*",)),
    ]  # fmt: skip


def controller_cluster_rules() -> list[PolicyRuleArgs]:
    """ClusterRole metallb-system:controller: Services' addresses, and the caBundle it injects."""
    own = ("bfdprofile", "bgpadvertisement", "bgppeer", "ipaddresspool", "l2advertisement", "community")
    own_crds = " ".join(f"{PLURALS[kind]}.metallb.io" for kind in own)
    return [
        _rule("", "services namespaces", READ),
        _rule("", "nodes", ("list",)),
        _rule("", "services/status", ("update",)),
        _rule("", "events", ("create", "patch")),
        _rule("admissionregistration.k8s.io", "validatingwebhookconfigurations", WRITE, WEBHOOK_CONFIGURATION),
        _rule("admissionregistration.k8s.io", "validatingwebhookconfigurations", ("list", "watch")),
        _rule("apiextensions.k8s.io", "customresourcedefinitions", WRITE, own_crds),
        _rule("apiextensions.k8s.io", "customresourcedefinitions", ("list", "watch")),
    ]


def speaker_cluster_rules() -> list[PolicyRuleArgs]:
    """ClusterRole metallb-system:speaker: which Services to announce, and where their pods are."""
    return [
        _rule("metallb.io", "servicel2statuses servicel2statuses/status", ("*",)),
        _rule("", "services endpoints nodes namespaces", READ),
        _rule("discovery.k8s.io", "endpointslices", READ),
        _rule("", "events", ("create", "patch")),
    ]


def pool_manifest(address_range: str) -> dict[str, Any]:
    """The IPAddressPool every LoadBalancer Service takes its address from."""
    return {
        "apiVersion": "metallb.io/v1beta1",
        "kind": "IPAddressPool",
        "metadata": {"name": POOL, "namespace": NAMESPACE},
        "spec": {"addresses": [address_range]},
    }


@dataclass(frozen=True)
class MetalLBArgs:
    provider: k8s.Provider
    cni: pulumi.Resource  # the controller's webhook is reached over the pod network
    crds: pulumi.Resource  # its CRDs, applied and settled first (components/crds.py)
    address_range: str  # the pool, "first-last" (settings: loadBalancerAddresses)
    has_workers: bool
    access: ssh.Access  # the webhook gate runs kubectl on the control plane
    control_plane: NodeSpec
    liveness: Probe  # the controller's and speaker's (slowHost: patient)
    webhook_timeout_seconds: int  # how long the API server waits for the webhook's answer


class MetalLB(pulumi.ComponentResource):
    """MetalLB: its pool and announcement, then the webhook judging them, the controller awaited until
    that webhook serves, the speaker.

    Depend on it before registering a LoadBalancer Service that must get an address."""

    def __init__(self, name: str, args: MetalLBArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kube-on-air:metallb:MetalLB", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[args.cni])
        self.namespace = Namespace(
            f"{name}-ns",
            # The speaker uses the host's network and raw sockets.
            metadata=ObjectMetaArgs(
                name=NAMESPACE,
                labels={f"pod-security.kubernetes.io/{mode}": "privileged" for mode in ("enforce", "audit", "warn")},
            ),
            opts=child,
        )
        self.crds = args.crds
        inside = pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[self.namespace]))
        grants = self._grants(name, child, inside)
        self.webhook_cert = Secret(
            f"{name}-webhook-cert", metadata=ObjectMetaArgs(name=WEBHOOK_CERT, namespace=NAMESPACE), opts=inside
        )
        self.webhook_service = Service(
            f"{name}-webhook-service",
            metadata=ObjectMetaArgs(name=WEBHOOK_SERVICE, namespace=NAMESPACE),
            spec=ServiceSpecArgs(
                selector={"component": "controller"}, ports=[ServicePortArgs(port=443, target_port=WEBHOOK_PORT)]
            ),
            opts=inside,
        )
        # The pool and its announcement are stored before the webhook that judges them is registered:
        # every create through it is cut at kube-apiserver's 34 s, and under emulation the webhook's
        # answer took most of that (make e2e's first up failed the pool, then the advertisement).
        pool = pool_manifest(args.address_range)
        stored = pulumi.ResourceOptions.merge(inside, pulumi.ResourceOptions(depends_on=[self.crds]))
        self.pool = CustomResource(
            f"{name}-pool",
            api_version=pool["apiVersion"],
            kind=pool["kind"],
            metadata=ObjectMetaArgs(name=pool["metadata"]["name"], namespace=pool["metadata"]["namespace"]),
            spec=pool["spec"],
            opts=stored,
        )
        self.advertisement = CustomResource(
            f"{name}-l2",
            api_version="metallb.io/v1beta1",
            kind="L2Advertisement",
            metadata=ObjectMetaArgs(name=POOL, namespace=NAMESPACE),
            spec={"ipAddressPools": [POOL]},
            opts=pulumi.ResourceOptions.merge(stored, pulumi.ResourceOptions(depends_on=[self.pool])),
        )
        self.webhooks = ValidatingWebhookConfiguration(
            f"{name}-webhooks",
            metadata=ObjectMetaArgs(name=WEBHOOK_CONFIGURATION),
            webhooks=_webhooks(args.webhook_timeout_seconds),
            opts=pulumi.ResourceOptions.merge(
                child, pulumi.ResourceOptions(depends_on=[self.pool, self.advertisement])
            ),
        )
        self.controller = Deployment(
            f"{name}-controller",
            # Awaited: Ready only once its webhook serves, with the caBundle it injects itself.
            metadata=ObjectMetaArgs(name="controller", namespace=NAMESPACE, labels=CONTROLLER_LABELS),
            spec=DeploymentSpecArgs(
                revision_history_limit=3,
                selector=LabelSelectorArgs(match_labels=CONTROLLER_LABELS),
                template=PodTemplateSpecArgs(
                    metadata=ObjectMetaArgs(labels=CONTROLLER_LABELS), spec=_controller_pod(args.liveness)
                ),
            ),
            opts=pulumi.ResourceOptions.merge(
                inside,
                pulumi.ResourceOptions(depends_on=[self.crds, self.webhook_cert, self.webhooks, *grants]),
            ),
        )
        self.excluded = ConfigMap(
            f"{name}-excludel2",
            metadata=ObjectMetaArgs(name=EXCLUDE_L2, namespace=NAMESPACE),
            data={"excludel2.yaml": excluded_interfaces()},
            opts=inside,
        )
        self.speaker = DaemonSet(
            f"{name}-speaker",
            # Awaited: once `up` is done, some node answers for every address the pool hands out.
            metadata=ObjectMetaArgs(name="speaker", namespace=NAMESPACE, labels=SPEAKER_LABELS),
            spec=DaemonSetSpecArgs(
                selector=LabelSelectorArgs(match_labels=SPEAKER_LABELS),
                template=PodTemplateSpecArgs(
                    metadata=ObjectMetaArgs(labels=SPEAKER_LABELS), spec=_speaker_pod(args.has_workers, args.liveness)
                ),
            ),
            # After the controller: it creates the memberlist Secret the speaker mounts.
            opts=pulumi.ResourceOptions.merge(
                inside, pulumi.ResourceOptions(depends_on=[self.crds, self.excluded, self.controller, *grants])
            ),
        )
        # A Ready controller is not yet a webhook the API server reaches through its Service: `up` ends
        # once the webhook admits this very pool, so a user's own pools and a changed range are judged.
        self.webhook_ready = remote.Command(
            f"{name}-webhook-ready",
            connection=args.access.connection(args.control_plane),
            create=render.metallb_webhook_ready_script(pool),
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[self.crds, self.controller, self.webhook_service, self.webhooks, self.advertisement],
            ),
        )
        self.register_outputs({"pool": args.address_range})

    def _grants(
        self, name: str, child: pulumi.ResourceOptions, inside: pulumi.ResourceOptions
    ) -> list[pulumi.Resource]:
        grants: list[pulumi.Resource] = []
        for account, role, rules, cluster_rules in (
            ("controller", "controller", controller_rules(), controller_cluster_rules()),
            ("speaker", "pod-lister", speaker_rules(), speaker_cluster_rules()),
        ):
            subject = SubjectArgs(kind="ServiceAccount", name=account, namespace=NAMESPACE)
            meta = ObjectMetaArgs(name=account, namespace=NAMESPACE, labels=APP)
            grants.append(ServiceAccount(f"{name}-{account}-sa", metadata=meta, opts=inside))
            namespaced = Role(
                f"{name}-{role}-role",
                metadata=ObjectMetaArgs(name=role, namespace=NAMESPACE, labels=APP),
                rules=rules,
                opts=inside,
            )
            cluster_name = f"{NAMESPACE}:{account}"
            cluster = ClusterRole(
                f"{name}-{account}-cluster-role",
                metadata=ObjectMetaArgs(name=cluster_name, labels=APP),
                rules=cluster_rules,
                opts=child,
            )
            grants.append(
                RoleBinding(
                    f"{name}-{role}-binding",
                    metadata=ObjectMetaArgs(name=role, namespace=NAMESPACE, labels=APP),
                    role_ref=RoleRefArgs(api_group="rbac.authorization.k8s.io", kind="Role", name=role),
                    subjects=[subject],
                    opts=pulumi.ResourceOptions.merge(inside, pulumi.ResourceOptions(depends_on=[namespaced])),
                )
            )
            grants.append(
                ClusterRoleBinding(
                    f"{name}-{account}-cluster-binding",
                    metadata=ObjectMetaArgs(name=cluster_name, labels=APP),
                    role_ref=RoleRefArgs(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=cluster_name),
                    subjects=[subject],
                    opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[cluster])),
                )
            )
        return grants


def _webhooks(timeout_seconds: int) -> list[ValidatingWebhookArgs]:
    return [
        ValidatingWebhookArgs(
            name=f"{webhook}validationwebhook.metallb.io",
            admission_review_versions=["v1"],
            timeout_seconds=timeout_seconds,
            client_config=WebhookClientConfigArgs(
                service=ServiceReferenceArgs(
                    name=WEBHOOK_SERVICE, namespace=NAMESPACE, path=f"/validate-metallb-io-{version}-{kind}"
                )
            ),
            failure_policy="Fail",
            side_effects="None",
            rules=[
                RuleWithOperationsArgs(
                    api_groups=["metallb.io"],
                    api_versions=[version],
                    operations=list(operations),
                    resources=[PLURALS[kind]],
                )
            ],
        )
        for webhook, version, kind, operations in WEBHOOKS
    ]


def _metrics_probe(probe: Probe) -> ProbeArgs:
    """/metrics answers once the webhook serves (the controller starts both after its certificate)."""
    return ProbeArgs(
        http_get=HTTPGetActionArgs(path="/metrics", port="monitoring"),
        initial_delay_seconds=probe.initial_delay_seconds,
        period_seconds=probe.period_seconds,
        timeout_seconds=probe.timeout_seconds,
        success_threshold=1,
        failure_threshold=probe.failure_threshold,
    )


def _readiness(liveness: Probe) -> Probe:
    """Upstream's readiness timing, with the liveness probe's patience for one answer."""
    patience = liveness.timeout_seconds
    return Probe(initial_delay_seconds=10, period_seconds=10, timeout_seconds=patience, failure_threshold=3)


def _field(path: str) -> EnvVarSourceArgs:
    return EnvVarSourceArgs(field_ref=ObjectFieldSelectorArgs(field_path=path))


def _controller_pod(liveness: Probe) -> PodSpecArgs:
    return PodSpecArgs(
        service_account_name="controller",
        termination_grace_period_seconds=0,
        node_selector={"kubernetes.io/os": "linux"},
        security_context=PodSecurityContextArgs(run_as_user=65534, run_as_non_root=True, fs_group=65534),
        volumes=[VolumeArgs(name="cert", secret=SecretVolumeSourceArgs(secret_name=WEBHOOK_CERT, default_mode=0o644))],
        containers=[
            ContainerArgs(
                name="controller",
                image=CONTROLLER_IMAGE,
                args=[f"--port={MONITORING_PORT}", "--log-level=info", "--tls-min-version=VersionTLS12"],
                env=[
                    EnvVarArgs(name="METALLB_ML_SECRET_NAME", value=MEMBERLIST),
                    EnvVarArgs(name="METALLB_DEPLOYMENT", value="controller"),
                ],
                ports=[
                    ContainerPortArgs(name="monitoring", container_port=MONITORING_PORT),
                    ContainerPortArgs(name="webhook-server", container_port=WEBHOOK_PORT, protocol="TCP"),
                ],
                liveness_probe=_metrics_probe(liveness),
                readiness_probe=_metrics_probe(_readiness(liveness)),
                security_context=SecurityContextArgs(
                    allow_privilege_escalation=False,
                    capabilities=CapabilitiesArgs(drop=["all"]),
                    read_only_root_filesystem=True,
                ),
                volume_mounts=[
                    VolumeMountArgs(name="cert", mount_path="/tmp/k8s-webhook-server/serving-certs", read_only=True)
                ],
            )
        ],
    )


def _speaker_pod(has_workers: bool, liveness: Probe) -> PodSpecArgs:
    env = {
        "METALLB_NODE_NAME": _field("spec.nodeName"),
        "METALLB_POD_NAME": _field("metadata.name"),
        "METALLB_HOST": _field("status.hostIP"),
        "METALLB_ML_BIND_ADDR": _field("status.podIP"),
    }
    return PodSpecArgs(
        service_account_name="speaker",
        host_network=True,
        termination_grace_period_seconds=2,
        node_selector={"kubernetes.io/os": "linux"},
        tolerations=[TolerationArgs(key=t, operator="Exists", effect="NoSchedule") for t in CONTROL_PLANE_TAINTS],
        volumes=[
            VolumeArgs(name=MEMBERLIST, secret=SecretVolumeSourceArgs(secret_name=MEMBERLIST, default_mode=0o644)),
            VolumeArgs(name=EXCLUDE_L2, config_map=ConfigMapVolumeSourceArgs(name=EXCLUDE_L2, default_mode=0o400)),
        ],
        containers=[
            ContainerArgs(
                name="speaker",
                image=SPEAKER_IMAGE,
                args=speaker_args(has_workers),
                env=[
                    *[EnvVarArgs(name=key, value_from=source) for key, source in env.items()],
                    EnvVarArgs(name="METALLB_ML_LABELS", value="app=metallb,component=speaker"),
                    EnvVarArgs(name="METALLB_ML_SECRET_KEY_PATH", value="/etc/ml_secret_key"),
                ],
                ports=[
                    ContainerPortArgs(name="monitoring", container_port=MONITORING_PORT),
                    ContainerPortArgs(name="memberlist-tcp", container_port=MEMBERLIST_PORT),
                    ContainerPortArgs(name="memberlist-udp", container_port=MEMBERLIST_PORT, protocol="UDP"),
                ],
                liveness_probe=_metrics_probe(liveness),
                readiness_probe=_metrics_probe(_readiness(liveness)),
                security_context=SecurityContextArgs(
                    allow_privilege_escalation=False,
                    capabilities=CapabilitiesArgs(add=["NET_RAW"], drop=["ALL"]),
                    read_only_root_filesystem=True,
                ),
                volume_mounts=[
                    VolumeMountArgs(name=MEMBERLIST, mount_path="/etc/ml_secret_key", read_only=True),
                    VolumeMountArgs(name=EXCLUDE_L2, mount_path="/etc/metallb", read_only=True),
                ],
            )
        ],
    )
