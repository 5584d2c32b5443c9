#!/usr/bin/env bash
# The kind walkthrough, end to end, for a machine with Docker: create a kind cluster, build the
# operator, worker base and example handler images and load them into it, install a plain Redis,
# install the operator with Helm, apply the example EntityWorkerPool, enqueue jobs for a few
# accounts and wait until the pool's worker pods have run them in order, then tear it all down.
#
# Usage: scripts/kind-e2e.sh [--keep]
#   --keep   leave the cluster running at the end (delete it: kind delete cluster --name NAME)
# Needs: docker (a running daemon), kind, kubectl, helm (or HELM=/path/to/helm).
# Environment: CLUSTER (default atomicqueues), NAMESPACE (default atomicqueues),
#   ACCOUNTS and JOBS (default 5 and 8: jobs per account), TIMEOUT (default 300 seconds).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CLUSTER=${CLUSTER:-atomicqueues}
NAMESPACE=${NAMESPACE:-atomicqueues}
ACCOUNTS=${ACCOUNTS:-5}
JOBS=${JOBS:-8}
TIMEOUT=${TIMEOUT:-300}
KEEP=0

step_no=0
step() { step_no=$((step_no + 1)); printf '\n==> [%d] %s\n' "$step_no" "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf '\nkind-e2e: error: %s\n' "$*" >&2; exit 1; }

for arg in "$@"; do
    case "$arg" in
        --keep) KEEP=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$arg' (usage: scripts/kind-e2e.sh [--keep])" ;;
    esac
done

# The images are tagged with the chart's appVersion, the tag the chart and the example pool use.
TAG=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' helm/atomicqueues/Chart.yaml)
[ -n "$TAG" ] || die "cannot read appVersion from helm/atomicqueues/Chart.yaml"
OPERATOR_IMAGE=atomicqueues/operator:$TAG
WORKER_IMAGE=atomicqueues/worker:$TAG
EXAMPLE_IMAGE=atomicqueues/example-accounts:$TAG

step "Checking the tools"
command -v docker >/dev/null || die "docker not found: install Docker (https://docs.docker.com/get-docker/)"
docker info >/dev/null 2>&1 || die "docker cannot reach its daemon: start Docker (or add yourself to the docker group)"
command -v kind >/dev/null || die "kind not found: install it (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)"
command -v kubectl >/dev/null || die "kubectl not found: install it (https://kubernetes.io/docs/tasks/tools/)"
HELM=${HELM:-$(command -v helm || true)}
[ -n "$HELM" ] || die "helm not found: install it (https://helm.sh/docs/intro/install/) or set HELM=/path/to/helm"
info "docker $(docker version --format '{{.Server.Version}}'), $(kind version), helm $("$HELM" version --short)"

cleanup() {
    status=$?
    if [ "$status" != 0 ]; then
        printf '\nkind-e2e: FAILED (exit %s). What the operator said last:\n' "$status" >&2
        kubectl --context "kind-$CLUSTER" -n "$NAMESPACE" logs deployment/atomicqueues-operator --tail 40 >&2 2>/dev/null || true
        kubectl --context "kind-$CLUSTER" -n "$NAMESPACE" get pods,ewp >&2 2>/dev/null || true
    fi
    if [ "$KEEP" = 1 ]; then
        printf '\nThe cluster stays (--keep): kubectl --context kind-%s -n %s get ewp,pods\n' "$CLUSTER" "$NAMESPACE"
        printf 'Delete it with: kind delete cluster --name %s\n' "$CLUSTER"
    elif [ "$created" = 1 ]; then
        step "Tearing down: kind delete cluster --name $CLUSTER"
        kind delete cluster --name "$CLUSTER" || true
    fi
}
created=0
trap cleanup EXIT

step "Creating the kind cluster '$CLUSTER' (kind-config.yaml)"
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    die "a kind cluster named '$CLUSTER' exists already: delete it (kind delete cluster --name $CLUSTER) or set CLUSTER=another-name"
fi
created=1
kind create cluster --name "$CLUSTER" --config kind-config.yaml --wait 120s
KUBECTL=(kubectl --context "kind-$CLUSTER")

step "Building the images ($TAG): scripts/build-images.sh --engine docker"
info "$OPERATOR_IMAGE and $WORKER_IMAGE (worker_runtime/Dockerfile, targets operator and worker)"
info "$EXAMPLE_IMAGE (examples/kubernetes/Dockerfile, FROM the worker base image)"
AQ_IMAGE_TAG=$TAG scripts/build-images.sh --engine docker >/dev/null

step "Loading the images into the cluster's nodes"
kind load docker-image --name "$CLUSTER" "$OPERATOR_IMAGE" "$EXAMPLE_IMAGE"

step "Installing a plain Redis in namespace $NAMESPACE (examples/kubernetes/redis.yaml)"
"${KUBECTL[@]}" create namespace "$NAMESPACE"
"${KUBECTL[@]}" -n "$NAMESPACE" apply -f examples/kubernetes/redis.yaml
"${KUBECTL[@]}" -n "$NAMESPACE" rollout status deployment/redis --timeout 180s

step "Installing the operator with Helm (helm/atomicqueues, release atomicqueues)"
"$HELM" --kube-context "kind-$CLUSTER" install atomicqueues helm/atomicqueues \
    --namespace "$NAMESPACE" --wait --timeout 180s
"${KUBECTL[@]}" -n "$NAMESPACE" get deployment/atomicqueues-operator

step "Applying the example EntityWorkerPool (examples/kubernetes/pool.yaml)"
"${KUBECTL[@]}" -n "$NAMESPACE" apply -f examples/kubernetes/pool.yaml
"${KUBECTL[@]}" -n "$NAMESPACE" get ewp accounts

step "Enqueueing $JOBS jobs for each of $ACCOUNTS accounts and waiting until they ran in order"
info "(a pod of the example image runs examples/kubernetes/walkthrough.py; worker pods come and go)"
"${KUBECTL[@]}" -n "$NAMESPACE" run aq-walkthrough --rm -i --restart=Never \
    --image "$EXAMPLE_IMAGE" --image-pull-policy IfNotPresent \
    --env "AQ_REDIS_URL=redis://redis:6379/0" \
    --command -- python -m walkthrough --accounts "$ACCOUNTS" --jobs "$JOBS" --timeout "$TIMEOUT"

step "The pool now"
"${KUBECTL[@]}" -n "$NAMESPACE" get ewp accounts
"${KUBECTL[@]}" -n "$NAMESPACE" get pods -l atomicqueues.io/pool=accounts

printf '\nkind-e2e: OK: the operator scaled worker pods for the accounts with work, and every job ran in order.\n'
