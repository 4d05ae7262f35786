"""The real Pulumi engine runs the program: `python -m tests.toolchain.engine [--stack air] [--set k=v]`.

The Go module proxy does not serve the Python language host (pulumi-language-python), so the engine
drives the program through the Automation API's inline mode: the toolchain's `pulumi` CLI runs the
deployment and calls back into this process over Pulumi's language protocol for the program. Config
comes from a copy of Pulumi.yaml (its declared defaults apply, as in a real run) and of the stack file,
in a scratch project directory with a local file backend and a throwaway passphrase: the committed
stack files are never touched. Plugins come only from the toolchain's PULUMI_HOME.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pulumi import automation as auto

from tools import toolchain as build
from tools.dryrun import ROOT


def run_program() -> None:
    """The project's own __main__.py, exactly as `pulumi up` would run it."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")


def scratch_project(stack: str, into: Path) -> Path:
    """Pulumi.yaml and the stack's file (if any) copied into `into`, with a state directory."""
    shutil.copy(ROOT / "Pulumi.yaml", into / "Pulumi.yaml")
    stack_file = ROOT / f"Pulumi.{stack}.yaml"
    if stack_file.exists():
        shutil.copy(stack_file, into / f"Pulumi.{stack}.yaml")
    (into / "state").mkdir()
    return into


def engine_stack(stack: str, project_dir: Path, toolchain: Path, program: Callable[[], None]) -> auto.Stack:
    env = {
        "PULUMI_BACKEND_URL": f"file://{project_dir / 'state'}",
        "PULUMI_CONFIG_PASSPHRASE": "kube-on-air-engine-check",
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        "PULUMI_HOME": str(toolchain / "pulumi-home"),
    }
    os.environ.update(env)  # the inline program's own runtime reads them too
    options = auto.LocalWorkspaceOptions(
        work_dir=str(project_dir),
        pulumi_home=str(toolchain / "pulumi-home"),
        env_vars=env,
        secrets_provider="passphrase",
        pulumi_command=auto.PulumiCommand(root=str(toolchain), skip_version_check=False),
    )
    return auto.create_or_select_stack(stack, project_name="kube-on-air", program=program, opts=options)


@dataclass(frozen=True)
class Preview:
    output: str  # what the engine printed
    error: str | None  # the engine's failure, None when the preview ran to its end


def preview(stack: str, settings: dict[str, str]) -> Preview:
    """`pulumi preview` of `stack` with `settings` (keys with or without namespace) by the real engine."""
    toolchain = (build.CACHE / "current").resolve()
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="koa-engine-") as scratch:
        project = scratch_project(stack, Path(scratch))
        engine = engine_stack(stack, project, toolchain, run_program)
        for key, value in settings.items():
            engine.set_config(key if ":" in key else f"kube-on-air:{key}", auto.ConfigValue(value))
        try:
            engine.preview(on_output=lines.append, color="never")
        except auto.CommandError as err:
            return Preview("\n".join(lines), str(err))
    return Preview("\n".join(lines), None)


def preview_in_child(stack: str, settings: dict[str, str]) -> Preview:
    """`preview` in a fresh interpreter: the SDK's runtime state never carries over between runs."""
    sets = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    done = subprocess.run(
        [sys.executable, "-m", "tests.toolchain.engine", "--json", "--stack", stack, *sets],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    return Preview(outcome["output"], outcome["error"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--stack", default="air")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config on top of the stack")
    parser.add_argument("--json", action="store_true", help="print the outcome as one JSON document")
    args = parser.parse_args(argv)
    result = preview(args.stack, dict(item.split("=", 1) for item in args.set))
    if args.json:
        print(json.dumps({"output": result.output, "error": result.error}))
        return 0
    print(result.output)
    if result.error is not None:
        print(f"[engine] preview failed: {result.error.strip().splitlines()[-1]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
