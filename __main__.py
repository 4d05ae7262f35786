"""kube-on-air: one `pulumi up` turns this libvirt host into a kubeadm cluster."""

import pulumi

from components import host_facts, hostkeys, identity, preflight
from components.cluster import Cluster, ClusterArgs, export_outputs
from components.config import ConfigError, load_from_pulumi

try:
    config = load_from_pulumi()
    # Host keys first: they are part of each node's seed, which preflight compares for the control plane.
    host_keys = hostkeys.ensure_host_keys(config)
    if preflight.should_run(config):
        cp = config.control_plane
        preflight.run_preflight(config, control_plane=identity.node_identity(config, cp, host_keys[cp.name]))
except (ConfigError, preflight.PreflightError) as err:
    # A user mistake or an unfit host gets the message, not a traceback, and nothing is registered.
    raise pulumi.RunError(str(err)) from None

cluster = Cluster("kube-on-air", ClusterArgs(config, host_keys, host_facts.kept_store(config)))
export_outputs(config, cluster)
