"""Fixtures of the control-plane tier: the control plane, namespaces, helm, the kubelet stand-in.

The control plane starts once per session (about 5 s), only when a test of this folder runs.
When its binaries are not cached and Go is missing, every test here is skipped with a loud
reason (repeated at the end of the run); with CI set, that is a failure instead. When a test
fails, the last lines of every log it touched (control plane, operator, worker pods, what the
kubelet stand-in did) are printed with it.

The kubelet stand-in runs worker pods as containers of the tests' handler image wherever the
container tier's engine and images can be had (required with CI set, as that tier is); where
they cannot, or with AQ_TEST_PODS=processes, as local processes, said loudly at the end of the
run (see `pod_runtime`).

`real_node` is a real node instead (node.py: kubelet, kube-scheduler, containerd), for the tests
that ask for it; where one cannot run (not root, no containerd and no apt-get to install it,
no Go for the kubelet), they are skipped loudly, or fail with CI set.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from kubelet import Containers, Kubelet, Processes, Runtime
from node import Node, NodeUnavailable, missing
from operators import Operator, installed

from atomicqueues import Settings, SyncClient
from container_engine import Engine
from controlplane import (
    REPO_ROOT,
    ControlPlane,
    Diagnostics,
    Helm,
    Reaper,
)
from go_tools import SKIPPED, built, skip_or_fail
from helpers import wait_until

TIER = "CONTROL-PLANE TIER (tier 4)"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash[FAILED] = True
    return report


FAILED = pytest.StashKey[bool]()


@pytest.fixture(scope="session")
def binaries() -> dict[str, Path]:
    return built(TIER, "core")


@pytest.fixture(scope="session")
def reaper(control_plane: ControlPlane) -> Iterator[Reaper]:
    """Checks that wait for something a test only started (an operator's 5 s stop), run once
    the session's tests are done, while the control plane still runs."""
    checks: Reaper = []
    yield checks
    failures = []
    for check in checks:
        try:
            check()
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, "\n".join(failures)


@pytest.fixture(scope="session")
def control_plane(
    binaries: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControlPlane]:
    """etcd, kube-apiserver and kube-controller-manager, for the whole session."""
    root = tmp_path_factory.mktemp("controlplane")
    with ControlPlane(binaries, root, crds=[REPO_ROOT / "crds"]) as cp:
        yield cp


@pytest.fixture
def diagnostics(
    request: pytest.FixtureRequest, control_plane: ControlPlane
) -> Iterator[Diagnostics]:
    """Reports printed when the test fails (fixtures add theirs); the control plane's logs
    come last."""
    found: Diagnostics = []
    yield found
    if request.node.stash.get(FAILED, False):
        for report in [*found, control_plane.logs]:
            print(report(), file=sys.stderr)


@pytest.fixture
def namespace(
    request: pytest.FixtureRequest, control_plane: ControlPlane, diagnostics: Diagnostics
) -> str:
    """A new namespace for the test (with its `default` ServiceAccount). Never deleted: the
    control plane goes at the end of the session anyway, and deleting the namespace would pull
    the RBAC from under an operator that is still stopping."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{slug}-{secrets.token_hex(3)}"
    control_plane.create_namespace(name)
    diagnostics.append(
        lambda: (
            "---- events in the namespace\n"
            + control_plane.kubectl("-n", name, "get", "events", check=False).stdout
        )
    )
    return name


POD_MODES = ("containers", "processes")


@pytest.fixture(scope="session")
def pod_runtime(request: pytest.FixtureRequest) -> Runtime:
    """How the kubelet stand-in runs worker pods, once for the session: as containers of the
    tests' handler image (`handler_image`, FROM the worker image), run by the container tier's
    engine; as local processes where no engine can be had, or with AQ_TEST_PODS=processes.
    With CI set, a missing engine fails the tests instead (as in the container tier)."""
    mode = os.environ.get("AQ_TEST_PODS", "containers")
    if mode not in POD_MODES:
        pytest.fail(f"AQ_TEST_PODS={mode}: want one of {', '.join(POD_MODES)}", pytrace=False)
    if mode == "processes":
        return Processes()
    try:
        engine: Engine = request.getfixturevalue("engine")
        image: str = request.getfixturevalue("handler_image")
    except pytest.skip.Exception as exc:  # with CI set, `engine` fails instead
        SKIPPED.append(f"{TIER}: worker pods ran as local processes, not containers: {exc}")
        return Processes()
    return Containers(Engine(engine.command), image)


@pytest.fixture
def kubelet(
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    diagnostics: Diagnostics,
    pod_runtime: Runtime,
) -> Iterator[Kubelet]:
    """Runs the namespace's worker pods (see kubelet.py); whatever happens, removes every
    container it started."""
    log_dir = tmp_path / "pods"
    log_dir.mkdir()
    fake = Kubelet(control_plane, namespace, log_dir, pod_runtime)
    fake.start()
    diagnostics.append(fake.report)
    try:
        yield fake
    finally:
        fake.stop()
    assert not fake.errors, f"the test kubelet failed: {fake.errors}"


@pytest.fixture(scope="session")
def crd(control_plane: ControlPlane) -> str:
    """`kubectl apply -f crds/` (again: the control plane installs it before its controller
    manager starts), once Established and served; the CRD's name."""
    [name] = control_plane.install_crds(REPO_ROOT / "crds")
    return name


@pytest.fixture(scope="session")
def helm(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    binary = built(TIER, "helm")["helm"]
    return Helm(binary, control_plane, tmp_path_factory.mktemp("helm"))


@pytest.fixture
def operator(
    control_plane: ControlPlane,
    crd: str,
    helm: Helm,
    namespace: str,
    tmp_path: Path,
    diagnostics: Diagnostics,
    reaper: Reaper,
) -> Iterator[Operator]:
    """The chart installed in `namespace` and one operator run from it, once it leads."""
    with installed(control_plane, helm, namespace, tmp_path, diagnostics, reaper) as chart:
        running = chart.start_operator("operator-0")
        wait_until(running.leading, 30, "the operator to hold its Lease", every=0.1)
        yield running


@pytest.fixture
def client(client_settings: Settings) -> Iterator[SyncClient]:
    """tests/conftest.py's `client`, synchronous: this tier's tests block (on kubectl, on
    `wait_until`) and run no event loop of their own."""
    c = SyncClient(client_settings)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def real_node(
    control_plane: ControlPlane,
    binaries: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Node]:
    """A real node (node.py) for the module's tests: Debian's containerd and CNI plugins
    (scripts/test installs them), the kubelet and kube-scheduler built from
    Go modules (`scripts/build-controlplane.sh node`). Where one cannot run, the test is
    skipped loudly (failed with CI set). Per module, not per session: while its scheduler
    runs, it marks the stand-in's pods (which never tolerate the node's taint) unschedulable."""
    tier = f"{TIER}, REAL NODE"
    lacking = missing()
    if lacking:
        skip_or_fail(
            tier,
            f"lacks {', '.join(lacking)}; as root on Debian, scripts/test installs what is"
            " missing with apt-get",
        )
    found = {**binaries, **built(tier, "node")}
    node = Node(control_plane, found, tmp_path_factory.mktemp("node"))
    try:
        node.start()  # when it fails, it stops what it started
    except NodeUnavailable as exc:
        reason = str(exc)
    else:
        try:
            yield node
        finally:
            node.stop()
        return
    skip_or_fail(tier, reason)  # outside the except: no exception chain in the report
