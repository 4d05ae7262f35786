"""kube-on-air: one `pulumi up` turns this libvirt host into a kubeadm cluster."""

import pulumi

from components.artifacts import hostkeys, identity
from components.cluster import Cluster, ClusterArgs, export_outputs
from components.config.settings import ConfigError, load_from_pulumi
from components.preflight import checks, facts

try:
    config = load_from_pulumi()
    # Host keys first: they are part of each node's identity, which preflight compares for the control plane.
    host_keys = hostkeys.ensure_host_keys(config)
    deployed: dict[str, dict[str, str]] = {}
    if checks.should_run(config):
        host = facts.gather_host_facts(config)
        # What the running nodes were built from: a node made by an older kube-on-air keeps its identity.
        deployed = identity.deployed_records(d.description for d in host.stack_domains or ())
    identities = {
        node.name: identity.node_identity(
            config, node, host_keys[node.name], deployed.get(f"{config.stack}/{node.name}")
        )
        for node in config.nodes
    }
    if checks.should_run(config):
        checks.run_preflight(config, host, control_plane=identities[config.control_plane.name])
except (ConfigError, checks.PreflightError) as err:
    # A user mistake or an unfit host gets the message, not a traceback, and nothing is registered.
    raise pulumi.RunError(str(err)) from None

running = frozenset(owner.split("/", 1)[1] for owner in deployed if owner.startswith(f"{config.stack}/"))
cluster = Cluster("kube-on-air", ClusterArgs(config, host_keys, identities, facts.kept_store(config), running))
export_outputs(config, cluster)
