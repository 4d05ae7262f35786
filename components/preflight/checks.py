"""Host preflight: judge the host before `pulumi preview`/`up` registers anything.

`check` is a pure function from config + `HostFacts` (read by components/preflight/facts.py) to problems;
`run_preflight` gathers, checks and raises one `PreflightError` listing them all.

Which checks apply:
- always: virsh present, libvirt reachable, an ISO tool (the cloud-init seeds are built on the Pulumi host),
  ssh (the join and leave steps run it there), ssh-key, network overlap with other libvirt networks,
  KVM offered by libvirt's capabilities (remote URIs only), and that `up` would neither rebuild the
  running control plane (given what the program would build for it) nor resize it (a new domain).
- local URIs only: /dev/kvm and CPU flags, AppArmor, pool directory permissions, SELinux, memory,
  disk, host routes (their facts are unknown over qemu+ssh://). Memory and disk count what this
  stack's running VMs and pool volumes already hold, so a re-run or a scale-down needs no more room.
- qemu:///session additionally skips AppArmor, SELinux and pool permissions (domains run as you,
  unconfined) but requires /dev/kvm to be read/writable by you.
An unknown fact never produces a problem: preflight blocks only on what it has observed.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import islice
from urllib.parse import urlsplit

from components.artifacts import identity, seed
from components.artifacts.identity import NodeIdentity
from components.config.settings import BASE_VOLUME, NAMESPACE, ClusterConfig
from components.preflight.facts import (
    QEMU_ABSTRACTION,
    QEMU_LOCAL_ABSTRACTION,
    HostFacts,
    HostRoute,
    gather_host_facts,
)

SKIP_ENV = "KUBE_ON_AIR_SKIP_PREFLIGHT"
LIBVIRT_IMAGES = "/var/lib/libvirt/images"
LOCAL_QEMU_ABSTRACTION = f"/etc/{QEMU_LOCAL_ABSTRACTION}"
# Thin overlays: base image (~0.5-1 GiB) plus containerd images and logs per node.
DISK_BASE_MIB = 2048
DISK_PER_NODE_MIB = 2048


@dataclass(frozen=True)
class PreflightProblem:
    check: str
    observed: str
    fix: str

    def __str__(self) -> str:
        return f"  [{self.check}] {self.observed}\n      fix: {self.fix}"


class PreflightError(Exception):
    """Every host problem found, reported together."""

    def __init__(self, problems: list[PreflightProblem], uri: str) -> None:
        self.problems = problems
        lines = "\n".join(str(p) for p in problems)
        super().__init__(
            f"host preflight found {len(problems)} problem(s) for libvirt URI {uri}; "
            f"fix them, or set {SKIP_ENV}=1 to skip the preflight:\n{lines}"
        )


def _key(name: str) -> str:
    return f"{NAMESPACE}:{name}"


def _session(config: ClusterConfig) -> bool:
    # qemu:///session runs domains as the calling user, unconfined, and opens /dev/kvm as that user.
    return urlsplit(config.libvirt_uri).path.rstrip("/") == "/session"


def _check_virsh(config: ClusterConfig, facts: HostFacts) -> list[PreflightProblem]:
    # Without virsh nothing about libvirt can be checked; passing would register every resource blind.
    if facts.virsh_path is not None:
        return []
    return [
        PreflightProblem(
            "libvirt",
            f"virsh is not on PATH, so preflight cannot check libvirt:uri {config.libvirt_uri} "
            "(reachable, its networks, KVM support, this stack's VMs)",
            "install the libvirt client on this machine (Debian/Ubuntu: `sudo apt-get install libvirt-clients`; "
            f"Fedora/RHEL: `sudo dnf install libvirt-client`), or set {SKIP_ENV}=1 to skip the preflight",
        )
    ]


def _check_libvirt(config: ClusterConfig, facts: HostFacts) -> list[PreflightProblem]:
    if facts.libvirt_reachable is not False:
        return []
    error = facts.libvirt_error
    if facts.remote:
        fix = (
            f"make `virsh -c {config.libvirt_uri} version` work without a prompt "
            "(ssh key in the agent or keyfile= in the URI, user in the remote libvirt group), or fix libvirt:uri"
        )
    elif "No such file" in error or "Connection refused" in error:
        fix = "start libvirtd: `systemctl enable --now libvirtd` (without systemd: `virtlogd -d && libvirtd -d`)"
    elif "Permission denied" in error or "access denied" in error.lower():
        fix = "add yourself to the libvirt group (`sudo usermod -aG libvirt $USER`, then log in again)"
    else:
        fix = f"run `virsh -c {config.libvirt_uri} version` and fix what it reports, or set libvirt:uri"
    return [PreflightProblem("libvirt", f"cannot connect to {config.libvirt_uri}: {error}", fix)]


def _check_kvm(config: ClusterConfig, facts: HostFacts) -> list[PreflightProblem]:
    if config.domain_type != "kvm":
        return []
    qemu = f"set {_key('domainType')} to qemu for software emulation"
    if facts.remote:
        if facts.libvirt_kvm is False:
            return [PreflightProblem("kvm", f"libvirt at {config.libvirt_uri} offers no kvm domains", qemu)]
        return []
    if facts.kvm_verdicts:
        observed = f"virt-host-validate: {'; '.join(facts.kvm_verdicts)}"
        fix = (
            "enable VT-x/AMD-V in the firmware and load kvm_intel or kvm_amd (on a VM: nested virtualisation on "
            f"its host, CPU mode host-passthrough), or {qemu}"
        )
        return [PreflightProblem("kvm", observed, fix)]
    if facts.kvm_accessible is False and _session(config):
        # Under qemu:///system libvirtd opens /dev/kvm itself; under /session the domain runs as you.
        return [
            PreflightProblem(
                "kvm",
                "/dev/kvm is not readable and writable by you, and qemu:///session runs domains as you",
                "add yourself to the kvm group (`sudo usermod -aG kvm $USER`, then log in again) or " + qemu,
            )
        ]
    return []


def _check_kvm_device(config: ClusterConfig, facts: HostFacts) -> list[PreflightProblem]:
    """A /dev/kvm QEMU cannot open stalls every domain create, whatever the domain type.

    libvirt probes QEMU with KVM, finds it unusable when it starts a domain ("KVM was enabled when
    probing ..., but it is not available now"), drops its capability cache and probes again on every
    call: measured here, each domain create took ~3 min. udev gives the device to group kvm, 0660;
    hosts without udev (libvirt in a container) keep the kernel's root-only 0600."""
    if facts.remote or _session(config) or facts.qemu_kvm_accessible is not False:
        return []
    observed = (
        f"/dev/kvm is {facts.kvm_device_mode or 'not open to QEMU'}, which QEMU (user {facts.qemu_user}) cannot open: "
        "libvirt then probes QEMU again on every call and each domain create stalls for minutes, even with "
        f"{_key('domainType')} qemu"
    )
    fix = (
        "give it to group kvm as udev does: `sudo chgrp kvm /dev/kvm && sudo chmod 0660 /dev/kvm` "
        "(without udev, again after every boot)"
    )
    return [PreflightProblem("kvm", observed, fix)]


def _check_mkisofs(config: ClusterConfig, facts: HostFacts) -> list[PreflightProblem]:
    # The program builds each node's cloud-init ISO on the Pulumi host (components/artifacts/seed.py), with any one.
    if facts.mkisofs_path or facts.genisoimage_path or facts.xorrisofs_path:
        return []
    observed = f"{seed.NO_TOOL}; kube-on-air builds each node's cloud-init ISO on this machine with one of them"
    fix = "`sudo apt-get install genisoimage` (Fedora: `sudo dnf install genisoimage`)"
    return [PreflightProblem("mkisofs", observed, fix)]


def _check_ssh_client(config: ClusterConfig, facts: HostFacts) -> list[PreflightProblem]:
    # Each worker's join and leave steps are local commands that reach the nodes with `ssh`.
    if facts.ssh_path is not None:
        return []
    observed = "ssh is not on PATH; the join and leave steps run it on this machine to reach the nodes"
    fix = "`sudo apt-get install openssh-client` (Fedora: dnf install openssh-clients)"
    return [PreflightProblem("ssh", observed, fix)]


def _apparmor_confines_qemu(facts: HostFacts) -> bool:
    driver = facts.security_driver or ""  # unset: libvirt picks AppArmor when the kernel has it
    return bool(facts.apparmor_enabled) and (driver == "" or "apparmor" in driver.split(","))


def qemu_pool_rule_command(config: ClusterConfig) -> str:
    """The README's fix: the rule that lets every VM's QEMU into the pool, appended to the local abstraction."""
    rule = f'"{config.pool_path.rstrip("/")}/**" rwk,'
    return f"echo {shlex.quote(rule)} | sudo tee -a {LOCAL_QEMU_ABSTRACTION}"


def _check_apparmor(config: ClusterConfig, facts: HostFacts) -> list[PreflightProblem]:
    # Session domains are not confined by virt-aa-helper profiles (that needs a privileged libvirtd).
    if _session(config) or facts.remote or not _apparmor_confines_qemu(facts):
        return []
    confined = f"AppArmor confines QEMU (security_driver {facts.security_driver or 'default'})"
    pool = config.pool_path.rstrip("/")
    if facts.apparmor_pool_allowed is False:  # its fix names the QEMU rule too: one problem, not two
        return [
            PreflightProblem(
                "apparmor",
                f"{confined} and virt-aa-helper's profile does not allow {pool}/*, "
                "so the domains fail with 'Permission denied'",
                f"set {_key('poolPath')} under {LIBVIRT_IMAGES}/ (Debian's and Ubuntu's virt-aa-helper profile "
                "denies hidden directories in home directories, and no local rule lifts a deny); QEMU itself needs "
                f'`"<poolPath>/**" rwk,` in {LOCAL_QEMU_ABSTRACTION} on any AppArmor host (README)',
            )
        ]
    if facts.apparmor_qemu_pool_allowed is False:
        return [
            PreflightProblem(
                "apparmor",
                f"{confined} and no rule in /etc/{QEMU_ABSTRACTION} or {LOCAL_QEMU_ABSTRACTION} lets it read, "
                f"write and lock the volumes in {_key('poolPath')} {pool}; libvirt lists no pool volume "
                "(`<disk type='volume'>`) in a VM's profile, so the domains fail with 'Permission denied'",
                f"allow QEMU into the pool once (read when a VM starts, no reload): `{qemu_pool_rule_command(config)}`",
            )
        ]
    return []


def _check_pool_permissions(config: ClusterConfig, facts: HostFacts) -> list[PreflightProblem]:
    if _session(config) or facts.remote or not facts.pool_blocked_dir:
        return []
    return [
        PreflightProblem(
            "pool-permissions",
            f"QEMU runs as {facts.qemu_user} and cannot enter {facts.pool_blocked_dir} above {config.pool_path}",
            f"set {_key('poolPath')} under {LIBVIRT_IMAGES}/, or `sudo chmod o+x` that directory",
        )
    ]


def _check_selinux(config: ClusterConfig, facts: HostFacts) -> list[PreflightProblem]:
    inside = (config.pool_path.rstrip("/") + "/").startswith(LIBVIRT_IMAGES + "/")
    if _session(config) or facts.remote or facts.selinux_mode != "enforcing" or inside:
        return []
    pool = config.pool_path.rstrip("/")
    return [
        PreflightProblem(
            "selinux",
            f"SELinux is enforcing and {pool} is outside {LIBVIRT_IMAGES}, so its files lack the virt_image_t label",
            f"set {_key('poolPath')} under {LIBVIRT_IMAGES}/, or label it: `sudo semanage fcontext -a -t "
            f"virt_image_t '{pool}(/.*)?' && sudo mkdir -p {pool} && sudo restorecon -R {pool}`",
        )
    ]


def _check_memory(config: ClusterConfig, facts: HostFacts) -> list[PreflightProblem]:
    needed = sum(node.memory_mib for node in config.nodes)
    # MemAvailable already lacks what this stack's running VMs use: a re-run or scale-down needs only the rest.
    held = sum(domain.memory_mib for domain in facts.stack_domains or () if domain.running)
    if facts.remote or facts.mem_available_mib is None or facts.mem_available_mib + held >= needed:
        return []
    holding = f", of which this stack's running VMs hold {held} MiB already" if held else ""
    return [
        PreflightProblem(
            "memory",
            f"MemAvailable is {facts.mem_available_mib} MiB but the {len(config.nodes)} nodes need {needed} MiB"
            + holding,
            f"lower {_key('workerCount')} or {_key('workerMemoryMiB')} (or {_key('controlPlaneMemoryMiB')}), "
            "or free memory on the host",
        )
    ]


def disk_needed_mib(config: ClusterConfig) -> int:
    return DISK_BASE_MIB + DISK_PER_NODE_MIB * len(config.nodes)


def disk_held_mib(facts: HostFacts) -> int:
    """What this stack's volumes occupy already, each counted up to its share of `disk_needed_mib`."""
    share = {BASE_VOLUME: DISK_BASE_MIB}
    return sum(min(v.allocation_mib, share.get(v.name, DISK_PER_NODE_MIB)) for v in facts.stack_volumes or ())


def _check_disk(config: ClusterConfig, facts: HostFacts) -> list[PreflightProblem]:
    needed = disk_needed_mib(config)
    held = disk_held_mib(facts)
    if facts.remote or facts.disk_free_mib is None or facts.disk_free_mib + held >= needed:
        return []
    holding = f", of which this stack's volumes hold {held} MiB already" if held else ""
    return [
        PreflightProblem(
            "disk",
            f"{facts.disk_probe_path} has {facts.disk_free_mib} MiB free but the base image and "
            f"{len(config.nodes)} node overlays need about {needed} MiB{holding}",
            f"free space there, set {_key('poolPath')} on a larger filesystem, or lower {_key('workerCount')}",
        )
    ]


def _check_ssh_key(config: ClusterConfig, facts: HostFacts) -> list[PreflightProblem]:
    if facts.ssh_key_error is None:
        return []
    return [
        PreflightProblem(
            "ssh-key",
            f"cannot read the private key ({facts.ssh_key_error})",
            f"create it with `ssh-keygen -t ed25519 -N '' -f {config.ssh_key_path}` or set {_key('sshKeyPath')}",
        )
    ]


def _taken_networks(config: ClusterConfig, facts: HostFacts) -> list[ipaddress.IPv4Network]:
    taken = [ipaddress.IPv4Network(n.cidr) for n in facts.libvirt_networks or ()]
    taken += [ipaddress.IPv4Network(r.destination) for r in _foreign_routes(config, facts)]
    return taken


def suggest_cidr(config: ClusterConfig, facts: HostFacts) -> str | None:
    """A free network of the same size, counting down from 172.31.255.0 (the default's neighbourhood)."""
    taken = _taken_networks(config, facts)
    private = ipaddress.IPv4Network("172.16.0.0/12")
    candidates = private.subnets(new_prefix=max(config.prefix_length, private.prefixlen))
    # subnets() counts up; walk from the top by reversing a bounded list.
    for candidate in reversed(list(islice(candidates, 1 << 16))):
        if not any(candidate.overlaps(t) for t in taken):
            return str(candidate)
    return None


def _network_fix(config: ClusterConfig, facts: HostFacts) -> str:
    free = suggest_cidr(config, facts)
    example = f", e.g. `pulumi config set {_key('networkCidr')} {free}`" if free else ""
    return f"set {_key('networkCidr')} to a range nothing else on the host uses{example}"


def _check_network(config: ClusterConfig, facts: HostFacts) -> list[PreflightProblem]:
    ours = ipaddress.IPv4Network(config.network_cidr)
    problems = []
    for network in facts.libvirt_networks or ():
        if ipaddress.IPv4Network(network.cidr).overlaps(ours):
            observed = f"libvirt network '{network.name}' uses {network.cidr}, which overlaps {config.network_cidr}"
            problems.append(PreflightProblem("network", observed, _network_fix(config, facts)))
    return problems


def _foreign_routes(config: ClusterConfig, facts: HostFacts) -> list[HostRoute]:
    """Routes not explained by our own bridge (a re-run) or another libvirt network (reported already)."""
    bridges = {config.bridge_name} | {n.bridge for n in facts.libvirt_networks or () if n.bridge}
    return [
        r
        for r in facts.host_routes or ()
        if r.device not in bridges and ipaddress.IPv4Network(r.destination).prefixlen > 0
    ]


def _check_host_routes(config: ClusterConfig, facts: HostFacts) -> list[PreflightProblem]:
    if facts.remote:
        return []
    ours = ipaddress.IPv4Network(config.network_cidr)
    return [
        PreflightProblem(
            "host-route",
            f"the host routes {route.destination} via {route.device}, which overlaps {config.network_cidr}",
            _network_fix(config, facts),
        )
        for route in _foreign_routes(config, facts)
        if ipaddress.IPv4Network(route.destination).overlaps(ours)
    ]


def _check_bridge_netfilter(config: ClusterConfig, facts: HostFacts) -> list[PreflightProblem]:
    """Bridged frames through the host's iptables: libvirt's NAT then rewrites a node's packets to a pod
    on another node (seen: the API server's calls to metrics-server timed out, `kubectl top` failed)."""
    if not facts.bridge_nf_call_iptables:
        return []
    observed = (
        "net.bridge.bridge-nf-call-iptables is 1 on this host (br_netfilter, loaded by Docker or a CNI): "
        f"traffic between the nodes on {config.bridge_name} passes the host's iptables, where libvirt's NAT "
        "masquerades a node's packets to pods on another node, so the API server cannot reach add-ons' pods"
    )
    fix = (
        "sudo sysctl -w net.bridge.bridge-nf-call-iptables=0, and keep it in /etc/sysctl.d/ "
        "(libvirt's advice for bridged guests)"
    )
    return [PreflightProblem("bridge-netfilter", observed, fix)]


def _version(text: str) -> tuple[int, int, int]:
    major, minor, patch = (int(part) for part in text.split("-", 1)[0].split(".")[:3])
    return major, minor, patch


def _check_kubernetes_version(config: ClusterConfig, facts: HostFacts) -> list[PreflightProblem]:
    """An upgrade goes as kubeadm's does: forward, one minor at a time, from a release on this host."""
    running, wanted = facts.cluster_version, config.kubernetes_version
    if running is None or running == wanted:
        return []
    key = f"{NAMESPACE}:kubernetesVersion"
    have, want = _version(running), _version(wanted)
    if want < have:
        return [
            PreflightProblem(
                "kubernetes-version",
                f"{key} is {wanted}, but the cluster runs v{running}: kubeadm upgrades, it never downgrades",
                f"set it back: `pulumi config set {key} {running}` (a cluster at an older version is a new "
                "cluster: `pulumi destroy`, then `pulumi up`)",
            )
        ]
    if want[:1] != have[:1] or want[1] > have[1] + 1:
        step = f"{have[0]}.{have[1] + 1}"
        return [
            PreflightProblem(
                "kubernetes-version",
                f"{key} is {wanted}, but the cluster runs v{running}: Kubernetes upgrades one minor at a "
                "time (the version skew policy), so this skips a minor",
                f"upgrade to a {step}.x release first (`pulumi config set {key} {step}.<patch>`, `pulumi up`), then on",
            )
        ]
    if not config.prebaked:
        return [
            PreflightProblem(
                "kubernetes-version",
                f"{key} is {wanted}, but the cluster runs v{running}, and with {NAMESPACE}:prebaked false its "
                "nodes install Kubernetes from pkgs.k8s.io at first boot: an upgrade in place is built only "
                "for nodes from a node image (the offline path)",
                f"set it back (`pulumi config set {key} {running}`), or build the cluster from a node image "
                "(docs/offline.md) and upgrade that",
            )
        ]
    built = {d.name for d in facts.stack_domains or ()}
    new = [w.name for w in config.workers if w.libvirt_name not in built]
    if facts.stack_domains is not None and new:
        # A new worker would join the control plane before its upgrade, with a newer kubelet.
        return [
            PreflightProblem(
                "kubernetes-version",
                f"{key} moves from {running} to {wanted} in the same `up` that adds {', '.join(new)}",
                "one change per `up`: first the upgrade with workerCount as it was, then the new workers "
                "(they join at the new version)",
            )
        ]
    if facts.releases_built is not None and wanted not in facts.releases_built:
        return [
            PreflightProblem(
                "kubernetes-version",
                f"{key} is {wanted}, but the cluster runs v{running} and {config.releases_dir} holds no "
                f"v{wanted} to upgrade its nodes with (it holds: {', '.join(facts.releases_built) or 'none'})",
                f"build it from the Go module proxy: `make release VERSION={wanted}` (docs/operations.md), then "
                "`pulumi up` again",
            )
        ]
    return []


CHECKS: tuple[Callable[[ClusterConfig, HostFacts], list[PreflightProblem]], ...] = (
    _check_virsh,
    _check_libvirt,
    _check_kvm,
    _check_kvm_device,
    _check_mkisofs,
    _check_ssh_client,
    _check_apparmor,
    _check_pool_permissions,
    _check_selinux,
    _check_memory,
    _check_disk,
    _check_ssh_key,
    _check_network,
    _check_host_routes,
    _check_bridge_netfilter,
    _check_kubernetes_version,
)


def _check_control_plane(
    config: ClusterConfig, facts: HostFacts, expected: NodeIdentity | None
) -> list[PreflightProblem]:
    """A changed identity replaces a node (artifacts/identity.py); for the control plane that is a new cluster."""
    name = config.control_plane.libvirt_name
    deployed = next((d for d in facts.stack_domains or () if d.name == name), None)
    if expected is None or deployed is None:
        return []  # nothing built yet (or gone): building it is what `up` is for
    if identity.disk_volume_name(config.control_plane, expected.generation) in deployed.disk_volumes:
        if identity.seed_volume_name(config.control_plane, expected.generation) not in deployed.disk_volumes:
            return [_seed_attached_before(name)]
        return []  # the same disk: a new size or domain type is a reboot on it (docs/operations.md)
    recorded = identity.parse_description(deployed.description)
    if recorded is None:
        reason = "an earlier kube-on-air built it (its description records no identity) and this one builds nodes anew"
        undo = "keep using the kube-on-air version that built the cluster"
    else:
        changes = identity.changed_settings(recorded, expected) or ["volume names of a newer kube-on-air"]
        reason, undo = f"the config changes what it is built from ({'; '.join(changes)})", "undo the change"
    return [
        PreflightProblem(
            "control-plane",
            f"the control plane {name} runs on {', '.join(deployed.disk_volumes)}; {reason}, so `pulumi up` would "
            "rebuild it on a fresh disk: a new control plane is a new, empty cluster, which this cluster's workers "
            "and Kubernetes objects would not follow",
            f"{undo}, or rebuild the whole cluster on purpose: `pulumi destroy`, then `pulumi up` "
            f"(skipping the preflight with {SKIP_ENV}=1 lets `up` break the cluster)",
        )
    ]


def _seed_attached_before(name: str) -> PreflightProblem:
    # Until the seed was a plain volume (components/artifacts/seed.py) it was the provider's CloudInitDisk, a cdrom:
    # the new seed disk changes the domain's `disks`, which only a new domain can have.
    return PreflightProblem(
        "control-plane",
        f"the control plane {name} was built by an earlier kube-on-air, with its cloud-init seed as the libvirt "
        "provider's cloud-init disk; this one attaches the seed as a volume, so `pulumi up` would give it a new "
        "domain, replacing kubeadm init and the kubeconfig and, through the Kubernetes provider, every Kubernetes "
        "object of this stack",
        "keep using the kube-on-air version that built the cluster, or rebuild the whole cluster on purpose: "
        f"`pulumi destroy`, then `pulumi up` (skipping the preflight with {SKIP_ENV}=1 lets `up` do that)",
    )


def check(config: ClusterConfig, facts: HostFacts, control_plane: NodeIdentity | None = None) -> list[PreflightProblem]:
    """Every problem the facts show; unknown facts are given the benefit of the doubt.

    `control_plane`: what the program would build for it now; None skips the rebuild check."""
    problems = [problem for run in CHECKS for problem in run(config, facts)]
    return problems + _check_control_plane(config, facts, control_plane)


def should_run(config: ClusterConfig, environ: Mapping[str, str] | None = None) -> bool:
    """False when the user opted out with KUBE_ON_AIR_SKIP_PREFLIGHT=1."""
    env = os.environ if environ is None else environ
    return env.get(SKIP_ENV, "").strip() != "1"


def run_preflight(
    config: ClusterConfig, facts: HostFacts | None = None, control_plane: NodeIdentity | None = None
) -> HostFacts:
    """Gather (unless given) and check; raise PreflightError listing every problem, else return the facts."""
    facts = gather_host_facts(config) if facts is None else facts
    problems = check(config, facts, control_plane)
    if problems:
        raise PreflightError(problems, config.libvirt_uri)
    return facts
