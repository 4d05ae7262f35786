"""`make timeline`: where a stack's first `up` spent its time, drawn as an SVG.

Usage: python -m tools.timeline --stack air --kubeconfig build/air/kubeconfig --out build/air/timeline.svg
       python -m tools.timeline --record build/e2e/timeline.json --out build/e2e/timeline.svg

A run's record holds what the nodes timed (boot, cloud-init done, kubeadm init or join: from
their clocks and files), what the API server timed (each node's kube-router and probe pod, created
to Ready) and the Pulumi host's phase clock (`phaseStartedAt` + `phaseSeconds`). The critical path
is found backwards from the step that ended last: each time the step that ended last before it began.
The dashed gaps between critical steps are the time no node step was running on that path: ours.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from components.artifacts.render import render

# Files whose last write marks a step, as the node scripts leave them.
INIT_STARTED = "/var/lib/kube-on-air/kubeadm-config.yaml"
INIT_DONE = "/var/lib/kube-on-air/kubeadm-init.done"
JOIN_STARTED = "/etc/kubernetes/pki/ca.crt"
JOIN_DONE = "/etc/kubernetes/kubelet.conf"
# Pods timed from created to Ready, one per node: (step, namespace, label selector).
POD_STEPS = (
    ("kube-router Ready", "kube-system", "k8s-app=kube-router"),
    ("probe Ready", "kube-on-air", "app=probe"),
)
# The one wait of the Pulumi host between init and the Kubernetes layer, from its phase marks.
GATE = "API gate"
PULUMI_ROW = "pulumi"
STEP_ORDER = (GATE, "boot to cloud-init done", "kubeadm init", "kubeadm join", *(s for s, _, _ in POD_STEPS))
# Node clocks and the host's drift a little: a step may begin this much before its cause ended.
SLACK_SECONDS = 1.5

RunOn = Callable[[str, str], str]
KubectlJson = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class Step:
    node: str
    name: str
    start: float  # seconds since the epoch
    end: float

    @property
    def seconds(self) -> float:
        return round(self.end - self.start, 1)


@dataclass(frozen=True)
class Record:
    stack: str
    started_at: float  # the phase clock's start, seconds since the epoch
    phases: dict[str, float]  # phaseSeconds: seconds from started_at
    steps: list[Step]
    wall_seconds: float  # the `up` itself when known, else its last phase
    nodes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Record:
        data = json.loads(text)
        return cls(**{**data, "steps": [Step(**s) for s in data["steps"]]})


# ---- reading a live stack -------------------------------------------------------------------------


def readings_script() -> str:
    return render("report/timeline-readings.sh.j2", files=[INIT_STARTED, INIT_DONE, JOIN_STARTED, JOIN_DONE])


def node_steps(node: str, control_plane: bool, readings: dict[str, Any]) -> list[Step]:
    files: dict[str, float | None] = readings["files"]
    steps = []
    if readings.get("cloudInitDone"):
        steps.append(Step(node, "boot to cloud-init done", readings["boot"], readings["cloudInitDone"]))
    started, done = (INIT_STARTED, INIT_DONE) if control_plane else (JOIN_STARTED, JOIN_DONE)
    start, end = files.get(started), files.get(done)
    if start and end:
        steps.append(Step(node, "kubeadm init" if control_plane else "kubeadm join", start, end))
    return steps


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def pod_steps(name: str, pods: dict[str, Any]) -> list[Step]:
    """One step per Ready pod: created to Ready, as the API server recorded them."""
    steps = []
    for pod in pods["items"]:
        ready = next((c for c in pod["status"].get("conditions", []) if c["type"] == "Ready"), None)
        if ready is None or ready["status"] != "True" or "nodeName" not in pod["spec"]:
            continue
        created = _stamp(pod["metadata"]["creationTimestamp"])
        steps.append(Step(pod["spec"]["nodeName"], name, created, _stamp(ready["lastTransitionTime"])))
    return steps


def collect(
    stack: str,
    outputs: dict[str, Any],
    run_on: RunOn,
    kubectl_json: KubectlJson,
    wall_seconds: float | None = None,
) -> Record:
    """The record of the stack's last `up` that built it, from its outputs, its nodes and its API."""
    nodes = [n["name"] for n in outputs["nodes"]]
    roles = {n["name"]: n["role"] for n in outputs["nodes"]}
    steps: list[Step] = []
    for node in nodes:
        readings = json.loads(run_on(node, readings_script()))
        steps += node_steps(node, roles[node] == "control-plane", readings)
    for name, namespace, selector in POD_STEPS:
        steps += pod_steps(name, kubectl_json("get", "pods", "-n", namespace, "-l", selector))
    phases = {k: float(v) for k, v in outputs["phaseSeconds"].items()}
    started_at = float(outputs["phaseStartedAt"])
    if "kubeadm-init" in phases and "api-steady" in phases:
        steps.append(Step(PULUMI_ROW, GATE, started_at + phases["kubeadm-init"], started_at + phases["api-steady"]))
    return Record(
        stack=stack,
        started_at=started_at,
        phases=phases,
        steps=steps,
        wall_seconds=wall_seconds if wall_seconds is not None else max(phases.values(), default=0.0),
        nodes=nodes,
    )


