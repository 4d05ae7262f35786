"""kube-on-air: one `pulumi up` turns this libvirt host into a kubeadm cluster."""

import pulumi

from components.artifacts import hostkeys, identity
from components.cluster import Cluster, ClusterArgs, export_outputs
from components.config.settings import ConfigError, load_from_pulumi
from components.preflight import checks, facts

try:
    config = load_from_pulumi()
    # Host keys first: they are part of each node's seed, which preflight compares for the control plane.
    host_keys = hostkeys.ensure_host_keys(config)
    if checks.should_run(config):
        cp = config.control_plane
        checks.run_preflight(config, control_plane=identity.node_identity(config, cp, host_keys[cp.name]))
except (ConfigError, checks.PreflightError) as err:
    # A user mistake or an unfit host gets the message, not a traceback, and nothing is registered.
    raise pulumi.RunError(str(err)) from None

cluster = Cluster("kube-on-air", ClusterArgs(config, host_keys, facts.kept_store(config)))
export_outputs(config, cluster)
