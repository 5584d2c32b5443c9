#!/usr/bin/env bash
# Sets the project's version. pyproject.toml holds it (the package's version, `aq --version`);
# this script writes the same version wherever else it must appear literally: the Helm chart's
# version and appVersion (the default tag of the operator image), the image tags the README,
# the Dockerfiles and the Kubernetes example name, and the plain install manifest rendered from
# the chart (scripts/render-deploy.sh). tests/chart/test_version.py fails when any of them
# disagrees with pyproject.toml.
#
# Usage: scripts/set-version.sh VERSION [--no-render]
#   --no-render  leave deploy/ alone (rendering it needs helm: scripts/build-controlplane.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() { printf 'set-version: %s\n' "$*" >&2; exit 1; }

[ $# -ge 1 ] || die "usage: scripts/set-version.sh VERSION [--no-render]"
new=$1
render=1
case "${2:-}" in
    "") ;;
    --no-render) render=0 ;;
    *) die "unknown argument '$2'" ;;
esac
[[ $new =~ ^[0-9]+\.[0-9]+\.[0-9]+([.-]?[0-9A-Za-z.]+)?$ ]] || die "not a version: '$new'"

sed -i -E "s/^version = \"[^\"]*\"/version = \"$new\"/" pyproject.toml
sed -i -E "s/^version: .*/version: $new/; s/^appVersion: .*/appVersion: \"$new\"/" \
    helm/atomicqueues/Chart.yaml
mapfile -t tagged < <(git ls-files | grep -v '^deploy/' | xargs grep -lE \
    'atomicqueues/(worker|operator|example-accounts):[0-9]' -- 2>/dev/null || true)
for file in "${tagged[@]}"; do
    sed -i -E "s#(atomicqueues/(worker|operator|example-accounts)):[0-9][0-9A-Za-z.+-]*#\1:$new#g" \
        "$file"
done
if [ "$render" = 1 ]; then
    scripts/render-deploy.sh
fi
echo "version $new: pyproject.toml, helm/atomicqueues/Chart.yaml, ${#tagged[@]} file(s) with image tags"