# ---- the critical path ----------------------------------------------------------------------------


def critical_path(steps: Sequence[Step]) -> list[Step]:
    """From the step that ended last back to the first: each time, the step that ended last before
    the current one began (within SLACK_SECONDS). Returned in run order."""
    if not steps:
        return []
    path = [max(steps, key=lambda s: s.end)]
    while True:
        current = path[-1]
        causes = [
            s for s in steps if s is not current and s.end <= current.start + SLACK_SECONDS and s.end < current.end
        ]
        causes = [s for s in causes if s not in path]
        if not causes:
            return list(reversed(path))
        path.append(max(causes, key=lambda s: s.end))


def critical_path_seconds(record: Record) -> dict[str, float]:
    """The node steps on the critical path, by node and step: what the overhead ratio divides by.
    The API gate, the waits between steps and whatever ran beside the path count as ours: a sum of
    the slowest step of each kind would credit a join or a Ready that overlapped another step."""
    return {f"{s.node} {s.name}": round(s.seconds, 1) for s in critical_path(record.steps) if s.node != PULUMI_ROW}


# ---- the picture ----------------------------------------------------------------------------------

WIDTH = 1100
LEFT = 250
RIGHT = 70
TOP = 90
ROW = 22


def _tick_every(seconds: float) -> int:
    return next((t for t in (10, 30, 60, 120, 300) if seconds / t <= 12), 600)


@dataclass(frozen=True)
class Row:
    step: Step
    y: int
    x: float
    width: float
    critical: bool

    @property
    def label(self) -> str:
        return f"{self.step.node} · {self.step.name}"


@dataclass(frozen=True)
class Gap:
    x1: float
    y1: float
    x2: float
    y2: float
    seconds: float


def _in_row_order(record: Record) -> list[Step]:
    def key(step: Step) -> tuple[int, int]:
        node = record.nodes.index(step.node) if step.node in record.nodes else -1  # the Pulumi host first
        return node, STEP_ORDER.index(step.name)

    return sorted(record.steps, key=key)


def _gaps(on_path: list[Step], rows: dict[Step, Row], x: Callable[[float], float]) -> list[Gap]:
    """A dashed line from each critical step's end to the next one's start, where time passed."""
    return [
        Gap(x(before.end), rows[before].y + 8, x(after.start), rows[after].y + 8, round(after.start - before.end, 1))
        for before, after in itertools.pairwise(on_path)
        if after.start - before.end > 1
    ]


