#!/usr/bin/env bash
# Builds the project's images from its Dockerfiles: the worker runtime base and the operator
# (worker_runtime/Dockerfile, targets worker and operator) and the example handler image
# (examples/kubernetes/Dockerfile, FROM the worker base), tagged with the chart's appVersion.
#
# Usage: scripts/build-images.sh [--engine docker|podman] [IMAGE...]
#   IMAGE     worker, operator, example (default: all three; example builds worker first)
#   --engine  docker: needs a running Docker engine; podman: Debian's podman and buildah with
#             runc, storage and config of their own under the cache dir (installed with apt-get
#             when missing and run as root). Default: docker when its engine answers, else podman.
# Stdout: ENGINE=COMMAND (docker, or the podman wrapper that carries this script's storage and
# settings: use it to run the images), then NAME=IMAGE per image built, and nothing else
# (progress goes to stderr).
# The base: python:3.12-slim when the engine has it or can pull it. Where no registry can be
# reached, a stand-in made once with debootstrap (Debian bookworm minbase with python3,
# python3-pip, python3-venv and ca-certificates, carrying this machine's CA bundle so that pip
# reaches the package index from inside a build) and cached under the cache dir.
# Environment:
#   AQ_IMAGES_CACHE  cache dir (default: $HOME/.cache/atomicqueues/images)
#   AQ_PYTHON_IMAGE  the base image to use instead (no pull, no stand-in)
#   AQ_IMAGE_TAG     the tag (default: appVersion of helm/atomicqueues/Chart.yaml)
# Exit status: 0 built; 1 a step failed (the line before says which); 2 bad usage;
# 3 no container engine here and none can be installed (a test tier turns this into a skip).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '[build-images] %s\n' "$*" >&2; }
die() { printf '[build-images] error: %s\n' "$1" >&2; exit "${2:-1}"; }

PYTHON_IMAGE=python:3.12-slim  # the Dockerfile's default (podman resolves it by its short-name aliases)
SUITE=bookworm
STANDIN_PACKAGES=python3,python3-pip,python3-venv,python-is-python3,ca-certificates
PODMAN_PACKAGES=(podman buildah runc)
STANDIN_PACKAGES_DEB=(debootstrap)
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

ENGINE_CHOICE=""
images=()
while [ $# -gt 0 ]; do
    case "$1" in
        --engine) [ $# -ge 2 ] || die "--engine needs docker or podman" 2; ENGINE_CHOICE=$2; shift ;;
        --engine=*) ENGINE_CHOICE=${1#--engine=} ;;
        worker | operator | example) images+=("$1") ;;
        all) images+=(worker operator example) ;;
        -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
        *) die "unknown argument '$1' (try --help)" 2 ;;
    esac
    shift
