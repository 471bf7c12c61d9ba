# Sourced by scripts/deps.sh and scripts/cross-build.sh: apt with retries.
#
# Debian mirrors are sometimes caught mid-sync ("File has unexpected size ...
# Mirror sync in progress?"); `apt-get update` then exits 100 although the
# indexes we need are usually fine or fixed a minute later. Retry with a pause,
# and if the update still reports errors, go on: the install that follows
# fails clearly if a package really is unavailable.
apt_update() {
  local try
  for try in 1 2 3 4; do
    apt-get update -qq && return 0
    echo "apt-get update failed (attempt $try of 4); retrying in $((try * 10)) s" >&2
    sleep $((try * 10))
  done
  echo "apt-get update still reports errors; continuing with the indexes we have" >&2
}

apt_install() { # PACKAGE...
  local try
  for try in 1 2 3; do
    apt-get install -y -qq --no-install-recommends "$@" && return 0
    echo "apt-get install failed (attempt $try of 3); refreshing indexes" >&2
    sleep $((try * 10))
    apt_update
  done
  apt-get install -y -qq --no-install-recommends "$@"
}
