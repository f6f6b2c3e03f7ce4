#!/usr/bin/env bash
# The demo: on a bare machine, a private libvirtd in a namespace, the seed lab, the VLAN ping,
# and everything removed again. On a real hypervisor host it uses the running libvirtd.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
started_sandbox=0
cleanup() {
  xenvlan down --all || true
  if [ "$started_sandbox" = 1 ]; then xenvlan sandbox stop || true; fi
}
trap cleanup EXIT INT TERM
if ! xenvlan sandbox status --json | grep -q '"running": true'; then
  if [ -S /run/libvirt/libvirt-sock ] && virsh -c qemu:///system version >/dev/null 2>&1; then
    echo "demo: using this host's running libvirtd"
  else
    xenvlan sandbox start
    started_sandbox=1
  fi
fi
xenvlan up
xenvlan status
echo "\$ xenvlan ssh a -- /usr/bin/ping -c 3 11.11.4.30"
xenvlan ssh a -- /usr/bin/ping -c 3 11.11.4.30
echo "\$ xenvlan ssh a -- /usr/bin/ping -c 3 -s 1477 11.11.4.30"
xenvlan ssh a -- /usr/bin/ping -c 3 -s 1477 11.11.4.30
