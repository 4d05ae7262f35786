"""The whole cluster: network, storage, nodes, kubeadm, CNI and workloads, wired in order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
import pulumi_libvirt as libvirt
from pulumi_command import remote

from components import metallb
from components.artifacts import hostkeys, render, ssh
from components.artifacts.hostkeys import HostKey
from components.artifacts.identity import NodeIdentity
from components.cni import Cni, CniArgs
from components.config.settings import ClusterConfig, NodeSpec
from components.config.tolerances import Tolerances
from components.crds import Crds, CrdsArgs
from components.kubeadm import ControlPlane, ControlPlaneArgs, WorkerJoin, WorkerJoinArgs
from components.localpath import LocalPath, LocalPathArgs
from components.metallb import MetalLB, MetalLBArgs
from components.metricsserver import MetricsServer, MetricsServerArgs
from components.network import ClusterNetwork, ClusterNetworkArgs
from components.node import Node, NodeArgs
from components.preflight.facts import KeptStore
from components.servingcerts import ServingCerts, ServingCertsArgs
from components.storage import ImageStore, ImageStoreArgs
from components.timing import PhaseClock, PhaseClockArgs
from components.upgrade import Release, ReleaseArgs, Upgrade, UpgradeArgs
from components.workloads import Workloads, WorkloadsArgs, kuard_address

# The add-ons that bring CustomResourceDefinitions, and the file of them the cluster applies first.
CRDS_OF = {"metallb": metallb.CRDS}


@dataclass(frozen=True)
class ClusterArgs:
    config: ClusterConfig
    host_keys: Mapping[str, HostKey]
    identities: Mapping[str, NodeIdentity]  # node name -> what it is built from
    kept_store: KeptStore | None = None
    running: frozenset[str] = frozenset()  # nodes whose domains exist on the host (the preflight's facts)


def one_at_a_time(config: ClusterConfig, running: frozenset[str]) -> dict[str, str]:
    """Worker -> the worker whose return to service its domain waits for, among running workers.

    A new domain for every worker (a resize) then goes one worker at a time: the engine registers a
    worker's domain, and so deletes it after draining it, only once the one before is back Ready.
    Workers not running yet are made at once, as at the first `up`.
    """
    up = [w.name for w in config.workers if w.name in running]
    return dict(zip(up[1:], up[:-1], strict=True))


class Cluster(pulumi.ComponentResource):
    kubeconfig: pulumi.Output[str]

    def __init__(self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kube-on-air:cluster:Cluster", name, None, opts)
        config = args.config
        access = ssh.access(config, args.host_keys)
        self.libvirt = libvirt.Provider(
            f"{name}-libvirt", uri=config.libvirt_uri, opts=pulumi.ResourceOptions(parent=self)
        )
        on_host = pulumi.ResourceOptions(parent=self, providers=[self.libvirt])
        self.network = ClusterNetwork(f"{name}-network", ClusterNetworkArgs(config), on_host)
        self.store = ImageStore(f"{name}-images", ImageStoreArgs(config, args.kept_store), on_host)
        # Every node at once, after the network and the base image. Seeds are uploaded, never read
        # back (components/artifacts/seed.py), and the provider creates one pool's volumes one at a
        # time itself (v0.8.1 locks the pool): see docs/design.md for the code read and the runs.
        self.nodes: dict[str, Node] = {}
        self.releases: dict[str, Release] = {}
        after: list[pulumi.Resource] = [self.network.network, self.store.base_image]

        def node(spec: NodeSpec, domain_after: Sequence[pulumi.Resource] = ()) -> Node:
            node_args = NodeArgs(
                config=config,
                spec=spec,
                pool_name=self.store.pool.name,
                base_volume_id=self.store.base_image.id,
                network_id=self.network.network.id,
                access=access,
                machine=args.identities[spec.name],
                after=after,
                domain_after=domain_after,
            )
            self.nodes[spec.name] = Node(spec.name, node_args, on_host)
            release = ReleaseArgs(config, access, spec, self.nodes[spec.name])
            self.releases[spec.name] = Release(f"{spec.name}-release", release, pulumi.ResourceOptions(parent=self))
            return self.nodes[spec.name]

        cp = config.control_plane
        cp_node = node(cp)
        self.control_plane = ControlPlane(
            f"{name}-control-plane",
            ControlPlaneArgs(config=config, node=cp_node, access=access, release=self.releases[cp.name].staged),
            pulumi.ResourceOptions(parent=self),
        )
        self.joins: dict[str, WorkerJoin] = {}
        waits_for = one_at_a_time(config, args.running)
        for spec in config.workers:
            before = waits_for.get(spec.name)
            worker = node(spec, [self.joins[before].in_service] if before else [])
            self.joins[spec.name] = WorkerJoin(
                f"{spec.name}-kubeadm",
                WorkerJoinArgs(
                    config=config,
                    spec=spec,
                    node=worker,
                    control_plane=self.control_plane,
                    access=access,
                    release=self.releases[spec.name].staged,
                ),
                pulumi.ResourceOptions(parent=self),
            )
        self.kubeconfig = self.control_plane.kubeconfig
        joined: list[pulumi.Resource] = [join.join for join in self.joins.values()]
        # The Kubernetes provider fails every resource at once if the API server is down when it
        # starts; on a slow host it restarts a few times after init. Only init matters here: the
        # joins, the kubeconfig and this gate run side by side, and the Kubernetes layer starts
        # while workers still join (the CNI and most objects need only the API server).
        self.api_steady = remote.Command(
            f"{name}-api-steady",
            connection=access.connection(cp),
            create=render.api_steady_script(config),
            add_previous_output_in_env=False,
            # Again after the control plane boots in a new domain (a resize): its API server restarts.
            triggers=[self.control_plane.init.id, self.nodes[cp.name].ready.id],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.control_plane.init]),
        )
        self.upgrade = Upgrade(
            f"{name}-upgrade",
            UpgradeArgs(
                config,
                access,
                self.releases,
                self.api_steady,
                {w: [join.join, join.in_service] for w, join in self.joins.items()},
                waits_for,
            ),
            pulumi.ResourceOptions(parent=self),
        )
        self.serving_certs = ServingCerts(
            f"{name}-serving-certs",
            ServingCertsArgs(config, access, self.control_plane, self.joins, self.api_steady),
            pulumi.ResourceOptions(parent=self),
        )
        self.kubernetes = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=self.kubeconfig,
            enable_server_side_apply=True,
            kube_client_settings=client_settings(config.tolerances),
            # The cluster is the control plane's disk (etcd lives there). Without an identifier the
            # provider is replaced whenever its kubeconfig is not known in a preview, as after the
            # control plane's domain is made anew for a resize, and every Kubernetes object with it;
            # the kubeconfig fetched again is the same. With it, only a new disk replaces it.
            cluster_identifier=self.nodes[cp.name].disk.name,
            # A destroyed or unreachable cluster must not block `pulumi destroy`.
            delete_unreachable=True,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.api_steady]),
        )
        self.crds: Crds | None = None
        crd_files = [CRDS_OF[addon] for addon in config.addons if addon in CRDS_OF]
        if crd_files:
            crds = CrdsArgs(config, self.kubernetes, access, crd_files)
            self.crds = Crds(f"{name}-crds", crds, pulumi.ResourceOptions(parent=self))
        first = [self.crds.settled] if self.crds else []
        self.cni = Cni(f"{name}-cni", CniArgs(config, self.kubernetes, first), pulumi.ResourceOptions(parent=self))
        self.local_path: LocalPath | None = None
        if "local-path" in config.addons:
            self.local_path = LocalPath(
                f"{name}-local-path", LocalPathArgs(self.kubernetes, self.cni), pulumi.ResourceOptions(parent=self)
            )
        self.metrics_server: MetricsServer | None = None
        if "metrics-server" in config.addons:
            self.metrics_server = MetricsServer(
                f"{name}-metrics-server",
                MetricsServerArgs(self.kubernetes, self.cni, self.serving_certs),
                pulumi.ResourceOptions(parent=self),
            )
        self.metallb: MetalLB | None = None
        if "metallb" in config.addons:
            self.metallb = MetalLB(
                f"{name}-metallb",
                MetalLBArgs(
                    self.kubernetes,
                    self.cni,
                    self.crds.settled if self.crds else self.cni,
                    config.load_balancer_range,
                    has_workers=bool(config.workers),
                    access=access,
                    control_plane=cp,
                    liveness=config.tolerances.metallb_liveness,
                    webhook_timeout_seconds=config.tolerances.metallb_webhook_timeout_seconds,
                ),
                pulumi.ResourceOptions(parent=self),
            )
        self.workloads: Workloads | None = None
        if config.workloads:
            self.workloads = Workloads(
                f"{name}-workloads",
                WorkloadsArgs(
                    config,
                    self.kubernetes,
                    self.cni,
                    joined,
                    self.local_path,
                    self.metallb,
                    platform=[a for a in (self.local_path, self.metrics_server, self.metallb) if a is not None],
                ),
                pulumi.ResourceOptions(parent=self),
            )
        self.clock = PhaseClock(f"{name}-phases", PhaseClockArgs(self._phases()), pulumi.ResourceOptions(parent=self))
        self.register_outputs({"kubeconfig": self.kubeconfig, "api_endpoint": config.api_endpoint})

    def _phases(self) -> dict[str, list[pulumi.Resource]]:
        phases: dict[str, list[pulumi.Resource]] = {
            "vms-up": [node.domain for node in self.nodes.values()],
            "cloud-init-done": [node.ready for node in self.nodes.values()],
            "kubeadm-init": [self.control_plane.init],
            "joins": [join.join for join in self.joins.values()] or [self.control_plane.init],
            "api-steady": [self.api_steady],
            "cni-ready": [self.cni],
        }
        addons: list[pulumi.Resource] = [
            a for a in (self.local_path, self.metrics_server, self.metallb) if a is not None
        ]
        if addons:
            phases["addons-ready"] = addons
        if self.workloads is not None:
            phases["workloads-ready"] = [self.workloads]
        return phases


def client_settings(tolerances: Tolerances) -> k8s.KubeClientSettingsArgs | None:
    """The Kubernetes provider's request timeout on a slow host; None leaves the provider's own."""
    timeout = tolerances.kubernetes_client_timeout_seconds
    return None if timeout is None else k8s.KubeClientSettingsArgs(timeout=timeout)


def node_table(config: ClusterConfig) -> list[dict[str, str]]:
    return [
        {"name": n.name, "role": n.role, "ip": n.ip, "fqdn": config.fqdn(n), "domain": n.libvirt_name}
        for n in config.nodes
    ]


def export_outputs(config: ClusterConfig, cluster: Cluster) -> None:
    pulumi.export("kubeconfig", cluster.kubeconfig)
    pulumi.export("apiEndpoint", config.api_endpoint)
    pulumi.export("nodes", node_table(config))
    pulumi.export("sshCommands", {n.name: ssh.ssh_command(config, n) for n in config.nodes})
    pulumi.export("hostsSnippet", render.hosts_snippet(config))
    pulumi.export("knownHostsFile", hostkeys.known_hosts_path(config))
    pulumi.export("phaseSeconds", cluster.clock.seconds)
    pulumi.export("phaseStartedAt", cluster.clock.started_at)
    if cluster.workloads is not None and cluster.workloads.kuard_service is not None:
        pulumi.export("kuardUrl", f"http://{kuard_address(config.load_balancer_range)}/")
    if "metallb" in config.addons:
        pulumi.export("loadBalancerAddresses", config.load_balancer_range)
    pulumi.export("network", {"name": config.network_name, "bridge": config.bridge_name, "cidr": config.network_cidr})
