"""The seed's test workloads: kuard, dnstools and a connectivity check gating `pulumi up`, and a
stateful example whose data lives on volumes of the default StorageClass.

Only the connectivity check is awaited (its probe, with `connectivityTimeoutSeconds`); everything
else is applied and left to its controller, so a slow image pull of kuard or dnstools never holds
`pulumi up`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
from pulumi_kubernetes.apps.v1 import (
    Deployment,
    DeploymentSpecArgs,
    StatefulSet,
    StatefulSetPersistentVolumeClaimRetentionPolicyArgs,
    StatefulSetSpecArgs,
)
from pulumi_kubernetes.core.v1 import (
    AffinityArgs,
    ContainerArgs,
    ContainerPortArgs,
    ExecActionArgs,
    HostPathVolumeSourceArgs,
    HTTPGetActionArgs,
    Namespace,
    PersistentVolumeClaimArgs,
    PersistentVolumeClaimSpecArgs,
    PodAffinityTermArgs,
    PodAntiAffinityArgs,
    PodSpecArgs,
    PodTemplateSpecArgs,
    ProbeArgs,
    ResourceRequirementsArgs,
    Service,
    ServicePortArgs,
    ServiceSpecArgs,
    TolerationArgs,
    VolumeArgs,
    VolumeMountArgs,
    VolumeResourceRequirementsArgs,
)
from pulumi_kubernetes.meta.v1 import LabelSelectorArgs, ObjectMetaArgs

from components.config.settings import ClusterConfig
from components.config.tolerances import Tolerances

NAMESPACE = "kube-on-air"
KUARD_IMAGE = "gcr.io/kuar-demo/kuard-amd64:1"
# dig, nslookup, curl and ping on Debian, built by `make toolchain` (infoblox/dnstools, the seed's,
# has no source and only `:latest`). No registry serves it: it reaches nodes in a pre-baked image.
DNSTOOLS_IMAGE = "localhost/kube-on-air/dnstools:bookworm-1"
# The agnhost of the pinned Kubernetes tree (test/images/agnhost/VERSION at 1.34.2), so an offline
# node's image (make toolchain) and a registry pull run the same program.
AGNHOST_IMAGE = "registry.k8s.io/e2e-test-images/agnhost:2.56"
ECHO_PORT = 8080
# pulumi-kubernetes annotation: apply the object and do not wait for it to become ready (nor, for a
# Deployment, for its deletion). Without it a Deployment is awaited until Available, 10 min by default.
APPLY_ONLY = {"pulumi.com/skipAwait": "true"}
# The stateful example: each pod appends a line to its own volume when it starts, so a pod deleted
# and started again finds the lines of its earlier lives (what `make e2e` checks).
STATEFUL_REPLICAS = 2
STATEFUL_VOLUME = "64Mi"
STATEFUL_LOG = "/data/starts"
RECORD_START = f'echo "$(date -u +%FT%TZ) $HOSTNAME" >> {STATEFUL_LOG} && exec /agnhost pause'
# The label the Deployment controller puts on each revision's pods (and ReplicaSet).
REVISION_LABEL = "pod-template-hash"


# kubeadm's taint on the control plane: the probe tolerates it, so one probe always runs away
# from every echo pod (echo stays on the workers).
CONTROL_PLANE_TAINT = "node-role.kubernetes.io/control-plane"


def images(workloads: tuple[str, ...]) -> tuple[str, ...]:
    """The images the chosen workloads run."""
    chosen = {
        "kuard": KUARD_IMAGE,
        "dnstools": DNSTOOLS_IMAGE,
        "connectivity-check": AGNHOST_IMAGE,
        "stateful": AGNHOST_IMAGE,
    }
    return tuple(dict.fromkeys(chosen[w] for w in workloads if w in chosen))


@dataclass(frozen=True)
class WorkloadsArgs:
    config: ClusterConfig
    provider: k8s.Provider
    # Pods cannot start before the pod network exists; everything here waits for it.
    cni: pulumi.Resource
    # The workers' joins: the gate waits for them, so that its timeout counts pods, not joins.
    joined: Sequence[pulumi.Resource] = ()
    # The default StorageClass and its provisioner (the local-path add-on), for the stateful example.
    storage: pulumi.Resource | None = None
    # The pool and its announcement (the metallb add-on): kuard is then reachable from the host.
    load_balancer: pulumi.Resource | None = None
    # Every add-on, Ready: the workloads' pods start after theirs, so an emulated control plane never
    # serves both crowds at once (make e2e's first up lost a create to the API server's 34 s there).
    platform: Sequence[pulumi.Resource] = ()


def one_per_node(labels: dict[str, str]) -> AffinityArgs:
    """At most one pod of a revision per node; with one replica per worker, exactly one on each.

    Required anti-affinity, scoped to the revision by `matchLabelKeys`: a rolling update's surge pod
    only avoids pods of its own revision, so it can always be placed, and the revision still ends
    one per worker. Unlike a topology spread rule there is no skew over a global minimum, so a node
    the pods can never use (the tainted control plane, a cordoned or NotReady worker) changes nothing:
    a pod whose node is unusable waits rather than doubling up on another worker.
    """
    return AffinityArgs(
        pod_anti_affinity=PodAntiAffinityArgs(
            required_during_scheduling_ignored_during_execution=[
                PodAffinityTermArgs(
                    topology_key="kubernetes.io/hostname",
                    label_selector=LabelSelectorArgs(match_labels=labels),
                    match_label_keys=[REVISION_LABEL],
                )
            ]
        )
    )


def _deployment(
    name: str,
    resource_name: str,
    replicas: int,
    pod: PodSpecArgs,
    opts: pulumi.ResourceOptions,
    *,
    awaited: bool,
) -> Deployment:
    labels = {"app": name}
    return Deployment(
        resource_name,
        metadata=ObjectMetaArgs(
            name=name, namespace=NAMESPACE, labels=labels, annotations=None if awaited else APPLY_ONLY
        ),
        spec=DeploymentSpecArgs(
            replicas=replicas,
            selector=LabelSelectorArgs(match_labels=labels),
            template=PodTemplateSpecArgs(metadata=ObjectMetaArgs(labels=labels), spec=pod),
        ),
        opts=opts,
    )


class Workloads(pulumi.ComponentResource):
    """Each workload is switched on by name in the `workloads` config list."""

    def __init__(self, name: str, args: WorkloadsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kube-on-air:workloads:Workloads", name, None, opts)
        config = args.config
        self.namespace = Namespace(
            f"{name}-ns",
            metadata=ObjectMetaArgs(name=NAMESPACE),
            opts=pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[args.cni, *args.platform]),
        )
        child = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[self.namespace])
        # One replica per worker; with no workers the control plane is untainted and takes one.
        per_node = max(1, len(config.workers))
        # The probe also runs on the control plane, where no echo pod runs: at least one probe's
        # requests cross nodes whatever the worker count (with one worker, the seed's point).
        every_node = len(config.nodes)
        self.kuard_service: Service | None = None
        if "kuard" in config.workloads:
            self.kuard = _kuard(name, child)
            if args.load_balancer is not None:
                addressed = pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[args.load_balancer]))
                self.kuard_service = _kuard_service(name, kuard_address(config.load_balancer_range), addressed)
        if "dnstools" in config.workloads:
            self.dnstools = _dnstools(name, per_node, child)
        if "connectivity-check" in config.workloads:
            gate = pulumi.ResourceOptions.merge(
                child,
                pulumi.ResourceOptions.merge(
                    _gate_timeouts(config.connectivity_timeout_seconds),
                    pulumi.ResourceOptions(depends_on=list(args.joined)),
                ),
            )
            self.echo, self.echo_service, self.probe = _connectivity_check(
                name, per_node, every_node, config.tolerances, child, gate
            )
        if "stateful" in config.workloads and args.storage is not None:
            claims = pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[args.storage]))
            self.stateful_service, self.stateful = _stateful(name, claims)
        self.register_outputs({"namespace": NAMESPACE, "workloads": list(config.workloads)})


def _gate_timeouts(seconds: int) -> pulumi.ResourceOptions:
    """How long the provider waits for the gating Deployment to become Available (create and update)."""
    return pulumi.ResourceOptions(custom_timeouts=pulumi.CustomTimeouts(create=f"{seconds}s", update=f"{seconds}s"))


def _kuard(name: str, opts: pulumi.ResourceOptions) -> Deployment:
    """The seed's kuard Pod, under a Deployment so a drain (or a lost node) does not end it."""
    http = HTTPGetActionArgs(port=ECHO_PORT)
    return _deployment(
        "kuard",
        f"{name}-kuard",
        1,
        PodSpecArgs(
            containers=[
                ContainerArgs(
                    name="kuard",
                    image=KUARD_IMAGE,
                    ports=[ContainerPortArgs(name="http", container_port=ECHO_PORT, protocol="TCP")],
                    volume_mounts=[VolumeMountArgs(name="kuard-data", mount_path="/data")],
                    resources=ResourceRequirementsArgs(
                        requests={"cpu": "50m", "memory": "64Mi"}, limits={"cpu": "100m", "memory": "128Mi"}
                    ),
                    liveness_probe=ProbeArgs(
                        http_get=HTTPGetActionArgs(path="/healthy", port=http.port),
                        initial_delay_seconds=5,
                        timeout_seconds=1,
                        period_seconds=10,
                        failure_threshold=3,
                    ),
                    readiness_probe=ProbeArgs(
                        http_get=HTTPGetActionArgs(path="/ready", port=http.port),
                        initial_delay_seconds=30,
                        timeout_seconds=1,
                        period_seconds=10,
                        failure_threshold=3,
                    ),
                )
            ],
            volumes=[
                VolumeArgs(
                    name="kuard-data",
                    host_path=HostPathVolumeSourceArgs(path="/var/lib/kuard", type="DirectoryOrCreate"),
                )
            ],
        ),
        opts,
        awaited=False,
    )


