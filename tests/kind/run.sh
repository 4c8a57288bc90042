#!/usr/bin/env bash
# End to end on a real cluster: kind (no CNI, no kube-proxy) -> static binary and its
# image -> cilium install -> status --wait -> connectivity test -> upgrade (one node at a time) -> uninstall
# (the nodes' CNI files removed). The cluster is deleted on exit, failed or not
# (KEEP=1 keeps it). Needs docker, kind, kubectl and the Rust toolchain; not run in CI.
#
#   tests/kind/run.sh                  # CLUSTER=cilium-rs-e2e TAG=kind-e2e KEEP=0
set -euo pipefail
# shellcheck source=tests/kind/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need docker "kind runs its nodes as containers"
need kind "https://kind.sigs.k8s.io"
need kubectl "to look at the cluster"
need cargo "to build the binary"
docker info >/dev/null 2>&1 || die "docker is not running (or this user may not use it)"

WORK=$(mktemp -d)
KUBECONFIG_FILE="$WORK/kubeconfig"
cleanup() {
  local rc=$?
  if [ "${KEEP:-0}" = 1 ]; then
    echo "KEEP=1: keeping cluster $CLUSTER (kubeconfig $KUBECONFIG_FILE); delete it with: kind delete cluster --name $CLUSTER"
  else
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT

log "building the static binary"
"$ROOT/install/build-release.sh"
BIN=$(cilium_bin)
[ -x "$BIN" ] || die "no binary at $BIN after the build"
K=(--kubeconfig "$KUBECONFIG_FILE")

log "creating kind cluster $CLUSTER (disableDefaultCNI, kubeProxyMode none)"
kind create cluster --name "$CLUSTER" --config "$ROOT/tests/kind/kind-config.yaml" \
  --kubeconfig "$KUBECONFIG_FILE" --wait 0s

log "building and loading the image localhost/cilium:$TAG"
"$BIN" image build -o "$WORK/cilium.tar" --tag "localhost/cilium:$TAG"
kind load image-archive "$WORK/cilium.tar" --name "$CLUSTER"

log "cilium install"
# Without kube-proxy the agents reach the API server directly: the control plane's
# container name resolves on kind's docker network.
"$BIN" install "${K[@]}" \
  --set "k8sServiceHost=$CLUSTER-control-plane" --set k8sServicePort=6443 \
  --version "$TAG" --set image.pullPolicy=Never --set operator.image.pullPolicy=Never \
  --wait-duration 5m

log "cilium status --wait"
"$BIN" status "${K[@]}" --wait --wait-duration 5m

log "cilium connectivity test"
# The test pods run the agent's image (cilium echo-server, cilium pause, cilium probe);
# actions from outside the cluster are skipped; the world tests need the nodes to reach
# 1.1.1.1 and 1.0.0.1 (EXTERNAL_IP / EXTERNAL_OTHER_IP to change them).
"$BIN" connectivity test "${K[@]}" --junit-file "$WORK/connectivity.xml" \
  --external-ip "${EXTERNAL_IP:-1.1.1.1}" --external-other-ip "${EXTERNAL_OTHER_IP:-1.0.0.1}"
kubectl "${K[@]}" get namespace cilium-test-1 >/dev/null 2>&1 &&
  die "namespace cilium-test-1 is still there after the connectivity test"

log "cilium upgrade (a config change: every agent rolls, one node at a time)"
"$BIN" upgrade "${K[@]}" --set debug.enabled=true --wait-duration 5m
kubectl "${K[@]}" -n kube-system get configmap cilium-config -o jsonpath='{.data.debug}' |
  grep -qx true || die "cilium-config does not hold debug=true after the upgrade"

log "the CNI configuration is on every node"
nodes=$(kind get nodes --name "$CLUSTER")
for n in $nodes; do
  docker exec "$n" test -f /etc/cni/net.d/05-cilium.conflist ||
    die "node $n has no /etc/cni/net.d/05-cilium.conflist"
done

log "cilium uninstall"
"$BIN" uninstall "${K[@]}" --wait --wait-duration 5m

log "the CNI configuration is gone from every node (the agents' preStop hook)"
for n in $nodes; do
  if docker exec "$n" test -e /etc/cni/net.d/05-cilium.conflist; then
    die "node $n still has /etc/cni/net.d/05-cilium.conflist after cilium uninstall"
  fi
  if docker exec "$n" test -e /opt/cni/bin/cilium-cni; then
    die "node $n still has /opt/cni/bin/cilium-cni after cilium uninstall"
  fi
done

log "all checks passed"
