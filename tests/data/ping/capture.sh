#!/bin/sh
# Re-capture the recorded ping outputs in this directory from the real binaries.
# Needs root. Builds private network namespaces (A -- R -- B, R-B link MTU 1400) and pings only
# loopback and addresses inside them; removes the namespaces on exit.
#   A 10.99.0.1/24  ==  R 10.99.0.254/24 | R 10.99.1.254/24  ==(mtu 1400)==  B 10.99.1.2/24
#   B also has 10.99.1.3, whose echo requests an nftables rule in B drops (pure loss), and
#   10.99.1.4 (a destination with no cached path MTU yet for the busybox frag-needed case).
# Each file: header lines "# key: value", a line "# ---", then stdout+stderr merged as written.
set -eu
out=$(cd "$(dirname "$0")" && pwd)
p=sweepcap-$$
A=$p-a R=$p-r B=$p-b
cleanup() { for n in $A $R $B; do ip netns del "$n" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM
for n in $A $R $B; do ip netns add "$n"; ip -n "$n" link set lo up; done
ip link add xa0 netns "$A" type veth peer name xr0 netns "$R"
ip link add xr1 netns "$R" type veth peer name xb0 netns "$B"
ip -n "$A" addr add 10.99.0.1/24 dev xa0
ip -n "$R" addr add 10.99.0.254/24 dev xr0
ip -n "$R" addr add 10.99.1.254/24 dev xr1
ip -n "$B" addr add 10.99.1.2/24 dev xb0
ip -n "$B" addr add 10.99.1.3/24 dev xb0
ip -n "$B" addr add 10.99.1.4/24 dev xb0
ip -n "$R" link set xr1 mtu 1400
ip -n "$B" link set xb0 mtu 1400
for l in "$A xa0" "$R xr0" "$R xr1" "$B xb0"; do set -- $l; ip -n "$1" link set "$2" up; done
ip netns exec "$R" sysctl -qw net.ipv4.ip_forward=1
ip -n "$A" route add 10.99.1.0/24 via 10.99.0.254
ip -n "$B" route add 10.99.0.0/24 via 10.99.1.254
ip netns exec "$B" nft -f - <<'NFT'
table ip sweepcap {
    chain input {
        type filter hook input priority 0;
        ip daddr 10.99.1.3 drop;
        ip daddr 10.99.1.2 icmp type echo-request ip length 1256 icmp sequence 2 drop;
    }
}
NFT
sleep 1

cap() {  # cap NAME NOTE NETNS ARGV...
    name=$1 note=$2 ns=$3; shift 3
    f=$out/$name.txt
    if case "$*" in *busybox*) true;; *) false;; esac; then ver=$(busybox 2>&1 | head -n 1); else ver=$("$1" -V | head -n 1); fi
    {
        echo "# argv: $*"
        if [ -n "$ns" ]; then echo "# netns: A (10.99.0.1)"; else echo "# netns: host"; fi
        echo "# version: $ver"
        echo "# note: $note"
    } >"$f"
    tmp=$(mktemp)
    rc=0
    if [ -n "$ns" ]; then ip netns exec "$ns" "$@" >"$tmp" 2>&1 || rc=$?; else "$@" >"$tmp" 2>&1 || rc=$?; fi
    { echo "# exit: $rc"; echo "# ---"; cat "$tmp"; } >>"$f"
    rm -f "$tmp"
}
P=/usr/bin/ping
BB="busybox ping"
cap iputils-ok-loopback "all replies on loopback" "" $P -c 3 -i 0.002 -W 1 -s 1000 127.0.0.1
cap iputils-ok "all replies, routed via R" "$A" $P -c 3 -i 0.002 -W 1 -s 1300 10.99.1.2
cap iputils-ok-fragmented "replies to fragmented echo (IP 4028)" "$A" $P -c 3 -i 0.002 -W 1 -s 4000 10.99.1.2
cap iputils-loss "100% loss: B drops echo for 10.99.1.3" "$A" $P -c 3 -i 0.002 -W 1 -s 100 10.99.1.3
cap iputils-loss-deadline "100% loss with -w deadline" "$A" $P -c 3 -i 0.002 -W 1 -w 1 -s 100 10.99.1.3
cap iputils-local-msgsize "-M do above sender MTU" "$A" $P -c 3 -i 0.002 -W 1 -M do -s 1473 10.99.0.254
cap iputils-frag-needed "-M do, R's link to B has MTU 1400" "$A" $P -c 3 -i 0.2 -W 1 -M do -s 1400 10.99.1.2
cap iputils-host-unreachable "unassigned address on A's link (ARP unanswered)" "$A" $P -c 3 -i 0.5 -W 1 -w 5 -s 100 10.99.0.77
cap iputils-net-unreachable "no route in A" "$A" $P -c 3 -i 0.002 -W 1 -s 100 10.98.0.1
cap iputils-partial "one of three lost (B drops echo seq 2 of -s 1228 = IP 1256)" "$A" $P -c 3 -i 0.002 -W 1 -s 1228 10.99.1.2
cap iputils-loss-frac-w "100% loss, fractional -W (iputils >= 20210202)" "$A" $P -c 3 -i 0.002 -W 0.2 -s 100 10.99.1.3
cap busybox-ok "all replies, routed via R" "$A" busybox ping -c 3 -i 0.002 -W 1 -s 1300 10.99.1.2
cap busybox-ok-fragmented "replies to fragmented echo (IP 4028)" "$A" busybox ping -c 3 -i 0.002 -W 1 -s 4000 10.99.1.2
cap busybox-loss "100% loss: B drops echo for 10.99.1.3" "$A" busybox ping -c 3 -i 0.002 -W 1 -s 100 10.99.1.3
cap busybox-partial "one of three lost (B drops echo seq 2 of -s 1228 = IP 1256)" "$A" busybox ping -c 3 -i 0.002 -W 1 -s 1228 10.99.1.2
cap busybox-loss-sigint "100% loss, stopped by SIGINT after 0.3 s (the prober's watchdog)" "$A" sh -c 'busybox ping -c 3 -i 0.002 -W 1 -s 100 10.99.1.3 & p=$!; (sleep 0.3; kill -INT $p) >/dev/null 2>&1 & wait $p'
cap busybox-frag-needed "R's link to B has MTU 1400; kernel sets DF (pmtudisc want)" "$A" busybox ping -c 3 -i 0.2 -W 1 -s 1400 10.99.1.4
cap busybox-host-unreachable "unassigned address on A's link (ARP unanswered)" "$A" busybox ping -c 3 -i 0.5 -W 1 -w 5 -s 100 10.99.0.77
cap busybox-net-unreachable "no route in A" "$A" busybox ping -c 3 -i 0.002 -W 1 -s 100 10.98.0.1
