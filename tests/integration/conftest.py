"""Fixtures of the integration tier: the local cluster, one namespace per test.

The cluster is session-scoped: a running local cluster is reused, otherwise it is started
here (from binaries ``make cluster-build`` made) and stopped again at the end unless
``MODELPILOT_KEEP_CLUSTER=1``. Every test talks to it only through its own kubeconfig,
after :func:`e2e.kube.verify_local` has checked that it is this machine's local cluster;
the ambient ``KUBECONFIG`` is replaced for the whole session, so that nothing a test
starts can reach another cluster.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.cluster import Cluster, ClusterError
from e2e.kube import LocalCluster, NotLocalClusterError, verify_local, wait_for


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[LocalCluster]:
    cluster = Cluster()
    started = not cluster.ready()
    # The binaries are built beforehand (`make integration` runs `make cluster-build`):
    # a cold build takes far longer than a test's timeout. Without them, `up` says so.
    # On a running cluster, `up` only starts a missing node agent.
    try:
        cluster.up()
    except ClusterError as err:
        pytest.exit(f"the local cluster cannot start: {err}", returncode=4)
    try:
        verify_local(cluster)
    except NotLocalClusterError as err:
        pytest.exit(f"refusing to run integration tests: {err}", returncode=4)
    saved = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(cluster.layout.kubeconfig)
    try:
        yield LocalCluster(cluster, cluster.layout.kubeconfig, cluster.cache.bin)
    finally:
        if saved is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = saved
        if started and os.environ.get("MODELPILOT_KEEP_CLUSTER") != "1":
            cluster.down(quiet=True)


@pytest.fixture
def namespace(local_cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test, deleted (without waiting) afterwards."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{slug}-{secrets.token_hex(3)}"
    local_cluster.kubectl("create", "namespace", name)
    wait_for(
        f"service account default in {name}",
        lambda: local_cluster.get("serviceaccount", "default", "-n", name),
    )
    yield name
    local_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def crd_installed(local_cluster: LocalCluster) -> None:
    """The ModelDeployment CRD from crds/, established."""
    crds = Path(__file__).resolve().parents[2] / "crds"
    local_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds))
    local_cluster.kubectl(
        "wait", "--for=condition=Established", "crd/modeldeployments.modelpilot.io"
    )
