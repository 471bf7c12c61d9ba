#!/bin/sh
# First boot: generate the device key on the device and write the agent config
# from balena device/fleet variables; afterwards just run the agent.
set -eu
conf="${OUTPOST_AGENT_CONFIG:-/data/outpost/agent.toml}"
data=/data/outpost

if [ ! -f "$conf" ]; then
  : "${OUTPOST_BROKER:?set the fleet variable OUTPOST_BROKER, e.g. mqtts://hub.example.com:8883}"
  : "${OUTPOST_ROOT_KEY:?set the fleet variable OUTPOST_ROOT_KEY (contents of the hub root.pub)}"
  : "${OUTPOST_KEYSET_B64:?set the fleet variable OUTPOST_KEYSET_B64 (base64 of the hub keyset.bin)}"
  mkdir -p "$data"
  echo "$OUTPOST_KEYSET_B64" | base64 -d > "$data/keyset.bin.initial"
  set -- --device-id "${OUTPOST_DEVICE_ID:-$BALENA_DEVICE_UUID}" --broker "$OUTPOST_BROKER" \
    --root-key "$OUTPOST_ROOT_KEY" --keyset "$data/keyset.bin.initial" \
    --data-dir "$data" --run-dir /run/outpost-agent
  for r in ${OUTPOST_INSECURE_REGISTRIES:-}; do set -- "$@" --registry-insecure "$r"; done
  # Prints the device id and public key: register them on the hub with
  #   outpost-hub device add ID --public-key HEX --label ...
  outpost-agent --config "$conf" init "$@"
fi

exec outpost-agent --config "$conf" run
