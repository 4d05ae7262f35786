"""Issue 3: every artifact the program hands out passes the tool that will consume it.

Five configurations are rendered once per session (in parallel) and validated with tests/validators.py;
negative tests feed each validator one deliberately broken artifact, derived from a good one, and
check that the rejection names the problem.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.validators import (
    Report,
    StackFacts,
    ToolMissing,
    cloud_init_schema,
    embedded_scripts,
    find_tool,
    load_facts,
    validate_kubeadm_init,
    validate_kubeadm_join,
    validate_manifest,
    validate_manifest_text,
    validate_meta_data,
    validate_network_config,
    validate_rendered,
    validate_shell_texts,
    validate_summary,
    validate_user_data,
)
from tools import bench, render
from tools.render import config_with, longest_chain, render_stack

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

# name -> (stack, overrides without namespace); sshKeyPath is added by the fixture.
CONFIGS: dict[str, tuple[str, dict[str, str]]] = {
    "air": ("air", {}),
    "workers5": ("air", {"workerCount": "5"}),
    "calico": ("air", {"cni": "calico"}),
    "prebaked": ("air", {"prebaked": "true"}),
    # No Pulumi.lab.yaml: the program's defaults apply to everything not set here.
    "lab": ("lab", {"networkCidr": "10.77.0.0/24", "podCidr": "10.200.0.0/16", "workerCount": "1"}),
    # A lone control plane (untainted, no joins) on the oldest supported minor.
    "solo": ("air", {"workerCount": "0", "kubernetesVersion": "1.31.4"}),
}


@dataclass(frozen=True)
class Rendered:
    name: str
    stack: str
    config: dict[str, str]
    out: Path
    facts: StackFacts
    report: Report


def _render_and_validate(name: str, root: Path, key: Path) -> Rendered:
    stack, overrides = CONFIGS[name]
    # render_stack uses hostKeyDir's default under $HOME, as `pulumi up` does; tests keep theirs aside.
    overrides = {**overrides, "sshKeyPath": str(key), "hostKeyDir": str(key.parent / "host-keys" / stack)}
    out = render_stack(stack, overrides, root / name)
    config = config_with(stack, overrides)
    report = validate_rendered(out, stack, config)
    return Rendered(name, stack, config, out, load_facts(out, stack, config), report)


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory, ssh_key: Path) -> dict[str, Rendered]:
    root = tmp_path_factory.mktemp("build")
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(CONFIGS)) as pool:
        futures = {name: pool.submit(_render_and_validate, name, root, ssh_key) for name in CONFIGS}
        results = {name: future.result() for name, future in futures.items()}
    summary = {name: dict(r.report.counts) for name, r in results.items()}
    (root / "validated.json").write_text(json.dumps(summary, indent=2))
    print(f"\nartifacts validated per kind per config: {json.dumps(summary)}")
    return results


@pytest.fixture(scope="session")
def air(rendered: dict[str, Rendered]) -> Rendered:
    return rendered["air"]


def _read(r: Rendered, relative: str) -> str:
    return (r.out / relative).read_text()


# ---- every configuration: all artifacts valid, and all of them there ------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_artifact_passes_its_consumer(rendered: dict[str, Rendered], name: str) -> None:
    problems = rendered[name].report.problems
    assert not problems, f"{name}: {len(problems)} problem(s):\n" + "\n".join(problems)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_artifact_was_checked(rendered: dict[str, Rendered], name: str) -> None:
    r = rendered[name]
    nodes, workers = 1 + r.facts.worker_count, r.facts.worker_count
    counts = r.report.counts
    assert len(r.facts.nodes) == nodes
    for kind in ("user-data", "meta-data", "network-config"):
        assert counts[kind] == nodes, f"{name}: {kind} checked for {counts[kind]} of {nodes} nodes"
    assert counts["kubeadm-init"] == 1
    assert counts["kubeadm-join"] == workers
    assert counts["embedded-script"] == (0 if r.facts.prebaked else nodes), "install script iff not prebaked"
    assert counts["script"] >= 3 + nodes + 2 * workers
    assert counts["manifest"] >= 1


def _manifest_kinds(r: Rendered) -> set[tuple[str, str]]:
    docs = (yaml.safe_load(p.read_text()) for p in (r.out / "manifests").glob("*.yaml"))
    return {(d["kind"], d["metadata"]["name"]) for d in docs}


def test_cni_choice_shows_in_the_manifests(rendered: dict[str, Rendered]) -> None:
    assert ("DaemonSet", "kube-router") in _manifest_kinds(rendered["air"])
    assert ("DaemonSet", "kube-router") not in _manifest_kinds(rendered["calico"])


# Template -> how many renderings a stack holds, given (nodes, workers, prebaked).
SCRIPT_TEMPLATES: dict[str, Callable[[int, int, bool], int]] = {
    "wait-ready.sh.j2": lambda n, w, p: n,
    "kubeadm-init.sh.j2": lambda n, w, p: 1,
    "join-credentials.sh.j2": lambda n, w, p: w,
    "revoke-join-token.sh.j2": lambda n, w, p: w,
    "delete-stale-node.sh.j2": lambda n, w, p: w,
    "fetch-kubeconfig.sh.j2": lambda n, w, p: 1,
    "kubeadm-join.sh.j2": lambda n, w, p: w,
    "join-worker.sh.j2": lambda n, w, p: w,
    "remove-worker.sh.j2": lambda n, w, p: w,
    "install-kubernetes.sh.j2": lambda n, w, p: 0 if p else n,
    "api-steady.sh.j2": lambda n, w, p: 3,  # after init, after the add-ons' CRDs, after an upgrade
    "install-serving-approver.sh.j2": lambda n, w, p: 1,
    "kubelet-serving.sh.j2": lambda n, w, p: n,
    "metallb-webhook-ready.sh.j2": lambda n, w, p: 1,  # every stack here has the default add-ons
    "shut-down.sh.j2": lambda n, w, p: n,
    # A worker's drain and its return to service (its upgrade runs the same two, embedded whole).
    "on-control-plane.sh.j2": lambda n, w, p: 2 * w,
    "take-out-of-service.sh.j2": lambda n, w, p: w,
    "return-to-service.sh.j2": lambda n, w, p: w,
    "stage-release.sh.j2": lambda n, w, p: n,
    "receive-release.sh.j2": lambda n, w, p: n,
    "upgrade-control-plane.sh.j2": lambda n, w, p: 1,
    "upgrade-worker.sh.j2": lambda n, w, p: w,
    "upgrade-node.sh.j2": lambda n, w, p: w,
    "upgrade-settled-new.sh.j2": lambda n, w, p: 1,
}


def _signature(template: Path) -> re.Pattern[str]:
    """A template's descriptive comment (line 2) with each Jinja expression as a wildcard."""
    line = template.read_text().split("\n")[1]
    assert line.startswith("# "), f"{template.name}: line 2 should describe the script"
    return re.compile(".+?".join(re.escape(part) for part in re.split(r"\{\{.*?\}\}", line)))