def svg(record: Record) -> str:
    ordered = _in_row_order(record)
    on_path = critical_path(ordered)
    span = max([record.wall_seconds, *(s.end - record.started_at for s in ordered)])
    scale = (WIDTH - LEFT - RIGHT) / span if span else 1.0

    def x(epoch: float) -> float:
        return round(LEFT + (epoch - record.started_at) * scale, 1)

    rows = {
        step: Row(
            step, TOP + i * ROW, x(step.start), max(1.0, round((step.end - step.start) * scale, 1)), step in on_path
        )
        for i, step in enumerate(ordered)
    }
    bottom = TOP + len(rows) * ROW
    every = _tick_every(span)
    node_seconds = round(sum(s.seconds for s in on_path if s.node != PULUMI_ROW), 1)
    return render(
        "report/timeline.svg.j2",
        width=WIDTH,
        height=bottom + 50,
        top=TOP,
        bottom=bottom,
        title=f"pulumi up of stack {record.stack}: {record.wall_seconds:.1f} s",
        subtitle=(
            f"critical path: {node_seconds} s of node steps, {round(record.wall_seconds - node_seconds, 1)} s "
            f"of ours (the API gate, the waits between steps, before and after); "
            f"overhead ratio (wall / node steps on the critical path) {overhead_ratio(record)}"
        ),
        rows=list(rows.values()),
        gaps=_gaps(on_path, rows, x),
        ticks=[{"x": round(LEFT + t * scale, 1), "label": f"{t} s"} for t in range(0, int(span) + 1, every)],
        phases=[
            {"name": name, "seconds": seconds, "x": round(LEFT + seconds * scale, 1), "end": seconds > span * 0.85}
            for name, seconds in sorted(record.phases.items(), key=lambda p: p[1])
        ],
    )


def overhead_ratio(record: Record) -> float | None:
    total = sum(critical_path_seconds(record).values())
    return round(record.wall_seconds / total, 2) if total else None


# ---- make timeline ---------------------------------------------------------------------------------


def _pulumi_outputs(stack: str) -> dict[str, Any]:
    done = subprocess.run(
        ["pulumi", "stack", "output", "--stack", stack, "--json"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"pulumi stack output --stack {stack} failed: {done.stderr.strip()}")
    outputs: dict[str, Any] = json.loads(done.stdout)
    if "phaseStartedAt" not in outputs:
        raise SystemExit(f"stack {stack} has no phaseStartedAt output: run `pulumi up` with this kube-on-air first")
    return outputs


def _ssh_runner(ssh_commands: dict[str, str]) -> RunOn:
    def run_on(node: str, script: str) -> str:
        *options, destination = shlex.split(ssh_commands[node])
        argv = [*options, "-o", "BatchMode=yes", "-o", "ConnectTimeout=20", destination, "bash -s"]
        done = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise SystemExit(f"reading the clocks of {node} failed: {done.stderr.strip()}")
        return done.stdout

    return run_on


def _kubectl(kubeconfig: Path) -> KubectlJson:
    def kubectl_json(*args: str) -> dict[str, Any]:
        done = subprocess.run(
            ["kubectl", "--kubeconfig", str(kubeconfig), *args, "-o", "json"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"kubectl {' '.join(args)} failed: {done.stderr.strip()}")
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    return kubectl_json


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack")
    parser.add_argument("--kubeconfig", type=Path)
    parser.add_argument("--record", type=Path, help="draw a recorded run (its JSON) instead of reading a stack")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.record:
        record = Record.from_json(args.record.read_text())
    elif args.stack and args.kubeconfig:
        outputs = _pulumi_outputs(args.stack)
        record = collect(args.stack, outputs, _ssh_runner(outputs["sshCommands"]), _kubectl(args.kubeconfig))
        args.out.with_suffix(".json").write_text(record.to_json())
    else:
        parser.error("give --record, or --stack and --kubeconfig")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(svg(record))
    print(f"wrote {args.out}: {len(record.steps)} steps, {len(critical_path(record.steps))} on the critical path")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
