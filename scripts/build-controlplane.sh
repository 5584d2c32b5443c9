#!/usr/bin/env bash
# Builds the binaries of a real Kubernetes control plane (etcd, kube-apiserver,
# kube-controller-manager, kubectl; helm and kubeconform on request; a node's kubelet,
# kube-scheduler and pause on request) from Go modules, into a cache outside the repository,
# for the control-plane test tier (tests/controlplane/README.md).
#
# Usage: scripts/build-controlplane.sh [--prune] [TARGET...]
#   TARGET   etcd kube-apiserver kube-controller-manager kubectl helm kubeconform kubelet
#            kube-scheduler pause, or a group: core (the default: the first four), chart (helm
#            kubeconform), node (kubelet kube-scheduler pause), all (every one).
#   --prune  after a successful build, also delete Go's module cache kept under the cache dir
#            (Go's build cache is always dropped then): only bin/ stays, and building another
#            target or version later downloads everything again.
# Stdout: one line per requested binary, NAME=/absolute/path, and nothing else (progress goes
# to stderr). When every requested binary is already built for the pinned versions, it only
# prints those lines (no Go needed).
# Environment:
#   AQ_CONTROLPLANE_CACHE  cache dir (default: $HOME/.cache/atomicqueues/controlplane/k8s-<v>_etcd-<v>)
#   AQ_GO                  the go command (default: go on PATH, else /usr/local/go/bin/go)
#   GOPROXY, GOTOOLCHAIN   passed to go as set; the Go module proxy is the only network used.
# Exit status: 0 built or cached; 1 a step failed (the line before says which);
# 2 bad usage; 3 Go not found (a test tier can turn this into a loud skip).
set -euo pipefail

# ---- pinned versions (bumping one rebuilds only what it pins) ---------------------------------
K8S_VERSION=v1.37.2        # k8s.io/kubernetes: kube-apiserver, kube-controller-manager, kubectl,
                           # kubelet, kube-scheduler
ETCD_VERSION=v3.7.3        # go.etcd.io/etcd/server/v3 (k8s v1.37 requires the etcd v3.7 client)
HELM_VERSION=v3.22.0       # helm.sh/helm/v3 (target "chart")
KUBECONFORM_VERSION=v0.8.0 # github.com/yannh/kubeconform (target "chart")
PAUSE_VERSION=v1            # the pause program below (target "node"): bump it when it changes
BUILD_PARALLELISM=2        # go build -p: the machines have 2 cores; keep them usable for others
# -------------------------------------------------------------------------------------------------

log() { printf '[build-controlplane] %s\n' "$*" >&2; }
die() { printf '[build-controlplane] error: %s\n' "$1" >&2; exit "${2:-1}"; }

CORE=(etcd kube-apiserver kube-controller-manager kubectl)
CHART=(helm kubeconform)
NODE=(kubelet kube-scheduler pause)
PRUNE=0
targets=()
for arg in "$@"; do
    case "$arg" in
        core) targets+=("${CORE[@]}") ;;
        chart) targets+=("${CHART[@]}") ;;
        node) targets+=("${NODE[@]}") ;;
        all) targets+=("${CORE[@]}" "${CHART[@]}" "${NODE[@]}") ;;
        etcd | kube-apiserver | kube-controller-manager | kubectl | helm | kubeconform) targets+=("$arg") ;;
        kubelet | kube-scheduler | pause) targets+=("$arg") ;;
        --prune) PRUNE=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
        *) die "unknown argument '$arg' (try --help)" 2 ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=("${CORE[@]}")
# Deduplicate, keeping the order.
declare -A seen=()
wanted=()
for t in "${targets[@]}"; do
    [ -n "${seen[$t]:-}" ] || wanted+=("$t")
    seen[$t]=1
done

