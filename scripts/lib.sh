# Shared shell helpers for scripts/ and packaging/: step timing, errors, the Debian mirror.
# shellcheck shell=bash

die() { echo "mofang: ERROR: $*" >&2; exit 1; }

_step_ns=0
step() { _step_ns=$(date +%s%N); printf '==> %s\n' "$*"; }
done_step() {
  local ms=$(( ($(date +%s%N) - _step_ns) / 1000000 ))
  printf '    done in %d.%01ds\n' $((ms / 1000)) $(((ms % 1000) / 100))
}

# Runs a command and prints how long it took: `timed "docker import" docker import …`.
timed() {
  local label=$1 t0 ms
  shift
  t0=$(date +%s%N)
  "$@"
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  printf '    %s: %d.%01ds\n' "$label" $((ms / 1000)) $(((ms % 1000) / 100))
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

# Where the images go and what they are built from. MOFANG_IMAGE_PREFIX builds the same
# images under another name (e.g. mofangdev/mariadb:10.11) without touching mofang/…; the
# base cache and the work directory follow the prefix, so two prefixes never share a build.
IMAGE_PREFIX=${MOFANG_IMAGE_PREFIX:-mofang}
[[ "$IMAGE_PREFIX" =~ ^[a-z0-9][a-z0-9._-]*$ ]] || die "MOFANG_IMAGE_PREFIX '$IMAGE_PREFIX' is not a lowercase image name"
# Cached Debian base root filesystems, one tarball per suite (packaging/images/rootfs.sh).
# shellcheck disable=SC2034 # used by the scripts that source this file
IMAGE_CACHE=${MOFANG_IMAGE_CACHE:-/var/cache/$IMAGE_PREFIX/rootfs}
# Root filesystems being built and the build logs.
# shellcheck disable=SC2034 # used by the scripts that source this file
IMAGE_WORK=${MOFANG_IMAGE_WORK:-/var/tmp/$IMAGE_PREFIX-images}

# Parallel steps. `par_start NAME CMD...` runs CMD in the background, its output going to a
# log of its own; `par_wait` waits for every started step and prints each one's output in one
# block as it ends, so parallel output never interleaves. A step that fails is named, with its
# output, as soon as it ends; par_wait lets the others end, then fails naming every failed step
# and the path of its log. Interrupting the script stops every step.
declare -A _par_name=() _par_log=()
_par_dir=""
_par_ns=0
par_start() {
  local name=$1 log
  shift
  if [ -z "$_par_dir" ]; then
    _par_dir=$(mktemp -d "${TMPDIR:-/tmp}/mofang-steps.XXXXXX")
    # Each step in its own process group, so an interrupt can stop a step's children too.
    set -m
    trap '_par_stop; exit 130' INT TERM
  fi
  [ ${#_par_name[@]} -gt 0 ] || _par_ns=$(date +%s%N)
  log="$_par_dir/$(printf '%s' "$name" | tr -c 'A-Za-z0-9._-' '_').log"
  ("$@") </dev/null >"$log" 2>&1 &
  _par_name[$!]=$name
  _par_log[$!]=$log
  printf '==> %s: started (in parallel, output when done)\n' "$name"
}
_par_stop() {
  local pid
  for pid in "${!_par_name[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
}
par_wait() {
  local pid rc failed=() n=${#_par_name[@]} longest="" longest_ms=0 ms
  [ "$n" -gt 0 ] || return 0
  while [ ${#_par_name[@]} -gt 0 ]; do
    rc=0
    pid=""
    wait -n -p pid "${!_par_name[@]}" || rc=$?
    [ -n "$pid" ] || break
    ms=$(( ($(date +%s%N) - _par_ns) / 1000000 ))
    cat "${_par_log[$pid]}"
    if [ "$rc" -ne 0 ]; then
      printf 'mofang: ERROR: step "%s" failed (exit %d) after %d.%01ds; log: %s\n' \
        "${_par_name[$pid]}" "$rc" $((ms / 1000)) $(((ms % 1000) / 100)) "${_par_log[$pid]}" >&2
      failed+=("${_par_name[$pid]} (log: ${_par_log[$pid]})")
      [ ${#_par_name[@]} -gt 1 ] && echo "    waiting for the $(( ${#_par_name[@]} - 1 )) other step(s) to end" >&2
    fi
    longest=${_par_name[$pid]}
    longest_ms=$ms
    unset "_par_name[$pid]" "_par_log[$pid]"
  done
  printf '==> %d parallel step(s) done in %d.%01ds (last to end: %s)\n' \
    "$n" $((longest_ms / 1000)) $(((longest_ms % 1000) / 100)) "$longest"
  if [ ${#failed[@]} -gt 0 ]; then
    local f
    for f in "${failed[@]}"; do echo "mofang: ERROR: failed: $f" >&2; done
    exit 1
  fi
  rm -rf "$_par_dir"
  _par_dir=""
  set +m
  trap - INT TERM
}