def _rendered_scripts(r: Rendered) -> list[str]:
    scripts = [p.read_text() for p in sorted((r.out / "scripts").glob("*.sh"))]
    for user_data in sorted((r.out / "nodes").glob("*/user-data")):
        scripts += [content for _path, content in embedded_scripts(user_data.read_text())]
    return scripts


def test_every_script_template_is_mapped() -> None:
    templates = {p.name for p in (TEMPLATES / "scripts").glob("*.j2")}
    assert templates == set(SCRIPT_TEMPLATES), "say how many renderings of each new script template a stack has"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_script_template_is_rendered_and_checked(rendered: dict[str, Rendered], name: str) -> None:
    r = rendered[name]
    second_lines = [s.split("\n")[1] if "\n" in s else "" for s in _rendered_scripts(r)]
    for template, expected in SCRIPT_TEMPLATES.items():
        pattern = _signature(TEMPLATES / "scripts" / template)
        found = sum(1 for line in second_lines if pattern.fullmatch(line))
        want = expected(len(r.facts.nodes), r.facts.worker_count, r.facts.prebaked)
        assert found == want, f"{name}: {template}: {found} renderings among the checked scripts, expected {want}"


def test_lab_stack_uses_its_own_network(rendered: dict[str, Rendered]) -> None:
    lab = rendered["lab"].facts
    assert str(lab.network) == "10.77.0.0/24" and lab.pod_cidr == "10.200.0.0/16"
    assert lab.control_plane.ip == "10.77.0.10" and [w.ip for w in lab.workers] == ["10.77.0.11"]


def test_solo_control_plane_is_untainted_and_checked_against_1_31(rendered: dict[str, Rendered]) -> None:
    solo = rendered["solo"]
    assert solo.facts.schema_version == "1.31.0" and solo.report.counts["kubeadm-join"] == 0
    assert "  taints: []" in _read(solo, "kubeadm/kubeadm-config.yaml")
    tainted = _read(solo, "kubeadm/kubeadm-config.yaml").replace("  taints: []\n", "")
    problems = validate_kubeadm_init(tainted, solo.facts, "kubeadm-config.yaml")
    assert any("taints must be []" in p for p in problems), problems


