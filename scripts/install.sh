#!/usr/bin/env bash
# Install everything the gateway, its tests and its demos need, idempotently:
#   Debian packages: smbclient, samba and samba-vfs-modules (smbd, the reference
#   server, with the streams_xattr/acl_xattr modules), ctdb (clustered Samba, the
#   cluster reference), samba-testsuite
#   (smbtorture), redis-server, iproute2; then a virtualenv in .venv with the
#   project and its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
DEB_PKGS=(smbclient samba samba-vfs-modules samba-testsuite ctdb redis-server iproute2)
missing=()
for p in "${DEB_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: need root to apt-get install ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "==> installing Python packages into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
echo "==> dependencies ready"
