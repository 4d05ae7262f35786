"""The e2e report: every pulumi command's wall time, phaseSeconds, resource counts, and the
orchestration overhead of the first `up`: its wall time against the node steps on the run's critical
path (tools/timeline.py: boot to cloud-init done, kubeadm init, kube-router and the probe Ready, as the
nodes and the API server timed them). The API gate, the waits between steps and what ran beside the
path are ours. The ratio is the figure to compare between runs and machines."""

from __future__ import annotations

from typing import Any

from tests.e2e.stack import E2EStack, changes


def build(stack: E2EStack, extra: dict[str, Any]) -> dict[str, Any]:
    commands = [
        {
            "name": r.name,
            "command": "pulumi " + " ".join(r.args),
            "seconds": r.seconds,
            "exit": "killed on purpose" if r.returncode is None else r.returncode,
            "changes": changes(r),
        }
        for r in stack.records
        if not r.name.startswith(("config-", "stack-init"))
    ]
    data: dict[str, Any] = {"commands": commands, **extra}
    critical = extra.get("critical_path_seconds")
    first_up = next((c for c in commands if c["name"] == "up-first"), None)
    if critical and first_up:
        total = round(sum(critical.values()), 1)
        data["critical_path_total_seconds"] = total
        data["orchestration_overhead_ratio"] = round(first_up["seconds"] / total, 2) if total else None
    return data


def table(data: dict[str, Any]) -> str:
    lines = [f"{'step':<28} {'seconds':>9}  exit  changes"]
    for c in data["commands"]:
        changed = ", ".join(f"{op} {n}" for op, n in sorted(c["changes"].items()))
        lines.append(f"{c['name']:<28} {c['seconds']:>9.1f}  {c['exit']!s:<4}  {changed}")
    dicts = ("phase_seconds", "critical_path_seconds", "control_plane_restarts", "resource_counts")
    for key in (*dicts, "conformance_control_plane_restarts"):
        if key in data:
            lines.append(f"{key}: " + ", ".join(f"{k} {v}" for k, v in data[key].items()))
    singles = ("critical_path_total_seconds", "orchestration_overhead_ratio", "dev_kvm", "not_run")
    for key in (*singles, "conformance", "conformance_etcd_request_timeouts"):
        if key in data:
            lines.append(f"{key}: {data[key]}")
    for version, upgrade in data.get("upgrades", {}).items():
        lines.append(f"upgrade to {version}: " + ", ".join(f"{k} {v}" for k, v in upgrade.items()))
    return "\n".join(lines)
