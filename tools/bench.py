"""`make bench`: evaluation time and longest dependency chain for 1+3, 1+30 and 1+100 nodes.

Usage: python -m tools.bench [--sizes 3,30,100] [--out build/bench.json]
The libvirt creates line up, one node after another (seed, disk, VM: seconds each; see
components/cluster.py); every long step (a node's boot wait, its join) runs in parallel. So the longest
chain may grow by those three per node and by nothing else: exits 1 when the rest of it differs
between sizes, or when it holds more than one node's boot wait or join (or an evaluation fails).
"""

from __future__ import annotations

import argparse
import json
import re
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
LINED_UP_PER_NODE = 3  # seed, disk, VM
# A node's boot wait and its join (node names are head<id> and work<id>).
LONG_STEP = re.compile(r"[a-z]+\d+-(ready|kubeadm-join)")
LONG_STEPS_PER_CHAIN = 2


@dataclass(frozen=True)
class Measurement:
    workers: int
    resources: int
    evaluation_seconds: float
    graph_seconds: float
    chain_length: int
    chain: list[str]

    @property
    def beyond_libvirt(self) -> int:
        """The chain without the libvirt creates that line up per node."""
        return self.chain_length - LINED_UP_PER_NODE * (self.workers + 1)

    @property
    def long_steps(self) -> int:
        return sum(1 for name in self.chain if LONG_STEP.fullmatch(name))


def measure(workers: int, ssh_key: Path) -> Measurement:
    overrides = {"workerCount": str(workers), "firstWorkerId": str(FIRST_WORKER_ID), "sshKeyPath": str(ssh_key)}
    evaluation = evaluate(STACK, config_with(STACK, overrides), timeout=600)
    if evaluation.error:
        raise RuntimeError(f"{workers} workers: the program failed: {evaluation.error}")
    started = time.perf_counter()
    chain = longest_chain(dependency_graph(evaluation))
    graph_seconds = time.perf_counter() - started
    return Measurement(
        workers=workers,
        resources=sum(1 for r in evaluation.resources if r.custom),
        evaluation_seconds=round(evaluation.seconds, 2),
        graph_seconds=round(graph_seconds, 3),
        chain_length=len(chain),
        chain=[short(urn) for urn in chain],
    )


def table(rows: list[Measurement]) -> str:
    lines = [f"{'nodes':>7} {'resources':>9} {'evaluate s':>10} {'graph s':>8} {'chain':>5}"]
    for m in rows:
        nodes = f"1+{m.workers}"
        lines.append(
            f"{nodes:>7} {m.resources:>9} {m.evaluation_seconds:>10.2f} {m.graph_seconds:>8.3f} {m.chain_length:>5}"
        )
    return "\n".join(lines)


def run(sizes: tuple[int, ...], out: Path) -> int:
    with tempfile.TemporaryDirectory(prefix="koa-bench-") as tmp:
        key = make_ssh_key(Path(tmp))
        rows = [measure(n, key) for n in sizes]
    lengths = {m.beyond_libvirt for m in rows}
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
            f"FAIL: beyond the libvirt creates the longest chain grows with the worker count: {sorted(lengths)}",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="worker counts, comma-separated")
    parser.add_argument("--out", default=str(ROOT / "build" / "bench.json"))
    args = parser.parse_args(argv)
    return run(tuple(int(s) for s in args.sizes.split(",")), Path(args.out))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