# ---- negative: each validator rejects a broken artifact and names the problem ---------------


def test_cloud_init_rejects_runcmd_that_is_not_a_list(air: Rendered) -> None:
    text = _read(air, "nodes/work11/user-data")
    broken = text[: text.index("\nruncmd:")] + '\nruncmd: "x"\n'
    problems = validate_user_data(broken, air.facts.nodes["work11"], air.facts.ssh_user, "user-data")
    assert any("cloud-init schema rejects" in p and "runcmd" in p for p in problems), problems


def test_unknown_top_level_key_is_caught_although_cloud_init_accepts_it(air: Rendered) -> None:
    broken = _read(air, "nodes/work11/user-data") + "kubernetes_version: 1.34.2\n"
    assert cloud_init_schema(broken, "user-data") == [], "cloud-init now flags unknown keys itself"
    problems = validate_user_data(broken, air.facts.nodes["work11"], air.facts.ssh_user, "user-data")
    assert any("unknown top-level" in p and "kubernetes_version" in p for p in problems), problems


def test_user_data_needs_the_cloud_config_header(air: Rendered) -> None:
    broken = _read(air, "nodes/head10/user-data").split("\n", 1)[1]
    problems = validate_user_data(broken, air.facts.nodes["head10"], air.facts.ssh_user, "user-data")
    assert any("#cloud-config" in p for p in problems), problems


def test_user_data_of_another_node_is_rejected(air: Rendered) -> None:
    text = _read(air, "nodes/work11/user-data")
    problems = validate_user_data(text, air.facts.nodes["work12"], air.facts.ssh_user, "user-data", run_schema=False)
    assert any("hostname 'work11' is not the node name 'work12'" in p for p in problems), problems


def test_user_data_must_install_the_pinned_host_key(air: Rendered) -> None:
    text = _read(air, "nodes/work11/user-data")
    other_node = air.facts.nodes["work12"].host_key
    swapped = replace(air.facts.nodes["work11"], host_key=other_node)
    problems = validate_user_data(text, swapped, air.facts.ssh_user, "user-data", run_schema=False)
    assert any("not the host key the program pins for work11" in p for p in problems), problems
    data = yaml.safe_load(text)
    data["ssh_genkeytypes"] = ["ed25519", "rsa"]
    extra = "#cloud-config\n" + yaml.safe_dump(data)
    problems = validate_user_data(extra, air.facts.nodes["work11"], air.facts.ssh_user, "user-data", run_schema=False)
    assert any("ssh_genkeytypes: [ed25519]" in p for p in problems), problems


def test_install_script_must_be_executable_and_run(air: Rendered) -> None:
    text = _read(air, "nodes/work11/user-data").replace('permissions: "0755"', 'permissions: "0644"')
    text = text.replace("  - [/usr/local/sbin/koa-install-kubernetes]\n", "")
    problems = validate_user_data(text, air.facts.nodes["work11"], air.facts.ssh_user, "user-data", run_schema=False)
    assert any("not executable" in p for p in problems), problems
    assert any("never run by runcmd" in p for p in problems), problems


def _network(air: Rendered, old: str, new: str) -> list[str]:
    text = _read(air, "nodes/work11/network-config")
    assert old in text
    return validate_network_config(text.replace(old, new), air.facts.nodes["work11"], air.facts, "network-config")


def test_network_config_address_outside_the_network(air: Rendered) -> None:
    problems = _network(air, '"172.31.255.11/24"', '"10.9.9.11/24"')
    assert any("10.9.9.11/24 is outside the stack network 172.31.255.0/24" in p for p in problems), problems


def test_network_config_address_must_be_cidr_and_the_declared_one(air: Rendered) -> None:
    assert any("not in CIDR form" in p for p in _network(air, '"172.31.255.11/24"', '"172.31.255.11"'))
    problems = _network(air, '"172.31.255.11/24"', '"172.31.255.12/24"')
    assert any("not the node's declared address 172.31.255.11" in p for p in problems), problems


def test_network_config_gateway_mac_and_keys(air: Rendered) -> None:
    outside = _network(air, 'via: "172.31.255.1"', 'via: "192.168.1.1"')
    assert any("route via 192.168.1.1 is outside" in p for p in outside), outside
    assert any("not the node's NIC" in p for p in _network(air, "52:54:00:9f:ff:0b", "52:54:00:9f:ff:0c"))
    assert any("unknown key(s) ['gateway4']" in p for p in _network(air, "dhcp4: false", "gateway4: 172.31.255.1"))
    assert any("version is 1" in p for p in _network(air, "version: 2", "version: 1"))


