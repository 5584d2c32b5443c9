"""The operator end to end on a real API server, with exactly the permissions the chart grants.

Why: the mock API of tier 3 enforces no RBAC, binds no pods, has no graceful deletion and no
garbage collector. Here the chart is installed with `helm install`; the operator runs as a local
process with the chart's own command line (its Deployment's args, `--listen` on a free loopback
port) and a token of the chart's ServiceAccount, so a call the chart does not allow fails. The
kubelet stand-in (kubelet.py) runs the worker pods as containers of the tests' handler image
(the worker image plus tests/runtime/handlers.py) with the pod's command, env, security context
and grace (as `aq worker` processes where no container engine can be had). Their `record`
handler writes every run to Redis: the tests check order and overlap from those records, as
the fault tests do. The chart, the operators and the pools come from operators.py.

Timings are short through the pool's spec (idle timeout 1 s, heartbeat TTL 1 s), so a test takes
seconds.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import kopf
import pytest
from kubelet import Containers, Kubelet
from operators import (
    POOL,
    POOL_LABEL,
    TYPE,
    Operator,
    apply_pool,
    client_redis,
    create_secret,
    installed,
    pods,
    pool_manifest,
)
from prometheus_client import REGISTRY

from aq_operator.config import Config
from aq_operator.kube import Kube
from aq_operator.pool import KubePool
from atomicqueues import SyncClient
from atomicqueues.index_reads import IndexReads
from atomicqueues.pools.reconciler import StartWorker
from container_engine import Engine, Images
from controlplane import ControlPlane, Diagnostics, Helm, Reaper
from runtime.workers import check_history, ended, records, wait_until

pytestmark = pytest.mark.controlplane


def test_jobs_run_in_order_per_entity_and_pods_go_when_idle(
    control_plane: ControlPlane,
    operator: Operator,
    kubelet: Kubelet,
    namespace: str,
    redis_url: str,
    client: SyncClient,
) -> None:
    pool = apply_pool(control_plane, namespace, redis_url, kubelet.image)
    entities = ["alice@example.com", "a:b{c} $(POD_NAME)", "zoë"]
    for seq in range(4):
        for entity in entities:
            client.enqueue(TYPE, entity, "record", {"seq": seq, "sleep": 0.05})

    wait_until(lambda: ended(client, 12, TYPE), 60, "12 jobs to complete", every=0.1)
    runs = kubelet.load_runs(client_redis(redis_url))
    check_history(runs, dict.fromkeys(entities, 4), kubelet.kill_times)
    # every run was a pod's worker (`--name $(POD_NAME)`), and the pod was its entity's
    by_pod = {run.pod: run for run in kubelet.runs.values()}
    for run in runs:
        assert by_pod[run.worker].entity_id == run.entity, (run, by_pod[run.worker])
    assert {r.entity_id for r in by_pod.values()} == set(entities)
    if isinstance(kubelet.runtime, Containers):  # each worker was PID 1 of its pod's container
        assert {r["pid"] for r in records(client_redis(redis_url))} == {1}

    # the workers exit when idle (Succeeded), and the operator removes their pods
    wait_until(lambda: not pods(control_plane, namespace), 30, "the pods to be removed")
    assert all(r.exit_code == 0 for r in kubelet.runs.values()), kubelet.report()
    owners = {(ref["kind"], ref["uid"]) for r in kubelet.runs.values() for ref in r.owners}
    assert owners == {("EntityWorkerPool", pool["metadata"]["uid"])}

    def idle_status() -> bool:
        status = control_plane.get("-n", namespace, "ewp", POOL).get("status") or {}
        return status.get("activeEntities") == 0 and status.get("waitingJobs") == 0

    wait_until(idle_status, 10, "the pool's status to show no work", every=0.2)


def test_deleting_the_pool_deletes_its_pods_never_its_jobs(
    control_plane: ControlPlane,
    operator: Operator,
    kubelet: Kubelet,
    namespace: str,
    redis_url: str,
    client: SyncClient,
) -> None:
    pool = apply_pool(control_plane, namespace, redis_url, kubelet.image, idleTimeoutSeconds=30)
    entities, jobs = ["e1", "e2"], 60  # a minute of work each: far more than the test waits
    for seq in range(jobs):
        for entity in entities:
            client.enqueue(TYPE, entity, "record", {"seq": seq, "sleep": 1.0})
    wait_until(lambda: len(kubelet.running()) == 2, 30, "a running worker per entity")
    wait_until(
        lambda: client.run(lambda c: IndexReads(c).counts(TYPE))["completed"] >= 2,
        30,
        "some jobs to complete",
    )
    assert not control_plane.get("-n", namespace, "ewp", POOL)["metadata"].get("finalizers")
    for found in pods(control_plane, namespace):
        [owner] = found["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"]) == ("EntityWorkerPool", pool["metadata"]["uid"])
        assert owner["controller"] is True
        assert owner["blockOwnerDeletion"] is True
    if isinstance(kubelet.runtime, Containers):  # the pod's security context, in its container
        for run in kubelet.running():
            status = kubelet.runtime.engine("exec", run.pod, "cat", "/proc/1/status").stdout
            facts = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            assert facts["Uid"].split()[:2] == facts["Gid"].split()[:2] == ["65532"] * 2, status
            assert int(facts["CapEff"], 16) == int(facts["CapBnd"], 16) == 0, status
            assert facts["NoNewPrivs"].strip() == "1", status

    deleted = time.monotonic()
    control_plane.kubectl("-n", namespace, "delete", "ewp", POOL, "--wait=false")
    wait_until(
        lambda: control_plane.kubectl("-n", namespace, "get", "ewp", POOL, check=False).returncode,
        60,
        "the pool to be deleted",
        every=0.1,
    )
    pool_gone_after = time.monotonic() - deleted
    # the garbage collector deletes the pods (owner references); the kubelet stops them
    wait_until(lambda: not pods(control_plane, namespace), 30, "the pods to be deleted")
    assert kubelet.runs
    assert all(r.stopped_by_deletion for r in kubelet.runs.values()), kubelet.report()
    assert all(r.exit_code == 0 for r in kubelet.runs.values()), kubelet.report()

    # every job is still there: completed, or waiting for the next pool of this entity type
    counts = client.run(lambda c: IndexReads(c).counts(TYPE))
    assert counts["waiting"] > 0, counts
    assert counts["completed"] + counts["waiting"] == 2 * jobs, counts
    assert set(client.run(lambda c: IndexReads(c).pending_entities(TYPE))) == set(entities)
    # in order and one at a time up to the deletion: each entity completed a prefix of its jobs
    runs = kubelet.load_runs(client_redis(redis_url))
    done = {e: len({r.seq for r in runs if r.entity == e and r.how == "end"}) for e in entities}
    check_history(runs, done, kubelet.kill_times)
    assert sum(done.values()) == counts["completed"], (done, counts)
    # no finalizer holds the pool: it goes at once, with or without an operator
    assert pool_gone_after < 10, f"the pool was gone {pool_gone_after:.1f} s after its deletion"


def test_a_pass_after_the_pools_deletion_starts_no_pod(
    control_plane: ControlPlane, crd: str, namespace: str, redis_url: str, client: SyncClient
) -> None:
    """The race behind an old flake of the test above, made certain. A pool's loop learns of
    the pool's deletion from its watch event, while the garbage collector marks the pool's pods
    for deletion at the same moment; a pod being deleted is a closing worker, which a pass
    replaces. So a pass that ran between the two started pods for the deleted pool. Here a
    pass runs with the pool's body from before the deletion, its pod being deleted: the plan
    wants a new worker, and none is created."""
    pool = apply_pool(control_plane, namespace, redis_url, "atomicqueues-test-worker:never-run")
    client.enqueue(TYPE, "e1", "record", {"seq": 0})
    connection = kopf.ConnectionInfo(
        server=control_plane.server, ca_path=str(control_plane.ca), token=control_plane.token
    )

    def pod_names() -> set[str]:
        return {p["metadata"]["name"] for p in pods(control_plane, namespace)}

    async def passes() -> tuple[KubePool, str]:
        kube = Kube(lambda: connection)
        served = KubePool(pool, kube, Config())
        try:
            await served.reconcile_once()
            [name] = pod_names()
            # bound to a node, so that its deletion waits for a kubelet (there is none here)
            binding = {
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": name},
                "target": {"apiVersion": "v1", "kind": "Node", "name": "node-1"},
            }
            await kube.request(
                "POST", f"/api/v1/namespaces/{namespace}/pods/{name}/binding", body=binding
            )  # fmt: skip
            control_plane.kubectl("-n", namespace, "delete", "ewp", POOL, "--wait=false")

            def being_deleted() -> bool:
                [found] = pods(control_plane, namespace)
                return bool(found["metadata"].get("deletionTimestamp"))

            wait_until(being_deleted, 30, "the garbage collector to delete the pool's pod")
            await served.reconcile_once()  # as a pass woken by that pod's change would
            return served, name
        finally:
            await served._disconnect()
            await kube.close()

    def created() -> float:
        labels = {"namespace": namespace, "pool": POOL}
        return REGISTRY.get_sample_value("aq_operator_pods_created_total", labels) or 0.0

    served, first = asyncio.run(passes())
    assert [a for a in served.last_plan.actions if isinstance(a, StartWorker)], served.last_plan
    # (a pod created for the deleted pool would be gone at once: unbound, its owner gone)
    assert created() == 1, "a pod was created for the deleted pool"
    assert pod_names() == {first}


def test_a_killed_workers_job_comes_back_and_finishes(
    control_plane: ControlPlane,
    operator: Operator,
    kubelet: Kubelet,
    namespace: str,
    redis_url: str,
    client: SyncClient,
) -> None:
    apply_pool(control_plane, namespace, redis_url, kubelet.image)
    victim = "victim"
    client.enqueue(TYPE, victim, "record", {"seq": 0, "sleep": 0.05, "first_sleep": 60})
    for seq in (1, 2):
        client.enqueue(TYPE, victim, "record", {"seq": seq, "sleep": 0.05})
    store = client_redis(redis_url)
    first = wait_until(lambda: records(store), 30, "the first job to start")[0]
    killed = kubelet.kill(first["worker"])

    wait_until(lambda: ended(client, 3, TYPE), 60, "the 3 jobs to complete")
    runs = kubelet.load_runs(store)
    history = check_history(runs, {victim: 3}, kubelet.kill_times)[victim]
    assert [(r.seq, r.attempt) for r in history] == [(0, 1), (0, 2), (1, 1), (2, 1)]
    assert history[0].start <= killed < history[1].start
    # the killed pod failed (exit 137); the operator replaced it with a new pod
    assert kubelet.runs[first["worker"]].exit_code == 137
    assert {r.pod for r in kubelet.runs.values()} >= {first["worker"], history[1].worker}
    assert history[1].worker != first["worker"]


LEASE_SECONDS = 4.0


def test_a_standby_operator_takes_over_when_the_leader_is_killed(
    control_plane: ControlPlane,
    crd: str,
    helm: Helm,
    kubelet: Kubelet,
    namespace: str,
    redis_url: str,
    client: SyncClient,
    tmp_path: Path,
    diagnostics: Diagnostics,
    reaper: Reaper,
) -> None:
    """Two replicas from the chart (Lease of 4 s): one leads, the other stands by. SIGKILL the
    leader (no release): the standby takes the Lease once it has expired, and serves the pool."""
    lease = f"operator.leaseDurationSeconds={LEASE_SECONDS:g}"
    with installed(control_plane, helm, namespace, tmp_path, diagnostics, reaper, lease) as chart:
        first = chart.start_operator("operator-a")
        wait_until(first.leading, 30, "operator-a to hold the Lease", every=0.1)
        second = chart.start_operator("operator-b")
        wait_until(lambda: second.metric("aq_operator_leader") == 0, 30, "operator-b to stand by")
        apply_pool(control_plane, namespace, redis_url, kubelet.image)
        client.enqueue(TYPE, "before", "record", {"seq": 0, "sleep": 0.05})
        wait_until(lambda: ended(client, 1, TYPE), 30, "the first job to complete (operator-a)")
        assert not second.leading()  # it never acted beside the leader

        first.kill()
        killed = time.monotonic()
        for seq in range(3):
            client.enqueue(TYPE, "after", "record", {"seq": seq, "sleep": 0.05})
        wait_until(second.leading, 30, "operator-b to take the Lease", every=0.1)
        took_over = time.monotonic() - killed
        wait_until(
            lambda: ended(client, 4, TYPE), 60, "the jobs enqueued after the kill to complete"
        )
        runs = kubelet.load_runs(client_redis(redis_url))
        check_history(runs, {"before": 1, "after": 3}, kubelet.kill_times)
        wait_until(lambda: not pods(control_plane, namespace), 30, "operator-b to remove the pods")
    # the Lease was not taken early: it had been renewed at most a renew period before the kill
    renew_period = LEASE_SECONDS * 2 / 15
    assert LEASE_SECONDS - renew_period - 0.5 <= took_over <= LEASE_SECONDS + 10, took_over


def test_switching_placement_closes_busy_workers_gracefully(
    control_plane: ControlPlane,
    operator: Operator,
    kubelet: Kubelet,
    namespace: str,
    redis_url: str,
    client: SyncClient,
) -> None:
    """Dedicated to packed while every worker is busy: the operator closes the dedicated
    workers through Redis (and annotates their pods), each finishes its job and exits, and the
    packed workers go on with the rest. No job is cut short or run twice."""
    apply_pool(control_plane, namespace, redis_url, kubelet.image)
    entities, jobs = ["p1", "p2"], 8
    for seq in range(jobs):
        for entity in entities:
            client.enqueue(TYPE, entity, "record", {"seq": seq, "sleep": 0.5})
    wait_until(
        lambda: client.run(lambda c: IndexReads(c).counts(TYPE))["completed"] >= 2,
        30,
        "the dedicated workers to work",
    )
    dedicated = {r.pod for r in kubelet.running()}
    assert len(dedicated) == 2, kubelet.report()

    patch = {"spec": {"placement": {"mode": "packed", "slots": 4}}}
    control_plane.kubectl("-n", namespace, "patch", "ewp", POOL, "--type", "merge",
                          "-p", json.dumps(patch))  # fmt: skip
    wait_until(lambda: ended(client, 2 * jobs, TYPE), 60, "every job to complete")
    runs = kubelet.load_runs(client_redis(redis_url))
    check_history(runs, dict.fromkeys(entities, jobs), kubelet.kill_times)
    assert len(runs) == 2 * jobs, "a job ran twice"
    assert all(run.how == "end" for run in runs)
    # both kinds of worker ran jobs; the dedicated ones stopped on the close signal from Redis
    # (their pods were deleted only then, so a SIGTERM may still reach the exiting process)
    packed = {r.pod for r in kubelet.runs.values() if r.entity_id is None}
    assert packed, kubelet.report()
    assert {run.worker for run in runs} & dedicated
    assert {run.worker for run in runs} & packed
    for pod in dedicated:
        assert "stopped: close signal" in kubelet.output(pod), kubelet.report()
    wait_until(lambda: not pods(control_plane, namespace), 30, "the pods to be removed")


def conditions(cp: ControlPlane, namespace: str, name: str) -> dict[str, tuple[str, str]]:
    status = cp.get("-n", namespace, "ewp", name).get("status") or {}
    return {c["type"]: (c["status"], c.get("reason", "")) for c in status.get("conditions", [])}


def test_a_pool_that_cannot_work_is_degraded_and_the_others_still_run(
    control_plane: ControlPlane,
    operator: Operator,
    kubelet: Kubelet,
    namespace: str,
    redis_url: str,
    client: SyncClient,
) -> None:
    """A pool whose Secret is missing passes the schema but cannot work: its status says why
    (written through the status subresource, validated by the real API server), an Event is
    posted, it starts no pod, and the operator goes on serving the other pool. Once the
    Secret exists, the pool recovers."""
    control_plane.apply(
        pool_manifest(namespace, kubelet.image, "broken", "other", secret="missing")
    )
    apply_pool(control_plane, namespace, redis_url, kubelet.image)

    def degraded() -> bool:
        found = conditions(control_plane, namespace, "broken")
        return found.get("Degraded") == ("True", "SecretNotFound")

    wait_until(degraded, 20, "the broken pool to be Degraded (SecretNotFound)", every=0.2)
    assert conditions(control_plane, namespace, "broken")["Ready"] == ("False", "SecretNotFound")
    events = control_plane.get("-n", namespace, "events",
                               "--field-selector", "involvedObject.name=broken")  # fmt: skip
    assert ("Warning", "SecretNotFound") in {(e["type"], e["reason"]) for e in events["items"]}

    for seq in range(3):
        client.enqueue(TYPE, "served", "record", {"seq": seq, "sleep": 0.05})
    client.enqueue("other", "waits", "record", {"seq": 0, "sleep": 0.05})
    wait_until(lambda: ended(client, 3, TYPE), 30, "the good pool's jobs to complete")
    broken_pods = control_plane.get("-n", namespace, "pods", "-l", f"{POOL_LABEL}=broken")
    assert broken_pods["items"] == []

    create_secret(control_plane, namespace, redis_url, "missing")  # retried within 5 s

    def recovered() -> bool:
        found = conditions(control_plane, namespace, "broken")
        return (
            found.get("Ready", ("",))[0] == "True"
            and client.run(lambda c: IndexReads(c).counts("other"))["completed"] == 1
        )

    wait_until(recovered, 30, "the broken pool to recover and run its job", every=0.2)
    assert conditions(control_plane, namespace, "broken")["Degraded"][0] == "False"


def test_cluster_wide_from_the_chart(
    control_plane: ControlPlane,
    crd: str,
    helm: Helm,
    kubelet: Kubelet,
    namespace: str,
    redis_url: str,
    client: SyncClient,
    tmp_path: Path,
    diagnostics: Diagnostics,
    reaper: Reaper,
) -> None:
    """`watch.clusterWide=true`: a ClusterRole instead of Roles, and no --namespace. The
    operator serves every namespace's pools (the earlier tests' too: their entity type has no
    work here), and runs this one's jobs."""
    wide = "watch.clusterWide=true"
    with installed(control_plane, helm, namespace, tmp_path, diagnostics, reaper, wide) as chart:
        assert "--namespace" not in chart.container["args"]
        running = chart.start_operator("operator-0")
        wait_until(running.leading, 30, "the operator to hold its Lease", every=0.1)
        create_secret(control_plane, namespace, redis_url)
        control_plane.apply(pool_manifest(namespace, kubelet.image, entity_type="wide"))
        for seq in range(3):
            client.enqueue("wide", "w1", "record", {"seq": seq, "sleep": 0.05})
        wait_until(lambda: ended(client, 3, "wide"), 30, "the jobs to complete")
        check_history(kubelet.load_runs(client_redis(redis_url)), {"w1": 3}, kubelet.kill_times)
        wait_until(lambda: not pods(control_plane, namespace), 30, "the pods to be removed")


