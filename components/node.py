"""One cluster node: its disk, its cloud-init seed, its VM, and the wait until it is fit for kubeadm."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_libvirt as libvirt
from pulumi_command import local, remote

from components.artifacts import identity, render, seed, ssh
from components.artifacts.identity import NodeIdentity
from components.config.settings import ClusterConfig, NodeSpec

GIB = 1024**3


@dataclass(frozen=True)
class NodeArgs:
    config: ClusterConfig
    spec: NodeSpec
    pool_name: pulumi.Input[str]
    base_volume_id: pulumi.Input[str]
    network_id: pulumi.Input[str]
    access: ssh.Access
    machine: NodeIdentity  # what it is built from (components/artifacts/identity.py)
    # What this node's storage and VM need first: the network and the base image.
    after: Sequence[pulumi.Resource] = ()
    # What its domain waits for besides its disks: another worker back in service (cluster.py).
    domain_after: Sequence[pulumi.Resource] = ()


class Node(pulumi.ComponentResource):
    """A libvirt domain on a copy-on-write overlay of the base image, seeded by cloud-init.

    Every libvirt object here has a fixed name, so each is deleted before its replacement is made:
    a replacement made first (the engine's default, e.g. on `up --replace`) took the same volume
    path, and deleting the original then removed the running worker's disk.
    """

    ready: remote.Command
    shutdown: local.Command

    def __init__(self, name: str, args: NodeArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kube-on-air:node:Node", name, None, opts)
        config, spec = args.config, args.spec
        host_key = args.access.host_keys[spec.name]
        machine = args.machine
        generation = machine.generation
        # The seed first (see components/artifacts/seed.py): a volume uploaded from an ISO built here, never read back.
        seed_name = identity.seed_volume_name(spec, generation)
        seed_iso = seed.write_iso(
            seed.directory(config),
            seed_name,
            {
                "user-data": render.user_data(config, spec, host_key),
                "meta-data": render.meta_data(spec, identity.instance_id(config, spec, generation)),
                "network-config": render.network_config(config, spec),
            },
        )
        self.seed = libvirt.Volume(
            f"{name}-seed",
            name=seed_name,
            pool=args.pool_name,
            source=str(seed_iso),
            # What libvirt's dir pool reads back for an ISO 9660 file (it probes the upload): given "raw",
            # the state said "iso" and the next `up` replaced every seed, VM and everything on them.
            # The domain attaches it as raw either way (provider v0.8.1's default disk driver).
            format="iso",
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.after), delete_before_replace=True),
        )
        # The generation in the name: a new seed, image or size makes a new disk, hence a new domain.
        self.disk = libvirt.Volume(
            f"{name}-disk",
            name=identity.disk_volume_name(spec, generation),
            pool=args.pool_name,
            base_volume_id=args.base_volume_id,
            format="qcow2",
            size=config.disk_gib * GIB,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.seed], delete_before_replace=True),
        )
        self.domain = libvirt.Domain(
            f"{name}-vm",
            name=spec.libvirt_name,
            # Read back by preflight, which refuses to rebuild a running control plane.
            description=machine.description,
            type=config.domain_type,
            # i440fx, as the stacks made before have: a new machine type would replace every domain.
            machine="pc",
            vcpu=spec.vcpu,
            memory=spec.memory_mib,
            # host-passthrough needs hardware virtualisation; under emulation QEMU's default CPU applies.
            cpu=libvirt.DomainCpuArgs(mode="host-passthrough") if config.domain_type == "kvm" else None,
            # The seed is a second virtio disk; NoCloud finds it by its label on any block device.
            disks=[libvirt.DomainDiskArgs(volume_id=self.disk.id), libvirt.DomainDiskArgs(volume_id=self.seed.id)],
            network_interfaces=[
                # The address is static, from the seed's network-config; no `addresses` (nor the
                # `hostname` that only labels them): provider v0.8.1 reads them back from DHCP leases,
                # which a static guest never takes, so the state kept none and every later `up` saw
                # them as an update. Names resolve through the network's DNS host entries.
                libvirt.DomainNetworkInterfaceArgs(
                    network_id=args.network_id,
                    # The provider reads MACs back upper-case (v0.8.1 resourceLibvirtDomainRead:
                    # strings.ToUpper); a lower-case input was an update on every `up`.
                    mac=spec.mac.upper(),
                    # Fresh cloud images run no guest agent and may never ask DHCP: wait over SSH instead.
                    wait_for_lease=False,
                )
            ],
            consoles=[libvirt.DomainConsoleArgs(type="pty", target_port="0", target_type="serial")],
            # Without a graphics block the provider adds SPICE, which EL9's QEMU lacks; libvirt rejects
            # type 'none'. VNC on the loopback address only: `virsh vncdisplay` + an SSH tunnel to look.
            graphics=libvirt.DomainGraphicsArgs(
                type="vnc", listen_type="address", listen_address="127.0.0.1", autoport=True
            ),
            autostart=True,
            running=True,
            qemu_agent=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.domain_after), delete_before_replace=True),
        )
        self.ready = remote.Command(
            f"{name}-ready",
            connection=args.access.connection(spec),
            create=render.wait_ready_script(config, spec),
            # sshd refuses the previous output as environment (AcceptEnv) and warns on every update.
            add_previous_output_in_env=False,
            # A replaced VM is a new machine: wait for it again.
            triggers=[self.domain.id],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.domain]),
        )
        # Deleted before the domain (it depends on it through `triggers`), so the guest stops cleanly
        # where the provider would power it off: a resize is a reboot on the same disk, not a power cut.
        self.shutdown = local.Command(
            f"{name}-shutdown",
            delete=render.shut_down_script(config, spec),
            interpreter=["/bin/bash", "-c"],
            triggers=[self.domain.id],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.ready]),
        )
        self.register_outputs({"domain_id": self.domain.id, "ip": spec.ip, "ready": self.ready.stdout})
