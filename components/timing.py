"""Per-phase timing of `pulumi up`: a clock reading taken on the Pulumi host as each phase completes."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from pulumi_command import local

# Prints seconds since the epoch; runs only when its phase is (re)created, so the readings describe
# the run that built the cluster, and inputs stay free of timestamps.
CLOCK = "date +%s.%N"


@dataclass(frozen=True)
class PhaseClockArgs:
    # Phase name -> the resources whose completion ends that phase, in order of the run.
    phases: dict[str, list[pulumi.Resource]]


def seconds_since_start(readings: dict[str, str]) -> dict[str, float]:
    """Seconds from the start marker to each phase; phases without a reading are left out."""
    start = readings.get("start", "").strip()
    if not start:
        return {}
    return {
        phase: round(float(value) - float(start), 1)
        for phase, value in readings.items()
        if phase != "start" and value.strip()
    }


def epoch(reading: str) -> float | None:
    return round(float(reading), 3) if reading.strip() else None


class PhaseClock(pulumi.ComponentResource):
    seconds: pulumi.Output[dict[str, float]]
    # When the run that built the cluster started (seconds since the epoch): places `seconds`
    # beside the times the nodes recorded (make timeline).
    started_at: pulumi.Output[float | None]

    def __init__(self, name: str, args: PhaseClockArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kube-on-air:timing:PhaseClock", name, None, opts)
        start = local.Command(f"{name}-start", create=CLOCK, opts=pulumi.ResourceOptions(parent=self))
        readings: dict[str, pulumi.Output[str]] = {"start": start.stdout}
        for phase, done in args.phases.items():
            marker = local.Command(
                f"{name}-{phase}",
                create=CLOCK,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[start, *done]),
            )
            readings[phase] = marker.stdout
        self.seconds = pulumi.Output.all(**readings).apply(seconds_since_start)
        self.started_at = start.stdout.apply(epoch)
        self.register_outputs({"seconds": self.seconds, "started_at": self.started_at})
