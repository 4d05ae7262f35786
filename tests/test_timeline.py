"""tools/timeline.py: the record of a run, its critical path and its SVG (make timeline, the e2e report)."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from tests.standins import stand_in
from tests.validators import require_valid, validate_shell_files
from tools import timeline
from tools.timeline import Record, Step

SVG = "{http://www.w3.org/2000/svg}"
FIXTURE = Path(__file__).parent / "fixtures" / "timeline-e2e.json"
T0 = 1_000_000.0


def step(node: str, name: str, start: float, end: float) -> Step:
    return Step(node, name, T0 + start, T0 + end)


def test_the_critical_path_walks_back_from_the_last_step_through_what_each_waited_for() -> None:
    boot = step("head10", "boot to cloud-init done", 5, 80)
    init = step("head10", "kubeadm init", 90, 160)
    join = step("work11", "kubeadm join", 170, 176)
    # Ends after the probe began: ran beside it, did not hold it up.
    worker_boot = step("work11", "boot to cloud-init done", 5, 78)
    router = step("head10", "kube-router Ready", 200, 221)
    late_router = step("work11", "kube-router Ready", 201, 260)
    probe = step("work11", "probe Ready", 222, 300)
    path = timeline.critical_path([worker_boot, probe, late_router, join, router, init, boot])
    assert path == [boot, init, join, router, probe]


def test_a_step_may_begin_within_the_clocks_slack_of_its_cause() -> None:
    init = step("head10", "kubeadm init", 0, 50)
    join = step("work11", "kubeadm join", 49, 60)
    assert timeline.critical_path([join, init]) == [init, join]
    early = step("work11", "kubeadm join", 50 - timeline.SLACK_SECONDS - 1, 60)
    assert timeline.critical_path([early, init]) == [early]


def test_node_readings_become_boot_and_init_or_join_steps() -> None:
    files = {
        timeline.INIT_STARTED: T0 + 90,
        timeline.INIT_DONE: T0 + 160,
        timeline.JOIN_STARTED: T0 + 95,
        timeline.JOIN_DONE: None,
    }
    readings = {"boot": T0 + 5, "cloudInitDone": T0 + 80, "files": files}
    assert timeline.node_steps("head10", True, readings) == [
        step("head10", "boot to cloud-init done", 5, 80),
        step("head10", "kubeadm init", 90, 160),
    ]
    # A worker whose join never finished has no join step, and no boot step before cloud-init is done.
    assert timeline.node_steps("work11", False, {**readings, "cloudInitDone": None}) == []


def pod(node: str, created: str, ready_at: str, ready: str = "True") -> dict[str, Any]:
    return {
        "metadata": {"creationTimestamp": created},
        "spec": {"nodeName": node},
        "status": {"conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": ready_at}]},
    }


def test_pods_are_timed_from_created_to_ready_and_unready_ones_left_out() -> None:
    pods = {
        "items": [
            pod("head10", "2026-12-05T16:30:00Z", "2026-12-05T16:30:21Z"),
            pod("work11", "2026-12-05T16:30:01Z", "2026-12-05T16:30:02Z", ready="False"),
        ]
    }
    (only,) = timeline.pod_steps("probe Ready", pods)
    assert (only.node, only.name, only.seconds) == ("head10", "probe Ready", 21.0)


def test_the_readings_script_runs_and_prints_what_collect_reads(tmp_path: Path) -> None:
    """Run here for real (sudo a stand-in): this machine's boot time, and no kubeadm files."""
    bin_dir = tmp_path / "bin"
    stand_in(bin_dir, "sudo", '#!/bin/bash\nexec "$@"\n')
    done = subprocess.run(
        ["/bin/bash", "-c", timeline.readings_script()],
        capture_output=True,
        text=True,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
        check=True,
    )
    readings = json.loads(done.stdout)
    assert set(readings["files"]) == {
        timeline.INIT_STARTED,
        timeline.INIT_DONE,
        timeline.JOIN_STARTED,
        timeline.JOIN_DONE,
    }
    boot = float(Path("/proc/uptime").read_text().split()[0])
    assert abs(readings["boot"] + boot - __import__("time").time()) < 5


def test_the_readings_script_passes_shellcheck(tmp_path: Path) -> None:
    script = tmp_path / "timeline-readings.sh"
    script.write_text(timeline.readings_script())
    require_valid(validate_shell_files([script]))


