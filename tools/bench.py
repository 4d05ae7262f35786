"""`make bench`: evaluation time and longest dependency chain for 1+3, 1+30 and 1+100 nodes.

Usage: python -m tools.bench [--sizes 3,30,100] [--out build/bench.json]
Every node is made at once and every long step (a node's boot wait, its join) runs in parallel, so
the longest chain is the same for every size: exits 1 when it differs between sizes, or when it holds
more than one node's boot wait or join (or an evaluation fails). Evaluation times are the median of
--repeat runs of each size.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tools.dryrun import ROOT, evaluate, make_ssh_key
from tools.render import config_with, dependency_graph, longest_chain, short

STACK = "air"
SIZES = (3, 30, 100)
FIRST_WORKER_ID = 11  # workers 11..110 fit a /24 next to the control plane at .10
# A node's boot wait and its join (node names are head<id> and work<id>).
LONG_STEP = re.compile(r"[a-z]+\d+-(ready|kubeadm-join)")
LONG_STEPS_PER_CHAIN = 2


@dataclass(frozen=True)
class Measurement:
    workers: int
    resources: int
    evaluation_seconds: float  # the median of evaluation_runs
    evaluation_runs: list[float]
    graph_seconds: float
    chain_length: int
    chain: list[str]

    @property
    def long_steps(self) -> int:
        return sum(1 for name in self.chain if LONG_STEP.fullmatch(name))


def measure(workers: int, ssh_key: Path, repeat: int = 1) -> Measurement:
    overrides = {"workerCount": str(workers), "firstWorkerId": str(FIRST_WORKER_ID), "sshKeyPath": str(ssh_key)}
    evaluations = [evaluate(STACK, config_with(STACK, overrides), timeout=600) for _ in range(repeat)]
    evaluation = evaluations[-1]
    if evaluation.error:
        raise RuntimeError(f"{workers} workers: the program failed: {evaluation.error}")
    started = time.perf_counter()
    chain = longest_chain(dependency_graph(evaluation))
    graph_seconds = time.perf_counter() - started
    return Measurement(
        workers=workers,
        resources=sum(1 for r in evaluation.resources if r.custom),
        evaluation_seconds=round(statistics.median(e.seconds for e in evaluations), 2),
        evaluation_runs=[round(e.seconds, 2) for e in evaluations],
        graph_seconds=round(graph_seconds, 3),
        chain_length=len(chain),
        chain=[short(urn) for urn in chain],
    )


def table(rows: list[Measurement]) -> str:
    lines = [f"{'nodes':>7} {'resources':>9} {'evaluate s':>10} {'graph s':>8} {'chain':>5}  (median)"]
    for m in rows:
        nodes = f"1+{m.workers}"
        lines.append(
            f"{nodes:>7} {m.resources:>9} {m.evaluation_seconds:>10.2f} {m.graph_seconds:>8.3f} {m.chain_length:>5}"
        )
    return "\n".join(lines)


def run(sizes: tuple[int, ...], out: Path, repeat: int) -> int:
    with tempfile.TemporaryDirectory(prefix="koa-bench-") as tmp:
        key = make_ssh_key(Path(tmp))
        rows = [measure(n, key, repeat) for n in sizes]
    lengths = {m.chain_length for m in rows}
    constant = len(lengths) == 1 and all(m.long_steps <= LONG_STEPS_PER_CHAIN for m in rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"stack": STACK, "chain_constant": constant, "runs": [asdict(m) for m in rows]}
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(rows))
    print(f"longest chain ({rows[0].chain_length}): {' -> '.join(rows[0].chain)}")
    print(f"wrote {out}")
    if not constant:
        for m in rows:
            print(f"1+{m.workers}: {' -> '.join(m.chain)}", file=sys.stderr)
        print(
            f"FAIL: the longest chain grows with the worker count: {sorted(lengths)}",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="worker counts, comma-separated")
    parser.add_argument("--out", default=str(ROOT / "build" / "bench.json"))
    parser.add_argument("--repeat", type=int, default=5, help="evaluations of each size (the median is reported)")
    args = parser.parse_args(argv)
    return run(tuple(int(s) for s in args.sizes.split(",")), Path(args.out), args.repeat)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
