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
. scripts/apt.sh

TARGETS=${TARGETS:-"aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf"}
PROFILE=${PROFILE:-release}
# QUICK=1 (the test suite): still an optimised release build, but thin LTO and
# parallel codegen, so the suite fits its time budget on 2 cores. The sizes in the
# README come from a full run without QUICK.
if [ "${QUICK:-0}" = 1 ]; then
  export CARGO_PROFILE_RELEASE_LTO=thin CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
fi

setup_packages() {
  local need=()
  for arch in arm64 armhf; do
    dpkg --print-foreign-architectures | grep -qx "$arch" || { dpkg --add-architecture "$arch"; need+=(update); }
  done
  for p in gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross libc6-dev-armhf-cross \
           qemu-user-static; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt_update
    apt_install gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf \
      libc6-dev-arm64-cross libc6-dev-armhf-cross qemu-user-static
  fi
}

# Static target libraries (libseccomp for libcontainer, libelf + zlib for libbpf's
# cgroup v2 device filter) are unpacked from Debian's packages into a private
# sysroot instead of being installed: multiarch installs of -dev packages break
# whenever the mirror's arm64 and amd64 versions differ.
target_libs() { # DEB_ARCH TRIPLE -> prints the library dir
  local arch=$1 triple=$2 root="$PWD/target/cross-sysroot/$1"
  if [ ! -f "$root/.complete" ]; then
    local dl
    dl=$(mktemp -d)
    local pkgs=("libseccomp-dev:$arch" "libseccomp2:$arch" "libelf-dev:$arch" "libelf1:$arch" "zlib1g-dev:$arch" "zlib1g:$arch")
    local try
    for try in 1 2 3 4; do
      (cd "$dl" && apt-get download -qq "${pkgs[@]}" >&2) && break
      [ "$try" = 4 ] && { echo "cross-build: could not download ${pkgs[*]}" >&2; exit 1; }
      # Lists may lack the architecture yet, or apt may be busy: refresh and retry.
      sleep 5; apt_update >&2
    done
    mkdir -p "$root"
    for deb in "$dl"/*.deb; do dpkg-deb -x "$deb" "$root"; done
    rm -rf "$dl"
    touch "$root/.complete"
  fi
  echo "$root/usr/lib/$triple"
}
setup_packages

profile_dir=$PROFILE
[ "$PROFILE" = dev ] && profile_dir=debug

for target in $TARGETS; do
  case "$target" in
    aarch64-unknown-linux-gnu) triple=aarch64-linux-gnu; qemu=qemu-aarch64-static; debarch=arm64 ;;
    armv7-unknown-linux-gnueabihf) triple=arm-linux-gnueabihf; qemu=qemu-arm-static; debarch=armhf ;;
    *) echo "cross-build: unsupported target $target" >&2; exit 2 ;;
  esac
  rustup target list --installed | grep -qx "$target" || rustup target add "$target"
  up=$(echo "$target" | tr 'a-z-' 'A-Z_')
  export "CARGO_TARGET_${up}_LINKER=${triple}-gcc"
  export "CARGO_TARGET_${up}_RUNNER=${qemu} -L /usr/${triple}"
  libdir=$(target_libs "$debarch" "$triple")
  export "CARGO_TARGET_${up}_RUSTFLAGS=-C target-feature=+crt-static -L native=$libdir"
  export "CC_${target//-/_}=${triple}-gcc" "AR_${target//-/_}=${triple}-ar"
  export LIBSECCOMP_LIB_PATH=$libdir LIBSECCOMP_LINK_TYPE=static
  export PKG_CONFIG_ALLOW_CROSS=1 PKG_CONFIG_LIBDIR=$libdir/pkgconfig PKG_CONFIG_SYSROOT_DIR=${libdir%/usr/lib/*}

  echo "== $target: build ($PROFILE)"
  cargo build --profile "$PROFILE" --target "$target" -p outpost-hub -p outpost-edge-agent
  echo "== $target: qemu checks"
  for bin in outpost-agent outpost-hub; do
    "$qemu" -L "/usr/${triple}" "target/$target/$profile_dir/$bin" --version
  done
  cargo test --target "$target" -p outpost-protocol --lib --tests
  echo "== $target: sizes (stripped)"
  for bin in outpost-agent outpost-hub; do
    f="target/$target/$profile_dir/$bin"
    cp "$f" "$f.stripped" && "${triple}-strip" "$f.stripped"
    printf '%s %s %s bytes\n' "$target" "$bin" "$(stat -c %s "$f.stripped")"
  done
done
