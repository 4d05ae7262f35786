"""`make toolchain`: the Pulumi engine, provider plugins and Kubernetes built from the Go module proxy.

Offline machines reach PyPI, Debian and the Go module proxy, never get.pulumi.com, GitHub releases or
container registries. Every piece is built from its upstream Go module at the version pinned below,
into a cache directory keyed by those pins, so a second run skips what is built and a killed run
resumes at the piece it was building. `manifest.json` lists every piece: module@version, Go version,
build seconds, peak memory and the sha256 of each output, or why the piece is unavailable.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from components.localpath import BUSYBOX_IMAGE, LOCAL_PATH_IMAGE
from components.localpath import VERSION as LOCAL_PATH_PROVISIONER
from components.metallb import CONTROLLER_IMAGE as METALLB_CONTROLLER_IMAGE
from components.metallb import SPEAKER_IMAGE as METALLB_SPEAKER_IMAGE
from components.metallb import VERSION as METALLB
from components.metricsserver import METRICS_SERVER_IMAGE
from components.metricsserver import VERSION as METRICS_SERVER
from components.workloads import DNSTOOLS_IMAGE
from tools.conformance import E2E_BUSYBOX_IMAGE, HTTPD_IMAGES, JESSIE_DNSUTILS_IMAGE

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("KOA_TOOLCHAIN_CACHE", Path.home() / ".cache" / "kube-on-air" / "toolchain"))

# The Pulumi CLI must be at least as new as the `pulumi` Python SDK pinned in requirements.txt; both
# use a pkg/v3 release the module proxy serves (v3.270.0 is one it does not).
PULUMI_VERSION = "3.260.0"
# pulumi-kubernetes has no provider/ tags; its v4.25.0 tag is commit f47bc2d6f199, the one
# pseudo-version of provider/v4 the proxy serves. The Python SDK is pinned to the same release.
KUBERNETES_PROVIDER = ("4.25.0", "v4.0.0-20260115033456-f47bc2d6f199")
# crictl, the CRI client every kubeadm troubleshooting guide reaches for first, at the minor of
# the pinned Kubernetes.
CRI_TOOLS = "v1.34.0"
# The provider plugins, the Python language host, kube-router and kuard are not built here: the
# module proxy refuses their sources for good. They come from a directory the user names
# (tools/offline.py: `make plugins`, `make image`), as they would on any offline host.

KUBERNETES_COMMANDS = (
    "kubeadm",
    "kubelet",
    "kubectl",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
)
GO_ENV = {"CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}


class Unavailable(Exception):
    """The module proxy does not serve a module version a piece needs."""


def kubernetes_version() -> str:
    """`kubernetesVersion` of the air stack: the version every node runs."""
    stack = yaml.safe_load((ROOT / "Pulumi.air.yaml").read_text())
    return str(stack["config"]["kube-on-air:kubernetesVersion"])


def go_version() -> str:
    return subprocess.run(["go", "env", "GOVERSION"], capture_output=True, text=True, check=True).stdout.strip()


@dataclass
class Context:
    """Where a piece builds, logs, and finds the pieces it depends on."""

    home: Path
    log: Path
    versions: dict[str, str] = field(default_factory=dict)

    def run(self, args: list[str], cwd: Path, env: Mapping[str, str] | None = None) -> str:
        full_env = {**os.environ, **GO_ENV, **(env or {})}
        with self.log.open("a") as log:
            log.write(f"$ {' '.join(args)}  (in {cwd})\n")
            log.flush()
            done = subprocess.run(args, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=log, text=True)
            log.write(done.stdout)
        if done.returncode != 0:
            tail = "".join(self.log.read_text().splitlines(keepends=True)[-15:])
            raise subprocess.CalledProcessError(done.returncode, args, output=tail)
        return done.stdout

    def download(self, module_at_version: str, work: Path) -> dict[str, Any]:
        """`go mod download -json`, turning the proxy's refusal into Unavailable."""
        work.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["go", "mod", "download", "-json", module_at_version],
            cwd=work,
            env={**os.environ, **GO_ENV},
            capture_output=True,
            text=True,
        )
        info: dict[str, Any] = json.loads(done.stdout) if done.stdout.strip() else {}
        if done.returncode != 0 or "Error" in info:
            reason = str(info.get("Error", done.stderr)).splitlines()[0]
            refusal = re.search(r"(\d{3} [A-Za-z ]+)$", reason)
            if refusal or "invalid version" in reason:
                answer = refusal.group(1) if refusal else "invalid version"
                raise Unavailable(f"the Go module proxy answers '{answer}' for {module_at_version}")
            raise RuntimeError(reason)
        return info


