"""`make render`: write every artifact the program would hand out, without the Pulumi CLI.

Usage: python -m tools.render [--stack air] [--out build] [--set key=value ...]
Reads Pulumi.<stack>.yaml (which must exist) with the --set overrides, checks it as the program does,
and writes build/<stack>/: summary.json, nodes/<node>/{user-data,meta-data,network-config},
kubeadm/*.yaml, scripts/*.sh, manifests/*.yaml, graph.dot and graph.svg (says so when graphviz is missing).
Node host keys come from (and are made in) hostKeyDir, as under `pulumi up`.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from components.artifacts import seed
from components.artifacts.render import CA_CERT_HASH_PLACEHOLDER, TOKEN_PLACEHOLDER
from components.config.settings import ConfigError, load_namespaced
from tools.dryrun import FAKE_CA_HASH, FAKE_TOKEN, ROOT, Evaluation, Resource, evaluate, stack_config, unwrap

NAMESPACE = "kube-on-air"
K8S_PREFIX = "kubernetes:"


class RenderError(Exception):
    """A mistake in how `make render` was called: one message, no traceback."""


def stack_file(stack: str) -> Path:
    path = ROOT / f"Pulumi.{stack}.yaml"
    if not path.exists():
        raise RenderError(
            f"make render: no stack file {path.name}, so no config for stack {stack!r}; "
            f"create it (e.g. cp Pulumi.air.yaml {path.name}) or pick another STACK"
        )
    return path


def set_option(item: str) -> tuple[str, str]:
    """One `--set key=value`."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {item!r}")
    return key, value


def how_to_fix(stack: str) -> str:
    """The fix line of a config error here, where the Pulumi CLI may not exist."""
    return f'edit Pulumi.{stack}.yaml or pass --set <key>=<value> (make render ARGS="--set <key>=<value>")'


def config_with(stack: str, overrides: dict[str, str]) -> dict[str, str]:
    """The stack file's config (if any) with `overrides` (keys without namespace) applied."""
    path = ROOT / f"Pulumi.{stack}.yaml"
    config = stack_config(stack) if path.exists() else {}
    for key, value in overrides.items():
        config[key if ":" in key else f"{NAMESPACE}:{key}"] = value
    return config


def manifest(resource: Resource) -> dict[str, Any]:
    """A Kubernetes object as the API server would receive it."""
    body: dict[str, Any] = _whole_numbers(_plain_inputs(resource))
    return body


