"""How patient the cluster is: timeouts and probe tolerances for a real host and for an emulated one.

Under software emulation (`domainType: qemu`) every node runs several times slower than on KVM, and
on a small host its vCPUs share few cores. Measured on a 2-core host with a 2-vCPU control plane and
one worker: `kubeadm init` 106-150 s, etcd requests timing out ("etcdserver: request timed out"), the
API server and controller manager restarted by their liveness probes, kube-router restarted by its
own ("heartbeat missed"), container starts past the kubelet's 2-minute runtime deadline, and the
kube-router DaemonSet past pulumi-kubernetes' 10-minute await. The upstream defaults are right for
KVM; `slowHost` (default: on exactly when `domainType` is qemu) swaps in the patient set below.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Probe:
    initial_delay_seconds: int
    period_seconds: int
    timeout_seconds: int
    failure_threshold: int


@dataclass(frozen=True)
class Tolerances:
    # kubeadm v1beta4 `timeouts` of InitConfiguration and JoinConfiguration (Go durations).
    kubeadm_timeouts: dict[str, str]
    # etcd's request timeout is 5 s + 2 x election timeout: a longer election timeout keeps a slow
    # single-member etcd from failing the API server's requests. None keeps etcd's defaults.
    etcd_heartbeat_ms: int | None
    etcd_election_ms: int | None
    # kube-controller-manager's and kube-scheduler's leader election (upstream: on, lease 15 s, renew
    # 10 s): a renewal that misses its deadline makes them exit. With one control plane there is no
    # other candidate to hand over to, so on a slow host the lease guards nothing and only restarts
    # them: measured with a 60 s lease and 40 s renewal, still 1 restart each in a busy first `up`
    # and 3 each in an hour of conformance specs. Off there; upstream's elsewhere.
    leader_election: dict[str, str]
    # The kubelet's deadline for a runtime call such as CreateContainer (upstream 2m).
    kubelet_runtime_request_timeout: str
    # Liveness and startup failure thresholds of the control-plane static pods (kubeadm: 8 and 24,
    # every 10 s); None keeps kubeadm's manifests as they are.
    control_plane_liveness_failures: int | None
    control_plane_startup_failures: int | None
    kube_router_liveness: Probe
    # MetalLB's controller and speaker (upstream: /metrics every 10 s, 1 s to answer, 3 misses): a
    # starved emulated node missed that, and a restarted controller refuses its webhook's calls.
    metallb_liveness: Probe
    # How long the API server waits for MetalLB's webhook (Kubernetes' default 10 s; 30 s is the most
    # it allows): under emulation a busy controller answered the L2Advertisement's call past 10 s.
    metallb_webhook_timeout_seconds: int
    # The connectivity check's readiness probe (an exec of agnhost connect) and its connect timeout:
    # on a busy emulated control plane the exec alone took longer than 5 s.
    connectivity_probe: Probe
    connect_timeout: str
    # kubectl drain's timeout before a worker's VM stops or goes: evicted pods end and start elsewhere.
    # A resize on the emulated e2e stack drained for 120 s and did not finish (its API server was busy
    # with the moving pods); the VM then stops with the pods left on it.
    drain_timeout_seconds: int
    # kubeadm upgrade apply's preflight checks made non-fatal. Its CreateJob check gives a Job a fixed
    # 15 s to complete, which an emulated node's pod start exceeds (seen on the e2e stack).
    upgrade_ignore_preflight_errors: tuple[str, ...]
    # How long `pulumi up` waits for the kube-router DaemonSet to be ready everywhere.
    cni_await_seconds: int
    # Before the Kubernetes provider starts: /readyz must answer this many times in a row, this far apart.
    api_steady_checks: int
    api_steady_interval_seconds: int
    api_steady_timeout_seconds: int
    # The gate also fetches the OpenAPI document the Kubernetes provider loads first, until it comes
    # within this many seconds (the provider gives up after 32 s and fails every resource).
    openapi_within_seconds: int
    # The Kubernetes provider's per-request timeout (kubeClientSettings.timeout; None keeps the
    # provider's: no limit on calls, 32 s on discovery). Its first call at every `up` loads the API
    # server's OpenAPI document, which the API server builds again after churn: under emulation that
    # took more than 32 s in the `up` after the conformance focus, and the provider failed every
    # resource. The gate above covers only the first `up`; this covers every later one.
    kubernetes_client_timeout_seconds: int | None


# Upstream's own values (kubeadm, kubelet, etcd, pulumi-kubernetes), except the API gate, which costs
# a few seconds on a healthy host.
HARDWARE = Tolerances(
    kubeadm_timeouts={},
    etcd_heartbeat_ms=None,
    etcd_election_ms=None,
    leader_election={},
    kubelet_runtime_request_timeout="2m0s",
    control_plane_liveness_failures=None,
    control_plane_startup_failures=None,
    kube_router_liveness=Probe(initial_delay_seconds=10, period_seconds=3, timeout_seconds=1, failure_threshold=3),
    metallb_liveness=Probe(initial_delay_seconds=10, period_seconds=10, timeout_seconds=1, failure_threshold=3),
    metallb_webhook_timeout_seconds=10,
    connectivity_probe=Probe(initial_delay_seconds=0, period_seconds=5, timeout_seconds=5, failure_threshold=3),
    connect_timeout="3s",
    drain_timeout_seconds=120,
    upgrade_ignore_preflight_errors=(),
    cni_await_seconds=600,
    api_steady_checks=3,
    api_steady_interval_seconds=2,
    api_steady_timeout_seconds=300,
    openapi_within_seconds=20,
    kubernetes_client_timeout_seconds=None,
)

EMULATED = Tolerances(
    kubeadm_timeouts={
        "controlPlaneComponentHealthCheck": "20m0s",
        "kubeletHealthCheck": "20m0s",
        "kubernetesAPICall": "5m0s",
        "etcdAPICall": "10m0s",
        "tlsBootstrap": "20m0s",
        "discovery": "20m0s",
    },
    etcd_heartbeat_ms=500,
    etcd_election_ms=5000,
    leader_election={"leader-elect": "false"},
    kubelet_runtime_request_timeout="10m0s",
    control_plane_liveness_failures=30,
    control_plane_startup_failures=90,
    kube_router_liveness=Probe(initial_delay_seconds=60, period_seconds=10, timeout_seconds=5, failure_threshold=12),
    metallb_liveness=Probe(initial_delay_seconds=60, period_seconds=10, timeout_seconds=5, failure_threshold=12),
    metallb_webhook_timeout_seconds=30,
    connectivity_probe=Probe(initial_delay_seconds=0, period_seconds=20, timeout_seconds=45, failure_threshold=3),
    connect_timeout="20s",
    drain_timeout_seconds=600,
    upgrade_ignore_preflight_errors=("CreateJob",),
    cni_await_seconds=1800,
    api_steady_checks=10,
    api_steady_interval_seconds=3,
    api_steady_timeout_seconds=1200,
    openapi_within_seconds=20,
    kubernetes_client_timeout_seconds=300,
)

SLOW_HOST_CHOICES = ("auto", "true", "false")


def for_host(slow_host: str, domain_type: str) -> Tolerances:
    """`slowHost` auto follows the domain type: software emulation is slow, KVM is not."""
    slow = slow_host == "true" or (slow_host == "auto" and domain_type == "qemu")
    return EMULATED if slow else HARDWARE