def wrapper_module(ctx: Context, work: Path, module: str, version: str, extra_go_mod: str = "") -> None:
    """A throwaway module requiring `module@version`, with the dependency's non-local replaces copied in.

    Go ignores a dependency's own replace directives, which is why `go install M@V` is refused for
    modules that have them."""
    info = ctx.download(f"{module}@{version}", work)
    upstream = Path(info["GoMod"]).read_text()
    godebug = "\n".join(line for line in upstream.splitlines() if line.startswith("godebug "))
    replaces = [line for line in replace_lines(upstream) if not is_local_replace(line)]
    go_line = re.search(r"^go (\S+)", upstream, re.M)
    text = f"module koa.local/{work.name}\n\ngo {go_line.group(1) if go_line else '1.24'}\n\n{godebug}\n"
    if replaces or extra_go_mod:
        text += "\nreplace (\n" + "".join(f"\t{r}\n" for r in replaces) + extra_go_mod + ")\n"
    (work / "go.mod").write_text(text)
    ctx.run(["go", "get", f"{module}@{version}"], work)


def replace_lines(go_mod: str) -> list[str]:
    """Every `old => new` of a go.mod, from both the single-line and the block form."""
    lines: list[str] = []
    in_block = False
    for raw in go_mod.splitlines():
        line = raw.split("//")[0].strip()
        if line.startswith("replace ("):
            in_block = True
        elif in_block and line == ")":
            in_block = False
        elif in_block and "=>" in line:
            lines.append(line)
        elif line.startswith("replace ") and "=>" in line:
            lines.append(line.removeprefix("replace ").strip())
    return lines


def is_local_replace(line: str) -> bool:
    target = line.split("=>", 1)[1].strip()
    return target.startswith(("./", "../"))


def go_build(ctx: Context, work: Path, out: Path, packages: list[str], ldflags: str, tags: str = "") -> None:
    """Build `packages` into `out`: an existing directory for several commands, else the executable."""
    args = ["go", "build", "-trimpath", "-ldflags", f"-s -w {ldflags}", "-o", str(out)]
    if tags:
        args += ["-tags", tags]
    ctx.run([*args, *packages], work)


# ---- pieces -------------------------------------------------------------------------------------


def build_kubernetes_wrapper(ctx: Context, work: Path, version: str) -> None:
    """A wrapper module for k8s.io/kubernetes: its ./staging replaces become the published modules."""
    info = ctx.download(f"k8s.io/kubernetes@{version}", work)
    staging = [r.split("=>")[0].strip() for r in replace_lines(Path(info["GoMod"]).read_text()) if "./staging" in r]
    published = "v0." + version.split(".", 1)[1]  # staging modules are published as v0.<minor>.<patch>
    extra = "".join(f"\t{name} => {name} {published}\n" for name in staging)
    wrapper_module(ctx, work, "k8s.io/kubernetes", version, extra)


def version_stamp(version: str) -> str:
    """The -X flags of Kubernetes' release builds: kubeadm reads its own version from them (unstamped
    it reports a placeholder and picks wrong images), e2e.test reports it."""
    major, minor = version[1:].split(".")[:2]
    return " ".join(
        f"-X {pkg}.gitVersion={version} -X {pkg}.gitMajor={major} -X {pkg}.gitMinor={minor} "
        f"-X {pkg}.gitTreeState=clean -X {pkg}.buildDate=1970-01-01T00:00:00Z"
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
    )


def build_kubernetes(ctx: Context, work: Path, out: Path, version: str | None = None) -> str:
    """The Kubernetes commands of `version` (default: the stack's), each version-stamped."""
    version = version or f"v{kubernetes_version()}"
    work.mkdir(parents=True, exist_ok=True)
    build_kubernetes_wrapper(ctx, work, version)
    go_build(ctx, work, out, [f"k8s.io/kubernetes/cmd/{c}" for c in KUBERNETES_COMMANDS], version_stamp(version))
    return f"k8s.io/kubernetes@{version}"


