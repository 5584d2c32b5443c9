"""The operator end to end with no stand-in: Kubernetes' own kubelet runs the worker pods.

Why: kubelet.py plays the kubelet's part as we understand it; here the kubelet and scheduler
are built from k8s.io/kubernetes and containerd (Debian's package) runs the containers through
CRI, CNI and runc (node.py). So the pod the operator builds is scheduled by the scheduler's
rules (nodeSelector, tolerations), admitted and run by the kubelet with its security context
(uid 65532, no capabilities, a read-only root, RuntimeDefault seccomp), on a network of its
own, and deleted gracefully by the kubelet. The image is the tests' handler image (the worker
image plus tests/runtime/handlers.py), copied into containerd; no registry is used.

The workers reach Redis at the node's IP on the pods' bridge: a redis-server of this module
listens there and on loopback (the tests use loopback). Their `record` handler writes every
run to Redis, and the tests check order and overlap from those records, as the stand-in's
tests do.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from node import Node, PodWatch, pod_template
from operators import POOL, POOL_LABEL, TYPE, Operator, apply_pool, client_redis, pods

from atomicqueues import SyncClient
from atomicqueues.index_reads import IndexReads
from container_engine import Engine
from controlplane import ControlPlane, Diagnostics
from helpers import wait_until
from redis_servers import RedisServer
from runtime.workers import Run, check_history, ended, load_runs, records

pytestmark = pytest.mark.controlplane


@pytest.fixture(scope="module")
def pod_redis(real_node: Node) -> Iterator[RedisServer]:
    """A redis-server on loopback and on the node's IP, where the pods reach the host."""
    with RedisServer(config=[f"bind 127.0.0.1 {real_node.ip}", "protected-mode no"]) as server:
        yield server


@pytest.fixture
def redis_url(pod_redis: RedisServer) -> str:
    """The tests' (and `client`'s) Redis: the pods' server, emptied, by loopback."""
    with pod_redis.client() as store:
        store.flushall()
    return pod_redis.url


@pytest.fixture(scope="module")
def node_image(real_node: Node, engine: Engine, handler_image: str) -> str:
    """The handler image, copied from the container engine into the node's containerd."""
    return real_node.import_image(engine.command, handler_image)


@pytest.fixture
def watch(
    control_plane: ControlPlane, namespace: str, real_node: Node, diagnostics: Diagnostics
) -> Iterator[PodWatch]:
    with PodWatch(control_plane, namespace, POOL_LABEL) as found:
        diagnostics.append(lambda: f"---- pods seen: {sorted(found.pods())}")
        diagnostics.append(real_node.logs)
        yield found


def apply_node_pool(
    cp: ControlPlane, namespace: str, node: Node, redis: RedisServer, image: str, **timing: float
) -> dict[str, Any]:
    """A pool of `record` workers whose pods go to `node` and reach Redis at its IP."""
    url = f"redis://{node.ip}:{redis.port}/0"
    return apply_pool(cp, namespace, url, image, pod_template(node.name), **timing)


def numbered(runs: list[Run], watch: PodWatch) -> list[Run]:
    """The runs with their pod's number (the order its pod was first seen) for a pid: every
    worker is PID 1 of its container, and `check_history` tells processes apart by pid."""
    numbers = {name: n for n, name in enumerate(watch.pods())}
    strangers = {r.worker for r in runs} - set(numbers)
    assert not strangers, f"runs by workers of no pod seen here: {strangers}"
    return [dataclasses.replace(r, pid=numbers[r.worker]) for r in runs]


def host_pid(node: Node, watch: PodWatch, pod: str) -> int:
    """The host pid of the pod's container (containerd's task of its containerID)."""
    status = watch.container(pod)
    assert status is not None, f"{pod} has no container"
    container_id = status["containerID"].removeprefix("containerd://")
    assert status["containerID"] == f"containerd://{container_id}", status
    tasks = node.tasks()
    assert container_id in tasks, f"no containerd task {container_id} for {pod}: {tasks}"
    return tasks[container_id][0]


