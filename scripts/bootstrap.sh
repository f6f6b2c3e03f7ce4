#!/usr/bin/env bash
# Install everything xenvlan needs on a fresh Debian 12 machine, as root. Idempotent and cheap
# to re-run: Debian packages (apt), then xenvlan with its test extras into a virtual environment
# (Debian's own python3 refuses system-wide pip installs, PEP 668), linked onto root's PATH.
#   venv:  ${XENVLAN_VENV:-/opt/xenvlan/venv}        command: /usr/local/bin/xenvlan
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${XENVLAN_VENV:-/opt/xenvlan/venv}
link=${XENVLAN_LINK:-/usr/local/bin/xenvlan}

if [ "$(id -u)" != 0 ]; then
  echo "bootstrap: run as root (apt-get and libvirtd need it)" >&2
  exit 1
fi

apt_pkgs=(
  qemu-system-x86 libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev
  dnsmasq-base nftables iptables libxml2-utils pkg-config gcc python3-dev python3-venv
  busybox-static dropbear-bin iputils-ping cpio xz-utils zstd iproute2 kmod util-linux
  mmdebstrap e2fsprogs   # the nested Xen Dom0 image (sandbox start --hypervisor xen)
)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# libvirtd's QEMU driver refuses to start unless these exist (libvirt-daemon-system would make them).
getent group kvm >/dev/null || groupadd --system kvm
getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
getent passwd libvirt-qemu >/dev/null || \
  useradd --system --no-create-home --home-dir /var/lib/libvirt --shell /usr/sbin/nologin \
    --gid libvirt-qemu --groups kvm libvirt-qemu
# QEMU runs as root so it can read the guest kernel from xenvlan's cache (only when unconfigured).
if [ ! -e /etc/libvirt/qemu.conf ]; then
  mkdir -p /etc/libvirt
  printf '# written by xenvlan scripts/bootstrap.sh\nuser = "root"\ngroup = "root"\n' \
    > /etc/libvirt/qemu.conf
fi

# The interpreter: the first python3 on PATH when it is 3.11+ and can make a venv, else Debian's.
pick_python() {
  local py
  for py in "$(command -v python3 || true)" /usr/bin/python3; do
    [ -n "$py" ] && [ -x "$py" ] || continue
    "$py" -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
      && { echo "$py"; return 0; }
  done
  echo "bootstrap: no python3 >= 3.11 with venv support (apt-get install python3-venv)" >&2
  return 1
}
python=$(pick_python)
# Reinstall only when the interpreter, the checkout or its dependencies changed.
stamp="$python $("$python" -c 'import sys; print(sys.version)' | head -1) $here $(sha256sum "$here/pyproject.toml" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.xenvlan-stamp" 2>/dev/null)" != "$stamp" ] \
   || ! "$venv/bin/python" -c 'import xenvlan.cli' 2>/dev/null; then
  echo "bootstrap: python venv $venv (from $python) with xenvlan[test]"
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$here[test]"
  printf '%s' "$stamp" > "$venv/.xenvlan-stamp"
fi
if [ "$(readlink "$link" 2>/dev/null)" != "$venv/bin/xenvlan" ]; then
  mkdir -p "$(dirname "$link")"
  ln -sfn "$venv/bin/xenvlan" "$link"
fi
echo "bootstrap: ok ($link -> $venv/bin/xenvlan)"
