#!/usr/bin/env bash
# Installs what building and testing cilium needs on a fresh Debian 12 machine (run as root).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(
  clang llvm libbpf-dev linux-libc-dev bpftool   # eBPF objects: clang -target bpf + bpf_helpers.h
  iproute2 iptables iputils-ping procps           # links, routes, namespaces, ping in tests
  podman runc containernetworking-plugins         # real CNI client in tests
  busybox-static                                  # container rootfs for podman --rootfs
  iperf3 socat ncat curl                          # traffic peers for tests and benchmarks
  tcpdump                                         # tests read VXLAN headers off the underlay
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# bpffs is not mounted at boot on some machines; the agent mounts it too, this is for tools.
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust stable (https://rustup.rs) and re-run" >&2
  exit 1
fi
echo "deps: ok"