def test_a_real_kubelet_runs_the_jobs_in_order_and_the_pods_go_when_idle(
    control_plane: ControlPlane,
    real_node: Node,
    node_image: str,
    pod_redis: RedisServer,
    operator: Operator,
    watch: PodWatch,
    namespace: str,
    redis_url: str,
    client: SyncClient,
) -> None:
    pool = apply_node_pool(control_plane, namespace, real_node, pod_redis, node_image)
    entities = ["alice@example.com", "a:b{c} $(POD_NAME)", "zoë"]
    for seq in range(4):
        for entity in entities:
            client.enqueue(TYPE, entity, "record", {"seq": seq, "sleep": 0.3})

    def running_pod() -> str | None:
        for name in watch.pods():
            status = watch.container(name)
            if status is not None and "running" in status["state"]:
                return name
        return None

    # while a worker runs: its container, as containerd runs it, has the pod's security context
    pod = wait_until(running_pod, 90, "a worker pod's container to run", every=0.1)
    pid = host_pid(real_node, watch, pod)
    facts = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    assert facts["Uid"].split()[:2] == facts["Gid"].split()[:2] == ["65532"] * 2, facts
    assert int(facts["CapEff"], 16) == int(facts["CapBnd"], 16) == 0, facts
    assert facts["NoNewPrivs"].strip() == "1", facts
    assert facts["Seccomp"].strip() == "2", facts  # filter mode: RuntimeDefault
    mounts = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    [root] = [line for line in mounts if line.split()[4] == "/"]
    assert re.match(r"ro\b", root.split()[5]), root
    assert Path(f"/proc/{pid}/ns/net").readlink() != Path("/proc/self/ns/net").readlink()

    wait_until(lambda: ended(client, 12, TYPE), 120, "12 jobs to complete", every=0.2)
    runs = numbered(load_runs(client_redis(redis_url)), watch)
    check_history(runs, dict.fromkeys(entities, 4), {})
    assert {r["pid"] for r in records(client_redis(redis_url))} == {1}  # PID 1 of a container

    # the workers exit when idle (exit 0, phase Succeeded), and the operator removes their pods
    wait_until(lambda: not pods(control_plane, namespace), 60, "the pods to be removed")
    seen = watch.pods()
    assert {r.worker for r in runs} <= set(seen)
    subnet = ipaddress.ip_network(real_node.subnet)
    for name, bodies in seen.items():
        last = bodies[-1]
        assert last["spec"]["nodeName"] == real_node.name, last["spec"]
        assert watch.exit_code(name) == 0, bodies[-1].get("status")
        statuses = [b.get("status") or {} for b in bodies]
        assert "Succeeded" in {s.get("phase") for s in statuses}, statuses[-1]
        pod_ips = {s["podIP"] for s in statuses if s.get("podIP")}
        assert pod_ips, statuses[-1]
        assert all(ipaddress.ip_address(ip) in subnet for ip in pod_ips), pod_ips
        assert {s.get("hostIP") for s in statuses if s.get("hostIP")} == {real_node.ip}
        [owner] = last["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"]) == ("EntityWorkerPool", pool["metadata"]["uid"])
    annotations = [b[0]["metadata"]["annotations"] for b in seen.values()]
    assert {a["atomicqueues.io/entity-id"] for a in annotations} == set(entities)
    # scale to zero: no container of the pool is left in containerd
    wait_until(lambda: not real_node.running(), 30, "containerd to run no task")


