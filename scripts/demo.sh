#!/usr/bin/env bash
# The demo: the seed's whole reproduction on a bare machine. A private libvirtd in a network
# namespace, two guests with VLAN 3, the legacy 2.6.18 cliff (emulated on a modern kernel),
# the Dom0 fix, the proof, the host restored, and an HTML report. On a real hypervisor host it
# uses the running libvirtd instead of the sandbox.
#
# --xen: the same on real Xen, without a Xen host: a Xen Dom0 nested under QEMU/TCG
# (`sandbox start --hypervisor xen`; the first run builds its image, ~1.5 min; boot ~45 s; the
# repro ~30-60 s, with the report and its captures copied back), stopped again on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
xen=0
if [ "${1:-}" = "--xen" ]; then
  xen=1
  shift
fi
bash scripts/bootstrap.sh
PATH=${XENVLAN_VENV:-/opt/xenvlan/venv}/bin:$PATH
report=${XENVLAN_REPORT:-$PWD/xenvlan-repro.html}
started_sandbox=0
cleanup() {
  if [ "$started_sandbox" = 1 ]; then xenvlan sandbox stop >/dev/null || true; fi
}
trap cleanup EXIT INT TERM
if [ "$xen" = 1 ]; then
  started_sandbox=1 # set first: a start interrupted half-way is stopped too
  xenvlan sandbox start --hypervisor xen
elif [ -S /run/libvirt/libvirt-sock ] && virsh -c qemu:///system version >/dev/null 2>&1; then
  echo "demo: using this host's running libvirtd"
else
  started_sandbox=1
  xenvlan sandbox start
fi
xenvlan repro --emulate legacy-vlan --report "$report" "$@"
echo "demo: report written to $report"
