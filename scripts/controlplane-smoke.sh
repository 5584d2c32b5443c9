#!/usr/bin/env bash
# Smoke test of the control plane that scripts/build-controlplane.sh builds: starts etcd,
# kube-apiserver and kube-controller-manager on free loopback ports (temp dirs, nothing
# outside them), checks that each is ready and that they do their jobs, then stops all three
# (also on failure or Ctrl-C) and prints the timings.
#
# Usage: scripts/controlplane-smoke.sh [--with-helm]
#   Builds the binaries first if they are not cached (see build-controlplane.sh; exit 3 when
#   Go is missing and nothing is cached). AQ_SMOKE_KEEP=1 keeps the temp dir (logs, certs).
#   --with-helm also builds helm and installs then uninstalls a one-ConfigMap chart.
# Checks: etcd /health; apiserver /readyz with a static admin token; 'kubectl get ns';
# kube-controller-manager /healthz; the serviceaccount controller gives a new namespace its
# "default" ServiceAccount; the garbage collector deletes an object whose owner was deleted;
# a CRD's schema rejects a bad custom resource; the namespace controller finishes a
# namespace deletion. Needs curl, openssl and python3 (for free ports).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

WITH_HELM=0
for arg in "$@"; do
    case "$arg" in
        --with-helm) WITH_HELM=1 ;;
        *) echo "usage: $0 [--with-helm]" >&2; exit 2 ;;
    esac
done

say() { printf '[smoke %6.1fs] %s\n' "$(elapsed "$T0")" "$*"; }
fail() { printf '[smoke] FAILED: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
T0=$(now)

for tool in curl openssl python3; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool not found (install it: apt-get install $tool)"
done

# ---- binaries ----------------------------------------------------------------------------------
rc=0
targets=(core)
[ "$WITH_HELM" = 0 ] || targets+=(helm)
paths=$(scripts/build-controlplane.sh "${targets[@]}") || rc=$?
[ "$rc" = 0 ] || { echo "[smoke] build-controlplane.sh exited $rc" >&2; exit "$rc"; }
while IFS='=' read -r name path; do
    case "$name" in
        etcd) ETCD=$path ;;
        kube-apiserver) APISERVER=$path ;;
        kube-controller-manager) KCM=$path ;;
        kubectl) KUBECTL=$path ;;
        helm) HELM=$path ;;
    esac
done <<<"$paths"
say "binaries: $(dirname "$ETCD")"