def test_a_crash_looping_worker_backs_off_instead_of_a_pod_storm(
    control_plane: ControlPlane,
    operator: Operator,
    kubelet: Kubelet,
    namespace: str,
    redis_url: str,
    client: SyncClient,
) -> None:
    """Handlers that cannot be imported: every worker exits 1 at once and its pod fails. The
    operator replaces it only after the entity's backoff (2 s, doubling to 4 s), says CrashLoop in
    the pool's conditions and an Event, and recovers once the spec is fixed; nothing is lost."""
    create_secret(control_plane, namespace, redis_url)
    manifest = pool_manifest(
        namespace, kubelet.image, timing={"restartBackoffSeconds": 2, "maxRestartBackoffSeconds": 4}
    )
    manifest["spec"]["handlers"] = "tests.runtime.no_such_module:registry"
    control_plane.apply(manifest)
    client.enqueue(TYPE, "looping", "record", {"seq": 0, "sleep": 0.05})

    def crash_looping() -> bool:
        return conditions(control_plane, namespace, POOL).get("Degraded") == ("True", "CrashLoop")

    wait_until(crash_looping, 30, "the pool to be Degraded (CrashLoop)", every=0.2)
    began = time.monotonic()
    runs_before = len(kubelet.runs)
    time.sleep(8.0)
    window = time.monotonic() - began
    started = len(kubelet.runs) - runs_before
    # Backoff 2, 4, 4 s: at most 3 new pods in 8 s (a worker fails within a second of its
    # start); without it, one every second or so, each replacing the last at once.
    assert 1 <= started <= 3, f"{started} pods in {window:.1f}s:\n{kubelet.report()}"
    assert all(r.exit_code in (None, 1) for r in kubelet.runs.values()), kubelet.report()
    assert "cannot import" in kubelet.output(next(iter(kubelet.runs))), kubelet.report()
    events = control_plane.get("-n", namespace, "events",
                               "--field-selector", f"involvedObject.name={POOL}")  # fmt: skip
    assert ("Warning", "WorkerFailed") in {(e["type"], e["reason"]) for e in events["items"]}
    assert (
        client.run(lambda c: IndexReads(c).counts(TYPE))["waiting"] == 1
    )  # the job waits, untouched

    fixed = {"spec": {"handlers": "tests.runtime.handlers:registry"}}
    control_plane.kubectl("-n", namespace, "patch", "ewp", POOL, "--type", "merge",
                          "-p", json.dumps(fixed))  # fmt: skip
    wait_until(lambda: ended(client, 1, TYPE), 30, "the job to run once the handlers import")
    wait_until(
        lambda: conditions(control_plane, namespace, POOL).get("Degraded", ("",))[0] == "False",
        30,
        "the pool to recover",
    )