done
case "$ENGINE_CHOICE" in "" | docker | podman) ;; *) die "--engine docker or podman, not '$ENGINE_CHOICE'" 2 ;; esac
[ ${#images[@]} -gt 0 ] || images=(worker operator example)
want() { local i; for i in "${images[@]}"; do [ "$i" = "$1" ] && return 0; done; return 1; }
want example && ! want worker && images=(worker "${images[@]}")

TAG=${AQ_IMAGE_TAG:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' helm/atomicqueues/Chart.yaml)}
[ -n "$TAG" ] || die "cannot read appVersion from helm/atomicqueues/Chart.yaml"
CACHE=${AQ_IMAGES_CACHE:-$HOME/.cache/atomicqueues/images}
case "$CACHE" in /*) ;; *) CACHE=$PWD/$CACHE ;; esac
mkdir -p "$CACHE"

apt_install() {  # apt_install PACKAGE...: as root on Debian, else exit 3 with what to install
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        die "$* not installed, and cannot install them here (needs root and apt-get).
Install them yourself (Debian/Ubuntu: apt-get install $*), or run with a Docker engine." 3
    fi
    log "installing $* with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "$@" >&2 || die "apt-get install $* failed"
}

# ---- the engine -----------------------------------------------------------------------------
# podman runs with storage and settings of its own under the cache dir, through a wrapper
# (the ENGINE printed): the overlay storage driver where this kernel lets us mount an overlay,
# else vfs (which needs no mounts, but copies an image's whole file tree for every container
# and layer: 4-8 s a container start instead of 0.3 s), cgroupfs and runc
# (crun refuses a cgroup v1 hierarchy), no default ulimits (setrlimit is refused in some
# sandboxes), the host's network (no bridge or iptables needed).
overlay_works() {  # can we mount an overlay here (root, and a kernel and sandbox that allow it)?
    local probe
    [ "$(id -u)" = 0 ] || return 1
    probe=$(mktemp -d) || return 1
    mkdir "$probe/lower" "$probe/upper" "$probe/work" "$probe/merged"
    if mount -t overlay overlay -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" \
        "$probe/merged" 2>/dev/null; then
        umount "$probe/merged"
        rm -rf "$probe"
        return 0
    fi
    rm -rf "$probe"
    return 1
}

podman_wrapper() {
    local dir=$CACHE/podman run driver=vfs
    overlay_works && driver=overlay
    # The run root holds locks and state that must not outlive a reboot: a tmpfs where there is one.
    run=${XDG_RUNTIME_DIR:-/run}/atomicqueues-podman-$(id -u)
    { mkdir -p "$run" && [ -w "$run" ]; } 2>/dev/null || run=${TMPDIR:-/tmp}/atomicqueues-podman-$(id -u)
    mkdir -p "$dir" "$run"
    cat >"$dir/storage.conf" <<CONF
[storage]
driver = "$driver"
graphroot = "$dir/storage-$driver"
runroot = "$run/storage-$driver"
CONF
    cat >"$dir/containers.conf" <<CONF
[containers]
default_ulimits = []
netns = "host"
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
tmp_dir = "$run/libpod"
CONF
    cat >"$dir/podman.tmp" <<SH
#!/bin/sh
# podman with the settings of scripts/build-images.sh (written by it).
export CONTAINERS_CONF="$dir/containers.conf" CONTAINERS_STORAGE_CONF="$dir/storage.conf"
exec podman "\$@"
SH
    chmod +x "$dir/podman.tmp"
    mv -f "$dir/podman.tmp" "$dir/podman"
    echo "$dir/podman"
}

ENGINE=""
if [ "$ENGINE_CHOICE" != podman ] && command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    ENGINE=docker
elif [ "$ENGINE_CHOICE" = docker ]; then
    die "docker cannot reach a Docker engine here (try --engine podman)" 3
else
    missing=()
    for p in podman buildah runc; do command -v "$p" >/dev/null 2>&1 || missing+=("$p"); done
    # debootstrap too, while apt-get is at it, for the stand-in base a machine without a Docker
    # engine is likely to need (one apt-get update instead of two).
    [ ${#missing[@]} = 0 ] || apt_install "${PODMAN_PACKAGES[@]}" "${STANDIN_PACKAGES_DEB[@]}"
    ENGINE=$(podman_wrapper)
    if ! info=$("$ENGINE" info 2>&1 >/dev/null); then
        die "podman cannot run here: $(tail -n 1 <<<"$info")" 3
    fi
fi
log "engine: $ENGINE ($("$ENGINE" --version 2>/dev/null | head -n 1))"
image_exists() { "$ENGINE" image inspect "$1" >/dev/null 2>&1; }

# ---- the base ---------------------------------------------------------------------------------
apt_mirror() {  # the Debian mirror this machine's apt uses
    local found
    found=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | grep -v security | head -n 1 || true)
    [ -n "$found" ] || found=$(sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\) .*/\2/p' /etc/apt/sources.list 2>/dev/null | grep -v security | head -n 1 || true)
    [ -n "$found" ] || die "cannot tell the Debian mirror from /etc/apt/sources.list(.d): the stand-in base needs one"
    echo "$found"
}

# The stand-in's rootfs is cached as a tarball; its name changes with what goes in it.
make_standin() {
    local key tarball root mirror t0
    [ -r "$CA_BUNDLE" ] || die "no CA bundle at $CA_BUNDLE: the stand-in base must carry it"
    key=$(printf '%s\n' "$SUITE" "$STANDIN_PACKAGES" | cat - "$CA_BUNDLE" | sha256sum | cut -c1-12)
    tarball=$CACHE/standin-$SUITE-$key.tar
    STANDIN=localhost/atomicqueues/python-standin:$SUITE-$key
    if image_exists "$STANDIN"; then return; fi
    if [ ! -s "$tarball" ]; then
        command -v debootstrap >/dev/null 2>&1 || apt_install "${STANDIN_PACKAGES_DEB[@]}"
        [ "$(id -u)" = 0 ] || die "debootstrap needs root to make the stand-in base" 3
        mirror=$(apt_mirror)
        root=$CACHE/standin-rootfs
        rm -rf "$root"
        t0=$(date +%s)
        log "making the stand-in base: debootstrap --variant=minbase $SUITE (from $mirror)"
        debootstrap --variant=minbase --include="$STANDIN_PACKAGES" "$SUITE" "$root" "$mirror" \
            >"$CACHE/debootstrap.log" 2>&1 || { tail -n 20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
        # What python:slim images are like: pip may install into the system's Python, and the
        # machine's CA bundle (which may hold a proxy's CA) is the one trusted.
        rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
        cp "$CA_BUNDLE" "$root/etc/ssl/certs/ca-certificates.crt"
        rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
            "$root"/usr/share/doc/* "$root"/usr/share/man/*
        tar -C "$root" --numeric-owner -cf "$tarball.tmp" .
        mv -f "$tarball.tmp" "$tarball"
        rm -rf "$root"
        log "stand-in rootfs made in $(($(date +%s) - t0)) s: $tarball ($(du -h "$tarball" | cut -f1))"
    fi
    "$ENGINE" import --quiet --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$tarball" "$STANDIN" >/dev/null \
        || die "$ENGINE import of $tarball failed"
    log "stand-in base imported as $STANDIN"
}

if [ -n "${AQ_PYTHON_IMAGE:-}" ]; then
    BASE=$AQ_PYTHON_IMAGE
elif image_exists "$PYTHON_IMAGE"; then
    BASE=$PYTHON_IMAGE
elif [ -e "$CACHE/no-registry" ] && [ $(($(date +%s) - $(stat -c %Y "$CACHE/no-registry"))) -lt 86400 ]; then
    # A pull failed less than a day ago: do not wait for another one.
    make_standin
    BASE=$STANDIN
elif timeout 60 "$ENGINE" pull -q "$PYTHON_IMAGE" >/dev/null 2>"$CACHE/pull.log"; then
    rm -f "$CACHE/no-registry"
    BASE=$PYTHON_IMAGE
else
    log "cannot pull $PYTHON_IMAGE ($(tail -n 1 "$CACHE/pull.log")): using a stand-in base"
    touch "$CACHE/no-registry"
    make_standin
    BASE=$STANDIN
fi
log "base: $BASE"

# ---- the images -------------------------------------------------------------------------------
# An image is rebuilt only when what goes into it changed: a stamp in the cache dir holds a
# digest of its Dockerfile, the files of its build context that it copies and the ID of its
# base image, with the ID of the image built from them. (With the vfs storage driver even a
# build whose every step is cached copies each stage's whole file tree: 20-30 s an image.)
image_id() { "$ENGINE" image inspect --format '{{.Id}}' "$1" 2>/dev/null; }
digest_of() {  # digest_of BASE-IMAGE FILE-OR-DIR...
    local base=$1
    shift
    {
        image_id "$base"
        find "$@" -type f -not -path '*/__pycache__/*' -not -name '*.pyc' \
            -not -path '*.egg-info/*' -print0 | sort -z | xargs -0 sha256sum
    } | sha256sum | cut -c1-16
}
build() {  # build NAME IMAGE BASE INPUTS ARGS...: one image, unless it is up to date
    local name=$1 image=$2 stamp=$CACHE/stamps/$1 digest t0
    # shellcheck disable=SC2086  # INPUTS is a list of paths
    digest=$(digest_of "$3" $4)
    shift 4
    if [ "$(cat "$stamp" 2>/dev/null)" = "$digest $(image_id "$image")" ]; then
        log "$name: $image is up to date"
        return
    fi
    t0=$(date +%s)
    "$ENGINE" build --quiet "$@" -t "$image" >/dev/null || die "building $name ($image) failed"
    mkdir -p "$CACHE/stamps"
    echo "$digest $(image_id "$image")" >"$stamp"
    log "$name: $image built in $(($(date +%s) - t0)) s"
}
WORKER=atomicqueues/worker:$TAG
OPERATOR=atomicqueues/operator:$TAG
EXAMPLE=atomicqueues/example-accounts:$TAG
# podman names local images localhost/NAME; the full name is what the example's FROM needs.
[ "$ENGINE" = docker ] || { WORKER=localhost/$WORKER; OPERATOR=localhost/$OPERATOR; EXAMPLE=localhost/$EXAMPLE; }
args=(--build-arg "PYTHON_IMAGE=$BASE" -f worker_runtime/Dockerfile)
# What worker_runtime/Dockerfile copies from the repository root (and .dockerignore lets in).
CONTEXT="worker_runtime/Dockerfile pyproject.toml README.md worker_runtime operator .dockerignore"

echo "ENGINE=$ENGINE"
if want worker; then
    build worker "$WORKER" "$BASE" "$CONTEXT" "${args[@]}" --target worker .
    echo "worker=$WORKER"
fi
if want operator; then
    build operator "$OPERATOR" "$BASE" "$CONTEXT" "${args[@]}" --target operator .
    echo "operator=$OPERATOR"
fi
if want example; then
    build example "$EXAMPLE" "$WORKER" examples/kubernetes --build-arg "BASE_IMAGE=$WORKER" examples/kubernetes
    echo "example=$EXAMPLE"
fi
# podman's storage is ours alone: drop the images no tag names any more (with vfs each is a
# whole copy of its file tree, about 200 MB).
[ "$ENGINE" = docker ] || "$ENGINE" image prune --force >/dev/null