# ---- temp dir, processes, cleanup ----------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/aq-controlplane-smoke.XXXXXX")
declare -A PIDS=()
ORDER=()
OK=0
cleanup() {
    local rc=$? name pid i t stopped=()
    trap - EXIT INT TERM
    t=$(now)
    # Stop in reverse start order: the controller manager, then the apiserver, then etcd.
    for ((i = ${#ORDER[@]} - 1; i >= 0; i--)); do
        name=${ORDER[$i]}
        pid=${PIDS[$name]}
        kill -0 "$pid" 2>/dev/null || { echo "[smoke] $name (pid $pid) had already exited" >&2; continue; }
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "[smoke] $name (pid $pid) ignored SIGTERM for 10 s: SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
        stopped+=("$name")
    done
    [ ${#stopped[@]} -eq 0 ] || printf '[smoke] stopped %s in %ss\n' "${stopped[*]}" "$(elapsed "$t")"
    if [ "$OK" != 1 ]; then
        for name in "${ORDER[@]}"; do
            echo "---- last lines of $TMP/$name.log" >&2
            tail -n 25 "$TMP/$name.log" >&2 || true
        done
    fi
    if [ "${AQ_SMOKE_KEEP:-}" = 1 ] || [ "$OK" != 1 ]; then
        echo "[smoke] kept $TMP (logs, certs, kubeconfig)" >&2
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start() {  # start NAME COMMAND...: in the background, output to $TMP/NAME.log
    local name=$1
    shift
    "$@" >"$TMP/$name.log" 2>&1 &
    PIDS[$name]=$!
    ORDER+=("$name")
}
# wait_for NAME SECONDS COMMAND...: until COMMAND succeeds; fails early if NAME's process died
wait_for() {
    local name=$1 limit=$2 deadline
    shift 2
    deadline=$(($(date +%s) + limit))
    until "$@" >/dev/null 2>&1; do
        kill -0 "${PIDS[$name]}" 2>/dev/null || fail "$name exited during start-up (see its log below)"
        [ "$(date +%s)" -lt "$deadline" ] || fail "$name not ready after ${limit}s: $*"
        sleep 0.2
    done
}
free_port() {  # a port the kernel had free on 127.0.0.1 a moment ago
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---- etcd ----------------------------------------------------------------------------------------
ETCD_PORT=$(free_port)
ETCD_PEER_PORT=$(free_port)
t=$(now)
# --unsafe-no-fsync: a throwaway test store, no need to wait for the disk on every write.
start etcd "$ETCD" --name smoke --data-dir "$TMP/etcd" --log-level warn --unsafe-no-fsync \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "smoke=http://127.0.0.1:$ETCD_PEER_PORT"
etcd_healthy() { curl -fsS "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"'; }
wait_for etcd 30 etcd_healthy
T_ETCD=$(elapsed "$t")
say "etcd ready in ${T_ETCD}s on 127.0.0.1:$ETCD_PORT ($("$ETCD" --version | head -1))"

# ---- kube-apiserver ------------------------------------------------------------------------------
API_PORT=$(free_port)
TOKEN=$(openssl rand -hex 24)
printf '%s,smoke-admin,smoke-admin,"system:masters"\n' "$TOKEN" >"$TMP/tokens.csv"
openssl genrsa -out "$TMP/sa.key" 2048 2>/dev/null
openssl rsa -in "$TMP/sa.key" -pubout -out "$TMP/sa.pub" 2>/dev/null
t=$(now)
# Certificates: none given, so it writes a self-signed CA and serving cert into --cert-dir.
# --endpoint-reconciler-type=none: the "kubernetes" Service's endpoint would be 127.0.0.1,
# which Endpoints validation refuses; nothing here routes to it anyway.
start kube-apiserver "$APISERVER" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --advertise-address 127.0.0.1 --bind-address 127.0.0.1 --secure-port "$API_PORT" \
    --cert-dir "$TMP/apiserver-certs" \
    --token-auth-file "$TMP/tokens.csv" --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$TMP/sa.pub" --service-account-signing-key-file "$TMP/sa.key" \
    --service-cluster-ip-range 10.0.0.0/24 --endpoint-reconciler-type none
API="https://127.0.0.1:$API_PORT"
api_ready() { curl -fsSk -H "Authorization: Bearer $TOKEN" "$API/readyz" | grep -qx ok; }
wait_for kube-apiserver 120 api_ready
T_API=$(elapsed "$t")
say "kube-apiserver ready in ${T_API}s on $API"

# A kubeconfig trusting the CA that the apiserver generated (its cert file holds the chain).
CA=$TMP/apiserver-certs/apiserver.crt
cat >"$TMP/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: smoke
  cluster: {server: "$API", certificate-authority: "$CA"}
users:
- name: smoke-admin
  user: {token: "$TOKEN"}
contexts:
- name: smoke
  context: {cluster: smoke, user: smoke-admin}
current-context: smoke
EOF
kc() { "$KUBECTL" --kubeconfig "$TMP/kubeconfig" "$@"; }
"$KUBECTL" --server "$API" --token "$TOKEN" --insecure-skip-tls-verify get ns >"$TMP/get-ns.txt" \
    || fail "kubectl get ns (token, --insecure-skip-tls-verify)"
grep -q '^kube-system ' "$TMP/get-ns.txt" || fail "kubectl get ns lists no kube-system: $(cat "$TMP/get-ns.txt")"
kc get ns default -o name >/dev/null || fail "kubectl with the kubeconfig (generated CA)"
say "kubectl get ns: $(awk 'NR > 1 {print $1}' "$TMP/get-ns.txt" | xargs); server $(kc version -o json | sed -n 's/.*"gitVersion": "\([^"]*\)".*/\1/p' | tail -1)"

# ---- kube-controller-manager ---------------------------------------------------------------------
KCM_PORT=$(free_port)
t=$(now)
# garbagecollector: owner references; namespace: finishes namespace deletion; serviceaccount:
# the "default" ServiceAccount that pod admission needs; serviceaccount-token: legacy token
# Secrets (signed with the same key). /healthz is always allowed without credentials.
start kube-controller-manager "$KCM" \
    --kubeconfig "$TMP/kubeconfig" --leader-elect=false \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --cert-dir "$TMP/kcm-certs" \
    --controllers garbagecollector,namespace,serviceaccount,serviceaccount-token \
    --service-account-private-key-file "$TMP/sa.key" --root-ca-file "$CA"
kcm_healthy() { curl -fsSk "https://127.0.0.1:$KCM_PORT/healthz" | grep -qx ok; }
wait_for kube-controller-manager 60 kcm_healthy
T_KCM=$(elapsed "$t")
say "kube-controller-manager healthy in ${T_KCM}s on 127.0.0.1:$KCM_PORT"

# ---- does the control plane do its jobs? ---------------------------------------------------------
t=$(now)
kc create namespace smoke >/dev/null
wait_for kube-controller-manager 60 kc -n smoke get serviceaccount default
say "serviceaccount controller: namespace smoke got its default ServiceAccount"

kc -n smoke create configmap owner --from-literal=k=v >/dev/null
OWNER_UID=$(kc -n smoke get configmap owner -o jsonpath='{.metadata.uid}')
kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ConfigMap
metadata:
  name: dependent
  namespace: smoke
  ownerReferences:
  - {apiVersion: v1, kind: ConfigMap, name: owner, uid: "$OWNER_UID"}
data: {k: v}
EOF
kc -n smoke delete configmap owner --wait=false >/dev/null
gone() { ! kc -n smoke get configmap dependent >/dev/null 2>&1; }
wait_for kube-controller-manager 60 gone
say "garbage collector: deleted the dependent ConfigMap after its owner"

kc apply -f - >/dev/null <<'EOF'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.smoke.example.com}
spec:
  group: smoke.example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [replicas]
            properties:
              replicas: {type: integer, minimum: 0}
EOF
kc wait --for condition=Established --timeout 60s crd/widgets.smoke.example.com >/dev/null
widget() { printf 'apiVersion: smoke.example.com/v1\nkind: Widget\nmetadata: {name: %s, namespace: smoke}\nspec: {replicas: %s}\n' "$1" "$2"; }
widget good 1 | kc apply -f - >/dev/null || fail "a valid custom resource was refused"
if widget bad -1 | kc apply -f - >"$TMP/bad-cr.txt" 2>&1; then fail "a custom resource with replicas: -1 was accepted"; fi
grep -q 'spec.replicas' "$TMP/bad-cr.txt" || fail "unexpected refusal: $(cat "$TMP/bad-cr.txt")"
say "CRD: a valid Widget applied, replicas: -1 refused ($(grep -o 'spec.replicas[^"]*' "$TMP/bad-cr.txt" | head -1))"

if [ "$WITH_HELM" = 1 ]; then
    export HELM_CACHE_HOME=$TMP/helm/cache HELM_CONFIG_HOME=$TMP/helm/config HELM_DATA_HOME=$TMP/helm/data
    mkdir -p "$TMP/chart/templates"
    printf 'apiVersion: v2\nname: smoke\nversion: 0.1.0\n' >"$TMP/chart/Chart.yaml"
    printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: from-chart}\ndata: {release: "{{ .Release.Name }}"}\n' \
        >"$TMP/chart/templates/cm.yaml"
    "$HELM" --kubeconfig "$TMP/kubeconfig" -n smoke install smoke-release "$TMP/chart" --wait --timeout 60s >/dev/null
    [ "$(kc -n smoke get configmap from-chart -o jsonpath='{.data.release}')" = smoke-release ] \
        || fail "helm install did not create the chart's ConfigMap"
    "$HELM" --kubeconfig "$TMP/kubeconfig" -n smoke uninstall smoke-release --wait >/dev/null
    gone_cm() { ! kc -n smoke get configmap from-chart >/dev/null 2>&1; }
    wait_for kube-apiserver 30 gone_cm
    say "helm $("$HELM" version --template '{{.Version}}'): installed and uninstalled a chart"
fi

kc delete namespace smoke --timeout 60s >/dev/null || fail "namespace smoke not deleted within 60 s"
say "namespace controller: namespace smoke deleted with its contents"
T_CHECKS=$(elapsed "$t")

OK=1
say "PASS: etcd ready ${T_ETCD}s, kube-apiserver ready ${T_API}s, kube-controller-manager healthy ${T_KCM}s, checks ${T_CHECKS}s"