def test_a_refused_pod_is_asked_for_again_only_after_backoff(
    control_plane: ControlPlane,
    operator: Operator,
    kubelet: Kubelet,
    namespace: str,
    redis_url: str,
    client: SyncClient,
) -> None:
    """A ResourceQuota of no pods: the API server refuses every worker pod (403). The operator
    asks again only after the entity's backoff (2 s, then 4 s), not at every pass (one a
    second), says PodCreateFailed in Warning Events, and starts the worker once the quota is
    gone; the job waits untouched meanwhile."""
    control_plane.apply({
        "apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": {"name": "no-pods", "namespace": namespace}, "spec": {"hard": {"pods": "0"}},
    })  # fmt: skip
    # The tier's controller manager runs no quota controller: the quota's status (what the
    # API server's admission checks) is written here, as that controller would.
    usage = {"status": {"hard": {"pods": "0"}, "used": {"pods": "0"}}}
    control_plane.kubectl("-n", namespace, "patch", "resourcequota", "no-pods", "--subresource",
                          "status", "--type", "merge", "-p", json.dumps(usage))  # fmt: skip
    backoff = {"restartBackoffSeconds": 2.0, "maxRestartBackoffSeconds": 4.0}
    apply_pool(control_plane, namespace, redis_url, kubelet.image, **backoff)
    client.enqueue(TYPE, "quota", "record", {"seq": 0, "sleep": 0.05})

    def refused() -> set[str]:
        """The pods named in PodCreateFailed events (a refusal may be told more than once)."""
        events = control_plane.get("-n", namespace, "events",
                                   "--field-selector", f"involvedObject.name={POOL}")  # fmt: skip
        messages = [e["message"] for e in events["items"] if e["reason"] == "PodCreateFailed"]
        return {m.group(1) for text in messages if (m := re.search(r'pods "([^"]+)"', text))}

    wait_until(refused, 30, "a PodCreateFailed event", every=0.2)
    began, before = time.monotonic(), refused()
    time.sleep(8.0)
    asked = len(refused() - before)
    # Backoff 2, 4, 4 s: at most 3 more requests in 8 s; without it, one at every pass.
    assert 1 <= asked <= 3, f"{asked} refused pods in {time.monotonic() - began:.1f}s"
    assert pods(control_plane, namespace) == []
    assert client.run(lambda c: IndexReads(c).counts(TYPE))["waiting"] == 1

    control_plane.kubectl("-n", namespace, "delete", "resourcequota", "no-pods")
    wait_until(lambda: ended(client, 1, TYPE), 30, "the job to run once pods are allowed")