# MetalLB's annotation for the addresses a Service asks for (spec.loadBalancerIP is deprecated).
LOAD_BALANCER_IPS = "metallb.io/loadBalancerIPs"


def _kuard_service(name: str, address: str, opts: pulumi.ResourceOptions) -> Service:
    """kuard on port 80 of the pool's first address: asked for by name, so `up` knows the URL without
    waiting for MetalLB (applied, not awaited, like the other workloads)."""
    return Service(
        f"{name}-kuard-service",
        metadata=ObjectMetaArgs(
            name="kuard",
            namespace=NAMESPACE,
            labels={"app": "kuard"},
            annotations={**APPLY_ONLY, LOAD_BALANCER_IPS: address},
        ),
        spec=ServiceSpecArgs(
            type="LoadBalancer",
            selector={"app": "kuard"},
            ports=[ServicePortArgs(name="http", port=80, target_port="http", protocol="TCP")],
        ),
        opts=opts,
    )


def kuard_address(load_balancer_range: str) -> str:
    """The address kuard's Service asks for: the first of the pool ("first-last")."""
    return load_balancer_range.split("-", 1)[0]


def _stateful(name: str, opts: pulumi.ResourceOptions) -> tuple[Service, StatefulSet]:
    """A StatefulSet with a volume claim per replica, of the default StorageClass; applied, not awaited."""
    labels = {"app": "stateful"}
    service = Service(
        f"{name}-stateful-svc",
        metadata=ObjectMetaArgs(name="stateful", namespace=NAMESPACE, labels=labels),
        spec=ServiceSpecArgs(cluster_ip="None", selector=labels, ports=[ServicePortArgs(name="none", port=80)]),
        opts=opts,
    )
    claim = PersistentVolumeClaimArgs(
        metadata=ObjectMetaArgs(name="data"),
        spec=PersistentVolumeClaimSpecArgs(
            access_modes=["ReadWriteOnce"],
            resources=VolumeResourceRequirementsArgs(requests={"storage": STATEFUL_VOLUME}),
        ),
    )
    pod = PodSpecArgs(
        containers=[
            ContainerArgs(
                name="stateful",
                image=AGNHOST_IMAGE,
                command=["/bin/sh", "-c", RECORD_START],
                volume_mounts=[VolumeMountArgs(name="data", mount_path="/data")],
            )
        ],
    )
    stateful = StatefulSet(
        f"{name}-stateful",
        metadata=ObjectMetaArgs(name="stateful", namespace=NAMESPACE, labels=labels, annotations=APPLY_ONLY),
        spec=StatefulSetSpecArgs(
            service_name="stateful",
            replicas=STATEFUL_REPLICAS,
            selector=LabelSelectorArgs(match_labels=labels),
            template=PodTemplateSpecArgs(metadata=ObjectMetaArgs(labels=labels), spec=pod),
            volume_claim_templates=[claim],
            # Switched off, the example takes its volumes (and their directories on the nodes) with it.
            persistent_volume_claim_retention_policy=StatefulSetPersistentVolumeClaimRetentionPolicyArgs(
                when_deleted="Delete", when_scaled="Retain"
            ),
        ),
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[service])),
    )
    return service, stateful