def images_kubeadm_expects(kubeadm: Path, version: str | None = None) -> dict[str, str]:
    """Image name -> tag from the built kubeadm's own `config images list`."""
    version = version or f"v{kubernetes_version()}"
    listed = subprocess.run(
        [str(kubeadm), "config", "images", "list", "--kubernetes-version", version],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return {ref.rsplit(":", 1)[0].rsplit("/", 1)[1]: ref.rsplit(":", 1)[1] for ref in listed}


def build_etcd(ctx: Context, work: Path, out: Path) -> str:
    tag = ctx.versions["etcd"]  # e.g. 3.6.5-0: the image revision suffix is not part of the module version
    version = "v" + tag.split("-")[0]
    wrapper_module(ctx, work, "go.etcd.io/etcd/server/v3", version)
    go_build(ctx, work, out / "etcd", ["go.etcd.io/etcd/server/v3"], "")
    return f"go.etcd.io/etcd/server/v3@{version}"


def build_coredns(ctx: Context, work: Path, out: Path) -> str:
    version = ctx.versions["coredns"]
    wrapper_module(ctx, work, "github.com/coredns/coredns", version)
    go_build(ctx, work, out / "coredns", ["github.com/coredns/coredns"], "")
    return f"github.com/coredns/coredns@{version}"


def build_pause(ctx: Context, work: Path, out: Path) -> str:
    version = f"v{kubernetes_version()}"
    info = ctx.download(f"k8s.io/kubernetes@{version}", work)
    source = Path(info["Dir"]) / "build" / "pause" / "linux" / "pause.c"
    tag = ctx.versions["pause"]
    flags = ["-Os", "-Wall", "-Werror", "-static", f"-DVERSION=v{tag}"]
    ctx.run(["gcc", *flags, "-o", str(out / "pause"), str(source)], work)
    return f"k8s.io/kubernetes@{version} build/pause/linux/pause.c (pause {tag})"


def build_pulumi(ctx: Context, work: Path, out: Path) -> str:
    version = f"v{PULUMI_VERSION}"
    # pkg replaces sdk/v3 with ../sdk; the published sdk/v3 of the same release stands in for it.
    wrapper_module(ctx, work, "github.com/pulumi/pulumi/pkg/v3", version)
    ctx.run(["go", "get", f"github.com/pulumi/pulumi/sdk/v3@{version}"], work)
    stamp = f"-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version={version}"
    go_build(
        ctx, work, out / "pulumi", ["github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"], stamp, tags="osusergo,grpcnotrace"
    )
    return f"github.com/pulumi/pulumi/pkg/v3@{version}"


def build_kubernetes_provider(ctx: Context, work: Path, out: Path) -> str:
    version, pseudo = KUBERNETES_PROVIDER
    module = "github.com/pulumi/pulumi-kubernetes/provider/v4"
    info = ctx.download(f"{module}@{pseudo}", work.parent / f"{work.name}-download")
    # The module zip lacks the gitignored schema-embed.json: unpack it and generate that first.
    shutil.copytree(info["Dir"], work, dirs_exist_ok=True)
    subprocess.run(["chmod", "-R", "u+w", str(work)], check=True)
    go_mod = work / "go.mod"
    go_mod.write_text(
        "\n".join(line for line in go_mod.read_text().splitlines() if not line.strip().endswith("=> ../sdk"))
    )
    cmd = work / "cmd" / "pulumi-resource-kubernetes"
    ctx.run(["go", "generate", "."], cmd, env={"VERSION": version})
    stamp = f"-X {module}/pkg/version.Version={version}"
    go_build(ctx, work, out / "pulumi-resource-kubernetes", ["./cmd/pulumi-resource-kubernetes"], stamp)
    return f"{module}@{pseudo} (v{version})"


def build_crictl(ctx: Context, work: Path, out: Path) -> str:
    module = "sigs.k8s.io/cri-tools"
    wrapper_module(ctx, work, module, CRI_TOOLS)
    go_build(ctx, work, out / "crictl", [f"{module}/cmd/crictl"], f"-X {module}/pkg/version.Version={CRI_TOOLS}")
    return f"{module}@{CRI_TOOLS}"


def build_local_path_provisioner(ctx: Context, work: Path, out: Path) -> str:
    """rancher's local-path-provisioner (the local-path add-on), as its scripts/build links it."""
    module = "github.com/rancher/local-path-provisioner"
    wrapper_module(ctx, work, module, LOCAL_PATH_PROVISIONER)
    go_build(ctx, work, out / "local-path-provisioner", [module], f"-X main.VERSION={LOCAL_PATH_PROVISIONER}")
    return f"{module}@{LOCAL_PATH_PROVISIONER}"


def build_metrics_server(ctx: Context, work: Path, out: Path) -> str:
    """metrics-server (the metrics-server add-on), with the version its Makefile links in."""
    module = "sigs.k8s.io/metrics-server"
    wrapper_module(ctx, work, module, METRICS_SERVER)
    version = f"-X k8s.io/client-go/pkg/version.gitVersion={METRICS_SERVER}"
    go_build(ctx, work, out / "metrics-server", [f"{module}/cmd/metrics-server"], version)
    return f"{module}@{METRICS_SERVER}"


UPSTREAM_MANIFEST = "metallb-native.yaml"


def build_metallb(ctx: Context, work: Path, out: Path) -> str:
    """MetalLB's controller and speaker (the metallb add-on), stamped as its Dockerfiles stamp them."""
    module = "go.universe.tf/metallb"
    wrapper_module(ctx, work, module, METALLB)
    ctx.run(["go", "get", f"{module}/controller@{METALLB}", f"{module}/speaker@{METALLB}"], work)
    stamp = " ".join(f"-X {module}/internal/version.{v}={METALLB}" for v in ("gitCommit", "gitBranch"))
    go_build(ctx, work, out, [f"{module}/controller", f"{module}/speaker"], stamp)
    # Upstream's manifest, kept beside the binaries: make test-toolchain holds the CRDs the program
    # applies (templates/addons/metallb/crds.yaml) to it.
    info = ctx.download(f"{module}@{METALLB}", work)
    shutil.copyfile(Path(info["Dir"]) / "config" / "manifests" / UPSTREAM_MANIFEST, out / UPSTREAM_MANIFEST)
    return f"{module}@{METALLB}"


def build_agnhost(ctx: Context, work: Path, out: Path) -> str:
    """agnhost from the test tree of the pinned Kubernetes, whose VERSION file names its image tag."""
    version = f"v{kubernetes_version()}"
    build_kubernetes_wrapper(ctx, work, version)
    go_build(ctx, work, out / "agnhost", ["k8s.io/kubernetes/test/images/agnhost"], "")
    info = ctx.download(f"k8s.io/kubernetes@{version}", work)
    tag = (Path(info["Dir"]) / "test" / "images" / "agnhost" / "VERSION").read_text().strip()
    (out / "VERSION").write_text(tag + "\n")
    return f"k8s.io/kubernetes@{version} test/images/agnhost (agnhost {tag})"


def build_e2e_test(ctx: Context, work: Path, out: Path) -> str:
    """`e2e.test`, upstream's conformance suite, from the test tree of the pinned Kubernetes."""
    version = f"v{kubernetes_version()}"
    build_kubernetes_wrapper(ctx, work, version)
    args = ["go", "test", "-c", "-trimpath", "-ldflags", f"-s -w {version_stamp(version)}", "-o", str(out / "e2e.test")]
    ctx.run([*args, "k8s.io/kubernetes/test/e2e"], work)
    return f"k8s.io/kubernetes@{version} test/e2e (go test -c)"


# ---- OCI images, made without Docker -------------------------------------------------------------

DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
# kube-proxy programs iptables/ipset itself: its image needs those tools, the others a bare rootfs.
PROXY_PACKAGES = "iptables,ipset,iproute2,conntrack,kmod"
# dnstools: what infoblox/dnstools offered (dig, nslookup, host, curl, ping), from Debian packages.
DNSTOOLS_PACKAGES = "bash,dnsutils,curl,iputils-ping,ca-certificates"
# agnhost: upstream's image (test/images/agnhost/Dockerfile) is Alpine with bind-tools, curl,
# netcat-openbsd, iproute2, iperf and bash; e2e tests and `kubectl exec` users rely on them. The same
# tools from Debian, plus what the Dockerfile adds: CoreDNS at /coredns, /uploads, the porter
# certificates, the agnhost-2 link, user 1000 in group 50000, entrypoint /agnhost with CMD pause.
AGNHOST_PACKAGES = "bash,dnsutils,curl,netcat-openbsd,iproute2,iperf,ca-certificates"
AGNHOST_USER = "user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\n"
AGNHOST_GROUPS = "user-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n"
# busybox: upstream's image is the busybox binary with its applets and CMD sh; Debian's busybox on an
# essential rootfs offers the same commands (local-path's helper pods run sh, mkdir and rm in it).
BUSYBOX_PACKAGES = "busybox"
# The conformance specs' busybox: upstream's is busybox 1.37.0 alone on an empty rootfs; trixie's
# static build of 1.37.0 is the same (and runs here, on an older glibc, to list its applets).
E2E_BUSYBOX_PACKAGES = "busybox-static"
# jessie-dnsutils (the DNS conformance specs' querier): upstream's is Debian jessie with dnsutils and
# CoreDNS 1.5.0 at /coredns; ours is bookworm's dnsutils and the CoreDNS the toolchain builds.
JESSIE_DNSUTILS_PACKAGES = "dnsutils"
# httpd (test/e2e/apps' WebserverImage and its new version): upstream's is Docker's httpd 2.4.38 on
# Alpine: /usr/local/apache2 with bin/httpd, httpd-foreground as CMD, htdocs/index.html, logs to the
# container's output, workers as daemon. Ours is that layout around bookworm's apache2 (2.4.6x) on a
# Debian userland (sh, coreutils' mv, as the StatefulSet specs use) with the files of
# templates/test-images/; both tags carry the same server, as only their names differ to the specs.
HTTPD_PACKAGES = "apache2-bin,media-types"
HTTPD_PREFIX = "/usr/local/apache2"
HTTPD_FILES = ROOT / "templates" / "test-images"
# local-path-provisioner: upstream's is Alpine (with busybox) and the binary in /usr/bin.
LOCAL_PATH_PACKAGES = "ca-certificates"
# MetalLB: upstream's are distroless static with the binary at / and no USER (the controller's pod
# runs it as 65534; the speaker runs as root to answer ARP).
# metrics-server: upstream's is distroless static (no shell) with the binary at /, run as 65534.
METRICS_SERVER_USER = "65534"
MINIMAL_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/nsswitch.conf": "hosts: files dns\n",
}
PATH_ENV = "PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Image:
    """One image: its reference exactly as kubeadm or our manifests name it, and what goes inside."""

    ref: str
    binary: str | None  # a file of the pieces/ tree, as <piece>/<file>
    path: str  # where it lies in the image
    entrypoint: bool  # kubeadm's static pods name a command; Deployments rely on the entrypoint
    debian_packages: str | None = None  # a Debian rootfs with these packages, else a bare one
    debian_suite: str = "bookworm"
    cmd: str | None = None  # the image's default arguments (upstream's CMD)
    user: str | None = None  # upstream's USER, when not root
    workdir: str | None = None  # upstream's WORKDIR
    path_env: str = PATH_ENV
    finish: Callable[[Context, Path, Path], None] | None = None  # (ctx, work, rootfs): what upstream adds


