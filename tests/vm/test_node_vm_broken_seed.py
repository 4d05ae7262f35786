"""Issue 4, negative case: a node whose cloud-init ends in error must be reported with the reason.

work12's rendered seed plus one runcmd entry that fails. The harness must say
`cloud-init status: error: <the error lines>` (not time out), and the program's own wait-ready script
must fail with cloud-init's status on stderr. Runs after test_node_vm.py (file order), so work11 is
already gone and the two TCG guests never compete for the CPU.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.vm.conftest import FIGURES, Lab, Rendered
from tests.vm.guest import CloudInitError

pytestmark = pytest.mark.vm

NODE = "work12"
MARKER = "koa-broken-seed: deliberate failure"


def broken_seed(rendered: Rendered, dest: Path) -> Path:
    """The rendered seed of NODE with a failing command appended to runcmd."""
    shutil.copytree(rendered.seed_dir(NODE), dest)
    user_data = dest / "user-data"
    text = user_data.read_text()
    assert text.startswith("#cloud-config\n")
    config = yaml.safe_load(text)
    config.setdefault("runcmd", []).append(["sh", "-c", f"echo '{MARKER}' >&2; exit 3"])
    user_data.write_text("#cloud-config\n" + yaml.safe_dump(config, sort_keys=False))
    return dest


def test_broken_seed_is_reported_with_cloud_init_errors(lab: Lab, rendered: Rendered, tmp_path: Path) -> None:
    node = rendered.node(NODE)
    seed = broken_seed(rendered, tmp_path / "seed")
    with lab.boot(node, seed, label=f"{NODE}-broken-seed") as booted:
        watch = booted.watch
        watch.wait_for_banner(420)
        watch.wait_for_login(180)
        with pytest.raises(CloudInitError) as failure:
            watch.wait_for_cloud_init(600)
        message = str(failure.value)
        print(f"harness report for the broken seed:\n{message}")
        first_line = message.splitlines()[0]
        assert first_line.startswith("cloud-init status: error: ")
        assert "scripts_user" in first_line or "runcmd" in first_line, first_line
        assert MARKER in message  # the failing command's own words, from cloud-init-output.log
        FIGURES["nodes"][f"{NODE}-broken-seed"]["harness_report"] = first_line

        # The program's wait-ready script, as pulumi-command would run it: fails, and says why.
        proc = booted.ssh.run(rendered.wait_ready_script(NODE), timeout=600)
        code = proc.returncode
        assert code == 1, f"wait-ready exited {code}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
        assert "cloud-init failed on" in proc.stderr
        assert "status: error" in proc.stderr
