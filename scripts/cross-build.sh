#!/usr/bin/env bash
# Cross-builds outpost-agent and outpost-hub for ARM without Docker, with rustup
# targets and Debian's cross compilers, then checks them under qemu-user:
# `--version` of both binaries and the protocol crate's tests.
#
#   scripts/cross-build.sh                 # aarch64 + armv7, release profile
#   TARGETS=aarch64-unknown-linux-gnu PROFILE=release scripts/cross-build.sh
#
# Binaries are linked fully static (glibc static + libseccomp.a), so the same file
# runs on Raspberry Pi OS, balenaOS (from a scratch image) and Debian alike.
# (cross.toml describes the equivalent cross-rs setup for machines with Docker.)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

TARGETS=${TARGETS:-"aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf"}
PROFILE=${PROFILE:-release}

setup_packages() {
  local need=()
  for arch in arm64 armhf; do
    dpkg --print-foreign-architectures | grep -qx "$arch" || { dpkg --add-architecture "$arch"; need+=(update); }
  done
  for p in gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross libc6-dev-armhf-cross \
           qemu-user-static libseccomp-dev:arm64 libseccomp-dev:armhf; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf \
      libc6-dev-arm64-cross libc6-dev-armhf-cross qemu-user-static libseccomp-dev:arm64 libseccomp-dev:armhf
  fi
}
setup_packages

profile_dir=$PROFILE
[ "$PROFILE" = dev ] && profile_dir=debug

for target in $TARGETS; do
  case "$target" in
    aarch64-unknown-linux-gnu) triple=aarch64-linux-gnu; qemu=qemu-aarch64-static ;;
    armv7-unknown-linux-gnueabihf) triple=arm-linux-gnueabihf; qemu=qemu-arm-static ;;
    *) echo "cross-build: unsupported target $target" >&2; exit 2 ;;
  esac
  rustup target list --installed | grep -qx "$target" || rustup target add "$target"
  up=$(echo "$target" | tr 'a-z-' 'A-Z_')
  export "CARGO_TARGET_${up}_LINKER=${triple}-gcc"
  export "CARGO_TARGET_${up}_RUNNER=${qemu} -L /usr/${triple}"
  export "CARGO_TARGET_${up}_RUSTFLAGS=-C target-feature=+crt-static"
  export "CC_${target//-/_}=${triple}-gcc" "AR_${target//-/_}=${triple}-ar"
  export LIBSECCOMP_LIB_PATH=/usr/lib/${triple} LIBSECCOMP_LINK_TYPE=static
  export PKG_CONFIG_ALLOW_CROSS=1 PKG_CONFIG_LIBDIR=/usr/lib/${triple}/pkgconfig

  echo "== $target: build ($PROFILE)"
  cargo build --profile "$PROFILE" --target "$target" -p outpost-hub -p outpost-edge-agent
  echo "== $target: qemu checks"
  for bin in outpost-agent outpost-hub; do
    "$qemu" -L "/usr/${triple}" "target/$target/$profile_dir/$bin" --version
  done
  cargo test --target "$target" -p outpost-protocol
  echo "== $target: sizes (stripped)"
  for bin in outpost-agent outpost-hub; do
    f="target/$target/$profile_dir/$bin"
    cp "$f" "$f.stripped" && "${triple}-strip" "$f.stripped"
    printf '%s %s %s bytes\n' "$target" "$bin" "$(stat -c %s "$f.stripped")"
  done
done
