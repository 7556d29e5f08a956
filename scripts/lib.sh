# Shared shell helpers for scripts/ and packaging/: step timing, errors, the Debian mirror.
# shellcheck shell=bash

die() { echo "mofang: ERROR: $*" >&2; exit 1; }

_step_ns=0
step() { _step_ns=$(date +%s%N); printf '==> %s\n' "$*"; }
done_step() {
  local ms=$(( ($(date +%s%N) - _step_ns) / 1000000 ))
  printf '    done in %d.%01ds\n' $((ms / 1000)) $(((ms % 1000) / 100))
}

# The Debian archive URI this machine already uses, read from its apt sources.
# The project never writes a mirror host name of its own.
debian_mirror() {
  local uri=""
  if ls /etc/apt/sources.list.d/*.sources >/dev/null 2>&1; then
    uri=$(awk '/^URIs:/ {print $2}' /etc/apt/sources.list.d/*.sources 2>/dev/null \
      | grep -E '/debian/?$' | head -1 || true)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1=="deb" && $3=="bookworm" {print $2}' /etc/apt/sources.list | head -1 || true)
  fi
  [ -n "$uri" ] || die "could not find the Debian archive URI in /etc/apt/sources.list{,.d}"
  echo "$uri"
}