def test_the_operator_logs_in_through_an_exec_plugin(
    control_plane: ControlPlane,
    crd: str,
    helm: Helm,
    kubelet: Kubelet,
    namespace: str,
    redis_url: str,
    client: SyncClient,
    tmp_path: Path,
    diagnostics: Diagnostics,
    reaper: Reaper,
) -> None:
    """A kubeconfig whose user gets its token from a command (an ExecCredential, as EKS and
    GKE kubeconfigs do): the operator logs in with it, as kubectl would, and serves the pool."""
    with installed(control_plane, helm, namespace, tmp_path, diagnostics, reaper) as chart:
        chart.kubeconfig = control_plane.service_account_kubeconfig(
            namespace, chart.account, tmp_path / "exec.kubeconfig", exec_plugin=True
        )
        assert "token" not in chart.kubeconfig.read_text()
        operator = chart.start_operator("operator-exec")
        wait_until(operator.leading, 30, "the operator to hold its Lease", every=0.1)
        apply_pool(control_plane, namespace, redis_url, kubelet.image)
        for seq in range(2):
            client.enqueue(TYPE, "e1", "record", {"seq": seq, "sleep": 0.05})
        wait_until(lambda: ended(client, 2, TYPE), 30, "the jobs to complete")
        calls = (tmp_path / "exec.kubeconfig.calls").read_text().splitlines()
        assert calls, "the exec plugin was never run"


