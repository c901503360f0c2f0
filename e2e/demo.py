"""`make demo`: the whole story on one machine, from nothing to a promoted and a rolled-back
candidate.

1. build the local cluster's binaries (cached; the first run compiles them from Go modules)
2. start the cluster: etcd, kube-apiserver, controllers, a node that runs pods as local
   processes, Prometheus, and Traefik as the Gateway API data plane
3. `helm install` the chart (the operator runs as a pod under its ServiceAccount)
4. write two sample ONNX models (a classifier, and a differently trained one)
5. deploy a ModelDeployment serving version v1
6. roll out v2 as a canary under generated traffic, shown live, until it is promoted
7. roll out v3, which answers 20% errors, until it is rolled back
8. write a plot of the traffic weights and latency per version over time, and the split
   measured per step

`python -m e2e.demo down` uninstalls the release and stops the cluster.

The ModelDeployment uses router ``gatewayApi``: the operator writes an HTTPRoute on the
cluster's Gateway, and the traffic (:class:`e2e.traffic.GatewayDriver`) goes through
Traefik, which enforces it. Which version answered each request is what the runtime says
in its response, so the split shown is observed, not computed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from e2e import build as buildmod
from e2e.cluster import (
    GATEWAY_NAME,
    GATEWAY_NAMESPACE,
    GATEWAY_URL,
    PROMETHEUS_PORT,
    PROMETHEUS_URL_FROM_PODS,
    Cluster,
    ClusterError,
    gateway_host,
    gateway_routing,
)
from e2e.traffic import GatewayDriver, Recording, shares_per_step
from modelpilot_operator.k8s.client import ApiServer
from modelpilot_operator.k8s.kinds import MODEL_DEPLOYMENT

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / ".work" / "demo"
NAMESPACE = "demo"
RELEASE = "modelpilot"
RELEASE_NAMESPACE = "modelpilot-system"
NAME = "fraud"
TOTAL_STEPS = 8
TERMINAL = {"Promoted", "RolledBack", "Failed"}
# Runs of route weights with fewer requests measured are listed, not judged.
MIN_JUDGED = 30


class DemoError(RuntimeError):
    """A step of the demo did not complete; the message says which and why."""


class Progress:
    """Numbered steps with elapsed time, so a long first run shows where it is."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.n = 0

    def step(self, what: str) -> None:
        self.n += 1
        print(f"\n[{self.n}/{TOTAL_STEPS}] {what}  (+{self.elapsed():.0f}s)", flush=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def _run(argv: list[str], *, stdin: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise DemoError(f"{' '.join(argv[:4])} ... failed: {proc.stderr.strip() or proc.stdout}")
    return proc.stdout


def _wait(what: str, probe: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(1)
    raise DemoError(f"gave up waiting for {what} after {timeout:.0f}s")


def write_models(root: Path) -> dict[str, Path]:
    """Two classifiers with the same interface: v1 and a retrained v2 (v3 reuses v2's file
    and is made bad by fault injection in its runtime, not by its weights)."""
    from modelpilot_runtime import samples

    out: dict[str, Path] = {}
    for version, seed in (("v1", 1), ("v2", 2)):
        folder = root / NAME / version
        folder.mkdir(parents=True, exist_ok=True)
        data = samples.dense_classifier([8, 16, 3], seed=seed, name=f"{NAME}-{version}")
        (folder / "model.onnx").write_bytes(data)
        out[version] = folder
    return out


def version_spec(name: str, model_dir: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    v: dict[str, Any] = {
        "name": name,
        "model": {"format": "onnx", "storageUri": f"file://{model_dir}/"},
        "runtime": {
            "executionProviders": ["cpu"],
            "intraOpThreads": 1,
            "interOpThreads": 1,
            "batching": {"maxBatchSize": 8, "maxDelay": "2ms"},
        },
        "resources": {"cpu": "250m", "memory": "512Mi"},
    }
    if env:
        v["runtime"]["env"] = [{"name": k, "value": val} for k, val in env.items()]
    return v


def _rollout(candidate: str) -> dict[str, Any]:
    return {
        "candidate": candidate,
        "strategy": "canary",
        "steps": [{"weight": 20}, {"weight": 50}, {"weight": 80}],
        "analysis": {
            "interval": "10s",
            "minSamples": 30,
            "failureLimit": 1,
            "inconclusiveDeadline": "3m",
            "checks": [
                {"name": "error-rate", "builtin": "errorRate"},
                {"name": "latency-p99", "builtin": "latencyP99", "maxRatio": 1.5},
            ],
        },
    }


def manifest(versions: list[dict[str, Any]], stable: str, candidate: str | None) -> str:
    md: dict[str, Any] = {
        "apiVersion": "modelpilot.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {
            "versions": versions,
            "stable": stable,
            "routing": gateway_routing(NAME, NAMESPACE),
        },
    }
    if candidate:
        md["spec"]["rollout"] = _rollout(candidate)
    return yaml.safe_dump(md, sort_keys=False)


class Demo:
    """The demo's steps, against the local cluster."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.bin = cluster.cache.bin
        self.env = {**os.environ, "KUBECONFIG": str(cluster.layout.kubeconfig)}
        os.environ["KUBECONFIG"] = str(cluster.layout.kubeconfig)
        self.api = ApiServer.from_environment()
        self.timeline: list[tuple[float, str, dict[str, Any]]] = []

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        return _run([str(self.bin / "kubectl"), *args], stdin=stdin, check=check)

    def helm(self, *args: str) -> str:
        return _run([str(self.bin / "helm"), *args])

    def install_chart(self) -> None:
        # The chart's default topology: two replicas, one elected on a Lease.
        values = {
            "operator": {
                "watchNamespaces": [NAMESPACE],
                "logFormat": "plain",
                "resyncPeriod": "10s",
                "runtimeImage": "ghcr.io/modelpilot/runtime:0.1.0",
                "prometheus": {"url": PROMETHEUS_URL_FROM_PODS, "timeout": "5s"},
            },
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
        }
        values_file = OUT / "values.yaml"
        values_file.write_text(yaml.safe_dump(values))
        self.kubectl("create", "namespace", NAMESPACE, check=False)
        print(f"  helm upgrade --install {RELEASE} charts/modelpilot -n {RELEASE_NAMESPACE}")
        self.helm(
            "upgrade",
            "--install",
            RELEASE,
            str(REPO / "charts" / "modelpilot"),
            "--namespace",
            RELEASE_NAMESPACE,
            "--create-namespace",
            "--values",
            str(values_file),
            "--wait",
            "--timeout",
            "3m",
        )
        print("  operator pod is Ready:")
        print(
            "  "
            + self.kubectl(
                "get", "pods", "-n", RELEASE_NAMESPACE, "-o", "wide", "--no-headers"
            ).strip()
        )

    def apply(self, text: str) -> None:
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=text)

    def status(self) -> dict[str, Any]:
        md = self.api.get(MODEL_DEPLOYMENT, NAMESPACE, NAME) or {}
        status: dict[str, Any] = md.get("status") or {}
        return status

    def wait_ready(self, timeout: float = 300) -> None:
        def ready() -> bool:
            conditions = self.status().get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        _wait(f"{NAME} to be Ready", ready, timeout)

    def watch_rollout(self, driver: GatewayDriver, expect: str, timeout: float = 600) -> str:
        """Print the rollout live until it ends; returns the final phase."""
        started = time.monotonic()
        last_line = ""
        # Only records of this rollout: the previous one's last interval is already shown.
        previous = self.status().get("analysis") or []
        last_record = json.dumps(previous[-1]) if previous else ""
        while time.monotonic() - started < timeout:
            st = self.status()
            phase = st.get("phase", "?")
            weights = " ".join(f"{v}={w}%" for v, w in sorted((st.get("weights") or {}).items()))
            sent, _ = driver.recording.snapshot()
            recent = [s for s in sent if s.at > time.time() - 5 and not s.mirrored]
            errors = sum(s.code >= 500 for s in recent)
            step = str(st.get("step", "-"))
            line = (
                f"  {time.monotonic() - started:5.0f}s  phase={phase:<17} step={step:<2}"
                f" weights[{weights}]  observed[{observed(recent)}]"
                f"  {len(recent) / 5:4.1f} req/s, {errors} errors/5s"
            )
            if line != last_line:
                print(line, flush=True)
                last_line = line
            records = st.get("analysis") or []
            if records and json.dumps(records[-1]) != last_record:
                last_record = json.dumps(records[-1])
                rec = records[-1]
                print(f"         analysis at {rec.get('at')}: {rec.get('verdict')}")
                for c in rec.get("checks", []):
                    cand, stab = _num(c.get("candidateValue")), _num(c.get("stableValue"))
                    print(
                        f"           {c['name']:<12} {c['verdict']:<12} candidate={cand} "
                        f"stable={stab} p={_num(c.get('pValue'))}  {c.get('message', '')}"
                    )
            self.timeline.append((time.time(), phase, dict(st.get("weights") or {})))
            if phase in TERMINAL:
                if phase != expect:
                    raise DemoError(
                        f"rollout ended {phase}, expected {expect}: {st.get('message')}"
                    )
                self._settle(st)
                return str(phase)
            time.sleep(2)
        raise DemoError(f"rollout did not end within {timeout:.0f}s")

    def _settle(self, decided: dict[str, Any]) -> None:
        """Wait until the route reads back the decision (candidate at 100% or at 0%)."""
        candidate = decided.get("candidate")
        want = 100 if decided.get("phase") == "Promoted" else 0

        def applied() -> dict[str, int] | None:
            weights: dict[str, int] = self.status().get("weights") or {}
            return weights if weights.get(str(candidate), 0) == want else None

        weights = _wait("the route to carry the decision", applied, 60)
        shown = " ".join(f"{v}={w}%" for v, w in sorted(weights.items()))
        print(f"         route now carries [{shown}]")
        self.timeline.append((time.time(), str(decided.get("phase")), dict(weights)))


def observed(sent: Sequence[Any]) -> str:
    """The share of requests each version answered, as the runtimes named themselves."""
    named = [s.version for s in sent if s.version]
    if not named:
        return "-"
    return " ".join(f"{v}={100 * named.count(v) / len(named):.0f}%" for v in sorted(set(named)))


def _num(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4g}"


def plot(
    recording: Recording,
    path: Path,
    phases: Sequence[tuple[float, str, dict[str, Any]]] = (),
) -> None:
    """Traffic weights (read back from the route) and latency per version over time, with
    the rollout's decisions marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sent, weights = recording.snapshot()
    if not sent:
        return
    t0 = min(s.at for s in sent)
    fig, (ax_w, ax_l, ax_e) = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    versions = sorted({s.version for s in sent if s.version} | {v for _, w in weights for v in w})
    bin_s = 5.0
    answered: dict[int, list[str]] = {}
    for s in sent:
        if s.version and not s.matched and not s.mirrored:
            answered.setdefault(int((s.at - t0) // bin_s), []).append(s.version)
    for v in versions:
        (line,) = ax_w.step(
            [t - t0 for t, _ in weights],
            [w.get(v, 0) for _, w in weights],
            where="post",
            label=f"{v} route weight",
        )
        # What the gateway did: the share each version answered, per bin.
        ax_w.plot(
            [(b + 0.5) * bin_s for b in sorted(answered)],
            [100 * answered[b].count(v) / len(answered[b]) for b in sorted(answered)],
            linestyle="none",
            marker=".",
            color=line.get_color(),
            label=f"{v} observed",
        )
    ax_w.set_ylabel("share (%)")
    ax_w.set_title(
        "modelpilot demo: canary of v2 (promoted), then v3 (rolled back), through Traefik"
    )
    ax_w.legend(loc="center right", fontsize=8)
    for v in versions:
        rows = sorted(
            (s.at - t0, s.latency * 1000) for s in sent if s.version == v and s.code < 500
        )
        if not rows:
            continue
        bins: dict[int, list[float]] = {}
        for t, ms in rows:
            bins.setdefault(int(t // bin_s), []).append(ms)
        xs = [b * bin_s for b in sorted(bins)]
        p50 = [sorted(bins[b])[len(bins[b]) // 2] for b in sorted(bins)]
        p99 = [
            sorted(bins[b])[min(len(bins[b]) - 1, int(len(bins[b]) * 0.99))] for b in sorted(bins)
        ]
        (line,) = ax_l.plot(xs, p50, label=f"{v} p50")
        ax_l.plot(xs, p99, linestyle="--", color=line.get_color(), label=f"{v} p99")
        errs: dict[int, list[int]] = {}
        for s in sent:
            if s.version == v:
                errs.setdefault(int((s.at - t0) // bin_s), []).append(int(s.code >= 500))
        ax_e.plot(
            [b * bin_s for b in sorted(errs)],
            [100 * sum(errs[b]) / len(errs[b]) for b in sorted(errs)],
            color=line.get_color(),
            label=v,
        )
    ax_l.set_ylabel("latency (ms)")
    ax_l.legend(loc="upper right", ncol=3)
    last = None
    for at, phase, _ in phases:
        if phase != last and phase in TERMINAL | {"Progressing"}:
            for ax in (ax_w, ax_l, ax_e):
                ax.axvline(at - t0, color="grey", linestyle=":", linewidth=1)
            ax_w.annotate(phase, (at - t0, 102), fontsize=8, rotation=0, ha="left")
        last = phase
    ax_e.set_ylabel("errors (%)")
    ax_e.set_xlabel("seconds since traffic started")
    ax_e.legend(loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(rate: float) -> int:
    progress = Progress()
    OUT.mkdir(parents=True, exist_ok=True)

    progress.step("Building the local cluster (cached after the first run)")
    buildmod.build()

    progress.step("Starting the local cluster with a process node, Prometheus and Traefik")
    cluster = Cluster()
    cluster.up(node=True, prometheus=True)
    if not cluster.start_gateway():
        raise DemoError("the demo sends its traffic through Traefik, which is not built")
    demo = Demo(cluster)

    progress.step("Installing the modelpilot chart (CRDs, RBAC, operator, dashboards)")
    demo.install_chart()

    progress.step("Writing the sample models")
    models = write_models(OUT / "models")
    for version, folder in models.items():
        print(f"  {version}: {folder}/model.onnx")

    progress.step(f"Deploying ModelDeployment {NAMESPACE}/{NAME} with version v1")
    v1 = version_spec("v1", models["v1"])
    v2 = version_spec("v2", models["v2"])
    demo.apply(manifest([v1], "v1", None))
    demo.wait_ready()
    print("  " + demo.kubectl("get", "modeldeployments", "-n", NAMESPACE).replace("\n", "\n  "))

    host = gateway_host(NAME, NAMESPACE)
    progress.step(f"Canary of v2 under traffic through the Gateway ({GATEWAY_URL}, Host {host})")
    driver = GatewayDriver(demo.api, NAMESPACE, NAME, url=GATEWAY_URL, host=host, rate=rate).start()
    try:
        demo.apply(manifest([v1, v2], "v1", "v2"))
        demo.watch_rollout(driver, expect="Promoted")
        print("  v2 promoted; making it the stable version in the spec")
        demo.apply(manifest([v1, v2], "v2", None))
        time.sleep(10)

        progress.step("Canary of v3, which answers 20% errors")
        v3 = version_spec("v3", models["v2"], {"MODELPILOT_FAULT_ERROR_RATIO": "0.2"})
        demo.apply(manifest([v2, v3], "v2", "v3"))
        demo.watch_rollout(driver, expect="RolledBack")
        time.sleep(5)
    finally:
        recording = driver.stop()

    progress.step("Writing the plot; the split Traefik made at each step")
    png = OUT / "rollout.png"
    plot(recording, png, demo.timeline)
    print(f"  {png}")
    sent, reads = recording.snapshot()
    for share in shares_per_step(sent, reads):
        weights = " ".join(f"{v}={w}%" for v, w in sorted(share.weights.items()))
        if share.n < MIN_JUDGED:
            print(f"  route [{weights}]: {share.n} requests, too few to judge")
            continue
        verdict = "within tolerance" if share.within() else "OUTSIDE tolerance"
        print(f"  route [{weights}]: observed {share.describe()}  {verdict}")
    print(
        f"\nDone in {progress.elapsed():.0f}s. Look around:\n"
        f"  eval $(.venv/bin/python -m e2e.cluster env)\n"
        f"  kubectl get modeldeployments -n {NAMESPACE}\n"
        f"  .venv/bin/modelpilot status {NAME} -n {NAMESPACE}\n"
        f"  kubectl get deploy,svc,httproute -n {NAMESPACE}\n"
        f"  kubectl get gateway {GATEWAY_NAME} -n {GATEWAY_NAMESPACE}\n"
        f"  curl -H 'Host: {host}' {GATEWAY_URL}/v2/models/{NAME}/infer -d "
        '\'{"inputs":[{"name":"input","shape":[1,8],"datatype":"FP32",'
        '"data":[0,0,0,0,0,0,0,0]}]}\'\n'
        f"  kubectl describe modeldeployment {NAME} -n {NAMESPACE}   # events: every decision\n"
        f"  Prometheus: http://127.0.0.1:{PROMETHEUS_PORT}\n"
        f"  make demo-down   # uninstall and stop the cluster"
    )
    return 0


def run_down() -> int:
    cluster = Cluster()
    if cluster.ready():
        demo = Demo(cluster)
        _run(
            [str(demo.bin / "helm"), "uninstall", RELEASE, "-n", RELEASE_NAMESPACE],
            check=False,
        )
    cluster.down()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.demo", description=__doc__)
    parser.add_argument("verb", nargs="?", default="run", choices=["run", "down"])
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    args = parser.parse_args(argv)
    try:
        return run_down() if args.verb == "down" else run_demo(args.rate)
    except (DemoError, ClusterError, buildmod.BuildError) as err:
        print(f"\ndemo failed: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