def test_meta_data_hostname_and_instance_id(air: Rendered) -> None:
    text = _read(air, "nodes/work11/meta-data")
    node = air.facts.nodes["work11"]
    assert validate_meta_data(text, node, "meta-data") == []
    wrong = validate_meta_data(text.replace('"work11"\n', '"work12"\n'), node, "meta-data")
    assert any("local-hostname 'work12'" in p for p in wrong), wrong
    missing = validate_meta_data(text.replace("instance-id:", "instance_id:"), node, "meta-data")
    assert any("instance-id is missing" in p for p in missing), missing


def _deployment(air: Rendered) -> dict[str, Any]:
    (path,) = (air.out / "manifests").glob("*-workloads-echo.yaml")
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    assert loaded["kind"] == "Deployment"
    return loaded


def test_manifest_with_unknown_field_is_rejected(air: Rendered) -> None:
    obj = _deployment(air)
    obj["spec"]["replica"] = 2
    problems = validate_manifest(obj, air.facts.schema_version, "echo.yaml")
    assert any("'replica'" in p and "1.34.0" in p for p in problems), problems


def test_manifest_with_wrong_type_is_rejected(air: Rendered) -> None:
    obj = _deployment(air)
    obj["spec"]["replicas"] = "three"
    problems = validate_manifest(obj, air.facts.schema_version, "echo.yaml")
    assert any("at spec.replicas" in p and "'three'" in p for p in problems), problems


def test_manifest_of_unknown_kind_fails_instead_of_warning() -> None:
    text = "apiVersion: v1\nkind: Frobnicator\nmetadata: {name: x}\n"
    problems = validate_manifest_text(text, "1.34.0", "frob.yaml")
    assert any("Couldn't find schema for kind Frobnicator" in p for p in problems), problems


def test_schema_version_is_the_pinned_minor(rendered: dict[str, Rendered]) -> None:
    assert rendered["air"].facts.kubernetes_version == "1.34.2"
    assert rendered["air"].facts.schema_version == "1.34.0"
    assert replace(rendered["air"].facts, kubernetes_version="1.99.1").schema_version == "1.99.0"
    problems = validate_manifest_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n", "1.99.0", "ns.yaml")
    assert any("no strict schemas for 1.99.0" in p for p in problems), problems


def test_shellcheck_flags_unquoted_variable_and_command_substitution() -> None:
    problems = validate_shell_texts({"bad.sh": "#!/bin/bash\ndir=$1\nrm -rf $dir/cache\nkill $(cat /run/x.pid)\n"})
    assert any(p.startswith("bad.sh:3:") and "SC2086" in p for p in problems), problems
    assert any(p.startswith("bad.sh:4:") and "SC2046" in p for p in problems), problems


def test_shellcheck_flags_unrendered_template_text() -> None:
    problems = validate_shell_texts({"left.sh": '#!/bin/bash\necho "{{ hostname }}"\n'})
    assert any("unrendered template text" in p for p in problems), problems


def _init(air: Rendered, old: str, new: str) -> list[str]:
    text = _read(air, "kubeadm/kubeadm-config.yaml")
    assert old in text
    return validate_kubeadm_init(text.replace(old, new), air.facts, "kubeadm-config.yaml")


def test_kubeadm_wrong_api_version_is_rejected(air: Rendered) -> None:
    kind = "\nkind: ClusterConfiguration"
    problems = _init(air, f"kubeadm.k8s.io/v1beta4{kind}", f"kubeadm.k8s.io/v1beta3{kind}")
    assert any("kubeadm.k8s.io/v1beta3 ClusterConfiguration is not one kubeadm accepts" in p for p in problems)
    assert any("no ClusterConfiguration document" in p for p in problems), problems


def test_kubeadm_inconsistent_pod_subnet_is_rejected(air: Rendered) -> None:
    problems = _init(air, 'podSubnet: "10.244.0.0/16"', 'podSubnet: "10.245.0.0/16"')
    assert any("networking.podSubnet is '10.245.0.0/16', expected '10.244.0.0/16'" in p for p in problems), problems


def test_kubeadm_init_agrees_with_the_stack(air: Rendered) -> None:
    # Fields and shapes are the built kubeadm's to judge (tests/toolchain/test_real_tools.py).
    assert any("cgroupDriver is 'cgroupfs'" in p for p in _init(air, "cgroupDriver: systemd", "cgroupDriver: cgroupfs"))
    moved = _init(air, 'advertiseAddress: "172.31.255.10"', 'advertiseAddress: "172.31.255.99"')
    assert any("advertiseAddress is '172.31.255.99'" in p for p in moved), moved
    assert any("lacks ['172.31.255.10']" in p for p in _init(air, '    - "172.31.255.10"\n', ""))
    assert any("kubernetesVersion is 'v1.33.0'" in p for p in _init(air, '"v1.34.2"', '"v1.33.0"'))


