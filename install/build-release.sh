#!/usr/bin/env bash
# Builds the release binary as a static executable (glibc, +crt-static) and checks it.
set -euo pipefail
cd "$(dirname "$0")/.."
target="$(rustc -vV | sed -n 's/^host: //p')"
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked --target "$target"
bin="${CARGO_TARGET_DIR:-target}/$target/release/cilium"
if ldd "$bin" 2>&1 | grep -qE 'statically linked|not a dynamic executable'; then
  echo "static binary: $bin ($(stat -c %s "$bin") bytes)"
else
  echo "error: $bin is not static:" >&2; ldd "$bin" >&2; exit 1
fi