def test_a_killed_container_on_a_real_kubelet_gives_its_job_back(
    control_plane: ControlPlane,
    real_node: Node,
    node_image: str,
    pod_redis: RedisServer,
    operator: Operator,
    watch: PodWatch,
    namespace: str,
    redis_url: str,
    client: SyncClient,
) -> None:
    """SIGKILL the worker's container (through containerd, as the OOM killer would end it):
    the kubelet reports exit 137, the operator starts a new pod, and the job runs again there,
    before the entity's later jobs."""
    apply_node_pool(control_plane, namespace, real_node, pod_redis, node_image)
    victim = "victim"
    client.enqueue(TYPE, victim, "record", {"seq": 0, "sleep": 0.05, "first_sleep": 60})
    for seq in (1, 2):
        client.enqueue(TYPE, victim, "record", {"seq": seq, "sleep": 0.05})
    store = client_redis(redis_url)
    first = wait_until(lambda: records(store), 90, "the first job to start", every=0.1)[0]
    pod = first["worker"]
    status = watch.container(pod)
    assert status is not None, watch.pods().get(pod)
    real_node.ctr("tasks", "kill", "--signal", "SIGKILL", status["containerID"].split("//")[1])
    killed = time.time()

    wait_until(lambda: ended(client, 3, TYPE), 90, "the 3 jobs to complete", every=0.2)
    kill_times = {0: killed}  # the victim's pod was the first one seen
    assert next(iter(watch.pods())) == pod
    history = check_history(numbered(load_runs(store), watch), {victim: 3}, kill_times)[victim]
    assert [(r.seq, r.attempt) for r in history] == [(0, 1), (0, 2), (1, 1), (2, 1)]
    assert history[0].start <= killed < history[1].start
    assert history[1].worker != pod
    wait_until(lambda: watch.exit_code(pod) is not None, 30, "the kubelet to report the kill")
    assert watch.exit_code(pod) == 137, watch.pods()[pod][-1].get("status")
    wait_until(lambda: not pods(control_plane, namespace), 60, "the pods to be removed")


def test_a_real_kubelet_stops_the_workers_of_a_deleted_pool_gracefully(
    control_plane: ControlPlane,
    real_node: Node,
    node_image: str,
    pod_redis: RedisServer,
    operator: Operator,
    watch: PodWatch,
    namespace: str,
    redis_url: str,
    client: SyncClient,
) -> None:
    """Delete a pool whose workers are busy: the garbage collector deletes its pods, the kubelet
    sends SIGTERM to each container's PID 1 (the worker), which finishes its job and exits 0
    within the pod's grace (no SIGKILL: that would be 137). Every job is still in Redis."""
    apply_node_pool(
        control_plane, namespace, real_node, pod_redis, node_image, idleTimeoutSeconds=30
    )
    entities, jobs = ["e1", "e2"], 60  # a minute of work each: far more than the test waits
    for seq in range(jobs):
        for entity in entities:
            client.enqueue(TYPE, entity, "record", {"seq": seq, "sleep": 1.0})
    wait_until(
        lambda: client.run(lambda c: IndexReads(c).counts(TYPE))["completed"] >= 2,
        90,
        "some jobs to complete",
    )
    busy = {r.worker for r in load_runs(client_redis(redis_url))}
    assert len(busy) == 2, busy

    control_plane.kubectl("-n", namespace, "delete", "ewp", POOL, "--wait=false")
    wait_until(lambda: not pods(control_plane, namespace), 60, "the pods to be deleted")
    for pod in busy:
        bodies = watch.pods()[pod]
        assert any(b["metadata"].get("deletionTimestamp") for b in bodies), bodies[-1]
        assert watch.exit_code(pod) == 0, bodies[-1].get("status")

    counts = client.run(lambda c: IndexReads(c).counts(TYPE))
    assert counts["waiting"] > 0, counts
    assert counts["completed"] + counts["waiting"] == 2 * jobs, counts
    runs = numbered(load_runs(client_redis(redis_url)), watch)
    done = {e: len({r.seq for r in runs if r.entity == e and r.how == "end"}) for e in entities}
    check_history(runs, done, {})
    assert sum(done.values()) == counts["completed"], (done, counts)
