"""The worker image, run as the operator's pods ask: the pod bodies of `aq_operator.pods`, turned
into containers by tests/pod_container.py (read-only root, uid 65532, every capability dropped,
no privilege escalation, no service-account token, /tmp an emptyDir, the pod's grace).

Why: what only shows in a real image (a file not copied, a write to the read-only root, a
worker that ignores SIGTERM as PID 1, a wrong entrypoint or user) would otherwise meet users
first. The handlers are tests/runtime/handlers.py in an image built FROM the worker image, as a
user builds theirs; every run is on record in Redis, so order, overlap and loss are checked as
in the runtime's fault tests.
"""

from __future__ import annotations

import dataclasses
import secrets
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from aq_operator.pods import pod_body, termination_grace
from atomicqueues import Settings, SyncClient
from atomicqueues.pools.reconciler import StartPacked, StartWorker
from atomicqueues.pools.spec import PoolSpec
from container_engine import Engine
from pod_container import SERVICE_ACCOUNT_DIR, resolve_env, security_context
from redis_servers import free_port
from runtime.workers import Run, check_history, ended, load_runs, records, wait_until

pytestmark = pytest.mark.containers

TYPE = "account"
TIMING = {
    "idleTimeoutSeconds": 2,
    "heartbeatTTLSeconds": 2,
    "heartbeatIntervalSeconds": 0.5,
    "shutdownGraceSeconds": 1,
}


def pool_spec(**extra: Any) -> PoolSpec:
    return PoolSpec.model_validate(
        {"entityType": TYPE, "handlers": "tests.runtime.handlers:registry", "timing": TIMING}
        | extra
    )


class Pods:
    """Worker pods of one pool, as the operator makes them, run as containers."""

    def __init__(self, engine: Engine, image: str, redis_url: str) -> None:
        self.engine, self.image, self.redis_url = engine, image, redis_url
        self.manifest = {"metadata": {"name": "pool", "namespace": "tier5", "uid": "uid-1"}}

    def body(self, spec: PoolSpec, action: StartWorker | StartPacked) -> dict[str, Any]:
        pod = pod_body(
            self.manifest,
            spec,
            action,
            self.redis_url,
            image=self.image,
            suffix=secrets.token_hex(3)[:5],
            created_at=0.0,
        )
        pod["spec"]["nodeName"] = "tier5"
        return pod

    def start(self, spec: PoolSpec, action: StartWorker | StartPacked) -> str:
        """Start the pod's container; its name (the pod's, and the worker's)."""
        pod = self.body(spec, action)
        (container,) = pod["spec"]["containers"]
        return self.engine.run(pod, resolve_env(pod, container, {})).name

    def kill_times(self) -> dict[int, float]:
        """When each killed container was killed, keyed as `with_pids` numbers them."""
        names = list(self.engine.containers)
        return {
            names.index(c.name): c.killed_at
            for c in self.engine.containers.values()
            if c.killed_at is not None
        }

    def with_pids(self, runs: list[Run]) -> list[Run]:
        """The runs with their container's number for a pid: every worker is PID 1 of its own
        container, and check_history tells processes apart by pid."""
        names = list(self.engine.containers)
        return [dataclasses.replace(r, pid=names.index(r.worker)) for r in runs]


@pytest.fixture
def pods(containers: Engine, handler_image: str, redis_url: str) -> Pods:
    return Pods(containers, handler_image, redis_url)