@pytest.mark.containers
def test_the_operator_image_runs_the_pools_with_the_charts_service_account(
    control_plane: ControlPlane,
    crd: str,
    helm: Helm,
    kubelet: Kubelet,
    namespace: str,
    redis_url: str,
    client: SyncClient,
    tmp_path: Path,
    diagnostics: Diagnostics,
    reaper: Reaper,
    engine: Engine,
    images: Images,
) -> None:
    """The operator image (built by scripts/build-images.sh) run as the chart's Deployment
    runs it: its security context, args and env, and the chart's ServiceAccount token mounted
    where a pod finds it, so it logs in as in a cluster. It takes its Lease and runs the
    pool's jobs (its worker pods are run by the kubelet stand-in); RBAC refuses it nothing."""
    with installed(control_plane, helm, namespace, tmp_path, diagnostics, reaper) as chart:
        operator = chart.start_operator_image("operator-image", engine, images.operator)
        wait_until(operator.leading, 60, "the operator image to hold its Lease", every=0.2)
        apply_pool(control_plane, namespace, redis_url, kubelet.image)
        entities = ["a", "b{c}"]
        for seq in range(3):
            for entity in entities:
                client.enqueue(TYPE, entity, "record", {"seq": seq, "sleep": 0.05})
        wait_until(lambda: ended(client, 6, TYPE), 60, "6 jobs to complete", every=0.1)
        check_history(
            kubelet.load_runs(client_redis(redis_url)),
            dict.fromkeys(entities, 3),
            kubelet.kill_times,
        )
        # the Deployment's securityContext holds in the container: PID 1, aq, runs as 65532
        status = engine("exec", operator.name, "cat", "/proc/1/status").stdout
        assert re.search(r"^Uid:\s+65532\s", status, re.M), status
        assert re.search(r"^CapEff:\s+0+$", status, re.M), status
