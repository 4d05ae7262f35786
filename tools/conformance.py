"""`make conformance`: upstream's conformance suite (`e2e.test` of the pinned Kubernetes, built by
`make toolchain`) against a live cluster, on a focus that fits a small emulated host.

The images the focused specs run come with a node image made from the toolchain (`make image`
imports every archive of it); a node that lacks one (an image made before, or from pkgs.k8s.io) gets
it streamed over SSH into its containerd from the toolchain's archives before the suite starts.
Every `[Conformance]` spec of the three SIGs that is not in the focus is listed in the
report with the reason, never dropped silently.
"""

from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from components.workloads import AGNHOST_IMAGE

# The images of the pinned tree's test/utils/image/manifest.go that the focus runs, beside agnhost
# and the pause image every node has.
E2E_BUSYBOX_IMAGE = "registry.k8s.io/e2e-test-images/busybox:1.37.0-1"
JESSIE_DNSUTILS_IMAGE = "registry.k8s.io/e2e-test-images/jessie-dnsutils:1.7"
# test/e2e/apps' WebserverImage and the one its rollouts move to.
HTTPD_IMAGES = ("registry.k8s.io/e2e-test-images/httpd:2.4.38-4", "registry.k8s.io/e2e-test-images/httpd:2.4.39-4")
IMAGES = (AGNHOST_IMAGE, E2E_BUSYBOX_IMAGE, JESSIE_DNSUTILS_IMAGE, *HTTPD_IMAGES)

SIGS = ("sig-network", "sig-apps", "sig-node")
CONFORMANCE = r"\[Conformance\]"

# The focus: exact spec texts, chosen by measurement on the e2e cluster (docs/testing.md has the
# figures). On a 2-core host without KVM an API-only spec takes 5-30 s and one that starts pods
# 45-270 s, so the focus is the API-only specs of the three SIGs (Services, EndpointSlices, Ingress,
# ServiceCIDRs, PDBs, CronJobs, ConfigMaps, Secrets, Leases, PodTemplates, RuntimeClasses), three
# pod specs for what kube-on-air builds (pod-to-pod HTTP over the CNI, CoreDNS answering for
# Services, the kubelet handing a pod its identity) and five of sig-apps' workload controllers on
# the httpd images (both Deployment strategies, Deployment, ReplicaSet and DaemonSet status: 61-161 s).
FOCUS: tuple[str, ...] = (
    # sig-network
    "[sig-network] DNS should provide DNS for services [Conformance]",
    (
        "[sig-network] EndpointSlice should create and delete Endpoints and EndpointSlices for a Service with "
        "a selector specified [Conformance]"
    ),
    "[sig-network] EndpointSlice should have Endpoints and EndpointSlices pointing to API Server [Conformance]",
    "[sig-network] EndpointSlice should support creating EndpointSlice API operations [Conformance]",
    (
        "[sig-network] EndpointSliceMirroring should mirror a custom Endpoints resource through create update "
        "and delete [Conformance]"
    ),
    "[sig-network] Ingress API should support creating Ingress API operations [Conformance]",
    "[sig-network] IngressClass API should support creating IngressClass API operations [Conformance]",
    (
        "[sig-network] Networking Granular Checks: Pods should function for intra-pod communication: http "
        "[NodeConformance] [Conformance]"
    ),
    "[sig-network] ServiceCIDR and IPAddress API should support IPAddress API operations [Conformance]",
    "[sig-network] ServiceCIDR and IPAddress API should support ServiceCIDR API operations [Conformance]",
    "[sig-network] Services should complete a service status lifecycle [Conformance]",
    "[sig-network] Services should delete a collection of services [Conformance]",
    "[sig-network] Services should find a service from listing all namespaces [Conformance]",
    "[sig-network] Services should provide secure master service [Conformance]",
    "[sig-network] Services should test the lifecycle of an Endpoint [Conformance]",
    # sig-apps
    "[sig-apps] CronJob should support CronJob API operations [Conformance]",
    "[sig-apps] Daemon set [Serial] should verify changes to a daemon set status [Conformance]",
    "[sig-apps] Deployment RecreateDeployment should delete old pods and create new ones [Conformance]",
    "[sig-apps] Deployment RollingUpdateDeployment should delete old pods and create new ones [Conformance]",
    "[sig-apps] Deployment should validate Deployment Status endpoints [Conformance]",
    (
        "[sig-apps] DisruptionController Listing PodDisruptionBudgets for all namespaces should list and "
        "delete a collection of PodDisruptionBudgets [Conformance]"
    ),
    "[sig-apps] DisruptionController should update/patch PodDisruptionBudget status [Conformance]",
    "[sig-apps] ReplicaSet should validate Replicaset Status endpoints [Conformance]",
    # sig-node
    "[sig-node] ConfigMap should fail to create ConfigMap with empty key [Conformance]",
    "[sig-node] ConfigMap should run through a ConfigMap lifecycle [Conformance]",
    (
        "[sig-node] Downward API should provide pod name, namespace and IP address as env vars "
        "[NodeConformance] [Conformance]"
    ),
    "[sig-node] Lease lease API should be available [Conformance]",
    "[sig-node] PodTemplates should delete a collection of pod templates [Conformance]",
    "[sig-node] PodTemplates should replace a pod template [Conformance]",
    "[sig-node] PodTemplates should run the lifecycle of PodTemplates [Conformance]",
    (
        "[sig-node] RuntimeClass should reject a Pod requesting a non-existent RuntimeClass [NodeConformance] "
        "[Conformance]"
    ),
    "[sig-node] RuntimeClass should support RuntimeClasses API operations [Conformance]",
    "[sig-node] Secrets should fail to create secret due to empty secret key [Conformance]",
    "[sig-node] Secrets should patch a secret [Conformance]",
)

