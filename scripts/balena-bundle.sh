#!/usr/bin/env bash
# Builds the static agent for balena's architectures and puts the binaries where
# deploy/balena/Dockerfile.template expects them.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGETS="aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf" scripts/cross-build.sh
cp target/aarch64-unknown-linux-gnu/release/outpost-agent.stripped deploy/balena/bin/outpost-agent-aarch64
cp target/armv7-unknown-linux-gnueabihf/release/outpost-agent.stripped deploy/balena/bin/outpost-agent-armv7hf
RUSTFLAGS="-C target-feature=+crt-static" LIBSECCOMP_LINK_TYPE=static \
  cargo build --release --target x86_64-unknown-linux-gnu -p outpost-edge-agent
strip -o deploy/balena/bin/outpost-agent-amd64 target/x86_64-unknown-linux-gnu/release/outpost-agent
ls -l deploy/balena/bin
