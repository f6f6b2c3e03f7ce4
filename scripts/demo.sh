#!/usr/bin/env bash
# The demo: the seed's whole reproduction on a bare machine. A private libvirtd in a network
# namespace, two guests with VLAN 3, the legacy 2.6.18 cliff (emulated on a modern kernel),
# the Dom0 fix, the proof, the host restored, and an HTML report. On a real hypervisor host it
# uses the running libvirtd instead of the sandbox.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
PATH=${XENVLAN_VENV:-/opt/xenvlan/venv}/bin:$PATH
report=${XENVLAN_REPORT:-$PWD/xenvlan-repro.html}
started_sandbox=0
cleanup() {
  if [ "$started_sandbox" = 1 ]; then xenvlan sandbox stop >/dev/null || true; fi
}
trap cleanup EXIT INT TERM
if [ -S /run/libvirt/libvirt-sock ] && virsh -c qemu:///system version >/dev/null 2>&1; then
  echo "demo: using this host's running libvirtd"
else
  xenvlan sandbox start
  started_sandbox=1
fi
xenvlan repro --emulate legacy-vlan --report "$report" "$@"
echo "demo: report written to $report"
