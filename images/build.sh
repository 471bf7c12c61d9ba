#!/usr/bin/env bash
# Build the sample "hello" image as a reproducible multi-arch OCI image layout,
# without Docker: static binaries for each platform, then outpost-image-build.
#
#   images/build.sh [OUT_DIR]     (default: target/images)
#
# Prints "<layout dir> <index digest>" on the last line of stdout. Idempotent:
# cargo rebuilds nothing when the sources did not change, and the builder
# produces the same digest from the same binaries.
#
# Platforms: linux/amd64 and linux/arm64 always (musl, linked with rust-lld);
# linux/arm/v7 when the armv7 musl target, or the armv7 gnueabihf target plus
# arm-linux-gnueabihf-gcc (Debian: gcc-arm-linux-gnueabihf), is available.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-$ROOT/target/images}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
TARGET_DIR=${HELLO_TARGET_DIR:-$ROOT/target/images-build}
HELLO=$ROOT/images/hello/Cargo.toml
# Same inputs, same binary: no absolute source paths in panic messages.
export RUSTFLAGS="--remap-path-prefix=$ROOT=/src --remap-path-prefix=$HOME=/home"

# Test processes run this concurrently (each wants the sample image): one at a
# time, so two rustup or cargo runs never race on the same toolchain or target
# dir. The second finds everything built and returns at once.
mkdir -p "$TARGET_DIR"
exec 9>"$TARGET_DIR/.build.lock"
flock 9

installed=$(rustup target list --installed 2>/dev/null || true)
has_target() { grep -qx "$1" <<<"$installed"; }

build() { # TARGET [extra env...]
    local target=$1
    shift
    env "$@" cargo build --quiet --release --locked --manifest-path "$HELLO" \
        --target "$target" --target-dir "$TARGET_DIR" >&2
}

binaries=()
for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
    has_target "$t" || rustup target add "$t" >&2
done
build x86_64-unknown-linux-musl
binaries+=(--binary "amd64=$TARGET_DIR/x86_64-unknown-linux-musl/release/hello")
build aarch64-unknown-linux-musl CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld
binaries+=(--binary "arm64=$TARGET_DIR/aarch64-unknown-linux-musl/release/hello")

if has_target armv7-unknown-linux-musleabihf; then
    build armv7-unknown-linux-musleabihf CARGO_TARGET_ARMV7_UNKNOWN_LINUX_MUSLEABIHF_LINKER=rust-lld
    binaries+=(--binary "arm/v7=$TARGET_DIR/armv7-unknown-linux-musleabihf/release/hello")
elif has_target armv7-unknown-linux-gnueabihf && command -v arm-linux-gnueabihf-gcc >/dev/null; then
    # No musl target for armv7 on this toolchain: a statically linked glibc build.
    build armv7-unknown-linux-gnueabihf \
        CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc \
        "RUSTFLAGS=$RUSTFLAGS -C target-feature=+crt-static"
    binaries+=(--binary "arm/v7=$TARGET_DIR/armv7-unknown-linux-gnueabihf/release/hello")
else
    echo "build.sh: no armv7 toolchain; building amd64 and arm64 only" >&2
fi

# The builder itself is a normal workspace binary (host build, debug is enough).
# Tests pass the copy cargo already built in OUTPOST_IMAGE_BUILD, which avoids
# waiting on the workspace's build lock.
unset RUSTFLAGS
BUILDER=${OUTPOST_IMAGE_BUILD:-}
if [ -z "$BUILDER" ]; then
    cargo build --quiet --manifest-path "$ROOT/Cargo.toml" -p outpost-oci --bin outpost-image-build >&2
    BUILDER=$ROOT/target/debug/outpost-image-build
fi
"$BUILDER" --out "$OUT/hello" --tag latest --path /hello \
    --dir /data --env DATA_DIR=/data --env PORT=8080 "${binaries[@]}"
