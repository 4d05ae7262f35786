"""Kubernetes releases on the nodes: staged before a node joins, then upgraded in kubeadm's order.

A new `kubernetesVersion` is an upgrade of the running cluster, never a new one (docs/operations.md):
1. `Release`: every node gets the release first (binaries beside the running ones, images imported
   into containerd), so that `kubeadm upgrade apply`, which rolls kube-proxy's DaemonSet and CoreDNS
   out to every node, never meets a node without their images. A node that has not joined yet gets
   the binaries in place at once: a worker added after an upgrade joins at the new version.
2. `Upgrade`: the control plane (`kubeadm upgrade apply`, then its kubelet), then each worker in
   turn (drained, `kubeadm upgrade node`, its kubelet, back in service and at the new version before
   the next), then the API gate once more: the API server restarted and the moved pods keep an
   emulated one busy, and the next `up`'s Kubernetes provider loads its OpenAPI document first.
   The scripts carry the version, so a new one is an update of these steps in the engine's plan
   (`pulumi preview` shows them), and each is a no-op on a node already there.

Which versions an upgrade accepts (forward, one minor at a time, from a release built on this host)
is judged by the preflight before anything is registered (components/preflight/checks.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
from pulumi_command import local, remote

from components.artifacts import render, ssh
from components.config.settings import ClusterConfig, NodeSpec
from components.node import Node


@dataclass(frozen=True)
class ReleaseArgs:
    config: ClusterConfig
    access: ssh.Access
    spec: NodeSpec
    node: Node


class Release(pulumi.ComponentResource):
    """The configured release on one node, streamed from the host when the node lacks it."""

    def __init__(self, name: str, args: ReleaseArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kube-on-air:upgrade:Release", name, None, opts)
        self.staged = local.Command(
            f"{name}-staged",
            create=render.stage_release_script(args.config, args.spec, args.access.host_keys),
            interpreter=["/bin/bash", "-c"],
            add_previous_output_in_env=False,
            # A new machine on a new disk holds only what its image carries.
            triggers=[args.node.disk.id],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[args.node.ready]),
        )
        self.register_outputs({"staged": self.staged.id})


@dataclass(frozen=True)
class UpgradeArgs:
    config: ClusterConfig
    access: ssh.Access
    releases: Mapping[str, Release]  # node name -> its release
    # The control plane's API gate, and each worker's join and return to service.
    api_steady: pulumi.Resource
    workers: Mapping[str, Sequence[pulumi.Resource]]
    # Worker -> the running worker whose upgrade it waits for (cluster.one_at_a_time). A worker not
    # running yet joins at the configured release, so its upgrade is a no-op that needs no turn.
    turns: Mapping[str, str]


class Upgrade(pulumi.ComponentResource):
    """The control plane, then one worker at a time, brought to the configured release."""

    def __init__(self, name: str, args: UpgradeArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kube-on-air:upgrade:Upgrade", name, None, opts)
        config = args.config
        cp = config.control_plane
        self.control_plane = remote.Command(
            f"{name}-{cp.name}",
            connection=args.access.connection(cp),
            create=render.upgrade_control_plane_script(config),
            stdin=render.upgrade_config(config),
            add_previous_output_in_env=False,
            # Every node holds the release's images before kube-proxy and CoreDNS roll out.
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[args.api_steady, *(r.staged for r in args.releases.values())]
            ),
        )
        self.workers: dict[str, local.Command] = {}
        for spec in config.workers:
            before = args.turns.get(spec.name)
            previous = [self.workers[before]] if before else []
            self.workers[spec.name] = local.Command(
                f"{name}-{spec.name}",
                create=render.upgrade_worker_script(config, spec, args.access.host_keys),
                interpreter=["/bin/bash", "-c"],
                add_previous_output_in_env=False,
                opts=pulumi.ResourceOptions(
                    parent=self, depends_on=[*previous, self.control_plane, *args.workers[spec.name]]
                ),
            )
        self.settled = remote.Command(
            f"{name}-settled",
            connection=args.access.connection(cp),
            # Made with the cluster, nothing was upgraded: the gate's watch and its OpenAPI fetches
            # would only load an API server busy with the first pods (make e2e's first up: 453 s).
            create=render.upgrade_settled_new_script(config),
            update=render.api_steady_script(config, f"after the upgrade to v{config.kubernetes_version}"),
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.control_plane, *self.workers.values()]),
        )
        self.register_outputs({"controlPlane": self.control_plane.id, "settled": self.settled.id})