def _join(air: Rendered, old: str, new: str) -> list[str]:
    text = _read(air, "kubeadm/work12-kubeadm-join-config.yaml")
    assert old in text
    return validate_kubeadm_join(text.replace(old, new), air.facts.nodes["work12"], air.facts, "join.yaml")


def test_kubeadm_join_endpoint_hash_and_api_version(air: Rendered) -> None:
    assert _join(air, "", "") == []
    assert any("apiServerEndpoint is '172.31.255.10:6444'" in p for p in _join(air, ":6443", ":6444"))
    assert any("sha256:<64 hex>" in p for p in _join(air, '"sha256:abab', '"sha1:abab'))
    v1beta3 = _join(air, "kubeadm.k8s.io/v1beta4", "kubeadm.k8s.io/v1beta3")
    assert any("JoinConfiguration is not one" in p for p in v1beta3), v1beta3


def test_summary_must_match_the_config(air: Rendered) -> None:
    assert validate_summary(air.facts) == []
    problems = validate_summary(replace(air.facts, worker_count=4))
    assert any("differ from the config's" in p for p in problems), problems


def test_a_missing_tool_fails_loudly() -> None:
    with pytest.raises(ToolMissing, match="no-such-validator"):
        find_tool("no-such-validator")
    for tool in ("cloud-init", "shellcheck"):
        assert find_tool(tool)


# ---- the dependency chain does not grow with the worker count -------------------------------


def test_longest_chain_does_not_grow_with_the_worker_count(ssh_key: Path) -> None:
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        small, large = pool.map(lambda n: bench.measure(n, ssh_key), (3, 30))
    assert large.resources > small.resources
    assert small.chain_length == large.chain_length, f"{small.chain}\nvs\n{large.chain}"
    # One node's boot wait and join at most: the long steps of different nodes never line up.
    assert large.long_steps <= bench.LONG_STEPS_PER_CHAIN, large.chain


class BackwardsSet(set[str]):
    """Iterates from the largest element down, as a set may under another PYTHONHASHSEED."""

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(set.__iter__(self), reverse=True))


def test_longest_chain_is_the_same_whatever_order_the_graph_iterates_in() -> None:
    # Three chains of three: a1 -> a2 -> top and b1 -> b2 -> top tie, and x1 -> x2 -> x3 ties with both.
    edges = {"top": {"a2", "b2"}, "a2": {"a1"}, "b2": {"b1"}, "a1": set(), "b1": set()}
    edges |= {"x3": {"x2"}, "x2": {"x1"}, "x1": set()}
    for keys in (sorted(edges), sorted(edges, reverse=True)):
        for set_type in (set, BackwardsSet):
            graph: dict[str, set[str]] = {key: set_type(edges[key]) for key in keys}
            assert longest_chain(graph) == ["a1", "a2", "top"], "ties go to the URN that sorts first"


def test_render_says_when_no_iso_tool_is_there(
    tmp_path: Path, ssh_key: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "ssh-keygen").symlink_to(shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen")
    monkeypatch.setenv("PATH", str(bare))
    host_keys = f"hostKeyDir={tmp_path / 'host-keys'}"
    argv = ["--stack", "air", "--out", str(tmp_path / "out"), "--set", f"sshKeyPath={ssh_key}", "--set", host_keys]
    assert render.main(argv) == 1
    assert "none of genisoimage, mkisofs, xorrisofs is on PATH" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "host-keys").exists()


def test_render_says_when_graphviz_is_missing(
    tmp_path: Path, ssh_key: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    no_dot = tmp_path / "bin"
    no_dot.mkdir()
    (no_dot / "ssh-keygen").symlink_to(shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen")  # for the host keys
    (no_dot / "genisoimage").symlink_to(shutil.which("genisoimage") or "/usr/bin/genisoimage")  # for the seeds
    monkeypatch.setenv("PATH", str(no_dot))
    host_keys = f"hostKeyDir={tmp_path / 'host-keys'}"
    argv = ["--stack", "air", "--out", str(tmp_path / "out"), "--set", f"sshKeyPath={ssh_key}", "--set", host_keys]
    assert render.main(argv) == 0
    assert "graph.svg not written: graphviz's `dot` is not on PATH" in capsys.readouterr().err
    assert (tmp_path / "out" / "air" / "graph.dot").exists() and not (tmp_path / "out" / "air" / "graph.svg").exists()