CACHE_ROOT=$HOME/.cache/atomicqueues/controlplane
CACHE=${AQ_CONTROLPLANE_CACHE:-$CACHE_ROOT/k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}}
case "$CACHE" in /*) ;; *) CACHE=$PWD/$CACHE ;; esac  # the printed paths are absolute
BIN=$CACHE/bin

version_of() {
    case "$1" in
        etcd) echo "go.etcd.io/etcd/server/v3@$ETCD_VERSION" ;;
        kube-apiserver | kube-controller-manager | kubectl | kubelet | kube-scheduler)
            echo "k8s.io/kubernetes@$K8S_VERSION" ;;
        pause) echo "aqcontrolplane/pause@$PAUSE_VERSION" ;;
        helm) echo "helm.sh/helm/v3@$HELM_VERSION" ;;
        kubeconform) echo "github.com/yannh/kubeconform@$KUBECONFORM_VERSION" ;;
    esac
}
# A binary counts as built when it is executable and its stamp names the pinned module version
# (the stamp is written only after the binary is in place).
is_built() { [ -x "$BIN/$1" ] && [ "$(cat "$BIN/$1.stamp" 2>/dev/null)" = "$(version_of "$1")" ]; }
print_paths() { for t in "${wanted[@]}"; do printf '%s=%s\n' "$t" "$BIN/$t"; done; }
all_built() { for t in "${wanted[@]}"; do is_built "$t" || return 1; done; }

nothing_to_do() {  # every binary built, and nothing that --prune asks to delete
    all_built || return 1
    [ "$PRUNE" = 1 ] || return 0
    [ ! -e "$CACHE/go" ] && [ ! -e "$CACHE/src" ]
}

# ---- fast path: nothing to build -------------------------------------------------------------
if nothing_to_do; then
    print_paths
    exit 0
fi

mkdir -p "$BIN"
# One build at a time per cache dir (parallel test workers may call this together).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$CACHE/.lock"
    if ! flock -n 9; then
        log "another build holds $CACHE/.lock; waiting for it"
        flock 9
    fi
    if nothing_to_do; then print_paths; exit 0; fi
fi
if all_built && [ "$PRUNE" = 1 ]; then  # only --prune left to do
    log "--prune: deleting $CACHE/src and $CACHE/go (keeping $BIN)"
    rm -rf "$CACHE/src" "$CACHE/go"
    print_paths
    exit 0
fi

# ---- Go ------------------------------------------------------------------------------------------
GO=${AQ_GO:-}
if [ -z "$GO" ]; then
    if command -v go >/dev/null 2>&1; then GO=$(command -v go)
    elif [ -x /usr/local/go/bin/go ]; then GO=/usr/local/go/bin/go
    fi
fi
if [ -z "$GO" ] || ! "$GO" version >/dev/null 2>&1; then
    die "Go not found ($([ -n "${AQ_GO:-}" ] && echo "AQ_GO=$AQ_GO does not run" || echo "looked for 'go' on PATH and /usr/local/go/bin/go")).
Cannot build the control-plane binaries (${wanted[*]}) without it. Install Go >= 1.26 from
https://go.dev/dl/ or your package manager, or point AQ_CONTROLPLANE_CACHE at a cache that
already holds them." 3
fi
mkdir -p "$CACHE/src" "$CACHE/go"

# Private module and build caches under the cache dir: one 'rm -rf' (or --prune) frees
# everything, the user's own Go caches are left alone, and -modcacherw keeps them deletable.
export GOMODCACHE=$CACHE/go/mod GOCACHE=$CACHE/go/build
export GOFLAGS="-modcacherw -buildvcs=false" GOWORK=off CGO_ENABLED=0 GO111MODULE=on
unset GOOS GOARCH GOBIN
log "$("$GO" version) at $GO; GOPROXY=$("$GO" env GOPROXY)"
log "cache: $CACHE"

T_ALL=$(date +%s)
secs_since() { echo $(($(date +%s) - $1)); }
timings=()

# go_mod_file MODULE@VERSION -> path of that version's go.mod in the module cache
go_mod_file() {
    local json
    if ! json=$("$GO" mod download -json "$1"); then
        die "the Go module proxy did not serve $1: $(sed -n 's/.*"Error": "\(.*\)",*$/\1/p' <<<"$json")"
    fi
    sed -n 's/.*"GoMod": "\(.*\)",*$/\1/p' <<<"$json"
}

# new_module DIR NAME GOMOD_OF_DEP: a throwaway main module whose go/godebug lines copy the
# dependency's, so the binaries get the language version and GODEBUG defaults they were
# released with.
new_module() {
    local dir=$1 name=$2 depmod=$3
    rm -rf "$dir"
    mkdir -p "$dir"
    {
        printf 'module %s\n\n' "$name"
        grep -E '^(go|godebug) ' "$depmod"
    } >"$dir/go.mod"
}

# build DIR OUTPUT PACKAGE LDFLAGS-EXTRA: compile one main package into bin/ (via a temp name)
build() {
    local dir=$1 name=$2 pkg=$3 extra=${4:-}
    (cd "$dir" && "$GO" build -p "$BUILD_PARALLELISM" -trimpath -ldflags "-s -w $extra" \
        -o "$BIN/.$name.tmp" "$pkg") || die "go build of $pkg failed (in $dir)"
    mv -f "$BIN/.$name.tmp" "$BIN/$name"
    version_of "$name" >"$BIN/$name.stamp"
}

# fetch DIR PACKAGE@VERSION...: resolve and download what those packages need (go.mod, go.sum)
# (go's per-module "downloading"/"added" lines go to a log; its tail is shown on failure)
fetch() {
    local dir=$1 log
    shift
    log=$CACHE/logs/get-${1//[\/@]/_}.log
    mkdir -p "$CACHE/logs"
    if ! (cd "$dir" && "$GO" get "$@") >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        die "go get $* failed (in $dir; whole output: $log)"
    fi
    log "  $(grep -c '^go: downloading' "$log" || true) modules downloaded (log: $log)"
}

step() {  # step NAME: run build_NAME with timings
    local t0 t1 name=$1
    if is_built "$name"; then
        log "$name: already built ($(version_of "$name"))"
        return
    fi
    log "---- $name ($(version_of "$name"))"
    t0=$(date +%s)
    "build_${name//-/_}"
    t1=$(date +%s)
    timings+=("$name: $((t1 - t0)) s (download $DL_SECS s), $(du -h "$BIN/$name" | cut -f1)")
    log "$name: built in $((t1 - t0)) s: $BIN/$name"
}

# ---- etcd ------------------------------------------------------------------------------------
build_etcd() {
    local dir=$CACHE/src/etcd t0 gomod
    t0=$(date +%s)
    # The module's root is etcd's main package; its go.mod has replace lines, so
    # 'go install go.etcd.io/etcd/server/v3@version' is refused: a throwaway module instead.
    log "etcd: resolving and downloading go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    gomod=$(go_mod_file "go.etcd.io/etcd/server/v3@$ETCD_VERSION")
    new_module "$dir" aqcontrolplane/etcd "$gomod"
    fetch "$dir" "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    DL_SECS=$(secs_since "$t0")
    log "etcd: compiling (-p $BUILD_PARALLELISM)"
    build "$dir" etcd go.etcd.io/etcd/server/v3
}

# ---- kubernetes ------------------------------------------------------------------------------
# k8s.io/kubernetes requires its staging modules (k8s.io/api, k8s.io/client-go, ...) at v0.0.0
# and replaces them with ./staging paths that only exist in its own repository. A throwaway
# module requires k8s.io/kubernetes and replaces each of them with the published v0.X.Y.
K8S_STAGING_VERSION=v0.${K8S_VERSION#v1.}
K8S_MINOR=${K8S_VERSION#v1.}
K8S_MINOR=${K8S_MINOR%%.*}
k8s_module() {
    local dir=$CACHE/src/kubernetes gomod staging
    [ "$(cat "$dir/.ready" 2>/dev/null)" != "$K8S_VERSION" ] || return 0
    log "kubernetes: reading k8s.io/kubernetes@$K8S_VERSION's go.mod"
    gomod=$(go_mod_file "k8s.io/kubernetes@$K8S_VERSION")
    new_module "$dir" aqcontrolplane/kubernetes "$gomod"
    staging=$(sed -E 's/^require[[:space:]]+//' "$gomod" | awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1}')
    [ -n "$staging" ] || die "found no k8s.io/* module required at v0.0.0 in $gomod"
    {
        printf '\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "$K8S_VERSION"
        for m in $staging; do printf '\t%s => %s %s\n' "$m" "$m" "$K8S_STAGING_VERSION"; done
        printf ')\n'
    } >>"$dir/go.mod"
    log "kubernetes: $(wc -w <<<"$staging") staging modules replaced by their $K8S_STAGING_VERSION releases"
    echo "$K8S_VERSION" >"$dir/.ready"
}
K8S_LDFLAGS=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    K8S_LDFLAGS+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$K8S_MINOR -X $p.gitTreeState=clean"
done
build_k8s() {  # build_k8s NAME
    local name=$1 t0
    t0=$(date +%s)
    k8s_module
    log "$name: resolving and downloading k8s.io/kubernetes/cmd/$name@$K8S_VERSION"
    fetch "$CACHE/src/kubernetes" "k8s.io/kubernetes/cmd/$name@$K8S_VERSION"
    DL_SECS=$(secs_since "$t0")
    log "$name: compiling (-p $BUILD_PARALLELISM)"
    build "$CACHE/src/kubernetes" "$name" "k8s.io/kubernetes/cmd/$name" "$K8S_LDFLAGS"
}
build_kube_apiserver() { build_k8s kube-apiserver; }
build_kube_controller_manager() { build_k8s kube-controller-manager; }
build_kubectl() { build_k8s kubectl; }
build_kubelet() { build_k8s kubelet; }
build_kube_scheduler() { build_k8s kube-scheduler; }

# ---- pause (the process that holds a pod sandbox's namespaces) -----------------------------------
# No registry is reachable, so registry.k8s.io/pause cannot be pulled: the test tier makes the
# sandbox image from this binary. It does what Kubernetes' pause.c does: sleeps as PID 1, reaps
# orphaned children, and exits 0 on SIGINT or SIGTERM. Static (CGO_ENABLED=0), standard library
# only.
build_pause() {
    local dir=$CACHE/src/pause t0
    t0=$(date +%s)
    rm -rf "$dir"
    mkdir -p "$dir"
    printf 'module aqcontrolplane/pause\n\ngo 1.22\n' >"$dir/go.mod"
    cat >"$dir/main.go" <<'GO'
// Command pause holds a pod sandbox's namespaces: it sleeps until SIGINT or SIGTERM (exit 0)
// and reaps the zombies that are reparented to it as PID 1.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		os.Stdout.WriteString("pause (atomicqueues test tier) $PAUSE_VERSION\n")
		return
	}
	if os.Getpid() != 1 {
		os.Stderr.WriteString("warning: pause should be the first process\n")
	}
	sig := make(chan os.Signal, 8)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sig {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
GO
    sed -i "s/\$PAUSE_VERSION/$PAUSE_VERSION/" "$dir/main.go"
    DL_SECS=$(secs_since "$t0")
    log "pause: compiling"
    build "$dir" pause aqcontrolplane/pause
}

# ---- chart tools (no replace lines in their go.mod: a plain throwaway module all the same) ------
build_helm() {
    local dir=$CACHE/src/helm t0 gomod cgo minor
    t0=$(date +%s)
    log "helm: resolving and downloading helm.sh/helm/v3@$HELM_VERSION"
    gomod=$(go_mod_file "helm.sh/helm/v3@$HELM_VERSION")
    new_module "$dir" aqcontrolplane/helm "$gomod"
    fetch "$dir" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
    DL_SECS=$(secs_since "$t0")
    # As helm's Makefile: the default Kubernetes version for 'helm template'/'helm lint' is
    # its client-go's (v0.M.x -> 1.M); without it helm assumes 1.20.
    cgo=$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$gomod")
    minor=${cgo#v0.}
    minor=${minor%%.*}
    log "helm: compiling (-p $BUILD_PARALLELISM)"
    local h=helm.sh/helm/v3 x
    x="-X $h/internal/version.version=$HELM_VERSION -X $h/internal/version.gitTreeState=clean"
    x+=" -X $h/pkg/chartutil.k8sVersionMajor=1 -X $h/pkg/chartutil.k8sVersionMinor=$minor"
    x+=" -X $h/pkg/lint/rules.k8sVersionMajor=1 -X $h/pkg/lint/rules.k8sVersionMinor=$minor"
    build "$dir" helm $h/cmd/helm "$x"
}
build_kubeconform() {
    local dir=$CACHE/src/kubeconform t0 gomod
    t0=$(date +%s)
    log "kubeconform: resolving and downloading github.com/yannh/kubeconform@$KUBECONFORM_VERSION"
    gomod=$(go_mod_file "github.com/yannh/kubeconform@$KUBECONFORM_VERSION")
    new_module "$dir" aqcontrolplane/kubeconform "$gomod"
    fetch "$dir" "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
    DL_SECS=$(secs_since "$t0")
    log "kubeconform: compiling (-p $BUILD_PARALLELISM)"
    build "$dir" kubeconform github.com/yannh/kubeconform/cmd/kubeconform "-X main.version=$KUBECONFORM_VERSION"
}

for t in "${wanted[@]}"; do step "$t"; done

if [ ${#timings[@]} -gt 0 ]; then
    log "---- done in $(secs_since "$T_ALL") s"
    for line in "${timings[@]}"; do log "  $line"; done
fi
all_built || die "some binaries are missing after the build: ${wanted[*]}"
# Go's build cache (about 4 GB after kube-apiserver) only speeds up compiling these same
# sources again: once the binaries are in place it is dropped. The module cache (about 0.8 GB)
# stays, so a rebuild or another target downloads nothing already fetched; --prune drops it too.
rm -rf "$CACHE/go/build"
if [ "$PRUNE" = 1 ]; then
    log "--prune: deleting $CACHE/src and $CACHE/go (keeping $BIN)"
    rm -rf "$CACHE/src" "$CACHE/go"
fi
log "cache on disk: $(du -sh "$CACHE" | cut -f1)$([ -d "$CACHE/go/mod" ] && echo " ($(du -sh "$CACHE/go/mod" | cut -f1) of it Go's module cache: --prune deletes it)")"
[ -n "${AQ_CONTROLPLANE_CACHE:-}" ] || for old in "$CACHE_ROOT"/k8s-*; do
    if [ ! -d "$old" ] || [ "$old" = "$CACHE" ]; then continue; fi
    log "note: $old holds binaries of other pinned versions ($(du -sh "$old" | cut -f1)); 'rm -rf' it if unused"
done
print_paths
