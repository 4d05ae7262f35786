"""Shared fixtures: a throwaway SSH key pair and the stack configs the tests evaluate."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.config.settings import ClusterConfig, load
from tools.dryrun import Evaluation, evaluate, make_ssh_key, stack_config

NS = "kube-on-air"


@pytest.fixture(scope="session")
def ssh_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ssh_key(tmp_path_factory.mktemp("ssh"))


def air_config(ssh_key: Path, **overrides: str) -> dict[str, str]:
    """Pulumi.air.yaml as the engine passes it, with the test key and `overrides` (keys without namespace)."""
    config = stack_config("air")
    config[f"{NS}:sshKeyPath"] = str(ssh_key)
    config.update({f"{NS}:{key}": value for key, value in overrides.items()})
    return config


@pytest.fixture(scope="session")
def air(ssh_key: Path) -> Evaluation:
    evaluation = evaluate("air", air_config(ssh_key))
    assert evaluation.error is None, evaluation.error
    return evaluation


@pytest.fixture(scope="session")
def five(ssh_key: Path) -> Evaluation:
    """The air stack scaled to five workers."""
    evaluation = evaluate("air", air_config(ssh_key, workerCount="5"))
    assert evaluation.error is None, evaluation.error
    return evaluation


def cluster_config(ssh_key: Path, uri: str | None = None, **raw: str) -> ClusterConfig:
    """The validated config of a stack "t" with the test key and `raw` overrides (keys without namespace)."""
    return load({"sshKeyPath": str(ssh_key), **raw}, stack="t", libvirt_uri=uri)


@pytest.fixture
def config(ssh_key: Path) -> ClusterConfig:
    return cluster_config(ssh_key)
