#!/usr/bin/env bash
# Usage: devtools/apt_install.sh PACKAGE...
# Installs the Debian packages that are not installed yet, and only those.
# - Nothing missing: prints nothing, exits 0.
# - Not root: prints the exact apt-get command to run and exits 1 (never asks for a password).
# - Root: waits, saying so, while another apt/dpkg holds its lock (up to KLAG_APT_WAIT seconds,
#   default 600), then apt-get update + install, non-interactive.
set -euo pipefail
missing=()
for package in "$@"; do
  status=$(dpkg-query -W -f='${Status}' "${package}" 2>/dev/null || true)
  [ "${status}" = "install ok installed" ] || missing+=("${package}")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${missing[*]}" >&2
  echo "install them as root, then run make again:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi

locks=(/var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock)
held() {
  # fuser (psmisc) when present; else /proc/locks, which lists the inode of every locked file.
  local lock
  for lock in "${locks[@]}"; do
    [ -e "${lock}" ] || continue
    if command -v fuser >/dev/null; then
      fuser "${lock}" >/dev/null 2>&1 && return 0
    else
      local inode
      inode=$(stat -c %i "${lock}")
      grep -q ":${inode} " /proc/locks 2>/dev/null && return 0
    fi
  done
  return 1
}
wait_limit=${KLAG_APT_WAIT:-600}
waited=0
while held; do
  if [ $((waited % 10)) -eq 0 ]; then
    echo "waiting for another apt/dpkg to finish (holds its lock; ${waited} s of ${wait_limit} s)…"
  fi
  if [ "${waited}" -ge "${wait_limit}" ]; then
    echo "another apt/dpkg still holds its lock after ${wait_limit} s; try again later" >&2
    exit 1
  fi
  sleep 1
  waited=$((waited + 1))
done

echo "installing Debian packages: ${missing[*]}"
# The lock timeout covers a second apt starting between the wait above and these commands.
apt_get=(apt-get -o DPkg::Lock::Timeout="${wait_limit}" -o Acquire::Retries=3)
"${apt_get[@]}" update -qq
DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -qq "${missing[@]}"
