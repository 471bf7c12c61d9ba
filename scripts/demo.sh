#!/usr/bin/env bash
# The Outpost demo, as root on a fresh Debian/Ubuntu machine:
#   a hub with its embedded MQTT broker, a local OCI registry holding the sample
#   image (built from images/ without Docker), and one edge agent on this machine.
# It registers the device, applies a deployment, shows the app going from pending
# to running, then waits: Ctrl-C stops everything and removes what it created.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"

APP_PORT=${APP_PORT:-8080}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }

echo "==> building outpost-hub and outpost-agent"
cargo build --quiet -p outpost-hub -p outpost-edge-agent
HUB=$ROOT/target/debug/outpost-hub
AGENT=$ROOT/target/debug/outpost-agent
echo "==> building the sample image (images/build.sh: static binaries → OCI layout, no Docker)"
layout_line=$(images/build.sh | tail -n 1)
LAYOUT=${layout_line%% *}

WORK=$(mktemp -d /tmp/outpost-demo.XXXXXX)
PIDS=()
cleanup() {
  trap - INT TERM EXIT
  echo
  echo "==> cleaning up"
  [ -n "${AGENT_PID:-}" ] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null || true
  # The agent leaves apps running on purpose (offline autonomy); decommission them.
  [ -f "$WORK/agent/agent.toml" ] && "$AGENT" --config "$WORK/agent/agent.toml" stop-all || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
  echo "done"
}
trap cleanup INT TERM EXIT

REG_PORT=$(free_port); HTTP_PORT=$(free_port); MQTT_PORT=$(free_port)
echo "==> starting a local OCI registry on 127.0.0.1:$REG_PORT"
mkdir -p "$WORK/registry"
cat > "$WORK/registry/config.yml" <<YML
version: 0.1
log: { level: error }
storage: { filesystem: { rootdirectory: $WORK/registry/data } }
http: { addr: 127.0.0.1:$REG_PORT }
YML
docker-registry serve "$WORK/registry/config.yml" >"$WORK/registry.log" 2>&1 & PIDS+=($!)
wait_port "$REG_PORT"
skopeo copy --all --quiet --dest-tls-verify=false "oci:$LAYOUT:latest" "docker://127.0.0.1:$REG_PORT/outpost/hello:v1"

echo "==> outpost-hub init + serve (embedded broker on 127.0.0.1:$MQTT_PORT, API on https://127.0.0.1:$HTTP_PORT)"
H=("$HUB" --data-dir "$WORK/hub")
"${H[@]}" init --http-listen "127.0.0.1:$HTTP_PORT" --mqtt-listen "127.0.0.1:$MQTT_PORT" >/dev/null
sed -i "s/^insecure = \[.*\]/insecure = [\"127.0.0.1:$REG_PORT\"]/" "$WORK/hub/hub.toml"
grep -q "127.0.0.1:$REG_PORT" "$WORK/hub/hub.toml" || printf '\n[registry]\ninsecure = ["127.0.0.1:%s"]\n' "$REG_PORT" >> "$WORK/hub/hub.toml"
RUST_LOG=${RUST_LOG:-warn} "${H[@]}" serve >"$WORK/hub.log" 2>&1 & PIDS+=($!)
wait_port "$HTTP_PORT"; wait_port "$MQTT_PORT"

echo "==> outpost-agent init (the device key is generated here and never leaves the device)"
mkdir -p "$WORK/agent"
init_out=$("$AGENT" --config "$WORK/agent/agent.toml" init --device-id demo-pi \
  --broker "mqtt://127.0.0.1:$MQTT_PORT" --root-key "$WORK/hub/root.pub" --keyset "$WORK/hub/keyset.bin" \
  --data-dir "$WORK/agent/data" --run-dir "$WORK/agent/run" --registry-insecure "127.0.0.1:$REG_PORT")
echo "$init_out" | sed 's/^/    /'
PUBKEY=$(echo "$init_out" | sed -n 's/^public-key: //p')
ENCKEY=$(echo "$init_out" | sed -n 's/^encryption-key: //p')
"${H[@]}" device add demo-pi --public-key "$PUBKEY" --encryption-key "$ENCKEY" --label site=demo >/dev/null
RUST_LOG=${RUST_LOG:-warn} "$AGENT" --config "$WORK/agent/agent.toml" run >"$WORK/agent.log" 2>&1 & AGENT_PID=$!

cat > "$WORK/demo.toml" <<TOML
name = "demo"
selector = { site = "demo" }

[[apps]]
name = "hello"
image = "127.0.0.1:$REG_PORT/outpost/hello:v1"
env = { PORT = "$APP_PORT", HELLO_VERSION = "demo-1" }
volumes = [{ name = "data", path = "/data" }]
memory_bytes = 67108864
health = { http_path = "/health", port = $APP_PORT, interval_secs = 2, timeout_secs = 2, retries = 2 }
TOML
echo "==> outpost-hub apply -f demo.toml  (tag v1 is resolved to its sha256 digest now)"
"${H[@]}" apply -f "$WORK/demo.toml"

echo "==> waiting for the app (outpost-hub devices):"
for i in $(seq 1 120); do
  view=$("${H[@]}" devices 2>/dev/null || true)
  if curl -fsS "http://127.0.0.1:$APP_PORT/" >/dev/null 2>&1 && echo "$view" | grep -q " 1/1 "; then
    echo "$view"; break
  fi
  [ $((i % 5)) = 1 ] && echo "$view" | tail -n +2 | sed 's/^/    /'
  sleep 1
done
curl -fsS "http://127.0.0.1:$APP_PORT/" || { echo "the app did not come up; logs: $WORK/agent.log $WORK/hub.log" >&2; exit 1; }

cat <<TXT

The app runs in a container created by outpost-agent through libcontainer.
Look at it from another shell:
    ${H[*]} devices
    ${H[*]} status demo-pi
    ${H[*]} events demo-pi
    ${H[*]} token list      # the API's tokens (TLS, certificate $WORK/hub/api.crt pinned)
    $AGENT --config $WORK/agent/agent.toml status
    curl http://127.0.0.1:$APP_PORT/        curl http://127.0.0.1:$APP_PORT/count
Logs: $WORK/hub.log  $WORK/agent.log
Press Ctrl-C to stop and clean up.
TXT
while kill -0 "$AGENT_PID" 2>/dev/null; do sleep 1; done
echo "the agent exited; see $WORK/agent.log"
