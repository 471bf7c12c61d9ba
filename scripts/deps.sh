#!/usr/bin/env bash
# Installs what building and testing Outpost needs on Debian/Ubuntu (run as root).
# Idempotent: only missing packages are installed, so repeated runs are fast.
set -euo pipefail

PACKAGES=(
  build-essential pkg-config git curl ca-certificates
  libseccomp-dev          # libcontainer's seccomp support (the agent fails closed without it)
  libelf-dev zlib1g-dev   # libbpf (cgroup v2 device filters in libcontainer)
  runc                    # reference runtime for the start-latency benchmark
  busybox-static          # tiny rootfs for runtime tests
  mosquitto               # external-broker tests
  mosquitto-clients       # mosquitto_sub/_pub: e2e replay of a captured status
  docker-registry         # real OCI registry for pull/resolve tests
  skopeo                  # pushes OCI layouts into the test registry
  iproute2 procps psmisc util-linux
  openssl                 # tests make their own CA, certificates and token keys
  chromium                # headless browser of the dashboard test (hub/tests/dashboard.rs)
)
if [ "${OUTPOST_CROSS:-0}" = 1 ]; then
  # ARM cross compilers: the sample image for arm64/armv7, and the ARM builds of the suite.
  PACKAGES+=(gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross libc6-dev-armhf-cross qemu-user-static)
fi

if [ "$(id -u)" != 0 ]; then
  echo "scripts/deps.sh: run as root (it installs packages, and the tests run real containers)" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  . "$(dirname "${BASH_SOURCE[0]}")/apt.sh"
  apt_update
  # Do not let package post-install scripts start services on the host.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt_install "${missing[@]}"
  rm -f /usr/sbin/policy-rc.d
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "installing the Rust toolchain with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component clippy,rustfmt
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
rustup component add clippy rustfmt >/dev/null 2>&1 || true
if [ "${OUTPOST_CROSS:-0}" = 1 ]; then
  installed_targets=$(rustup target list --installed)
  for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf; do
    grep -qx "$t" <<<"$installed_targets" || rustup target add "$t"
  done
fi
