"""The upgrade scripts as the program renders them, run for real against a stand-in node.

A stand-in `sudo` moves /usr/bin, /etc/kubernetes and /var/lib/kube-on-air under $ROOT; kubeadm,
kubelet and kubectl there are small scripts that say their version; a stand-in `kubectl` plays the
API server (the ClusterConfiguration's version, the Node's kubelet version, Ready), `kubeadm upgrade
apply` moves the cluster's version to its own, and `systemctl restart kubelet` makes the installed
kubelet the running one. What is proved: each script brings a node from v1.34.2 to v1.35.4 in
kubeadm's order, changes nothing the second time, and goes on where a run cut short stopped.
The real thing ran at level 1 (docs/testing.md, the live upgrades).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import air_config
from tests.standins import StandInNode
from tools.dryrun import Evaluation, evaluate
from tools.render import heredocs

OLD, NEW = "v1.34.2", "v1.35.4"
STAGED = f"/var/lib/kube-on-air/releases/{NEW}"
CONFIG = "/var/lib/kube-on-air/upgrade-config.yaml"

SUDO = r"""#!/bin/bash
args=()
for arg in "$@"; do
  for dir in /usr/bin /etc/kubernetes /var/lib/kube-on-air; do
    arg=${arg//$dir/$ROOT$dir}
  done
  args+=("$arg")
done
exec "${args[@]}"
"""

# kubeadm on PATH is whichever one is installed under $ROOT/usr/bin.
KUBEADM_ON_PATH = '#!/bin/bash\nexec "$ROOT/usr/bin/kubeadm" "$@"\n'

SYSTEMCTL = r"""#!/bin/bash
echo "$*" >> "$ROOT/systemctl-calls"
if [ "$*" = "restart kubelet" ]; then
  "$ROOT/usr/bin/kubelet" --version | awk '{ print $2 }' > "$ROOT/running-kubelet"
fi
"""

KUBECTL = r"""#!/bin/bash
set -euo pipefail
shift 3  # --kubeconfig <admin.conf> --request-timeout=20s
echo "$*" >> "$ROOT/kubectl-calls"
case "$*" in
  "get --raw /readyz") ;;
  "--namespace kube-system get configmap kubeadm-config -o jsonpath={.data.ClusterConfiguration}")
    printf 'apiVersion: kubeadm.k8s.io/v1beta4\nkubernetesVersion: %s\n' "$(cat "$ROOT/cluster-version")" ;;
  *"jsonpath={.status.nodeInfo.kubeletVersion}") cat "$ROOT/running-kubelet" ;;
  *'jsonpath={.status.conditions[?(@.type=="Ready")].status}') echo True ;;
  drain*|uncordon*) ;;
  *) echo "stand-in kubectl: unexpected $*" >&2; exit 2 ;;
