"""The stateful model test (tests/runtime/test_queue_model.py) on a 3-master Redis Cluster.

Why: every step is checked against the model and against the index recomputed from the queues
(tests/runtime/recompute.py); on the cluster that also proves each script keeps to its bucket's
hash slot on every path the model reaches, handovers and packed claims included.
"""

from __future__ import annotations

import pytest

from runtime.test_queue_model import run_model

pytestmark = pytest.mark.cluster


def test_queue_behaves_like_its_model_on_the_cluster(cluster_url: str) -> None:
    run_model(cluster_url, examples=30, steps=30)
