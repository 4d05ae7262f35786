"""Every user mistake in the stack config gives one clear error, before any resource exists."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from components.config import settings as cfg
from tests.conftest import air_config
from tools.dryrun import ROOT, evaluate

NS = "kube-on-air"


def raw_air(ssh_key: Path, **overrides: str) -> dict[str, str | None]:
    raw: dict[str, str | None] = {
        k.split(":", 1)[1]: v for k, v in air_config(ssh_key, **overrides).items() if k.startswith(NS)
    }
    return raw


def problems(ssh_key: Path, **overrides: str) -> list[cfg.ConfigProblem]:
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.load(raw_air(ssh_key, **overrides), "air")
    return caught.value.problems


BAD_VALUES = [
    # key, value, words the fix must contain
    ("networkCidr", "172.31.255.0/33", "CIDR"),
    ("networkCidr", "172.31.255.1/24", "host bits zero"),
    ("networkCidr", "fd00::/64", "IPv4"),
    ("networkCidr", "10.0.0.0/30", "/28"),
    ("controlPlaneId", "300", "no usable address"),
    ("controlPlaneId", "99999999999", "no usable address"),
    ("controlPlaneId", "-3", "no usable address"),
    ("controlPlaneId", "1", "gateway"),
    ("controlPlaneId", "ten", "whole number"),
    ("firstWorkerId", "9", "include controlPlaneId"),
    ("workerCount", "three", "whole number"),
    ("workerCount", "-1", "0..200"),
    ("workerPrefix", "Work_", "lowercase"),
    ("workerPrefix", "head", "differ"),
    ("controlPlaneVcpu", "1", "at least 2"),
    ("controlPlaneMemoryMiB", "1024", "at least 1700"),
    ("workerMemoryMiB", "128", "512"),
    ("cni", "flannel", "kube-router, calico"),
    ("workloads", '["kuard", "nginx"]', "unknown workload"),  # shown as the unknown name only
    ("workloads", "kuard", "JSON list"),
    ("addons", '["metallb-nightly"]', "unknown add-on"),
    ("addons", "local-path", "JSON list"),
    ("kubernetesVersion", "1.34", "full version"),
    ("kubernetesVersion", "latest", "full version"),
    ("kubernetesVersion", "1.28.4", "v1beta4"),
    ("podCidr", "10.96.0.0/16", "overlap"),
    ("podCidr", "172.31.0.0/16", "overlap networkCidr"),
    ("serviceCidr", "10.96.0.0/33", "CIDR"),
    ("sshKeyPath", "/nonexistent/key", "ssh-keygen"),
    ("sshUser", "root", "other than root"),
    ("dnsDomain", "bad_domain!", "DNS name"),
    ("diskGiB", "2", "4..2048"),
    ("prebaked", "yes", "true or false"),
    ("imageSource", "debian.qcow2", "absolute path"),
    ("domainType", "xen", "kvm"),
    ("poolPath", "images", "absolute"),
    ("resourcePrefix", "Air_", "lowercase"),
    ("connectivityTimeoutSeconds", "10", "from 30 to 7200"),
    ("connectivityTimeoutSeconds", "10m", "whole seconds"),
]


@pytest.mark.parametrize(("key", "value", "fix_words"), BAD_VALUES)
def test_bad_value_names_key_value_and_fix(ssh_key: Path, key: str, value: str, fix_words: str) -> None:
    found = problems(ssh_key, **{key: value})
    message = str(cfg.ConfigError(found))
    assert any(p.key == key or (key == "podCidr" and p.key == "serviceCidr") for p in found), message
    assert f"{NS}:" in message
    # A list shows only its unknown names.
    shown = next((name for name in ("nginx", "metallb-nightly") if name in value), value)
    assert shown in message, message
    assert fix_words in message, message


def test_air_stack_is_valid_and_reproduces_the_seed(ssh_key: Path) -> None:
    config = cfg.load(raw_air(ssh_key), "air")
    assert [n.name for n in config.nodes] == ["head10", "work11", "work12", "work13"]
    assert [n.ip for n in config.nodes] == [f"172.31.255.{i}" for i in (10, 11, 12, 13)]
    assert [n.libvirt_name for n in config.nodes] == ["head10", "work11", "work12", "work13"]
    assert config.control_plane.vcpu >= cfg.KUBEADM_MIN_VCPU
    assert config.pod_cidr == "10.244.0.0/16"
    assert config.cni == "kube-router"


def test_all_problems_are_reported_together(ssh_key: Path) -> None:
    found = problems(ssh_key, cni="flannel", controlPlaneVcpu="1", kubernetesVersion="2.0")
    assert {p.key for p in found} == {"cni", "controlPlaneVcpu", "kubernetesVersion"}


def test_workers_that_leave_the_network_are_one_problem(ssh_key: Path) -> None:
    found = problems(ssh_key, networkCidr="10.1.2.0/28", controlPlaneId="2", firstWorkerId="3", workerCount="20")
    assert [p.key for p in found] == ["firstWorkerId"]
    assert "lower workerCount" in found[0].fix


def test_macs_are_deterministic_and_differ_per_stack(ssh_key: Path) -> None:
    first = cfg.load(raw_air(ssh_key), "air")
    again = cfg.load(raw_air(ssh_key), "air")
    other = cfg.load(raw_air(ssh_key), "lab")
    assert [n.mac for n in first.nodes] == [n.mac for n in again.nodes]
    assert len({n.mac for n in first.nodes}) == len(first.nodes)
    assert not {n.mac for n in first.nodes} & {n.mac for n in other.nodes}
    assert all(n.mac.startswith("52:54:00:") for n in first.nodes)


def test_bridge_names_fit_the_kernel_limit() -> None:
    assert cfg.bridge_name_for("air") == "koa-air"
    long = cfg.bridge_name_for("a-very-long-stack-name")
    assert len(long) <= cfg.MAX_BRIDGE_NAME
    assert long != cfg.bridge_name_for("a-very-long-stack-name2")


def test_code_defaults_match_pulumi_yaml() -> None:
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    for key, default in cfg.DEFAULTS.items():
        entry = declared[f"{NS}:{key}"]
        value = entry["default"]
        as_text = (
            json.dumps(value)
            if isinstance(value, list)
            else str(value).lower()
            if isinstance(value, bool)
            else str(value)
        )
        expected = json.dumps(json.loads(default)) if entry["type"] == "array" else default
        assert as_text == expected, key
        assert entry["description"], key
    assert set(declared) == {f"{NS}:{k}" for k in cfg.DEFAULTS}


def test_program_registers_nothing_on_bad_config(ssh_key: Path) -> None:
    evaluation = evaluate("air", air_config(ssh_key, cni="flannel", controlPlaneMemoryMiB="1000"))
    assert evaluation.error is not None
    assert "kube-on-air:cni = 'flannel'" in evaluation.error
    assert "kube-on-air:controlPlaneMemoryMiB = '1000'" in evaluation.error
    assert "Traceback" not in evaluation.error
    assert evaluation.resources == []


def test_preflight_failure_registers_nothing(ssh_key: Path) -> None:
    # No libvirt answers on this socket on any machine: the preflight must stop the program.
    config = air_config(ssh_key, domainType="qemu")
    config["libvirt:uri"] = "qemu+unix:///system?socket=/nonexistent/libvirt-sock"
    evaluation = evaluate("air", config, preflight=True)
    assert evaluation.error is not None
    assert "[libvirt]" in evaluation.error and "fix:" in evaluation.error
    assert "Traceback" not in evaluation.error
    assert evaluation.resources == []


# A libvirt host (the test driver's format) where an earlier kube-on-air built the air stack's control plane.
EARLIER_AIR_HOST = """<node>
  <domain type='test'>
    <name>head10</name>
    <memory unit='MiB'>2048</memory>
    <os><type>hvm</type></os>
    <devices>
      <disk type='volume' device='disk'><source pool='koa-air' volume='head10.qcow2'/><target dev='vda'/></disk>
    </devices>
  </domain>
