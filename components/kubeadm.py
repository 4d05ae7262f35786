"""kubeadm over SSH: initialise the control plane, fetch the admin kubeconfig, join each worker."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from pulumi_command import local, remote

from components.artifacts import access, render, ssh
from components.config.settings import ClusterConfig, NodeSpec
from components.node import Node

# Commands that print or handle secrets: never logged, outputs stored encrypted.
_SECRET_OUTPUTS = ["stdout", "stderr"]


@dataclass(frozen=True)
class ControlPlaneArgs:
    config: ClusterConfig
    node: Node  # the control plane's machine
    access: ssh.Access
    release: pulumi.Resource  # the configured Kubernetes release on it (components/upgrade.py)


class ControlPlane(pulumi.ComponentResource):
    """`kubeadm init` once, then the admin kubeconfig as a secret."""

    kubeconfig: pulumi.Output[str]

    def __init__(self, name: str, args: ControlPlaneArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kube-on-air:kubeadm:ControlPlane", name, None, opts)
        config = args.config
        conn = args.access.connection(config.control_plane)
        self.init = remote.Command(
            f"{name}-init",
            connection=conn,
            create=render.kubeadm_init_script(config),
            stdin=render.kubeadm_config(config),
            add_previous_output_in_env=False,
            # Once per disk, where etcd and the mark live: a new domain on it (a resize) is a reboot,
            # and init run again would only replace the kubeconfig and leave it unknown to a preview.
            triggers=[args.node.disk.id],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[args.node.ready, args.release]),
        )
        self.fetch_kubeconfig = self._secret_command(f"{name}-kubeconfig", conn, render.fetch_kubeconfig_script(config))
        # Not admin.conf itself: its client certificate expires after a year (see components/artifacts/access.py).
        self.kubeconfig = pulumi.Output.secret(self.fetch_kubeconfig.stdout.apply(access.provider_kubeconfig))
        self.register_outputs({"kubeconfig": self.kubeconfig})

    def _secret_command(self, name: str, conn: remote.ConnectionArgs, script: str) -> remote.Command:
        """A command on the control plane that prints secrets: run after init, never logged."""
        return remote.Command(
            name,
            connection=conn,
            create=script,
            logging=remote.Logging.NONE,
            add_previous_output_in_env=False,
            triggers=[self.init.id],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.init], additional_secret_outputs=_SECRET_OUTPUTS),
        )


@dataclass(frozen=True)
class WorkerJoinArgs:
    config: ClusterConfig
    spec: NodeSpec
    node: Node
    control_plane: ControlPlane
    access: ssh.Access
    release: pulumi.Resource  # the configured Kubernetes release on it: it joins at that version


class WorkerJoin(pulumi.ComponentResource):
    """`kubeadm join` for one worker; on removal, drain + delete its Node and reset it first."""

    def __init__(self, name: str, args: WorkerJoinArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kube-on-air:kubeadm:WorkerJoin", name, None, opts)
        config, spec = args.config, args.spec
        # Runs on the Pulumi host: mints a short-lived token on the control plane and hands it to the
        # worker's `kubeadm join` on stdin, each time it runs, so a retried or late join never holds a
        # dead token (pulumi-command has no Read: a token minted earlier would never be refreshed).
        self.join = local.Command(
            f"{name}-join",
            create=render.join_worker_script(config, spec, args.access.host_keys),
            interpreter=["/bin/bash", "-c"],
            logging=local.Logging.NONE,
            add_previous_output_in_env=False,
            # A rebuilt VM (new domain) is a fresh machine that must join again.
            triggers=[args.node.domain.id],
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[args.node.ready, args.control_plane.init, args.release],
                additional_secret_outputs=_SECRET_OUTPUTS,
            ),
        )
        # Runs on the Pulumi host at delete time only. Deleted before `join` and before the VM, because
        # it depends on both, so a worker leaves the cluster cleanly before its domain goes.
        self.leave = local.Command(
            f"{name}-leave",
            delete=render.remove_worker_script(config, spec, args.access.host_keys),
            interpreter=["/bin/bash", "-c"],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.join, args.node.shutdown]),
        )
        # A new domain on the same disk (a resize) is a reboot: its pods move to the other workers
        # first, one worker at a time, and it takes pods again once Ready. `triggers` make the
        # engine delete this (drain) before the domain and create it (uncordon) after; it is
        # deleted before the clean shutdown, which it depends on.
        self.in_service = local.Command(
            f"{name}-in-service",
            create=render.return_to_service_script(config, spec, args.access.host_keys),
            delete=render.take_out_of_service_script(config, spec, args.access.host_keys),
            interpreter=["/bin/bash", "-c"],
            add_previous_output_in_env=False,
            triggers=[args.node.domain.id],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.join, args.node.shutdown]),
        )
        self.register_outputs({"joined": self.join.id})