def _dnstools(name: str, replicas: int, opts: pulumi.ResourceOptions) -> Deployment:
    pod = PodSpecArgs(
        # An interactive shell that stays up, as the seed's: `kubectl attach -it deploy/dnstools`.
        containers=[ContainerArgs(name="dnstools", image=DNSTOOLS_IMAGE, command=["/bin/bash"], stdin=True, tty=True)],
        affinity=one_per_node({"app": "dnstools"}),
    )
    return _deployment("dnstools", f"{name}-dnstools", replicas, pod, opts, awaited=False)


def _connectivity_check(
    name: str,
    echo_replicas: int,
    probe_replicas: int,
    patience: Tolerances,
    opts: pulumi.ResourceOptions,
    gate: pulumi.ResourceOptions,
) -> tuple[Deployment, Service, Deployment]:
    """echo behind a Service, and a probe Ready only while it reaches echo through it.

    The probe is the gate: `pulumi up` waits for it, up to the configured timeout. echo and the
    Service are not awaited on their own, since the probe cannot become Ready before both work.
    echo runs one per worker; the probe one per node, the control plane included, so with any
    number of workers one probe reaches echo only across nodes.
    """
    echo_pod = PodSpecArgs(
        containers=[
            ContainerArgs(
                name="echo",
                image=AGNHOST_IMAGE,
                args=["netexec", f"--http-port={ECHO_PORT}"],
                ports=[ContainerPortArgs(name="http", container_port=ECHO_PORT)],
                readiness_probe=ProbeArgs(http_get=HTTPGetActionArgs(path="/healthz", port=ECHO_PORT)),
            )
        ],
        affinity=one_per_node({"app": "echo"}),
    )
    echo = _deployment("echo", f"{name}-echo", echo_replicas, echo_pod, opts, awaited=False)
    service = Service(
        f"{name}-echo-svc",
        metadata=ObjectMetaArgs(name="echo", namespace=NAMESPACE, labels={"app": "echo"}, annotations=APPLY_ONLY),
        spec=ServiceSpecArgs(
            selector={"app": "echo"}, ports=[ServicePortArgs(name="http", port=ECHO_PORT, target_port=ECHO_PORT)]
        ),
        opts=opts,
    )
    # Ready only while it reaches echo through the Service's DNS name: pod network, DNS and services.
    target = f"echo.{NAMESPACE}.svc.cluster.local:{ECHO_PORT}"
    probe_pod = PodSpecArgs(
        containers=[
            ContainerArgs(
                name="probe",
                image=AGNHOST_IMAGE,
                args=["pause"],
                readiness_probe=ProbeArgs(
                    exec_=ExecActionArgs(
                        command=["/agnhost", "connect", target, f"--timeout={patience.connect_timeout}"]
                    ),
                    period_seconds=patience.connectivity_probe.period_seconds,
                    timeout_seconds=patience.connectivity_probe.timeout_seconds,
                ),
            )
        ],
        affinity=one_per_node({"app": "probe"}),
        tolerations=[TolerationArgs(key=CONTROL_PLANE_TAINT, operator="Exists", effect="NoSchedule")],
    )
    probe = _deployment(
        "probe",
        f"{name}-probe",
        probe_replicas,
        probe_pod,
        pulumi.ResourceOptions.merge(gate, pulumi.ResourceOptions(depends_on=[service])),
        awaited=True,
    )
    return echo, service, probe
