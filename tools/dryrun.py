"""Evaluate the Pulumi program under Pulumi's mock runtime and collect what it registers.

Each evaluation runs in a fresh interpreter (`python -m tools.dryrun`), so stacks never share
runtime state; the child prints one JSON document that `evaluate` turns into an `Evaluation`.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "kube-on-air"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
SECRET_KEY = "4dabf18193072939515e22adb298388d"
# Join credentials in the shape kubeadm prints them (they only exist while a join runs).
FAKE_CA_HASH = "sha256:" + "ab" * 32
FAKE_TOKEN = "abcdef.0123456789abcdef"
FAKE_CA_DATA = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nZm9v\n-----END CERTIFICATE-----\n").decode()
FAKE_SA_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJrdWJlLW9uLWFpciJ9.c3RhbmQtaW4"
# What the control plane's provider-credentials script prints (components/artifacts/access.py).
FAKE_PROVIDER_ACCESS = f"kube-on-air-air\nhttps://172.31.255.10:6443\n{FAKE_CA_DATA}\n{FAKE_SA_TOKEN}\n"


@dataclass(frozen=True)
class Resource:
    type: str
    name: str
    urn: str
    parent: str
    custom: bool
    provider: str
    dependencies: list[str]
    property_dependencies: dict[str, list[str]]
    inputs: dict[str, Any]
    additional_secret_outputs: list[str]
    retain_on_delete: bool
    # Resource option customTimeouts: operation -> duration ("600s"); only the ones set.
    custom_timeouts: dict[str, str]
    replace_on_changes: list[str]
    # Resource options import (the id to adopt) and ignoreChanges.
    import_id: str = ""
    ignore_changes: list[str] = field(default_factory=list)
    delete_before_replace: bool = False

    def plain(self, key: str) -> Any:
        return unwrap(self.inputs.get(key))

    def is_secret(self, key: str) -> bool:
        return is_secret(self.inputs.get(key))


@dataclass
class Evaluation:
    stack: str
    resources: list[Resource]
    outputs: dict[str, Any]
    error: str | None
    seconds: float
    by_urn: dict[str, Resource] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_urn = {r.urn: r for r in self.resources}

    def of_type(self, type_: str) -> list[Resource]:
        return [r for r in self.resources if r.type == type_]

    def named(self, name: str) -> Resource:
        matches = [r for r in self.resources if r.name == name]
        assert len(matches) == 1, f"expected one resource named {name}, found {len(matches)}"
        return matches[0]

    def depends_on(self, resource: Resource) -> set[str]:
        """URNs this resource waits for: explicit, through inputs, and through its parent chain's deps."""
        found: set[str] = set(resource.dependencies)
        for deps in resource.property_dependencies.values():
            found.update(deps)
        if resource.provider:
            # A provider reference is "<urn>::<id>"; resources wait for their provider.
            found.add(resource.provider.rsplit("::", 1)[0])
        return found

    def transitive_dependencies(self, resource: Resource) -> set[str]:
        seen: set[str] = set()
        stack = [resource.urn]
        while stack:
            current = self.by_urn.get(stack.pop())
            if current is None:
                continue
            for dep in self.depends_on(current):
                if dep not in seen:
                    seen.add(dep)
                    stack.append(dep)
                    # Depending on a component means depending on everything inside it.
                    stack.extend(c.urn for c in self.children(dep) if c.urn not in seen)
        return seen

    def children(self, urn: str) -> Iterator[Resource]:
        for r in self.resources:
            if r.parent == urn:
                yield r
                yield from self.children(r.urn)


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SECRET_KEY) == SECRET_SIG


def unwrap(value: Any) -> Any:
    if is_secret(value):
        return unwrap(value["value"])
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def evaluate(
    stack: str,
    config: dict[str, str],
    preview: bool = False,
    timeout: float = 120,
    preflight: bool = False,
    ids: dict[str, str] | None = None,
    test_host_key_dir: bool = True,
) -> Evaluation:
    """Run __main__.py for `stack` with `config` (keys with namespace, values as strings).

    Every resource gets the id "<name>-id" unless `ids` (resource name -> id) says otherwise: a
    different id stands for a resource the provider replaced (e.g. a rebuilt VM).
    The host preflight is off unless asked for: it inspects this machine, not the stack's host.
    Node host keys are kept beside the test's SSH key unless the config names a directory, so tests
    never write under $HOME and two evaluations with the same key share their host keys;
    `test_host_key_dir=False` leaves hostKeyDir to the program, as `pulumi up` would (make render).
    """
    if test_host_key_dir:
        config = with_test_host_key_dir(stack, config)
    request = json.dumps({"stack": stack, "config": config, "preview": preview, "ids": ids or {}})
    started = time.perf_counter()
    child = subprocess.run(
        [sys.executable, "-m", "tools.dryrun"],
        input=request,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT), "KUBE_ON_AIR_SKIP_PREFLIGHT": "0" if preflight else "1"},
    )
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        raise RuntimeError(f"dry-run child failed ({child.returncode}):\n{child.stderr[-4000:]}")
    result = json.loads(child.stdout)
    resources = [Resource(**r) for r in result["resources"]]
    return Evaluation(stack, resources, result["outputs"], result["error"], seconds)


