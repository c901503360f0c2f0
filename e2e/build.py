"""Builds and caches the local cluster's binaries and upstream CRDs.

Owns everything under ``~/.cache/modelpilot`` (or ``$MODELPILOT_CACHE``):

* ``k8s/<version>/bin/``: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
  kube-proxy, kubectl, helm, prometheus, traefik and metrics-server, built from the Go
  module proxy with the machine's Go;
* ``k8s/<version>/bin/cni/``: the CNI plugins a pod network needs (a ``CNI_PATH``);
* ``k8s/<version>/crds/``: the upstream CRDs the operator renders objects for;
* ``k8s/<version>/manifest.json``: what was built from which pin, and how long it took;
* ``go/``: a Go module and build cache of the project's own, so that its size can be
  measured and removed without touching any other Go work on the machine.

Nothing upstream is vendored into the repository: the build makes small wrapper modules
at build time, under the cache (``k8s/<version>/src/``), and builds through them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from e2e import versions

KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
BINARIES = (
    "etcd",
    *KUBE_COMMANDS,
    "kube-proxy",
    "helm",
    "prometheus",
    "traefik",
    "metrics-server",
)
# The CNI plugins built into ``bin/cni/``, with the folder in the plugins module of each.
CNI_PLUGINS = {
    "bridge": "plugins/main/bridge",
    "host-local": "plugins/ipam/host-local",
    "loopback": "plugins/main/loopback",
    "portmap": "plugins/meta/portmap",
}


class BuildError(RuntimeError):
    """A build step failed; the message names the step and its log."""


@dataclass(frozen=True)
class CachePaths:
    """Where the build puts its outputs for one Kubernetes version."""

    root: Path
    version: str = versions.KUBERNETES

    @property
    def k8s(self) -> Path:
        return self.root / "k8s" / self.version

    @property
    def bin(self) -> Path:
        return self.k8s / "bin"

    @property
    def cni(self) -> Path:
        """The CNI plugins, one binary per plugin: a folder to use as ``CNI_PATH``."""
        return self.bin / "cni"

    @property
    def crds(self) -> Path:
        return self.k8s / "crds"

    @property
    def src(self) -> Path:
        return self.k8s / "src"

    @property
    def manifest(self) -> Path:
        return self.k8s / "manifest.json"

    @property
    def log(self) -> Path:
        return self.k8s / "build.log"

    @property
    def gomodcache(self) -> Path:
        return self.root / "go" / "mod"

    @property
    def gocache(self) -> Path:
        return self.root / "go" / "build"

    def binary(self, name: str) -> Path:
        return self.bin / name


def cache_root() -> Path:
    """The project's cache folder, outside the repository."""
    env = os.environ.get("MODELPILOT_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "modelpilot"


def default_paths() -> CachePaths:
    return CachePaths(cache_root())


# --- manifest ---------------------------------------------------------------------------


def wanted_pins() -> dict[str, str]:
    """The pin each cached part is built from; a part is rebuilt when its pin changes."""
    return {
        "kubernetes": versions.KUBERNETES,
        "etcd": versions.ETCD,
        "helm": versions.HELM,
        "prometheus": versions.PROMETHEUS,
        "crds": f"istio-api={versions.ISTIO_API},gateway-api={versions.GATEWAY_API},"
        f"prometheus-operator={versions.PROMETHEUS_OPERATOR}",
        "cni": versions.CNI_PLUGINS,
        "kube-proxy": versions.KUBERNETES,
        "traefik": versions.TRAEFIK,
        "metrics-server": versions.METRICS_SERVER,
    }


def read_manifest(paths: CachePaths) -> dict[str, Any]:
    try:
        data = json.loads(paths.manifest.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_manifest(paths: CachePaths, manifest: dict[str, Any]) -> None:
    paths.k8s.mkdir(parents=True, exist_ok=True)
    tmp = paths.manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.replace(paths.manifest)


def part_is_cached(paths: CachePaths, part: str, outputs: Iterable[Path]) -> bool:
    parts = read_manifest(paths).get("parts", {})
    recorded = parts.get(part, {}) if isinstance(parts, dict) else {}
    if not isinstance(recorded, dict) or recorded.get("pin") != wanted_pins()[part]:
        return False
    return all(p.exists() for p in outputs)


def record_part(paths: CachePaths, part: str, seconds: float) -> None:
    manifest = read_manifest(paths)
    parts = manifest.setdefault("parts", {})
    parts[part] = {"pin": wanted_pins()[part], "seconds": round(seconds, 1)}
    write_manifest(paths, manifest)


def part_outputs(paths: CachePaths) -> dict[str, list[Path]]:
    """What each cached part leaves in the cache, in build order."""
    return {
        "etcd": [paths.binary("etcd")],
        "helm": [paths.binary("helm")],
        "kubernetes": [paths.binary(c) for c in KUBE_COMMANDS],
        "crds": [paths.crds],
        "prometheus": [paths.binary("prometheus")],
        "cni": [paths.cni / name for name in CNI_PLUGINS],
        "kube-proxy": [paths.binary("kube-proxy")],
        "traefik": [paths.binary("traefik")],
        "metrics-server": [paths.binary("metrics-server")],
    }


def is_complete(paths: CachePaths | None = None) -> bool:
    """True when every binary and the CRDs are cached at the pinned versions."""
    paths = paths or default_paths()
    return all(part_is_cached(paths, part, out) for part, out in part_outputs(paths).items())


# --- running Go -------------------------------------------------------------------------


def fmt_elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def say(msg: str) -> None:
    print(f">> {msg}", flush=True)


class GoEnv:
    """The environment every Go command of the build runs in."""

    def __init__(self, paths: CachePaths, log: TextIO) -> None:
        self.paths = paths
        self.log = log
        go = shutil.which("go")
        if go is None:
            raise BuildError(
                "the local cluster is built with Go, and `go` is not on PATH "
                "(install Go 1.24 or newer)"
            )
        self.go = go
        self.env = dict(os.environ)
        self.env.update(
            {
                "GOMODCACHE": str(paths.gomodcache),
                "GOCACHE": str(paths.gocache),
                # Writable module cache: the cache folder can be removed with rm -rf.
                "GOFLAGS": "-modcacherw",
                # Static binaries, no C toolchain needed, as upstream releases them.
                "CGO_ENABLED": "0",
                "GOWORK": "off",
                "GOTOOLCHAIN": os.environ.get("GOTOOLCHAIN", "local") or "local",
            }
        )
        self.nice = ["nice", "-n", "10"] if shutil.which("nice") else []

    def version(self) -> tuple[int, int, int]:
        out = self.output(["env", "GOVERSION"])
        return parse_go_version(out.strip())

    def require(self, go_directive: str) -> None:
        """Use a newer toolchain from the proxy when a module needs one the machine lacks."""
        if self.env["GOTOOLCHAIN"] != "local":
            return
        have = self.version()
        need = parse_go_version("go" + go_directive)
        if have < need:
            say(
                f"Go {'.'.join(map(str, have))} is older than the go {go_directive} a module "
                f"needs: using {versions.GO_TOOLCHAIN_FALLBACK} from the module proxy"
            )
            self.env["GOTOOLCHAIN"] = versions.GO_TOOLCHAIN_FALLBACK

    def output(self, args: Sequence[str], cwd: Path | None = None) -> str:
        self.log.write(f"$ go {' '.join(args)}\n")
        self.log.flush()
        proc = subprocess.run(
            [self.go, *args],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        self.log.write(proc.stderr)
        self.log.flush()
        if proc.returncode != 0:
            raise BuildError(f"go {' '.join(args)} failed:\n{tail(proc.stderr)}")
        return proc.stdout

    def run(
        self,
        args: Sequence[str],
        what: str,
        cwd: Path | None = None,
        total: int | None = None,
    ) -> None:
        """Run a long Go command at low priority, printing progress while it runs.

        With ``-v``, go prints every package it compiles; counting those lines against
        ``total`` gives a rough progress figure.
        """
        self.log.write(f"$ go {' '.join(args)}\n")
        self.log.flush()
        proc = subprocess.Popen(
            [*self.nice, self.go, *args],
            cwd=cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        start = time.monotonic()
        count = 0
        recent: list[str] = []
        done = threading.Event()

        def ticker() -> None:
            while not done.wait(20):
                of = f"/{total}" if total else ""
                say(
                    f"   {what}: {count}{of} packages compiled, "
                    f"{fmt_elapsed(time.monotonic() - start)}"
                )

        thread = threading.Thread(target=ticker, daemon=True)
        thread.start()
        try:
            for line in proc.stdout:
                self.log.write(line)
                recent = [*recent[-40:], line]
                if line.strip() and " " not in line.strip():
                    count += 1
            rc = proc.wait()
        finally:
            proc.stdout.close()
            done.set()
            thread.join()
            self.log.flush()
        if rc != 0:
            raise BuildError(
                f"{what}: go {args[0]} failed (exit {rc}); see {self.paths.log}:\n"
                + "".join(recent[-20:])
            )

    def download(self, module: str, version: str) -> dict[str, Any]:
        """Fetch one module into the module cache; returns `go mod download -json`."""
        out = self.output(["mod", "download", "-json", f"{module}@{version}"])
        info = json.loads(out)
        if not isinstance(info, dict) or info.get("Error"):
            raise BuildError(f"cannot download {module}@{version}: {info}")
        return info


def parse_go_version(text: str) -> tuple[int, int, int]:
    m = re.match(r"go(\d+)(?:\.(\d+))?(?:\.(\d+))?", text)
    if not m:
        raise BuildError(f"cannot read a Go version from {text!r}")
    return (int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0))


def tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def go_directive(gomod: str) -> str:
    m = re.search(r"^go\s+(\S+)", gomod, re.MULTILINE)
    if not m:
        raise BuildError("go.mod without a go directive")
    return m.group(1)


def staging_modules(gomod: str) -> list[str]:
    """The modules k8s.io/kubernetes's go.mod points at its own ./staging tree."""
    found = re.findall(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", gomod, re.MULTILINE)
    if not found:
        raise BuildError("k8s.io/kubernetes go.mod names no staging modules")
    return sorted(set(found))


def required_version(gomod: str, module: str) -> str:
    m = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", gomod, re.MULTILINE)
    if not m:
        raise BuildError(f"go.mod does not require {module}")
    return m.group(1)


def directives(gomod: str, verb: str) -> list[str]:
    """The entries of every ``verb`` directive (``replace``, ``exclude``), one-line or block."""
    entries: list[str] = []
    block = False
    for raw in gomod.splitlines():
        line = raw.split("//", 1)[0].strip()
        if block:
            if line == ")":
                block = False
            elif line:
                entries.append(" ".join(line.split()))
        elif line == f"{verb} (":
            block = True
        elif line.startswith(f"{verb} "):
            entries.append(" ".join(line.removeprefix(f"{verb} ").split()))
    return entries


def is_local_replace(entry: str) -> bool:
    """A replace whose target is a folder of the upstream tree, not a module version."""
    target = entry.split("=>", 1)[1].strip()
    return target.startswith(("./", "../", "/"))


def replaced_module(entry: str) -> str:
    """The module a replace entry replaces (its left side, without a version)."""
    return entry.split("=>", 1)[0].split()[0]


def wrapper_gomod(
    name: str,
    upstream: str,
    module: str,
    version: str,
    local: Mapping[str, str] | None = None,
) -> str:
    """go.mod of a wrapper module that builds ``module@version`` as a dependency.

    A dependency's replace and exclude directives are ignored, so the wrapper repeats
    them; the godebug lines pick runtime defaults and are repeated as well. A replace
    that points into upstream's own tree (a module zip does not carry nested modules)
    must be given a substitute in ``local`` (module -> ``target [version]``), which
    may also override upstream's other replaces and add new ones.
    """
    local = dict(local or {})
    replaces: list[str] = []
    for entry in directives(upstream, "replace"):
        replaced = replaced_module(entry)
        if replaced in local:
            replaces.append(f"{replaced} => {local.pop(replaced)}")
        elif is_local_replace(entry):
            raise BuildError(
                f"{module}@{version} replaces {replaced} with a folder of its own tree "
                "that the module zip lacks, and the build knows no substitute"
            )
        else:
            replaces.append(entry)
    replaces += [f"{m} => {target}" for m, target in local.items()]
    excludes = directives(upstream, "exclude")
    godebug = re.findall(r"^godebug\s+.*$", upstream, re.MULTILINE)
    text = f"module modelpilot.local/{name}-build\n\ngo {go_directive(upstream)}\n"
    if godebug:
        text += "\n" + "".join(f"{line}\n" for line in godebug)
    text += f"\nrequire {module} {version}\n"
    if replaces:
        text += "\nreplace (\n" + "".join(f"\t{r}\n" for r in replaces) + ")\n"
    if excludes:
        text += "\nexclude (\n" + "".join(f"\t{e}\n" for e in excludes) + ")\n"
    return text


def tools_go(packages: Sequence[str]) -> str:
    """A build-tagged file that imports the commands, so that go mod tidy keeps them."""
    return (
        "//go:build tools\n\n"
        "// Package tools names the commands this module builds, for go mod tidy.\n"
        "package tools\n\n"
        "import (\n" + "".join(f'\t_ "{p}"\n' for p in packages) + ")\n"
    )


def module_time(info: dict[str, Any]) -> str:
    try:
        data = json.loads(Path(str(info["Info"])).read_text())
    except (KeyError, OSError, ValueError):
        return "1970-01-01T00:00:00Z"
    return str(data.get("Time", "1970-01-01T00:00:00Z"))


# --- the parts --------------------------------------------------------------------------


def build_etcd(go: GoEnv) -> None:
    """etcd through a wrapper ``main``: its own module keeps etcd's dependency versions."""
    paths = go.paths
    info = go.download("go.etcd.io/etcd/server/v3", versions.ETCD)
    gomod = Path(str(info["GoMod"])).read_text()
    go.require(go_directive(gomod))
    src = paths.src / "etcd"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    (src / "go.mod").write_text(
        "module modelpilot.local/etcd-build\n\n"
        f"go {go_directive(gomod)}\n\n"
        f"require go.etcd.io/etcd/server/v3 {versions.ETCD}\n"
    )
    (src / "main.go").write_text(
        "// Command etcd is the upstream etcd server, built as a module dependency.\n"
        "package main\n\n"
        'import (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\n'
        "func main() { etcdmain.Main(os.Args) }\n"
    )
    say(f"resolving etcd {versions.ETCD} dependencies")
    go.output(["mod", "tidy"], cwd=src)
    total = len(go.output(["list", "-deps", "."], cwd=src).split())
    say(f"building etcd {versions.ETCD} ({total} packages)")
    go.run(
        ["build", "-v", "-trimpath", "-ldflags=-s -w", "-o", str(paths.binary("etcd")), "."],
        "etcd",
        cwd=src,
        total=total,
    )


def build_helm(go: GoEnv) -> None:
    """helm has no replace directives, so ``go install`` works; ldflags as its Makefile."""
    paths = go.paths
    info = go.download("helm.sh/helm/v3", versions.HELM)
    gomod = Path(str(info["GoMod"])).read_text()
    go.require(go_directive(gomod))
    client_go = required_version(gomod, "k8s.io/client-go")  # v0.M.N
    _, k8s_minor = client_go.lstrip("v").split(".")[:2]
    pkg = "helm.sh/helm/v3"
    ldflags = " ".join(
        [
            "-s -w",
            f"-X {pkg}/internal/version.version={versions.HELM}",
            f"-X {pkg}/internal/version.gitTreeState=clean",
            # Helm's Makefile derives the default Kubernetes version from client-go v0.M.N.
            f"-X {pkg}/pkg/lint/rules.k8sVersionMajor=1",
            f"-X {pkg}/pkg/lint/rules.k8sVersionMinor={k8s_minor}",
            f"-X {pkg}/pkg/chartutil.k8sVersionMajor=1",
            f"-X {pkg}/pkg/chartutil.k8sVersionMinor={k8s_minor}",
        ]
    )
    go.env["GOBIN"] = str(paths.bin)
    say(f"building helm {versions.HELM}")
    with tempfile.TemporaryDirectory() as tmp:
        go.run(
            [
                "install",
                "-v",
                "-trimpath",
                f"-ldflags={ldflags}",
                f"{pkg}/cmd/helm@{versions.HELM}",
            ],
            "helm",
            cwd=Path(tmp),
        )


def prepare_wrapper(
    go: GoEnv,
    name: str,
    info: dict[str, Any],
    module: str,
    version: str,
    packages: Sequence[str],
    local: Mapping[str, str] | None = None,
    files: Mapping[str, str] | None = None,
    setup: Callable[[Path], None] | None = None,
) -> tuple[Path, int]:
    """Make ``src/<name>``, a module that requires ``module@version`` and names
    ``packages``; resolve it and return it with the number of packages to compile.

    ``go install pkg@version`` refuses a module with replace directives, and a module's
    own ``./`` replaces cannot work from the module cache; a wrapper module builds the
    same packages with upstream's dependency versions (see :func:`wrapper_gomod`).
    ``files`` are extra files for the wrapper (substitutes named in ``local``), and
    ``setup`` may add more to the fresh folder before dependencies are resolved.
    """
    gomod = Path(str(info["GoMod"])).read_text()
    go.require(go_directive(gomod))
    src = go.paths.src / name
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    (src / "go.mod").write_text(wrapper_gomod(name, gomod, module, version, local))
    for rel, text in (files or {}).items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    if setup is not None:
        setup(src)
    (src / "tools.go").write_text(tools_go(packages))
    go.output(["mod", "tidy"], cwd=src)
    total = len(go.output(["list", "-deps", *packages], cwd=src).split())
    return src, total


def go_build(
    go: GoEnv,
    what: str,
    src: Path,
    packages: Sequence[str],
    out: Path,
    ldflags: str,
    total: int,
) -> None:
    """``go build`` the packages of a wrapper module into the folder ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    go.run(
        ["build", "-v", "-trimpath", f"-ldflags={ldflags}", "-o", f"{out}/", *packages],
        what,
        cwd=src,
        total=total,
    )


def kubernetes_wrapper(go: GoEnv, name: str, commands: Sequence[str]) -> tuple[Path, int, str]:
    """A wrapper module for commands of k8s.io/kubernetes; returns it, its package
    count and the version ldflags.

    Its go.mod replaces the k8s.io/* staging modules with ./staging/..., which a
    dependency's go.mod cannot do, so the wrapper replaces each staging module named
    there with its published v0.X.Y release.
    """
    say(f"downloading k8s.io/kubernetes {versions.KUBERNETES}")
    info = go.download("k8s.io/kubernetes", versions.KUBERNETES)
    gomod = Path(str(info["GoMod"])).read_text()
    staging_version = "v0." + versions.KUBERNETES.removeprefix("v1.")
    staging = staging_modules(gomod)
    say(f"resolving dependencies ({len(staging)} staging modules at {staging_version})")
    src, total = prepare_wrapper(
        go,
        name,
        info,
        "k8s.io/kubernetes",
        versions.KUBERNETES,
        [f"k8s.io/kubernetes/cmd/{c}" for c in commands],
        local={m: f"{m} {staging_version}" for m in staging},
    )
    major, minor = versions.KUBERNETES.removeprefix("v").split(".")[:2]
    values = {
        "gitVersion": versions.KUBERNETES,
        "gitMajor": major,
        "gitMinor": minor,
        # Built from the module proxy's archive, not a git checkout.
        "gitTreeState": "archive",
        "gitCommit": "",
        "buildDate": module_time(info),
    }
    xs = [
        f"-X {pkg}.{key}={value}"
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
        for key, value in values.items()
    ]
    return src, total, " ".join(["-s -w", *xs])


def build_kubernetes(go: GoEnv) -> None:
    """kube-apiserver, controller-manager, scheduler and kubectl from k8s.io/kubernetes."""
    src, total, ldflags = kubernetes_wrapper(go, "kubernetes", KUBE_COMMANDS)
    say(f"building {', '.join(KUBE_COMMANDS)} {versions.KUBERNETES} ({total} packages)")
    cmds = [f"k8s.io/kubernetes/cmd/{c}" for c in KUBE_COMMANDS]
    go_build(go, "kubernetes", src, cmds, go.paths.bin, ldflags, total)


def build_kube_proxy(go: GoEnv) -> None:
    """kube-proxy, from the same k8s.io/kubernetes as the control plane.

    A part of its own, so that a cache built before it gains it without rebuilding
    the control plane; most of its packages are already in the Go build cache then.
    """
    src, total, ldflags = kubernetes_wrapper(go, "kube-proxy", ["kube-proxy"])
    say(f"building kube-proxy {versions.KUBERNETES} ({total} packages)")
    cmds = ["k8s.io/kubernetes/cmd/kube-proxy"]
    go_build(go, "kube-proxy", src, cmds, go.paths.bin, ldflags, total)


def build_cni(go: GoEnv) -> None:
    """The CNI plugins a bridge pod network needs, into ``bin/cni/``."""
    module = "github.com/containernetworking/plugins"
    version = versions.CNI_PLUGINS
    info = go.download(module, version)
    packages = [f"{module}/{folder}" for folder in CNI_PLUGINS.values()]
    say(f"resolving CNI plugins {version} dependencies")
    src, total = prepare_wrapper(go, "cni", info, module, version, packages)
    # As its release workflow builds them.
    ldflags = f"-s -w -X {module}/pkg/utils/buildversion.BuildVersion={version}"
    say(f"building CNI plugins {', '.join(CNI_PLUGINS)} {version} ({total} packages)")
    go_build(go, "cni", src, packages, go.paths.cni, ldflags, total)


# Traefik's go.mod replaces github.com/traefik/traefik/dynamic/ext, a nested module of
# its repository that module zips leave out and the proxy does not serve. It holds the
# extension points of its dynamic configuration, empty in the open-source build; the
# wrapper gets a module of its own with those empty types.
TRAEFIK_EXT = "github.com/traefik/traefik/dynamic/ext"
TRAEFIK_EXT_FILES = {
    "ext/go.mod": f"module {TRAEFIK_EXT}\n\ngo 1.24.0\n",
    "ext/ext.go": (
        "// Package ext holds the extension points of Traefik's dynamic configuration,\n"
        "// empty in the open-source build.\n"
        "package ext\n\n"
        "// HTTP extends dynamic.HTTP.\n"
        "type HTTP struct{}\n\n"
        "// Router extends dynamic.Router.\n"
        "type Router struct{}\n"
    ),
}


# Traefik's ACME support imports every DNS-01 challenge provider of lego (over 200, each
# with a vendor SDK). Some of those SDKs are not served by the module proxy this project
# builds from, and the local cluster never requests certificates, so Traefik is built
# against a copy of its lego version whose provider table is empty: the DNS challenge
# names no provider, everything else in lego (HTTP-01, TLS-ALPN-01) is upstream's.
LEGO = "github.com/go-acme/lego/v5"
LEGO_NO_DNS_PROVIDERS = """// Package dns maps DNS-01 challenge provider names to providers.
// This build of Traefik carries none of them (see modelpilot's e2e/build.py).
package dns

import (
\t"fmt"

\t"github.com/go-acme/lego/v5/challenge"
)

// NewDNSChallengeProviderByName reports that no DNS-01 provider is built in.
func NewDNSChallengeProviderByName(name string) (challenge.Provider, error) {
\treturn nil, fmt.Errorf("unrecognized DNS provider: %s (built without DNS-01 providers)", name)
}
"""


# Traefik replaces github.com/abbot/go-http-auth with a fork of its own at a version the
# module proxy does not serve. The wrapper builds against a copy of the last upstream
# release with the two functions Traefik calls beyond it: CheckSecret, the password
# check that release's BasicAuth.CheckAuth does inline, and RequireAuthStale, the
# challenge after a stale digest nonce. That release's DigestAuth.CheckAuth never
# reports a stale nonce (it fails the request and challenges again), so Traefik does
# not reach the latter; it answers as RequireAuth does.
GO_HTTP_AUTH = ("github.com/abbot/go-http-auth", "v0.4.0")
GO_HTTP_AUTH_ADDITIONS = """package auth

import (
\t"net/http"
\t"strings"
)

// CheckSecret reports whether password matches the htpasswd secret (MD5-crypt, {SHA}
// or bcrypt), as BasicAuth.CheckAuth compares them.
func CheckSecret(password, secret string) bool {
\tcompare := compareFuncs[0].compare
\tfor _, cmp := range compareFuncs[1:] {
\t\tif strings.HasPrefix(secret, cmp.prefix) {
\t\t\tcompare = cmp.compare
\t\t\tbreak
\t\t}
\t}
\treturn compare([]byte(secret), []byte(password)) == nil
}

// RequireAuthStale challenges the client again after a stale nonce.
func (a *DigestAuth) RequireAuthStale(w http.ResponseWriter, r *http.Request) {
\ta.RequireAuth(w, r)
}
"""


def copy_module(upstream: Path, dest: Path, emptied: Iterable[str] = ()) -> None:
    """Copy a module from the (writable) module cache without its tests; the folders
    named in ``emptied`` (relative, with ``/``) are copied empty."""
    empty = {Path(e) for e in emptied}
    shutil.copytree(
        upstream,
        dest,
        ignore=lambda folder, names: (
            names
            if Path(folder).relative_to(upstream) in empty
            else [n for n in names if n.endswith("_test.go") or n == "testdata"]
        ),
    )


def traefik_setup(go: GoEnv, traefik_gomod: str) -> Callable[[Path], None]:
    """A ``setup`` for Traefik's wrapper: ``./lego`` (no DNS providers) and
    ``./go-http-auth`` (the last release plus two functions)."""
    lego = Path(str(go.download(LEGO, required_version(traefik_gomod, LEGO))["Dir"]))
    auth = Path(str(go.download(*GO_HTTP_AUTH)["Dir"]))

    def setup(src: Path) -> None:
        copy_module(lego, src / "lego", ["providers/dns"])
        (src / "lego" / "providers" / "dns" / "dns_providers.go").write_text(LEGO_NO_DNS_PROVIDERS)
        copy_module(auth, src / "go-http-auth", ["examples"])
        # That release predates modules: the copy gets a go.mod, its imports resolve
        # through the wrapper's requirements.
        (src / "go-http-auth" / "go.mod").write_text(f"module {GO_HTTP_AUTH[0]}\n\ngo 1.16\n")
        (src / "go-http-auth" / "modelpilot_additions.go").write_text(GO_HTTP_AUTH_ADDITIONS)

    return setup


def build_traefik(go: GoEnv) -> None:
    """Traefik v3, the local cluster's Gateway API implementation.

    The web UI's built assets are not in the module (they are made with npm); the
    embedded folder holds only a placeholder file, so the binary builds as it is and
    serves no dashboard pages (its API and the Gateway API provider are unaffected).
    ACME DNS-01 providers are left out (see ``LEGO``), and basic/digest auth builds on
    go-http-auth's last release (see ``GO_HTTP_AUTH``).
    """
    module = "github.com/traefik/traefik/v3"
    version = versions.TRAEFIK
    info = go.download(module, version)
    gomod = Path(str(info["GoMod"])).read_text()
    makefile = (Path(str(info["Dir"])) / "Makefile").read_text()
    m = re.search(r"^CODENAME\s*\?=\s*(\S+)", makefile, re.MULTILINE)
    codename = m.group(1) if m else "cheddar"
    say(f"resolving traefik {version} dependencies")
    packages = [f"{module}/cmd/traefik"]
    src, total = prepare_wrapper(
        go,
        "traefik",
        info,
        module,
        version,
        packages,
        local={TRAEFIK_EXT: "./ext", LEGO: "./lego", GO_HTTP_AUTH[0]: "./go-http-auth"},
        files=TRAEFIK_EXT_FILES,
        setup=traefik_setup(go, gomod),
    )
    # As its Makefile and release configuration set them (the release drops the "v").
    ldflags = " ".join(
        [
            "-s -w",
            f"-X {module}/pkg/version.Version={version.removeprefix('v')}",
            f"-X {module}/pkg/version.Codename={codename}",
            f"-X {module}/pkg/version.BuildDate={module_time(info)}",
        ]
    )
    say(f"building traefik {version} ({total} packages)")
    go_build(go, "traefik", src, packages, go.paths.bin, ldflags, total)


def build_metrics_server(go: GoEnv) -> None:
    """metrics-server, the resource metrics API HPAs read, with its Makefile's ldflags."""
    module = "sigs.k8s.io/metrics-server"
    version = versions.METRICS_SERVER
    info = go.download(module, version)
    say(f"resolving metrics-server {version} dependencies")
    packages = [f"{module}/cmd/metrics-server"]
    src, total = prepare_wrapper(go, "metrics-server", info, module, version, packages)
    pkg = "k8s.io/client-go/pkg/version"
    ldflags = " ".join(
        [
            "-s -w",
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitCommit=",
            f"-X {pkg}.buildDate={module_time(info)}",
        ]
    )
    say(f"building metrics-server {version} ({total} packages)")
    go_build(go, "metrics-server", src, packages, go.paths.bin, ldflags, total)


@dataclass(frozen=True)
class CrdSource:
    module: str
    version: str
    files: tuple[str, ...]  # glob patterns inside the module
    names: frozenset[str] | None = None  # CRD names to keep; None keeps every CRD


def crd_sources() -> list[CrdSource]:
    return [
        CrdSource(
            "istio.io/api",
            versions.ISTIO_API,
            ("kubernetes/customresourcedefinitions.gen.yaml",),
            frozenset(
                {"virtualservices.networking.istio.io", "destinationrules.networking.istio.io"}
            ),
        ),
        CrdSource(
            "sigs.k8s.io/gateway-api",
            versions.GATEWAY_API,
            ("config/crd/standard/gateway.networking.k8s.io_*.yaml",),
        ),
        CrdSource(
            "github.com/prometheus-operator/prometheus-operator",
            versions.PROMETHEUS_OPERATOR,
            (
                "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
                "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml",
            ),
        ),
    ]


def fetch_crds(go: GoEnv) -> None:
    """Copy the pinned upstream CRDs out of their Go modules, one file per CRD."""
    paths = go.paths
    out = paths.crds.with_name("crds.tmp")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for source in crd_sources():
        say(f"fetching CRDs from {source.module}@{source.version}")
        moddir = Path(str(go.download(source.module, source.version)["Dir"]))
        kept: set[str] = set()
        for pattern in source.files:
            files = sorted(moddir.glob(pattern))
            if not files:
                raise BuildError(f"{source.module}@{source.version} has no {pattern}")
            for file in files:
                for doc in yaml.safe_load_all(file.read_text()):
                    if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                        continue
                    name = str(doc["metadata"]["name"])
                    if source.names is not None and name not in source.names:
                        continue
                    kept.add(name)
                    (out / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        missing = (source.names or frozenset()) - kept
        if missing or not kept:
            raise BuildError(f"{source.module}@{source.version} lacks CRDs {sorted(missing)}")
    shutil.rmtree(paths.crds, ignore_errors=True)
    out.rename(paths.crds)


def build_prometheus(go: GoEnv) -> None:
    """Prometheus from its Go module, with Kubernetes service discovery only.

    Debian's prometheus package is built without Kubernetes service discovery, so it
    cannot discover pods. Prometheus's build tags drop every other discovery plugin,
    which keeps the build short; the web UI assets are not embedded (the API is all
    the tests and the operator use).
    """
    paths = go.paths
    module = "github.com/prometheus/prometheus"
    info = go.download(module, versions.PROMETHEUS)
    gomod = Path(str(info["GoMod"])).read_text()
    go.require(go_directive(gomod))
    release = (Path(str(info["Dir"])) / "VERSION").read_text().strip()
    ldflags = " ".join(
        [
            "-s -w",
            f"-X github.com/prometheus/common/version.Version={release}",
            "-X github.com/prometheus/common/version.Branch=module",
            f"-X github.com/prometheus/common/version.BuildDate={module_time(info)}",
        ]
    )
    go.env["GOBIN"] = str(paths.bin)
    say(f"building prometheus {release} ({module} {versions.PROMETHEUS})")
    with tempfile.TemporaryDirectory() as tmp:
        go.run(
            [
                "install",
                "-v",
                "-trimpath",
                "-tags=remove_all_sd,enable_kubernetes_sd",
                f"-ldflags={ldflags}",
                f"{module}/cmd/prometheus@{versions.PROMETHEUS}",
            ],
            "prometheus",
            cwd=Path(tmp),
        )


# --- entry point ------------------------------------------------------------------------


def du(path: Path) -> int:
    """Bytes used under path (files only, links not followed)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(root) / name).lstat().st_size
    return total


def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} GiB"


def build(paths: CachePaths | None = None) -> CachePaths:
    """Build whatever is missing from the cache; builds nothing when all is cached."""
    paths = paths or default_paths()
    builders: dict[str, Callable[[GoEnv], None]] = {
        "etcd": build_etcd,
        "helm": build_helm,
        "kubernetes": build_kubernetes,
        "crds": fetch_crds,
        "prometheus": build_prometheus,
        "cni": build_cni,
        "kube-proxy": build_kube_proxy,
        "traefik": build_traefik,
        "metrics-server": build_metrics_server,
    }
    steps = [(part, out, builders[part]) for part, out in part_outputs(paths).items()]
    paths.k8s.mkdir(parents=True, exist_ok=True)
    with (paths.k8s / ".lock").open("w") as lock:
        # One build at a time per cache: a second `build` (another checkout, a test
        # session) waits here and then finds the parts the first one built.
        if not _try_lock(lock):
            say(f"another build of {paths.k8s} is running: waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_locked(paths, steps)


def _try_lock(lock: TextIO) -> bool:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _build_locked(
    paths: CachePaths, steps: list[tuple[str, list[Path], Callable[[GoEnv], None]]]
) -> CachePaths:
    todo = [s for s in steps if not part_is_cached(paths, s[0], s[1])]
    if not todo:
        say(f"local cluster {versions.KUBERNETES}: everything cached in {paths.k8s}")
        return paths
    paths.bin.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    say(f"building into {paths.k8s}: {', '.join(s[0] for s in todo)} (log: {paths.log})")
    with paths.log.open("a") as log:
        go = GoEnv(paths, log)
        for part, _outputs, fn in todo:
            t0 = time.monotonic()
            fn(go)
            record_part(paths, part, time.monotonic() - t0)
            say(f"{part} done in {fmt_elapsed(time.monotonic() - t0)}")
    elapsed = time.monotonic() - start
    manifest = read_manifest(paths)
    manifest["last_build"] = {
        "seconds": round(elapsed, 1),
        "parts": [s[0] for s in todo],
        "bin_bytes": du(paths.bin),
        "go_cache_bytes": du(paths.gomodcache.parent),
    }
    write_manifest(paths, manifest)
    say(
        f"built in {fmt_elapsed(elapsed)}: binaries {human(du(paths.bin))}, "
        f"Go module + build cache {human(du(paths.gomodcache.parent))}"
    )
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    del argv
    try:
        build()
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
