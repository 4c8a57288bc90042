# Shared helpers of the kind scripts (sourced, not run).

# The cluster's name; the control plane's container is "$CLUSTER-control-plane".
CLUSTER=${CLUSTER:-cilium-rs-e2e}
# The image tag the scripts build, load and install.
TAG=${TAG:-kind-e2e}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

log() { printf '\n=== %s\n' "$*"; }

die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# need TOOL WHY: stop early, saying what to install.
need() {
  command -v "$1" >/dev/null 2>&1 || die "$1 is needed ($2); install it and run again"
}

# The static release binary (install/build-release.sh builds it).
cilium_bin() {
  local target
  target=$(rustc -vV | sed -n 's/^host: //p')
  printf '%s\n' "${CARGO_TARGET_DIR:-$ROOT/target}/$target/release/cilium"
}