def test_collect_puts_the_nodes_the_pods_and_the_phase_clock_in_one_record() -> None:
    outputs = {
        "nodes": [{"name": "head10", "role": "control-plane"}, {"name": "work11", "role": "worker"}],
        "phaseSeconds": {"kubeadm-init": 160.0, "api-steady": 195.0, "workloads-ready": 300.0},
        "phaseStartedAt": T0,
    }
    init_files = {timeline.INIT_STARTED: T0 + 90, timeline.INIT_DONE: T0 + 160}
    join_files = {timeline.JOIN_STARTED: T0 + 170, timeline.JOIN_DONE: T0 + 176}
    readings = {
        "head10": {"boot": T0 + 5, "cloudInitDone": T0 + 80, "files": init_files},
        "work11": {"boot": T0 + 5, "cloudInitDone": T0 + 78, "files": join_files},
    }
    asked: list[tuple[str, ...]] = []

    def kubectl_json(*args: str) -> dict[str, Any]:
        asked.append(args)
        return {"items": [pod("work11", "2026-12-05T16:30:00Z", "2026-12-05T16:30:30Z")]}

    record = timeline.collect("e2e", outputs, lambda node, _: json.dumps(readings[node]), kubectl_json, 312.5)
    assert record.wall_seconds == 312.5 and record.started_at == T0 and record.nodes == ["head10", "work11"]
    assert [(s.node, s.name) for s in record.steps] == [
        ("head10", "boot to cloud-init done"),
        ("head10", "kubeadm init"),
        ("work11", "boot to cloud-init done"),
        ("work11", "kubeadm join"),
        ("work11", "kube-router Ready"),
        ("work11", "probe Ready"),
        ("pulumi", "API gate"),
    ]
    assert record.steps[-1].seconds == 35.0, "the gate runs from init's phase mark to its own"
    assert ("get", "pods", "-n", "kube-on-air", "-l", "app=probe") in asked
    assert Record.from_json(record.to_json()) == record
    assert timeline.critical_path_seconds(record), "the record has a critical path of node steps"


def test_the_overhead_ratio_divides_by_the_node_steps_on_the_critical_path_only() -> None:
    steps = [
        step("head10", "boot to cloud-init done", 0, 70),
        step("head10", "kubeadm init", 72, 150),
        step("pulumi", "API gate", 150, 190),
        step("work11", "kubeadm join", 160, 166),  # beside the gate: not on the path
        step("head10", "kube-router Ready", 192, 210),
        step("head10", "probe Ready", 212, 260),
    ]
    record = Record(stack="e2e", started_at=T0, phases={}, steps=steps, wall_seconds=265.0, nodes=["head10", "work11"])
    assert timeline.critical_path_seconds(record) == {
        "head10 boot to cloud-init done": 70.0,
        "head10 kubeadm init": 78.0,
        "head10 kube-router Ready": 18.0,
        "head10 probe Ready": 48.0,
    }
    assert timeline.overhead_ratio(record) == round(265 / 214, 2)


@pytest.fixture
def recorded() -> Record:
    return Record.from_json(FIXTURE.read_text())


def rects(tree: ET.Element) -> list[ET.Element]:
    return [r for r in tree.iter(f"{SVG}rect") if r.get("data-step")]


def test_the_svg_of_a_recorded_run_draws_each_step_to_scale_and_marks_the_critical_path(recorded: Record) -> None:
    tree = ET.fromstring(timeline.svg(recorded))
    bars = rects(tree)
    assert len(bars) == len(recorded.steps)
    drawn = {(b.get("data-node"), b.get("data-step")): b for b in bars}
    assert set(drawn) == {(s.node, s.name) for s in recorded.steps}
    scale = (timeline.WIDTH - timeline.LEFT - timeline.RIGHT) / recorded.wall_seconds
    for s in recorded.steps:
        bar = drawn[(s.node, s.name)]
        assert float(bar.get("x", "")) == pytest.approx(
            timeline.LEFT + (s.start - recorded.started_at) * scale, abs=0.1
        )
        assert float(bar.get("width", "")) == pytest.approx(max(1.0, (s.end - s.start) * scale), abs=0.1)
    critical = [(b.get("data-node"), b.get("data-step")) for b in bars if "critical" in (b.get("class") or "")]
    path = timeline.critical_path(recorded.steps)
    assert sorted(critical) == sorted((s.node, s.name) for s in path)
    # The run ends in the last probe; its control plane's init is on the way there.
    assert path[-1].name == "probe Ready" and any(s.name == "kubeadm init" for s in path)
    gaps = [g for g in tree.iter(f"{SVG}line") if g.get("data-seconds")]
    waited = sum(float(g.get("data-seconds", "")) for g in gaps)
    assert 0 < waited < recorded.wall_seconds
    phases = {t.get("data-phase") for t in tree.iter(f"{SVG}text") if t.get("data-phase")}
    assert phases == set(recorded.phases)
    title = tree.find(f"{SVG}title")
    assert title is not None and f"{recorded.wall_seconds:.1f} s" in (title.text or "")


def test_make_timeline_draws_a_recorded_run(tmp_path: Path) -> None:
    out = tmp_path / "timeline.svg"
    assert timeline.main(["--record", str(FIXTURE), "--out", str(out)]) == 0
    assert rects(ET.fromstring(out.read_text()))
