#!/usr/bin/env bash
# Install everything xenvlan needs on a fresh Debian/Ubuntu machine, as root. Idempotent.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

if [ "$(id -u)" != 0 ]; then
  echo "bootstrap: run as root (apt-get and libvirtd need it)" >&2
  exit 1
fi

apt_pkgs=(
  qemu-system-x86 libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev
  dnsmasq-base nftables iptables libxml2-utils pkg-config gcc python3-dev python3-venv
  busybox-static dropbear-bin iputils-ping cpio xz-utils zstd iproute2 kmod
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

python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
  -e "$here[test]"
echo "bootstrap: ok"
