"""The kubelet stand-in's expansion rules, and what they do to the operator's pods.

Why: the end-to-end tests trust kubelet.py to treat `$(VAR)` as a kubelet does, and that is
how a pod gets its entity id; a wrong rule here would hide (or invent) an operator bug. These
need no control plane.
"""

from __future__ import annotations

from typing import Any

import pytest

from aq_operator.pods import pod_body
from atomicqueues.pools.reconciler import StartWorker
from atomicqueues.pools.spec import PoolSpec
from pod_container import expand, field_value


@pytest.mark.parametrize(
    ("text", "expanded"),
    [
        pytest.param("$(A)", "1", id="defined"),
        pytest.param("x$(A)y$(B)z", "x1y2z", id="two"),
        pytest.param("$(NOPE)", "$(NOPE)", id="undefined-stays"),
        pytest.param("$$(A)", "$(A)", id="escaped"),
        pytest.param("$$$(A)", "$1", id="escaped-dollar-then-var"),
        pytest.param("$(C)", "$(A)", id="never-twice"),
        pytest.param("a$b $( $(A", "a$b $( $(A", id="no-reference"),
    ],
)
def test_expand_as_the_kubelet_does(text: str, expanded: str) -> None:
    assert expand(text, {"A": "1", "B": "2", "C": "$(A)"}) == expanded


def test_field_refs() -> None:
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "labels": {"k": "v"}},
        "spec": {"nodeName": "node-1"},
    }
    assert field_value(pod, "metadata.name") == "p"
    assert field_value(pod, "metadata.namespace") == "ns"
    assert field_value(pod, "spec.nodeName") == "node-1"
    assert field_value(pod, "metadata.labels['k']") == "v"


STRANGE_IDS = ["a:b{c} $(POD_NAME)", "$$", "$(AQ_ENTITY_ID)", "x$", "$(", "Ünïcødé $$(X)"]


@pytest.mark.parametrize("entity_id", STRANGE_IDS)
def test_a_worker_pod_gets_its_entity_id_as_it_was(entity_id: str) -> None:
    """The operator's env and command, expanded as the kubelet does: env values in order, each
    against the ones before it, then the command against them all."""
    spec = PoolSpec.model_validate({"entityType": "t", "handlers": "h:registry"})
    manifest: dict[str, Any] = {"metadata": {"name": "pool", "namespace": "ns", "uid": "u"}}
    pod = pod_body(
        manifest, spec, StartWorker(entity_id, 0), "redis://r:6379/0",
        image="i", suffix="abcde", created_at=0.0,
    )  # fmt: skip
    [container] = pod["spec"]["containers"]
    env: dict[str, str] = {}
    for entry in container["env"]:
        env[entry["name"]] = expand(entry["value"], env) if "value" in entry else "pod-or-node"
    assert env["AQ_ENTITY_ID"] == entity_id
    argv = [expand(arg, env) for arg in container["command"]]
    assert argv[argv.index("--entity-id") + 1] == entity_id