# Why a spec of the three SIGs is not in the focus, by a pattern of its text; the first match wins.
FOR_TIME = "left out for time: pods start in tens of seconds on a 2-core emulated host; the focus fits CI's limit"
NOT_RUN_REASONS: tuple[tuple[str, str], ...] = (
    (r"\[Disruptive\]", "disruptive: taints the nodes the rest of `make e2e` goes on using"),
    (r"\[Slow\]", "marked [Slow] upstream: minutes even on hardware"),
    (r"serve a basic image", FOR_TIME),
    (
        r"^\[sig-apps\] ReplicationController should test the lifecycle",
        "its pod runs registry.k8s.io/e2e-test-images/nginx:1.14-4, which the toolchain does not build",
    ),
    (r"^\[sig-node\] Probing container", "waits out probe periods and restarts by design: minutes each"),
    (r".", FOR_TIME),
)

# The suite's own limit on the whole run: a spec that hangs cannot keep CI past its limit.
SUITE_TIMEOUT_SECONDS = 40 * 60


@dataclass(frozen=True)
class SpecResult:
    name: str
    seconds: float
    outcome: str  # passed, failed, skipped
    message: str = ""


def focus_argument(spec: str) -> str:
    """A --ginkgo.focus pattern that matches exactly this spec's text."""
    # The suite's full text starts with the (empty) text of its outermost container and a space.
    return f"--ginkgo.focus=(^|\\s){re.escape(spec)}$"


def suite_argv(e2e_test: Path, kubeconfig: Path, report_dir: Path, specs: Iterable[str]) -> list[str]:
    return [
        str(e2e_test),
        f"--kubeconfig={kubeconfig}",
        "--provider=skeleton",
        f"--report-dir={report_dir}",
        "--ginkgo.no-color",
        f"--ginkgo.timeout={SUITE_TIMEOUT_SECONDS}s",
        *(focus_argument(spec) for spec in specs),
    ]


def listed_specs(e2e_test: Path) -> list[str]:
    """The `[Conformance]` specs of SIGS this e2e.test holds, from its own dry run."""
    argv = [str(e2e_test), "--ginkgo.dry-run", "--ginkgo.v", "--ginkgo.no-color", "--kubeconfig=/dev/null"]
    argv += [f"--ginkgo.focus=\\[{sig}\\].*{CONFORMANCE}" for sig in SIGS]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return spec_texts(done.stdout)


def spec_texts(dry_run_output: str) -> list[str]:
    """Spec texts from a verbose dry run: each line that starts with a SIG and ends with its labels."""
    found = re.findall(r"^(\[sig-[a-z-]+\] .*?\[Conformance\])(?: \[[^\]]*\])?$", dry_run_output, re.M)
    return sorted(set(found))


def not_run(listed: Iterable[str], focus: Iterable[str]) -> dict[str, str]:
    """Every listed spec outside the focus, with the reason it is not run."""
    chosen = set(focus)
    reasons: dict[str, str] = {}
    for spec in listed:
        if spec in chosen:
            continue
        reasons[spec] = next(reason for pattern, reason in NOT_RUN_REASONS if re.search(pattern, spec))
    return reasons


def results(junit: Path, focus: Iterable[str]) -> list[SpecResult]:
    """The focused specs' outcomes from the suite's JUnit report, which names every spec of the suite
    ("[It] " and its text; the ones outside the focus as skipped) and the suite's setup steps."""
    chosen = set(focus)
    found: list[SpecResult] = []
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        name = re.sub(r"^\[It\]\s+", "", case.get("name", "")).strip()
        if name not in chosen:
            continue
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        skipped = case.find("skipped")
        if failure is not None:
            outcome, message = "failed", failure.get("message") or failure.text or ""
        elif skipped is not None:
            outcome, message = "skipped", skipped.get("message") or ""
        else:
            outcome, message = "passed", ""
        found.append(SpecResult(name, float(case.get("time", "0")), outcome, message.strip()[:500]))
    return found


def summary(found: list[SpecResult], focused: int, seconds: float) -> str:
    counts = {outcome: sum(1 for r in found if r.outcome == outcome) for outcome in ("passed", "failed", "skipped")}
    unrun = focused - len(found)
    return (
        f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
        f"{f', {unrun} not reached' if unrun else ''} of {focused} focused specs in {seconds:.0f} s"
    )


def archives(image_list: Path, refs: Iterable[str]) -> dict[str, Path]:
    """The docker archive of each ref, from the toolchain's images.txt (`ref archive` per line)."""
    offered = dict(line.split() for line in image_list.read_text().splitlines() if line.strip())
    missing = [ref for ref in refs if ref not in offered]
    if missing:
        raise LookupError(f"the toolchain has no archive of {', '.join(missing)}: run make toolchain")
    return {ref: image_list.parent / offered[ref] for ref in refs}


IMPORT = "sudo ctr -n k8s.io images import -"
LIST = "sudo ctr -n k8s.io images ls -q"


def import_images(
    nodes: Iterable[str],
    image_list: Path,
    run: Callable[[str, str], str],
    stream: Callable[[str, str, Path], None],
) -> dict[str, list[str]]:
    """Each image a node's containerd lacks into it: `run(node, command)` answers the command's
    output, `stream(node, command, archive)` feeds the archive to its stdin. Returns what each got."""
    wanted = archives(image_list, IMAGES)
    imported: dict[str, list[str]] = {}
    for node in nodes:
        present = set(run(node, LIST).split())
        imported[node] = [ref for ref in wanted if ref not in present]
        for ref in imported[node]:
            stream(node, IMPORT, wanted[ref])
    return imported
