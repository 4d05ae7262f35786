"""kube-on-air: one `pulumi up` turns this libvirt host into a kubeadm cluster."""

import pulumi

from components.cluster import Cluster, ClusterArgs, export_outputs
from components.config import ConfigError, load_from_pulumi

try:
    config = load_from_pulumi()
except ConfigError as err:
    # A user mistake gets the message, not a traceback, and nothing is registered.
    raise pulumi.RunError(str(err)) from None

cluster = Cluster("kube-on-air", ClusterArgs(config))
export_outputs(config, cluster)