@pytest.fixture
def client(redis_url: str) -> Iterator[SyncClient]:
    c = SyncClient(Settings(redis_url=redis_url))
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def store(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


def test_the_worker_runs_with_the_pods_security_context(pods: Pods, containers: Engine) -> None:
    spec = pool_spec(timing={**TIMING, "idleTimeoutSeconds": 60})
    pod = pods.body(spec, StartWorker("u1", 0))
    context = security_context(pod)
    assert context["readOnlyRootFilesystem"] is True
    assert context["runAsUser"] == context["runAsGroup"] == 65532
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["allowPrivilegeEscalation"] is False
    assert pod["spec"]["automountServiceAccountToken"] is False

    name = pods.start(spec, StartWorker("u1", 0))
    wait_until(lambda: containers.state(name)["Running"], 30, "the worker container to run")
    probe = containers(
        "exec", name, "python", "-c",
        "import os, pathlib\n"
        "status = dict(l.split(':', 1) for l in open('/proc/1/status').read().splitlines())\n"
        "for key in ('Uid', 'Gid', 'CapEff', 'CapPrm', 'CapBnd', 'NoNewPrivs', 'Seccomp'):\n"
        "    print(key, status[key].split()[0])\n"
        "print('cmdline', open('/proc/1/cmdline').read().split(chr(0))[:3])\n"
        "for path in ('/app/x', '/tmp/x'):\n"
        "    try:\n"
        "        pathlib.Path(path).write_text('x')\n"
        "        print('write:' + path, 'ok')\n"
        "    except OSError as exc:\n"
        "        print('write:' + path, exc.strerror)\n"
        f"print('token', os.path.exists('{SERVICE_ACCOUNT_DIR}'))\n",
    ).stdout  # fmt: skip
    facts = dict(line.split(" ", 1) for line in probe.splitlines())
    assert facts["Uid"] == facts["Gid"] == "65532", probe
    assert facts["CapEff"] == facts["CapPrm"] == facts["CapBnd"] == "0000000000000000", probe
    assert facts["NoNewPrivs"] == "1", probe
    assert facts["Seccomp"] == "2", probe  # a filter: the engine's default profile
    # PID 1 is the worker itself (no shell, no init in between), so SIGTERM reaches it
    assert "'aq', 'worker'" in facts["cmdline"] or "/aq', 'worker'" in facts["cmdline"], probe
    assert facts["write:/app/x"] == "Read-only file system", probe
    assert facts["write:/tmp/x"] == "ok", probe
    assert facts["token"] == "False", probe


def test_jobs_of_several_entities_run_in_order(
    pods: Pods, containers: Engine, client: SyncClient, store: redis.Redis
) -> None:
    entities = ["alice@example.com", "a:b{c} $(POD_NAME)", "zoë"]
    for seq in range(4):
        for entity in entities:
            client.enqueue(TYPE, entity, "record", {"seq": seq, "sleep": 0.05})
    spec = pool_spec()
    names = {entity: pods.start(spec, StartWorker(entity, 0)) for entity in entities}

    wait_until(lambda: ended(client, 12, TYPE), 60, "12 jobs to complete", every=0.1)
    runs = pods.with_pids(load_runs(store))
    check_history(runs, dict.fromkeys(entities, 4), pods.kill_times())
    for run in runs:  # each entity's jobs ran in its own pod's worker
        assert run.worker == names[run.entity], run
    # idle, every worker exits on its own, 0
    for name in names.values():
        assert containers.wait(name, 30) == 0, containers.logs(name)


def test_sigterm_closes_the_worker_within_its_grace_and_gives_its_job_back(
    pods: Pods, containers: Engine, client: SyncClient, store: redis.Redis
) -> None:
    spec = pool_spec()
    job = client.enqueue(TYPE, "u1", "record", {"seq": 0, "sleep": 0.05, "first_sleep": 60})
    first = pods.start(spec, StartWorker("u1", 0))
    wait_until(lambda: records(store), 30, "the job to start")

    grace = termination_grace(spec)
    took = containers.stop(first, grace)  # what deleting the pod does: SIGTERM to PID 1
    assert containers.state(first)["ExitCode"] == 0, containers.logs(first)
    assert took < grace, f"stopped after {took:.1f} s: SIGKILL, not the worker's own exit"
    assert took < TIMING["shutdownGraceSeconds"] + 5, f"{took:.1f} s"
    [cancelled] = [r for r in records(store) if r["ev"] != "start"]
    assert cancelled["ev"] == "cancel", cancelled  # cut short at the end of the shutdown grace

    second = pods.start(spec, StartWorker("u1", 0))
    wait_until(lambda: ended(client, 1, TYPE), 30, "the job to complete in a new container")
    history = check_history(pods.with_pids(load_runs(store)), {"u1": 1}, pods.kill_times())
    assert [(r.job, r.worker, r.how) for r in history["u1"]] == [
        (job, first, "cancel"),
        (job, second, "end"),
    ]


def test_a_killed_containers_job_comes_back_in_another(
    pods: Pods, containers: Engine, client: SyncClient, store: redis.Redis
) -> None:
    # An idle timeout longer than the lease: the replacement, started within a second of the
    # kill, waits for the killed worker's lease to expire instead of leaving as idle first.
    spec = pool_spec(timing={**TIMING, "idleTimeoutSeconds": 60})
    client.enqueue(TYPE, "victim", "record", {"seq": 0, "sleep": 0.05, "first_sleep": 60})
    for seq in (1, 2):
        client.enqueue(TYPE, "victim", "record", {"seq": seq, "sleep": 0.05})
    first = pods.start(spec, StartWorker("victim", 0))
    wait_until(lambda: records(store), 30, "the first job to start")
    killed = containers.kill(first)
    assert containers.wait(first, 30) == 137

    pods.start(spec, StartWorker("victim", 0))  # as the operator replaces a failed pod
    wait_until(lambda: ended(client, 3, TYPE), 60, "the 3 jobs to complete")
    history = check_history(pods.with_pids(load_runs(store)), {"victim": 3}, pods.kill_times())[
        "victim"
    ]
    assert [(r.seq, r.attempt) for r in history] == [(0, 1), (0, 2), (1, 1), (2, 1)]
    assert history[0].start <= killed < history[1].start
    assert history[0].worker == first != history[1].worker


def test_a_packed_worker_serves_its_metrics_port(
    pods: Pods, containers: Engine, client: SyncClient
) -> None:
    """The metrics port, set as a pool sets it: an env entry of its pod template."""
    port = free_port()
    template = {"spec": {"containers": [{"name": "worker", "env": [
        {"name": "AQ_METRICS_PORT", "value": str(port)},
    ]}]}}  # fmt: skip
    spec = pool_spec(podTemplate=template, timing={**TIMING, "idleTimeoutSeconds": 60})
    for entity in ("m1", "m2"):
        client.enqueue(TYPE, entity, "record", {"seq": 0, "sleep": 0.01})
    name = pods.start(spec, StartPacked(0))
    wait_until(lambda: ended(client, 2, TYPE), 30, "the jobs to complete")

    def scrape() -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                return str(reply.read().decode())
        except OSError:
            return ""

    text = wait_until(scrape, 30, f"the metrics port of {name} to answer", every=0.2)
    completed = [line for line in text.splitlines() if line.startswith("aq_jobs_completed_total{")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in completed) == 2, text
