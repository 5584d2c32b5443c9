"""The plain install manifest, the kind walkthrough and the example's Kubernetes manifests.

Why: `kubectl apply -f crds/ -f deploy/atomicqueues-operator.yaml` must install what the chart
installs (the file is generated from it and must not drift), and the walkthrough's script and
manifests must hang together (names, images, Secret keys) though no cluster runs them here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from chart_render import REPO

DEPLOY = REPO / "deploy" / "atomicqueues-operator.yaml"
EXAMPLE = REPO / "examples" / "kubernetes"
SCRIPTS = [REPO / "scripts" / "kind-e2e.sh", REPO / "scripts" / "render-deploy.sh"]


def validate(manifest: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(manifest, "1.37.0", strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = f"{manifest['kind']} {manifest['metadata'].get('name')}"
        pytest.fail(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")


# --- deploy/atomicqueues-operator.yaml ------------------------------------------------------


def test_deploy_manifest_is_the_chart_rendered(helm: Path) -> None:
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "render-deploy.sh"), "--stdout"],
        env={**os.environ, "HELM": str(helm)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    if done.stdout != DEPLOY.read_text():
        pytest.fail(
            f"{DEPLOY.relative_to(REPO)} differs from the chart: run scripts/render-deploy.sh"
        )


def test_deploy_manifest_installs_the_operator_next_to_crds() -> None:
    manifests = [m for m in yaml.safe_load_all(DEPLOY.read_text()) if m]
    assert manifests[0]["kind"] == "Namespace"  # first, so that one `kubectl apply` works
    namespace = manifests[0]["metadata"]["name"]
    kinds = [m["kind"] for m in manifests]
    assert "CustomResourceDefinition" not in kinds  # crds/ holds it
    assert {"ServiceAccount", "Role", "RoleBinding", "Deployment", "Service"} <= set(kinds)
    for manifest in manifests:
        validate(manifest)
        if manifest["kind"] != "Namespace":
            assert manifest["metadata"]["namespace"] == namespace
    (deployment,) = (m for m in manifests if m["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:3] == ["operator", "--namespace", namespace]


# --- scripts --------------------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses_and_is_shellcheck_clean(script: Path) -> None:
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert os.access(script, os.X_OK), f"{script.name} is not executable"
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck not found: install the test extra (pip install -e '.[test]')")
    done = subprocess.run([shellcheck, str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_kind_e2e_refuses_unknown_arguments() -> None:
    done = subprocess.run(
        ["bash", str(SCRIPTS[0]), "--bogus"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].endswith("(usage: scripts/kind-e2e.sh [--keep])")


def test_kind_e2e_says_what_is_missing(tmp_path: Path) -> None:
    """Without docker on PATH the script stops at its first step with one clear line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sed", "dirname", "cat"):
        found = shutil.which(tool)
        assert found
        (bin_dir / tool).symlink_to(found)
    done = subprocess.run(
        ["/bin/bash", str(SCRIPTS[0])],
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert "==> [1] Checking the tools" in done.stdout
    assert done.stderr.strip().splitlines()[-1].startswith("kind-e2e: error: docker not found")


def test_kind_config_is_a_kind_cluster() -> None:
    config = yaml.safe_load((REPO / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert config["nodes"][0]["role"] == "control-plane"
    assert f"CLUSTER=${{CLUSTER:-{config['name']}}}" in SCRIPTS[0].read_text()


# --- the example's manifests --------------------------------------------------------------


def test_example_redis_manifest_is_valid_and_matches_the_pool() -> None:
    listed = yaml.safe_load((EXAMPLE / "redis.yaml").read_text())
    assert listed["kind"] == "List"
    items = {item["kind"]: item for item in listed["items"]}
    for item in items.values():
        validate(item)
    pool = yaml.safe_load((EXAMPLE / "pool.yaml").read_text())
    ref = pool["spec"]["redis"]["secretRef"]
    secret = items["Secret"]
    assert secret["metadata"]["name"] == ref["name"]
    url = secret["stringData"][ref["key"]]
    service = items["Service"]
    assert url == f"redis://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/0"
    pod = items["Deployment"]["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert f"AQ_REDIS_URL={url}" in SCRIPTS[0].read_text()  # the walkthrough pod's Redis