def _whole_numbers(value: Any) -> Any:
    """The mock runtime turns every number into a float; the engine would send 8080, not 8080.0."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    return value


def _plain_inputs(resource: Resource) -> dict[str, Any]:
    return {k: unwrap(v) for k, v in resource.inputs.items()}


def kubernetes_objects(evaluation: Evaluation) -> list[Resource]:
    return [
        r
        for r in evaluation.resources
        if r.type.startswith(K8S_PREFIX) and r.custom and not r.type.startswith("kubernetes:yaml")
    ]


def in_apply_order(evaluation: Evaluation, objects: list[Resource]) -> list[Resource]:
    """Each object after those it waits for, ties by name: the same order on every render (the mock
    runtime registers objects whose inputs resolve at the same time in any order)."""
    by_urn = {r.urn: r for r in objects}
    waits = {r.urn: expanded_dependencies(evaluation, r) & by_urn.keys() for r in objects}
    ordered: list[Resource] = []
    while waits:
        ready = sorted((urn for urn, deps in waits.items() if not deps), key=lambda urn: by_urn[urn].name)
        if not ready:  # a cycle cannot be applied either; keep the rest by name
            ready = sorted(waits, key=lambda urn: by_urn[urn].name)
        ordered.append(by_urn[ready[0]])
        del waits[ready[0]]
        for deps in waits.values():
            deps.discard(ready[0])
    return ordered


def expanded_dependencies(evaluation: Evaluation, resource: Resource) -> set[str]:
    """Custom resources this one waits for directly; a component dependency means all its children."""
    found: set[str] = set()
    for urn in evaluation.depends_on(resource):
        target = evaluation.by_urn.get(urn)
        if target is None:
            continue
        if target.custom:
            found.add(urn)
        found.update(c.urn for c in evaluation.children(urn) if c.custom)
    return found


def dependency_graph(evaluation: Evaluation) -> dict[str, set[str]]:
    return {r.urn: expanded_dependencies(evaluation, r) for r in evaluation.resources if r.custom}


def longest_chain(graph: dict[str, set[str]]) -> list[str]:
    """The longest dependency chain; of equally long ones, the one ending in the URN that sorts first, and so
    on back along the chain, so the same graph always gives the same chain (sets iterate in hash order)."""
    memo: dict[str, list[str]] = {}

    def chain(urn: str) -> list[str]:
        if urn not in memo:
            best: list[str] = []
            for dep in sorted(graph.get(urn, set())):
                candidate = chain(dep)
                if len(candidate) > len(best):
                    best = candidate
            memo[urn] = [*best, urn]
        return memo[urn]

    return max((chain(urn) for urn in sorted(graph)), key=len, default=[])


def short(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _script_name(resource: Resource, phase: str) -> str:
    if resource.type == "command:remote:Command" and resource.name.endswith("-ready") and phase == "create":
        return resource.name.removesuffix("-ready") + "-wait-ready.sh"
    return f"{resource.name}.sh" if phase == "create" else f"{resource.name}-{phase}.sh"


# A script on the Pulumi host carries what it sends to the nodes as quoted here-documents.
HEREDOC = re.compile(r"<<'(?P<marker>[A-Z_]+)'\n(?P<body>.*?)\n(?P=marker)\n", re.DOTALL)
EMBEDDED_SCRIPTS = {
    "ON_WORKER": "on-worker",
    "ON_CONTROL_PLANE": "on-control-plane",
    "ON_NODE": "on-node",
    "REVOKE_ON_CONTROL_PLANE": "revoke-on-control-plane",
    "STALE_NODE_ON_CONTROL_PLANE": "stale-node-on-control-plane",
}


def heredocs(script: str) -> dict[str, str]:
    return {match["marker"]: match["body"] + "\n" for match in HEREDOC.finditer(script)}


def _write_embedded(command: Resource, out: Path) -> None:
    """What a command on this host sends to the nodes, and a join's JoinConfiguration with stand-in credentials."""
    for phase in ("create", "delete"):
        prefix = command.name if phase == "create" else f"{command.name}-{phase}"
        for marker, script in heredocs(str(command.plain(phase) or "")).items():
            if marker in EMBEDDED_SCRIPTS:
                _write(out / "scripts" / f"{prefix}-{EMBEDDED_SCRIPTS[marker]}.sh", script)
    embedded = heredocs(str(command.plain("create") or ""))
    if "JOIN_CONFIG" in embedded:
        # The real credentials only exist while the join runs: fill in the dry run's fake ones.
        config = embedded["JOIN_CONFIG"].replace(TOKEN_PLACEHOLDER, FAKE_TOKEN)
        _write(out / "kubeadm" / f"{command.name}-config.yaml", config.replace(CA_CERT_HASH_PLACEHOLDER, FAKE_CA_HASH))


def seed_files(evaluation: Evaluation) -> dict[str, dict[str, str]]:
    """node -> the files its seed ISO was built from (they sit beside it, see components/artifacts/seed.py)."""
    files = {}
    for volume in evaluation.of_type("libvirt:index/volume:Volume"):
        if volume.name.endswith("-seed"):
            beside = seed.files_beside(Path(volume.plain("source")))
            files[volume.name.removesuffix("-seed")] = {name: (beside / name).read_text() for name in seed.FILES}
    return files


def write_artifacts(evaluation: Evaluation, out: Path) -> None:
    for node, files in seed_files(evaluation).items():
        for filename, text in files.items():
            _write(out / "nodes" / node / filename, text)
        # user-data holds the node's private host key: readable by you only, as the stack secret it is.
        (out / "nodes" / node / "user-data").chmod(0o600)
    for command in evaluation.of_type("command:remote:Command") + evaluation.of_type("command:local:Command"):
        for phase in ("create", "update", "delete"):
            script = command.plain(phase)
            if script:
                _write(out / "scripts" / _script_name(command, phase), script)
        stdin = command.plain("stdin")
        if stdin and command.name.endswith("-init"):
            _write(out / "kubeadm" / "kubeadm-config.yaml", stdin)
        if stdin and "kind: UpgradeConfiguration" in stdin:
            _write(out / "kubeadm" / "upgrade-config.yaml", stdin)
        _write_embedded(command, out)
    objects = [r for r in kubernetes_objects(evaluation) if not r.type.startswith("pulumi:providers")]
    for index, resource in enumerate(in_apply_order(evaluation, objects)):
        _write(
            out / "manifests" / f"{index:02d}-{resource.name}.yaml", yaml.safe_dump(manifest(resource), sort_keys=False)
        )


