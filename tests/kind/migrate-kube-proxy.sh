#!/usr/bin/env bash
# End to end on a real cluster (Docker + kind; not run in CI): a kind cluster WITH
# kube-proxy, Cilium installed without kube-proxy replacement, then
# `cilium migrate kube-proxy --all --yes`, checks that kube-proxy is gone and every agent
# replaced it, a second run that must be a no-op, and the connectivity test.
#
#   install/build-release.sh && tests/kind/migrate-kube-proxy.sh
#
# Environment: CLUSTER (kind cluster name, default cilium-rs-migrate), CILIUM (the static
# binary; default: the release build of install/build-release.sh), KEEP=1 keeps the
# cluster afterwards, SKIP_CONNECTIVITY=1 skips the connectivity test.
set -euo pipefail

CLUSTER=${CLUSTER:-cilium-rs-migrate}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
KEEP=${KEEP:-0}

log() { printf '\n=== %s\n' "$*"; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}
need() {
  command -v "$1" >/dev/null 2>&1 || die "$1 is needed ($2); install it and run again"
}

need docker "kind runs its nodes as containers"
need kind "it creates the cluster"
need kubectl "the checks read the cluster"

if [[ -z ${CILIUM:-} ]]; then
  need rustc "to find the build target of the release binary"
  target=$(rustc -vV | sed -n 's/^host: //p')
  CILIUM=${CARGO_TARGET_DIR:-$ROOT/target}/$target/release/cilium
fi
[[ -x $CILIUM ]] || die "no binary at $CILIUM: run install/build-release.sh first (or set CILIUM=)"

work=$(mktemp -d)
cleanup() {
  if [[ $KEEP == 1 ]]; then
    printf 'kept cluster %s (KUBECONFIG=%s); "kind delete cluster --name %s" removes it\n' \
      "$CLUSTER" "$work/kubeconfig" "$CLUSTER"
  else
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
    rm -rf "$work"
  fi
}
trap cleanup EXIT

log "kind cluster $CLUSTER with kube-proxy (iptables) and no CNI"
cat >"$work/kind.yaml" <<'YAML'
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
- role: control-plane
- role: worker
- role: worker
networking:
  disableDefaultCNI: true
  kubeProxyMode: iptables
YAML
kind create cluster --name "$CLUSTER" --config "$work/kind.yaml" --kubeconfig "$work/kubeconfig"
export KUBECONFIG=$work/kubeconfig
kubectl -n kube-system rollout status daemonset/kube-proxy --timeout=3m

log "image: build and load"
"$CILIUM" image build -o "$work/cilium.tar"
kind load image-archive "$work/cilium.tar" --name "$CLUSTER"

# The agents must reach the API server without the kubernetes Service's ClusterIP.
api_host=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' \
  "$CLUSTER-control-plane")
[[ -n $api_host ]] || die "no address for the container $CLUSTER-control-plane"

log "install Cilium without kube-proxy replacement (API server $api_host:6443)"
"$CILIUM" install --set kubeProxyReplacement=false \
  --set k8sServiceHost="$api_host" --set k8sServicePort=6443
"$CILIUM" status --wait

log "migrate: the plan, then the run"
"$CILIUM" migrate kube-proxy --all --dry-run
"$CILIUM" migrate kube-proxy --all --yes --timeout 5m

log "checks"
if kubectl -n kube-system get daemonset kube-proxy >/dev/null 2>&1; then
  die "DaemonSet kube-proxy still exists"
fi
kpr=$(kubectl -n kube-system get configmap cilium-config -o jsonpath='{.data.kube-proxy-replacement}')
[[ $kpr == true ]] || die "cilium-config has kube-proxy-replacement=$kpr"
for node in $(kubectl get nodes -o jsonpath='{.items[*].metadata.name}'); do
  active=$(kubectl get ciliumnode "$node" \
    -o jsonpath='{.metadata.annotations.cilium\.io/kube-proxy-replacement}')
  chains=$(kubectl get ciliumnode "$node" \
    -o jsonpath='{.metadata.annotations.cilium\.io/kube-proxy-chains}')
  [[ $active == true && $chains == 0 ]] ||
    die "node $node: kube-proxy-replacement=$active, KUBE-* chains=$chains"
  unschedulable=$(kubectl get node "$node" -o jsonpath='{.spec.unschedulable}')
  [[ -z $unschedulable || $unschedulable == false ]] || die "node $node is still cordoned"
done
kubectl -n kube-system get configmap cilium-kube-proxy-migration -o jsonpath='{.data.phase}' |
  grep -qx 'done' || die "the migration record does not say done"

log "a second run changes nothing"
"$CILIUM" migrate kube-proxy --all --yes | tee "$work/again.txt"
grep -q 'nothing to do' "$work/again.txt" || die "the second run did not say there is nothing to do"

if [[ ${SKIP_CONNECTIVITY:-0} != 1 ]]; then
  log "connectivity test"
  "$CILIUM" connectivity test
fi
log "OK: kube-proxy replaced by Cilium on every node"