</node>
"""


@pytest.mark.skipif(shutil.which("virsh") is None, reason="virsh not installed")
def test_rebuilding_a_running_control_plane_registers_nothing(ssh_key: Path, tmp_path: Path) -> None:
    host = tmp_path / "host.xml"
    host.write_text(EARLIER_AIR_HOST)
    config = air_config(ssh_key, domainType="qemu")
    config["libvirt:uri"] = f"test://{host}"
    evaluation = evaluate("air", config, preflight=True)
    assert evaluation.error is not None and "[control-plane]" in evaluation.error
    assert "head10.qcow2" in evaluation.error and "pulumi destroy" in evaluation.error
    assert evaluation.resources == []


def test_air_stack_values_have_the_declared_types() -> None:
    # The Pulumi CLI refuses a stack whose values do not match Pulumi.yaml's declared types.
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    values = yaml.safe_load((ROOT / "Pulumi.air.yaml").read_text())["config"]
    python_types = {"string": str, "integer": int, "boolean": bool, "array": list}
    for key, value in values.items():
        if not key.startswith(f"{NS}:"):
            continue
        assert key in declared, f"{key} is not declared in Pulumi.yaml"
        expected = python_types[declared[key]["type"]]
        assert type(value) is expected, f"{key}: {value!r} is not {declared[key]['type']}"


JUNK = ["", " ", "-1", "0", "1e9", "99999999999999999999", "null", "[]", "{}", '["x"]', "../x", "ü", "1.2.3.4/40"]


@pytest.mark.parametrize("key", sorted(cfg.DEFAULTS))
def test_junk_values_never_escape_as_tracebacks(ssh_key: Path, key: str) -> None:
    for junk in JUNK:
        try:
            cfg.load(raw_air(ssh_key, **{key: junk}), "air")
        except cfg.ConfigError as err:
            assert all(p.fix for p in err.problems), (key, junk)


# ---- keys the program does not read ---------------------------------------------------------

MISTAKEN_KEYS = [
    # key as given, the nearest project key the message must name
    (f"{NS}:workerCont", f"{NS}:workerCount"),
    (f"{NS}:workercount", f"{NS}:workerCount"),
    ("workerCount", f"{NS}:workerCount"),  # known key without the namespace
    ("cnii", f"{NS}:cni"),
]


@pytest.mark.parametrize(("key", "nearest"), MISTAKEN_KEYS)
def test_unknown_or_unnamespaced_key_names_the_nearest_known_one(ssh_key: Path, key: str, nearest: str) -> None:
    given = {**air_config(ssh_key), key: "5"}
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.load_namespaced(given, "air")
    (problem,) = caught.value.problems
    message = str(caught.value)
    assert f"  {key} = '5': " in message, message
    assert nearest in problem.fix, message


def test_other_namespaces_are_not_ours(ssh_key: Path) -> None:
    given = {**air_config(ssh_key), "libvirt:uri": "qemu:///session", "pulumi:disable-default-providers": "[]"}
    assert cfg.load_namespaced(given, "air").libvirt_uri == "qemu:///session"


@pytest.mark.parametrize("key", [f"{NS}:workerCont", "workerCount"])
def test_mistaken_key_stops_the_program_under_mocks(ssh_key: Path, key: str) -> None:
    evaluation = evaluate("air", {**air_config(ssh_key), key: "5"})
    assert evaluation.error is not None and f"  {key} = '5': " in evaluation.error
    assert f"did you mean {NS}:workerCount" in evaluation.error or f"use {NS}:workerCount" in evaluation.error
    assert "Traceback" not in evaluation.error
    assert evaluation.resources == []


def test_engine_config_is_checked_for_mistaken_keys(
    ssh_key: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The engine hands a Python program its config as JSON in $PULUMI_CONFIG, not through set_all_config.
    config = {**air_config(ssh_key), f"{NS}:hostKeyDir": str(tmp_path / "host-keys")}
    monkeypatch.setenv("PULUMI_CONFIG", json.dumps(config))
    good = evaluate("air", {})
    assert good.error is None, good.error
    assert len(good.of_type("libvirt:index/domain:Domain")) == 4

    monkeypatch.setenv("PULUMI_CONFIG", json.dumps({**config, f"{NS}:workerCont": "5"}))
    typo = evaluate("air", {})
    assert typo.error is not None
    assert f"{NS}:workerCont = '5': unknown key; did you mean {NS}:workerCount?" in typo.error
    assert typo.resources == []


def test_the_stateful_workload_without_a_storage_class_is_one_problem(ssh_key: Path) -> None:
    found = problems(ssh_key, workloads='["stateful"]', addons="[]")
    assert [(p.key, p.value) for p in found] == [("addons", "[]")]
    assert '"local-path"' in found[0].fix
    assert "local-path" in cfg.load(raw_air(ssh_key, workloads='["stateful"]'), "air").addons, "the default"
