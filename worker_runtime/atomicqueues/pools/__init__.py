"""Pools of workers: the EntityWorkerPool spec, the reconciler core, and the local backend.

This layer sits between the runtime (below) and the Kubernetes operator (above): the operator
and `aq up` read the same spec and ask the same pure reconciler what to do; only how actions
are carried out differs (pods, or local processes).
"""