def with_test_host_key_dir(stack: str, config: dict[str, str]) -> dict[str, str]:
    key_path = config.get("kube-on-air:sshKeyPath")
    if key_path is None or "kube-on-air:hostKeyDir" in config:
        return config
    return {**config, "kube-on-air:hostKeyDir": str(Path(key_path).parent / "host-keys" / stack)}


def make_ssh_key(directory: Path) -> Path:
    """A throwaway ed25519 login key pair (no passphrase) in `directory`, as tests configure sshKeyPath."""
    key = directory / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
    return key


def stack_config(stack: str) -> dict[str, str]:
    """Config of Pulumi.<stack>.yaml as the engine would pass it (structured values as JSON)."""
    import yaml

    data = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in data.items()}


# ---- child side -----------------------------------------------------------------------------


def _fake_state(type_: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    state = dict(inputs)
    if type_ == "command:remote:Command" and name.endswith("-kubeconfig"):
        state["stdout"] = FAKE_PROVIDER_ACCESS
    elif type_ == "command:local:Command" and inputs.get("create") == "date +%s.%N":
        # Phase clock readings: the start marker, then every phase 42.5 s later.
        state["stdout"] = "1000.0\n" if name.endswith("-start") else "1042.5\n"
    elif type_.startswith("command:"):
        state.setdefault("stdout", "")
    return state


def _run_child(request: dict[str, Any]) -> dict[str, Any]:

    import pulumi
    from pulumi.runtime import mocks, rpc
    from pulumi.runtime import stack as runtime_stack

    records: list[dict[str, Any]] = []
    outputs: dict[str, Any] = {}
    ids: dict[str, str] = request["ids"]

    class Mocks(pulumi.runtime.Mocks):
        def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[Any, Any]]:
            return ids.get(args.name, f"{args.name}-id"), _fake_state(args.typ, args.name, args.inputs)

        def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[Any, Any], list[tuple[str, str]] | None]:
            raise NotImplementedError(f"the program made an unexpected invoke: {args.token}")

    class RecordingMonitor(mocks.MockMonitor):
        def RegisterResource(self, request: Any) -> Any:
            response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
            if request.type != "pulumi:pulumi:Stack":
                records.append(
                    {
                        "type": request.type,
                        "name": request.name,
                        "urn": response.urn,
                        "parent": request.parent,
                        "custom": bool(request.custom),
                        "provider": request.provider,
                        "dependencies": sorted(request.dependencies),
                        "property_dependencies": {
                            k: sorted(v.urns) for k, v in sorted(request.propertyDependencies.items())
                        },
                        "inputs": rpc.deserialize_properties(request.object),
                        "additional_secret_outputs": list(request.additionalSecretOutputs),
                        "retain_on_delete": bool(request.retainOnDelete),
                        "custom_timeouts": _custom_timeouts(request),
                        "replace_on_changes": sorted(request.replaceOnChanges),
                        "import_id": request.importId,
                        "ignore_changes": sorted(request.ignoreChanges),
                        "delete_before_replace": bool(request.deleteBeforeReplace),
                    }
                )
            return response

    pulumi.runtime.set_mocks(
        Mocks(),
        project=PROJECT,
        stack=request["stack"],
        preview=request["preview"],
        monitor=RecordingMonitor(Mocks()),
    )
    pulumi.runtime.set_all_config(request["config"])
    error: str | None = None
    try:
        sync_await(runtime_stack.run_pulumi_func(_run_program))
        outputs.update(_stack_outputs())
    except Exception as err:
        error = f"{type(err).__name__}: {err}"
    return {"resources": records, "outputs": outputs, "error": error}


def _custom_timeouts(request: Any) -> dict[str, str]:
    timeouts = request.customTimeouts
    return {op: getattr(timeouts, op) for op in ("create", "update", "delete") if getattr(timeouts, op)}


def _run_program() -> None:
    import runpy

    runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")


def sync_await(awaitable: Any) -> Any:
    """Pulumi's own helper for driving its event loop synchronously (not exported publicly)."""
    from pulumi.runtime import mocks

    return mocks._sync_await(awaitable)  # type: ignore[attr-defined]


def _stack_outputs() -> dict[str, Any]:
    """Exports with their secretness, as {"value": ..., "secret": bool}."""
    import pulumi
    from pulumi.runtime.settings import get_root_resource

    root = get_root_resource()
    exported: dict[str, Any] = {}
    for key, value in getattr(root, "outputs", {}).items():
        output = pulumi.Output.from_input(value)
        exported[key] = {
            "value": sync_await(output.future()),
            "secret": sync_await(output.is_secret()),
        }
    return exported


def _json_default(value: Any) -> Any:
    return repr(value)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    result = _run_child(json.loads(sys.stdin.read()))
    sys.stdout.write(json.dumps(result, default=_json_default, sort_keys=True))
