#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script).
# Run as root on Debian/Ubuntu: tests start real containers, a real registry and brokers.
set -euo pipefail
cd "$(dirname "$0")/.."
OUTPOST_CROSS=1 source scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== build"
cargo build --workspace --all-targets
echo "== tests"
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo test --workspace --doc
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi

# ARM: release builds of both binaries for aarch64 and armv7, then `--version` and
# the protocol tests under qemu-user, so an ARM-only breakage fails the suite.
# (Local shortcut: OUTPOST_SKIP_CROSS=1.)
if [ "${OUTPOST_SKIP_CROSS:-0}" != 1 ]; then
  echo "== cross builds (aarch64, armv7) + qemu-user checks"
  QUICK=1 scripts/cross-build.sh
fi