esac
"""


def tool(name: str, version: str) -> str:
    """A Kubernetes binary that answers its version as the real one does, and records the rest."""
    answers = {
        "kubeadm": f'if [ "$*" = "version -o short" ]; then echo {version}; exit 0; fi\n'
        'echo "$*" >> "$ROOT/kubeadm-calls"\n'
        'if [ -e "$ROOT/fail-next-upgrade" ]; then rm "$ROOT/fail-next-upgrade"; echo "cut short" >&2; exit 1; fi\n'
        f'if [ "$1 $2" = "upgrade apply" ]; then echo {version} > "$ROOT/cluster-version"; fi\n',
        "kubelet": f"echo 'Kubernetes {version}'\n",
        "kubectl": f"echo {version}\n",
    }
    return "#!/bin/bash\nset -eu\n" + answers[name]


class Node(StandInNode):
    """A node at v1.34.2 that holds the staged v1.35.4 (or not) and runs one upgrade script."""

    def prepare(self, staged: bool = True) -> Node:
        for directory, version in ((self.root / "usr/bin", OLD), (self.root / STAGED.lstrip("/") / "kubernetes", NEW)):
            directory.mkdir(parents=True, exist_ok=True)
            for name in ("kubeadm", "kubelet", "kubectl"):
                (directory / name).write_text(tool(name, version))
                (directory / name).chmod(0o755)
        if staged:
            (self.root / STAGED.lstrip("/") / "complete").touch()
        (self.root / "cluster-version").write_text(OLD + "\n")
        (self.root / "running-kubelet").write_text(OLD + "\n")
        return self

    def installed(self, name: str) -> str:
        """The version the binary installed at /usr/bin/<name> answers."""
        asked = {"kubeadm": ["version", "-o", "short"], "kubelet": ["--version"], "kubectl": []}[name]
        done = subprocess.run([self.root / "usr/bin" / name, *asked], capture_output=True, text=True, check=True)
        return done.stdout.split()[-1]

    def calls(self, of: str) -> list[str]:
        calls = self.root / f"{of}-calls"
        return calls.read_text().splitlines() if calls.exists() else []

    def cut_the_next_upgrade_short(self) -> None:
        (self.root / "fail-next-upgrade").touch()


def on_stand_in(script: str) -> str:
    # The one binary the scripts call by its path outside sudo.
    return script.replace('"$(/usr/bin/kubelet --version', '"$("$ROOT"/usr/bin/kubelet --version')


@pytest.fixture(scope="module")
def upgraded(ssh_key: Path) -> Evaluation:
    return evaluate("air", air_config(ssh_key, prebaked="true", kubernetesVersion=NEW.lstrip("v")))


def make_node(tmp_path: Path, script: str, stdin: str = "") -> Node:
    tools = {"sudo": SUDO, "kubeadm": KUBEADM_ON_PATH, "kubectl": KUBECTL, "systemctl": SYSTEMCTL}
    node = Node.make(tmp_path, tools, on_stand_in(script), stdin)
    node.timeout = 30
    return node


@pytest.fixture
def worker(tmp_path: Path, upgraded: Evaluation) -> Node:
    script = heredocs(str(upgraded.named("kube-on-air-upgrade-work11").plain("create")))["ON_WORKER"]
    return make_node(tmp_path, script).prepare()


@pytest.fixture
def control_plane(tmp_path: Path, upgraded: Evaluation) -> Node:
    step = upgraded.named("kube-on-air-upgrade-head10")
    return make_node(tmp_path, str(step.plain("create")), str(step.plain("stdin"))).prepare()


def test_a_worker_is_upgraded_in_kubeadms_order_and_a_second_run_restarts_nothing(worker: Node) -> None:
    first = worker.run()
    assert first.returncode == 0, first.stderr
    assert worker.calls("kubeadm") == ["upgrade node"]
    assert [worker.installed(t) for t in ("kubeadm", "kubelet", "kubectl")] == [NEW, NEW, NEW]
    assert worker.calls("systemctl") == ["daemon-reload", "restart kubelet"]
    again = worker.run()
    assert again.returncode == 0, again.stderr
    assert worker.calls("systemctl") == ["daemon-reload", "restart kubelet"], "the kubelet restarted twice"


def test_a_worker_upgrade_cut_short_in_kubeadm_goes_on_where_it_stopped(worker: Node) -> None:
    worker.cut_the_next_upgrade_short()
    assert worker.run().returncode != 0
    assert worker.installed("kubeadm") == NEW and worker.calls("systemctl") == []
    again = worker.run()
    assert again.returncode == 0, again.stderr
    assert worker.calls("kubeadm") == ["upgrade node", "upgrade node"]
    assert worker.calls("systemctl") == ["daemon-reload", "restart kubelet"]


def test_a_worker_without_the_staged_release_is_left_alone(tmp_path: Path, upgraded: Evaluation) -> None:
    script = heredocs(str(upgraded.named("kube-on-air-upgrade-work11").plain("create")))["ON_WORKER"]
    node = make_node(tmp_path, script).prepare(staged=False)
    done = node.run()
    assert done.returncode == 1 and "its stage step must run first" in done.stderr
    assert node.installed("kubeadm") == OLD and node.calls("kubeadm") == []


def test_the_control_plane_applies_then_restarts_its_kubelet_and_is_done_the_second_time(control_plane: Node) -> None:
    first = control_plane.run()
    assert first.returncode == 0, first.stderr
    assert control_plane.calls("kubeadm") == ["upgrade apply --config " + str(control_plane.root) + CONFIG + " --yes"]
    assert (control_plane.root / CONFIG.lstrip("/")).read_text() == control_plane.stdin
    kubectl = control_plane.calls("kubectl")
    drained = [i for i, call in enumerate(kubectl) if call.startswith("drain head10 --ignore-daemonsets")]
    assert drained and drained[0] < kubectl.index("uncordon head10"), kubectl
    assert control_plane.calls("systemctl") == ["daemon-reload", "restart kubelet"]
    again = control_plane.run()
    assert again.returncode == 0 and again.stdout == f"head10 runs {NEW}\n", (again.stdout, again.stderr)
    assert len(control_plane.calls("kubeadm")) == 1


def test_a_control_plane_cut_short_in_kubeadm_upgrade_apply_applies_again(control_plane: Node) -> None:
    control_plane.cut_the_next_upgrade_short()
    assert control_plane.run().returncode != 0
    assert control_plane.calls("systemctl") == [] and "drain" not in " ".join(control_plane.calls("kubectl"))
    again = control_plane.run()
    assert again.returncode == 0, again.stderr
    assert len(control_plane.calls("kubeadm")) == 2
    assert control_plane.calls("systemctl") == ["daemon-reload", "restart kubelet"]
