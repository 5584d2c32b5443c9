"""The Kubernetes side of AtomicQueues: the EntityWorkerPool CRD and the kopf operator.

This is the top layer: it imports `atomicqueues` (pools, keys), never the other way round;
`aq crd` and `aq operator` reach it lazily. The importable name is `aq_operator`, one level
below the repository's `operator/` folder, so nothing ever shadows the standard library's
`operator` module. Generating the CRD needs only pydantic (and pyyaml to print it): no kopf;
the operator (runner.py, pool.py, kube.py) needs the `operator` extra.
"""
