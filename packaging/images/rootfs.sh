# The root filesystems the images are made of: one cached Debian base per suite, and each
# image's root unpacked from it with the image's own packages added by apt in a chroot.
# Sourced by packaging/images/build and packaging/install-test/build (after scripts/lib.sh).
#
# Before, each image ran its own `debootstrap`: the same ~90 packages of a minimal Debian
# downloaded, unpacked and configured once per image. Now the first image of a suite makes
# the base (`debootstrap --variant=minbase` + BASE_PACKAGES) and keeps it as a tarball in
# $IMAGE_CACHE named by suite and the hash of its recipe; every image of that suite starts
# from it. Concurrent builds wait on a lock, so the base is made once even when images are
# built in parallel. A base older than MOFANG_BASE_MAX_AGE_DAYS (default 30) is remade, so
# images do not keep package versions the archive has dropped; `rm -rf $IMAGE_CACHE` remakes
# it at once.
# shellcheck shell=bash

# Packages every image of the project has besides minbase (the database images and the
# clean Debian 12 host of the install test).
BASE_PACKAGES="procps,ca-certificates"

# Path of the base tarball of a suite: named by the hash of what makes it (the package list
# and ensure_base), so a change to how images are made from it does not remake it.
base_tarball() {
  local hash
  hash=$({ echo "$BASE_PACKAGES"; declare -f ensure_base; } | sha256sum | cut -c1-16)
  echo "$IMAGE_CACHE/$1-$hash.tar"
}

# Makes the base tarball of a suite unless a fresh one is cached. Prints a step.
ensure_base() {
  local suite=$1 tarball lock rootfs log mirror age_days=${MOFANG_BASE_MAX_AGE_DAYS:-30}
  tarball=$(base_tarball "$suite")
  lock="$IMAGE_CACHE/$suite.lock"
  mkdir -p "$IMAGE_CACHE" "$IMAGE_WORK"
  step "Debian base root filesystem $suite (minbase + ${BASE_PACKAGES//,/ })"
  exec 8>"$lock"
  if ! flock -n 8; then
    echo "    another build is making it, waiting"
    flock 8
  fi
  if [ -f "$tarball" ] && [ -z "$(find "$tarball" -mtime "+$age_days")" ]; then
    echo "    cached: $tarball ($(du -h "$tarball" | cut -f1))"
    exec 8>&-
    done_step
    return 0
  fi
  command -v debootstrap >/dev/null || die "debootstrap not installed: run scripts/setup"
  mirror=$(debian_mirror)
  rootfs="$IMAGE_WORK/base-$suite"
  log="$IMAGE_WORK/base-$suite.debootstrap.log"
  safe_rm_rootfs "$rootfs"
  mkdir -p "$rootfs"
  echo "    debootstrap --variant=minbase $suite from $mirror (log: $log)"
  debootstrap --variant=minbase --include="$BASE_PACKAGES" "$suite" "$rootfs" "$mirror" >"$log" 2>&1 \
    || { tail -30 "$log" >&2; die "debootstrap of the $suite base failed (log: $log)"; }
  # Apt lists are fetched again by each image (the archive moves on); docs never ship.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
  # Written under another name and renamed: a crash never leaves a half tarball behind.
  tar -C "$rootfs" --numeric-owner --xattrs --xattrs-include='*' -cf "$tarball.part" . \
    || die "could not write $tarball"
  mv "$tarball.part" "$tarball"
  # Older bases of this suite (another recipe) are of no further use.
  find "$IMAGE_CACHE" -maxdepth 1 -name "$suite-*.tar" ! -path "$tarball" -delete
  safe_rm_rootfs "$rootfs"
  echo "    cached: $tarball ($(du -h "$tarball" | cut -f1))"
  exec 8>&-
  done_step
}

# Unpacks the base of a suite into ROOTFS and installs PACKAGES (space separated) with apt
# inside it, from the archive this machine uses. Services are not started (policy-rc.d).
rootfs_from_base() {
  local suite=$1 rootfs=$2 packages=$3 log=$4 mirror
  mirror=$(debian_mirror)
  safe_rm_rootfs "$rootfs"
  mkdir -p "$rootfs"
  tar -C "$rootfs" --numeric-owner --xattrs --xattrs-include='*' -xpf "$(base_tarball "$suite")" \
    || die "could not unpack the $suite base into $rootfs"
  printf 'deb %s %s main\n' "$mirror" "$suite" >"$rootfs/etc/apt/sources.list"
  cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
  printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
  chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
  # For this build only: no fsync per file (a failed build is thrown away anyway), and no
  # docs unpacked that the image would delete.
  printf '%s\n' force-unsafe-io 'path-exclude=/usr/share/doc/*' 'path-exclude=/usr/share/man/*' \
    'path-exclude=/usr/share/info/*' >"$rootfs/etc/dpkg/dpkg.cfg.d/mofang-build"
  # Package scripts read /proc (debootstrap mounts it for the same reason).
  mount -t proc proc "$rootfs/proc" || die "could not mount /proc in $rootfs"
  local rc=0
  # shellcheck disable=SC2086 # $packages is a list of package names
  {
    in_chroot "$rootfs" apt-get update -o Acquire::Languages=none \
      && in_chroot "$rootfs" apt-get install -y --no-install-recommends $packages \
      && in_chroot "$rootfs" apt-get clean
  } >"$log" 2>&1 || rc=$?
  umount "$rootfs/proc" || die "could not unmount $rootfs/proc"
  rm -f "$rootfs/usr/sbin/policy-rc.d" "$rootfs/etc/dpkg/dpkg.cfg.d/mofang-build"
  [ "$rc" -eq 0 ] || { tail -30 "$log" >&2; die "apt-get install in $rootfs failed (log: $log)"; }
}

in_chroot() {
  local rootfs=$1
  shift
  LC_ALL=C DEBIAN_FRONTEND=noninteractive chroot "$rootfs" "$@"
}

# rm -rf of a root filesystem, refusing while anything is mounted below it (a /proc left
# mounted by a killed build must not be walked into).
safe_rm_rootfs() {
  local rootfs=$1
  [ -e "$rootfs" ] || return 0
  if awk -v r="$rootfs/" 'index($2, r) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
    umount "$rootfs/proc" 2>/dev/null || true
    awk -v r="$rootfs/" 'index($2, r) == 1 { found = 1 } END { exit !found }' /proc/mounts \
      && die "something is still mounted under $rootfs: unmount it, then run again"
  fi
  rm -rf "$rootfs"
}