def summary(evaluation: Evaluation) -> dict[str, Any]:
    (network,) = evaluation.of_type("libvirt:index/network:Network")
    commands = evaluation.of_type("command:remote:Command")
    ready = {c.name.removesuffix("-ready"): c for c in commands if c.name.endswith("-ready")}
    nodes = []
    for listed in evaluation.outputs["nodes"]["value"]:
        name = listed["name"]
        domain = evaluation.named(f"{name}-vm")
        nic = domain.plain("networkInterfaces")[0]
        nodes.append(
            {
                "name": name,
                "libvirt_name": domain.plain("name"),
                "role": listed["role"],
                "ip": listed["ip"],
                "mac": nic["mac"],
                "fqdn": f"{name}.{network.plain('domain')}",
                "vcpu": int(domain.plain("vcpu")),
                "memory_mib": int(domain.plain("memory")),
                "disk_gib": int(evaluation.named(f"{name}-disk").plain("size")) // 1024**3,
                "host_key": ready[name].plain("connection")["hostKey"],
            }
        )
    cidr = network.plain("addresses")[0]
    dns = network.plain("dns")
    first_user = next(iter(evaluation.of_type("command:remote:Command")))
    return {
        "stack": evaluation.stack,
        "ssh_user": first_user.plain("connection")["user"],
        "network": {
            "name": network.plain("name"),
            "bridge": network.plain("bridge"),
            "cidr": cidr,
            "gateway": _gateway(cidr),
            "domain": network.plain("domain"),
            "dns_hosts": dns["hosts"],
        },
        "nodes": nodes,
    }


def _gateway(cidr: str) -> str:
    return str(ipaddress.ip_network(cidr).network_address + 1)


def write_graph(evaluation: Evaluation, graph: dict[str, set[str]], out: Path) -> Path:
    lines = ["digraph kube_on_air {", "  rankdir=LR;", "  node [shape=box, fontsize=10];"]
    for urn in sorted(graph):
        resource = evaluation.by_urn[urn]
        label = f"{short(urn)}\\n{resource.type.split(':')[-1]}"
        lines.append(f'  "{short(urn)}" [label="{label}"];')
        for dep in sorted(graph[urn]):
            lines.append(f'  "{short(dep)}" -> "{short(urn)}";')
    lines.append("}")
    dot = out / "graph.dot"
    _write(dot, "\n".join(lines) + "\n")
    if shutil.which("dot"):
        subprocess.run(["dot", "-Tsvg", str(dot), "-o", str(out / "graph.svg")], check=True, timeout=120)
    return dot


def render_stack(stack: str, overrides: dict[str, str], out_dir: Path) -> Path:
    """Evaluate `stack` with `overrides` as `pulumi up` would and write all its artifacts into `out_dir`.

    A config mistake raises the program's own ConfigError, with the fix phrased for this path.
    """
    config = config_with(stack, overrides)
    try:
        load_namespaced(config, stack)
    except ConfigError as err:
        raise ConfigError(err.problems, how_to_fix(stack)) from None
    if seed.iso_tool() is None:
        # As `pulumi preview` would (its preflight says the same), before anything is written.
        raise RenderError(
            f"{seed.NO_TOOL}: each node's cloud-init seed is an ISO built "
            "on this machine; install one: sudo apt-get install genisoimage"
        )
    evaluation = evaluate(stack, config, test_host_key_dir=False)
    if evaluation.error:
        raise RuntimeError(evaluation.error)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    write_artifacts(evaluation, out_dir)
    _write(out_dir / "summary.json", json.dumps(summary(evaluation), indent=2) + "\n")
    graph = dependency_graph(evaluation)
    write_graph(evaluation, graph, out_dir)
    chain = longest_chain(graph)
    counts = Counter(r.type for r in evaluation.resources if r.custom)
    report = {
        "resources": dict(sorted(counts.items())),
        "longest_chain": [short(u) for u in chain],
        "evaluation_seconds": round(evaluation.seconds, 2),
    }
    _write(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    return out_dir


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", default="air")
    parser.add_argument("--out", default=str(ROOT / "build"))
    parser.add_argument(
        "--set", action="append", default=[], type=set_option, metavar="KEY=VALUE", help="override a config key"
    )
    args = parser.parse_args(argv)
    try:
        stack_file(args.stack)
        out = render_stack(args.stack, dict(args.set), Path(args.out) / args.stack)
    except (RenderError, ConfigError) as err:
        print(err, file=sys.stderr)
        return 1
    report = json.loads((out / "report.json").read_text())
    print(f"rendered stack {args.stack} into {out} in {report['evaluation_seconds']} s")
    for type_, count in report["resources"].items():
        print(f"  {count:4d}  {type_}")
    chain = report["longest_chain"]
    print(f"longest dependency chain ({len(chain)} resources): {' -> '.join(chain)}")
    if not (out / "graph.svg").exists():
        print(
            f"graph.svg not written: graphviz's `dot` is not on PATH ({out / 'graph.dot'} is); "
            "install it with: sudo apt-get install graphviz",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