def finish_agnhost(ctx: Context, work: Path, rootfs: Path) -> None:
    """What upstream's Dockerfile adds beside the packages and /agnhost."""
    shutil.copy2(ctx.home / "pieces" / "coredns" / "coredns", rootfs / "coredns")
    (rootfs / "uploads").mkdir(exist_ok=True)
    module = ctx.download(f"k8s.io/kubernetes@v{kubernetes_version()}", work)
    porter = Path(module["Dir"]) / "test" / "images" / "agnhost" / "porter"
    for name in ("localhost.crt", "localhost.key"):
        shutil.copyfile(porter / name, rootfs / name)
    (rootfs / "agnhost-2").symlink_to("agnhost")
    (rootfs / "usr" / "local" / "bin").mkdir(parents=True, exist_ok=True)
    (rootfs / "usr" / "local" / "bin" / "iperf").symlink_to("/usr/bin/iperf")
    with (rootfs / "etc" / "passwd").open("a") as passwd:
        passwd.write(AGNHOST_USER)
    with (rootfs / "etc" / "group").open("a") as group:
        group.write(AGNHOST_GROUPS)
    (rootfs / "home" / "user-defined-in-image").mkdir(parents=True, exist_ok=True)


def finish_busybox(ctx: Context, work: Path, rootfs: Path) -> None:
    """Every applet by its name, as in upstream's image, where Debian has no command of that name."""
    applets = subprocess.run(
        [str(rootfs / "bin" / "busybox"), "--list-full"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        link = rootfs / applet
        if not (link.exists() or link.is_symlink()):
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")


def finish_static_busybox(ctx: Context, work: Path, rootfs: Path) -> None:
    """As upstream's busybox image: the one static binary at /bin/busybox and its applets, no other userland."""
    unpacked = work / "busybox-static"
    unpacked.mkdir(exist_ok=True)
    base = debian_rootfs(ctx, work, E2E_BUSYBOX_PACKAGES, "trixie")
    ctx.run(["tar", "-xf", str(base), "-C", str(unpacked), "--wildcards", "*bin/busybox"], work)
    (rootfs / "bin").mkdir(exist_ok=True)
    found = next(p for p in (unpacked / "usr" / "bin" / "busybox", unpacked / "bin" / "busybox") if p.is_file())
    shutil.copy2(found, rootfs / "bin" / "busybox")
    finish_busybox(ctx, work, rootfs)


def finish_httpd(ctx: Context, work: Path, rootfs: Path) -> None:
    """Docker's httpd layout: bin/httpd and httpd-foreground, conf/httpd.conf, htdocs/index.html, logs/."""
    prefix = rootfs / HTTPD_PREFIX.lstrip("/")
    places = {"httpd": "bin", "httpd-foreground": "bin", "httpd.conf": "conf", "index.html": "htdocs"}
    for name, folder in places.items():
        (prefix / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy2(HTTPD_FILES / name, prefix / folder / name)
    (prefix / "logs").mkdir(exist_ok=True)


def images_to_build(home: Path) -> list[Image]:
    versions = load_versions(home)
    k8s = f"v{kubernetes_version()}"
    agnhost = (home / "pieces" / "agnhost" / "VERSION").read_text().strip()
    control_plane = [
        Image(f"registry.k8s.io/{c}:{k8s}", f"kubernetes/{c}", f"/usr/local/bin/{c}", False)
        for c in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
    ]
    return [
        *control_plane,
        Image(
            f"registry.k8s.io/kube-proxy:{k8s}",
            "kubernetes/kube-proxy",
            "/usr/local/bin/kube-proxy",
            False,
            PROXY_PACKAGES,
        ),
        Image(f"registry.k8s.io/etcd:{versions['etcd']}", "etcd/etcd", "/usr/local/bin/etcd", False),
        Image(f"registry.k8s.io/coredns/coredns:{versions['coredns']}", "coredns/coredns", "/coredns", True),
        Image(f"registry.k8s.io/pause:{versions['pause']}", "pause/pause", "/pause", True),
        Image(
            f"registry.k8s.io/e2e-test-images/agnhost:{agnhost}",
            "agnhost/agnhost",
            "/agnhost",
            True,
            AGNHOST_PACKAGES,
            cmd="pause",
            finish=finish_agnhost,
        ),
        Image(DNSTOOLS_IMAGE, None, "/bin/bash", True, DNSTOOLS_PACKAGES),
        Image(BUSYBOX_IMAGE, None, "/bin/sh", False, BUSYBOX_PACKAGES, cmd="sh", finish=finish_busybox),
        Image(E2E_BUSYBOX_IMAGE, None, "/bin/sh", False, cmd="sh", finish=finish_static_busybox),
        Image(JESSIE_DNSUTILS_IMAGE, "coredns/coredns", "/coredns", False, JESSIE_DNSUTILS_PACKAGES, cmd="/bin/sh"),
        *(
            Image(
                ref,
                None,
                f"{HTTPD_PREFIX}/bin/httpd-foreground",
                False,
                HTTPD_PACKAGES,
                cmd="httpd-foreground",
                workdir=HTTPD_PREFIX,
                path_env=f"PATH={HTTPD_PREFIX}/bin:{PATH_ENV[5:]}",
                finish=finish_httpd,
            )
            for ref in HTTPD_IMAGES
        ),
        Image(
            LOCAL_PATH_IMAGE,
            "local-path-provisioner/local-path-provisioner",
            "/usr/bin/local-path-provisioner",
            False,
            LOCAL_PATH_PACKAGES,
            cmd="local-path-provisioner",
        ),
        Image(
            METRICS_SERVER_IMAGE,
            "metrics-server/metrics-server",
            "/metrics-server",
            True,
            user=METRICS_SERVER_USER,
        ),
        Image(METALLB_CONTROLLER_IMAGE, "metallb/controller", "/controller", True),
        Image(METALLB_SPEAKER_IMAGE, "metallb/speaker", "/speaker", True),
    ]


def archive_name(ref: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", ref.split("/", 1)[1]) + ".tar"


# As Debian's slim images do: no manuals, documentation or translations in a container's rootfs.
SLIM_EXCLUDES = tuple(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("man", "doc", "info", "locale"))


def debian_rootfs(ctx: Context, work: Path, packages: str, suite_name: str) -> Path:
    tarball = work / f"debian-{suite_name}-{hashlib.sha256(packages.encode()).hexdigest()[:12]}.tar"
    if not tarball.exists():
        suite = [suite_name, str(tarball), DEBIAN_MIRROR]
        ctx.run(["mmdebstrap", "--quiet", "--variant=essential", *SLIM_EXCLUDES, f"--include={packages}", *suite], work)
    return tarball


def build_image(ctx: Context, work: Path, out: Path, image: Image) -> None:
    layout, bundle = work / "layout", work / f"bundle-{archive_name(image.ref)}"
    if not layout.exists():
        ctx.run(["umoci", "init", "--layout", str(layout)], work)
    tag = archive_name(image.ref).removesuffix(".tar")
    ctx.run(["umoci", "new", "--image", f"{layout}:{tag}"], work)
    ctx.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:{tag}", str(bundle)], work)
    rootfs = bundle / "rootfs"
    if image.debian_packages:
        base = debian_rootfs(ctx, work, image.debian_packages, image.debian_suite)
        ctx.run(["tar", "-xf", str(base), "-C", str(rootfs)], work)
    else:
        for relative, text in MINIMAL_FILES.items():
            (rootfs / relative).parent.mkdir(parents=True, exist_ok=True)
            (rootfs / relative).write_text(text)
        (rootfs / "tmp").mkdir(mode=0o1777, exist_ok=True)
    if image.binary:
        target = rootfs / image.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ctx.home / "pieces" / image.binary, target)
    if image.finish:
        image.finish(ctx, work, rootfs)
    ctx.run(["umoci", "repack", "--image", f"{layout}:{tag}", str(bundle)], work)
    config = ["umoci", "config", "--image", f"{layout}:{tag}", "--config.env", image.path_env, "--os", "linux"]
    config += ["--architecture", "amd64"]
    if image.entrypoint:
        config += ["--config.entrypoint", image.path]
    if image.cmd:
        config += ["--config.cmd", image.cmd]
    if image.user:
        config += ["--config.user", image.user]
    if image.workdir:
        config += ["--config.workingdir", image.workdir]
    ctx.run(config, work)
    archive = f"docker-archive:{out / archive_name(image.ref)}:{image.ref}"
    ctx.run(["skopeo", "--insecure-policy", "copy", "--quiet", f"oci:{layout}:{tag}", archive], work)
    shutil.rmtree(bundle)


def build_images(ctx: Context, work: Path, out: Path) -> str:
    images = images_to_build(ctx.home)
    for image in images:
        build_image(ctx, work, out, image)
    (out / "images.txt").write_text("".join(f"{i.ref} {archive_name(i.ref)}\n" for i in images))
    return "umoci + skopeo over the built pieces: " + ", ".join(i.ref.rsplit("/", 1)[1] for i in images)


@dataclass(frozen=True)
class Piece:
    name: str
    build: Callable[[Context, Path, Path], str]
    needs_versions: bool = False  # waits for the built kubeadm to name its image versions
    # Raised when what the piece puts out changes without a pin changing: a toolchain built by an
    # earlier recipe rebuilds the piece instead of keeping it (a record without one is recipe 1).
    recipe: int = 1
    # The version of a piece built beside the toolchain's pinned core (not in cache_key): a new pin
    # rebuilds that piece alone.
    pin: str | None = None


PIECES = (
    Piece("kubernetes", build_kubernetes),
    Piece("etcd", build_etcd, needs_versions=True),
    Piece("coredns", build_coredns, needs_versions=True),
    Piece("pause", build_pause, needs_versions=True),
    Piece("agnhost", build_agnhost),
    Piece("local-path-provisioner", build_local_path_provisioner, pin=LOCAL_PATH_PROVISIONER),
    Piece("metrics-server", build_metrics_server, pin=METRICS_SERVER),
    Piece("metallb", build_metallb, pin=METALLB, recipe=2),
    Piece("e2e-test", build_e2e_test),
    # 2: agnhost as upstream's; slim Debian. 3: the local-path add-on's provisioner and busybox.
    # 4: metrics-server. 5: MetalLB's controller and speaker. 6: the conformance specs' busybox and
    # jessie-dnsutils. 7: the sig-apps specs' httpd images.
    Piece("images", build_images, needs_versions=True, recipe=7),
    Piece("pulumi", build_pulumi),
    Piece("pulumi-resource-kubernetes", build_kubernetes_provider),
    Piece("cri-tools", build_crictl),
)


# ---- cache, manifest, progress ------------------------------------------------------------------


def cache_key(go: str) -> str:
    pins = {
        "go": go,
        "kubernetes": kubernetes_version(),
        "pulumi": PULUMI_VERSION,
        "kubernetes-provider": KUBERNETES_PROVIDER,
        "cri-tools": CRI_TOOLS,
    }
    return hashlib.sha256(json.dumps(pins, sort_keys=True).encode()).hexdigest()[:16]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def peak_child_rss_mib() -> int:
    """The largest process this run has started so far (RUSAGE_CHILDREN keeps a running maximum)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024


def build_piece(piece: Piece, home: Path, go: str) -> dict[str, Any]:
    """Build one piece into pieces/<name>/ unless its record says it is done; return its record."""
    done = home / "pieces" / f"{piece.name}.json"
    if done.exists():
        record: dict[str, Any] = json.loads(done.read_text())
        if record.get("recipe", 1) == piece.recipe and record.get("pin") == piece.pin:
            return {**record, "this_run": "cached"}
    out, work = home / "pieces" / piece.name, home / "work" / piece.name
    for stale in (out, work):  # a killed run leaves half a piece: start that piece again
        shutil.rmtree(stale, ignore_errors=True)
    out.mkdir(parents=True)
    work.mkdir(parents=True)
    ctx = Context(home, home / "logs" / f"{piece.name}.log", versions=load_versions(home))
    ctx.log.parent.mkdir(exist_ok=True)
    ctx.log.write_text("")
    started = time.monotonic()
    try:
        source = piece.build(ctx, work, out)
    except Unavailable as gone:
        shutil.rmtree(out, ignore_errors=True)
        return {"piece": piece.name, "status": "unavailable", "reason": str(gone), "this_run": "tried"}
    record = {
        "piece": piece.name,
        "recipe": piece.recipe,
        "pin": piece.pin,
        "status": "built",
        "source": source,
        "go": go,
        "build_seconds": round(time.monotonic() - started),
        "peak_rss_mib": peak_child_rss_mib(),
        "outputs": {p.name: sha256(p) for p in sorted(out.iterdir()) if p.is_file()},
    }
    done.write_text(json.dumps(record, indent=2) + "\n")  # written last: the marker of a whole piece
    shutil.rmtree(work, ignore_errors=True)
    return {**record, "this_run": "built"}


def load_versions(home: Path) -> dict[str, str]:
    path = home / "image-versions.json"
    return json.loads(path.read_text()) if path.exists() else {}


def record_image_versions(home: Path) -> None:
    kubeadm = home / "pieces" / "kubernetes" / "kubeadm"
    path = home / "image-versions.json"
    if kubeadm.exists() and not path.exists():
        wanted = images_kubeadm_expects(kubeadm)
        path.write_text(json.dumps(wanted, indent=2, sort_keys=True) + "\n")


def pulumi_env(home: Path) -> dict[str, str]:
    """The toolchain's own PULUMI_HOME: plugins registered there, never downloaded."""
    return {**os.environ, "PULUMI_HOME": str(home / "pulumi-home"), "PULUMI_SKIP_UPDATE_CHECK": "true"}


def plugin_registered(home: Path, name: str, version: str) -> bool:
    return (home / "pulumi-home" / "plugins" / f"resource-{name}-v{version}").is_dir()


def register_plugin(home: Path, name: str, version: str, binary: Path) -> None:
    """`pulumi plugin install --file` into the toolchain's PULUMI_HOME."""
    subprocess.run(
        [str(home / "bin" / "pulumi"), "plugin", "install", "resource", name, version, "--file", str(binary)],
        env=pulumi_env(home),
        check=True,
        capture_output=True,
    )
    print(f"[toolchain] registered plugin resource {name} {version}", flush=True)


def register_kubernetes_plugin(home: Path) -> None:
    """The one provider plugin built here; the others come from a directory (tools/offline.py)."""
    binary = home / "pieces" / "pulumi-resource-kubernetes" / "pulumi-resource-kubernetes"
    version = KUBERNETES_PROVIDER[0]
    if (home / "bin" / "pulumi").exists() and binary.exists() and not plugin_registered(home, "kubernetes", version):
        register_plugin(home, "kubernetes", version, binary)


def link_bin(home: Path) -> None:
    """bin/: every built executable under one directory, and `current` pointing at this key.

    Plugins stay out: provider plugins are registered in PULUMI_HOME and the language host sits
    beside the CLI (tools/offline.py); a copy on PATH makes the engine warn "using
    pulumi-resource-kubernetes from $PATH" on every run."""
    bin_dir = home / "bin"
    bin_dir.mkdir(exist_ok=True)
    for exe in sorted((home / "pieces").glob("*/*")):
        link = bin_dir / exe.name
        if exe.name.startswith(("pulumi-resource-", "pulumi-language-")):
            link.unlink(missing_ok=True)
        elif exe.is_file() and os.access(exe, os.X_OK) and not link.exists():
            link.symlink_to(exe)
    current = home.parent / "current"
    tmp = home.parent / ".current.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(home.name)
    tmp.replace(current)


def manifest_entries(home: Path, this_run: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per piece, whether built now, built before, refused now or never tried."""
    tried = {r["piece"]: r for r in this_run}
    entries = []
    for piece in PIECES:
        done = home / "pieces" / f"{piece.name}.json"
        if piece.name in tried:
            entry = {k: v for k, v in tried[piece.name].items() if k != "this_run"}
        elif done.exists():
            entry = json.loads(done.read_text())
        else:
            entry = {"piece": piece.name, "status": "not built yet"}
        entries.append(entry)
    return entries


def progress(record: Mapping[str, Any]) -> str:
    name = f"{record['piece']:<28}"
    if record["status"] == "unavailable":
        return f"[toolchain] {name} UNAVAILABLE  {record['reason']}"
    how = "cached" if record["this_run"] == "cached" else "built "
    return f"[toolchain] {name} {how} {record['build_seconds']:>6} s  {record['source']}"


# Tools the build runs (Debian package = command); Go itself must be 1.26 or newer, which Debian lacks.
APT_BUILD_TOOLS = ("gcc", "umoci", "skopeo", "mmdebstrap")


def missing_build_tools() -> str | None:
    """One line naming what to install, or None when every tool is there."""
    packages = [tool for tool in APT_BUILD_TOOLS if shutil.which(tool) is None]
    parts = ["Go >= 1.26 from https://go.dev/dl (go on PATH)"] if shutil.which("go") is None else []
    if packages:
        parts.append(f"sudo apt-get install {' '.join(packages)}")
    return f"[toolchain] missing build tools: {'; '.join(parts)}" if parts else None


def main(argv: list[str] | None = None) -> int:
    lacking = missing_build_tools()
    if lacking:
        print(lacking)
        return 1
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", action="append", help="build just these pieces (repeatable)")
    args = parser.parse_args(argv)
    go = go_version()
    home = CACHE / cache_key(go)
    (home / "pieces").mkdir(parents=True, exist_ok=True)
    print(f"[toolchain] cache {home}", flush=True)
    records = []
    for piece in PIECES:
        if args.only and piece.name not in args.only:
            continue
        if piece.needs_versions:
            record_image_versions(home)
        try:
            record = build_piece(piece, home, go)
        except subprocess.CalledProcessError as failed:
            print(f"[toolchain] {piece.name:<28} FAILED: {' '.join(failed.cmd)}\n{failed.output}", flush=True)
            return 1
        records.append(record)
        print(progress(record), flush=True)
    record_image_versions(home)
    link_bin(home)
    register_kubernetes_plugin(home)
    entries = manifest_entries(home, records)
    manifest = {"key": home.name, "go": go, "pieces": entries}
    (home / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    not_built = [e["piece"] for e in entries if e["status"] != "built"]
    print(f"[toolchain] manifest {home / 'manifest.json'}")
    if not_built:
        print(f"[toolchain] incomplete: {len(not_built)} piece(s) missing: {', '.join(not_built)}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
