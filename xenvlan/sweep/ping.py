"""Ping command lines, ping output parsing, and a batching prober that runs in a guest shell.

Two implementations are supported: iputils ``ping`` (old ``sYYYYMMDD`` and new ``YYYYMMDD``
releases) and busybox ``ping``. Output of both is parsed into :class:`PingResult`, which keeps
local errors (the sender refused to send: ``message too long``, no route) apart from path loss.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from xenvlan.errors import GuestError, SpecError
from xenvlan.guest.shell import GuestShell

Impl = Literal["iputils", "busybox"]
DfMode = Literal["want", "do", "dont"]

DF_MODES: tuple[str, ...] = ("want", "do", "dont")
IP_ICMP_HEADER = 28
"""IPv4 header (20) + ICMP echo header (8): IP length of a payload is ``size + 28``."""
MAX_PAYLOAD = 65507

# iputils parses fractional -W since s20190324 (commit 918e824); until s20200821 the decimal
# separator followed the locale. Older releases silently truncate "-W 0.5" to 0 = wait forever.
IPUTILS_FRACTIONAL_W = 20200821
# Until iputils 20210202 a non-root user could not go below a 200 ms interval.
IPUTILS_USER_2MS = 20210202


@dataclass(frozen=True)
class PingResult:
    """One ping invocation for one payload size.

    ``error`` names the first error seen (``"local: message too long, mtu=1500"``,
    ``"frag-needed mtu=1400"``, ``"unreachable"``, ``"network-unreachable"``, ...);
    ``local_error`` is true when the sender itself refused or could not send, which is not loss
    on the path.
    """

    size: int
    sent: int
    received: int
    rtt_avg_ms: float | None
    error: str | None
    local_error: bool = False

    @property
    def passed(self) -> bool:
        """At least one echo reply came back."""
        return self.received > 0

    @property
    def ip_length(self) -> int:
        """IPv4 total length of one echo request with this payload."""
        return self.size + IP_ICMP_HEADER


_SUMMARY = re.compile(
    r"(\d+) packets transmitted, (\d+) (?:packets )?received(?:, \+(\d+) errors)?", re.I
)
_RTT = re.compile(r"(?:rtt|round-trip) min/avg/max(?:/mdev)? = [\d.]+/([\d.]+)/", re.I)
_REPLY = re.compile(r"^\d+ bytes from \S+?:? .*?(?:icmp_seq|seq)=(\d+)(?:.*?time[=<]([\d.]+))?")
_LOCAL = re.compile(r"local error: ([^,\n]+?)(?:, mtu=(\d+))?\s*$", re.I)
_FRAG = re.compile(r"frag(?:mentation)? needed and DF set \(mtu = (\d+)\)", re.I)
_FROM_ERR = re.compile(r"^From \S+ (?:icmp_seq|seq)=\d+ (.+?)\s*$", re.I)
_SYS_ERR = re.compile(r"^(?:\S*ping\S*: )(?:(?:connect|sendto|sendmsg|send): )?(.+?)\s*$", re.I)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _classify_line(line: str) -> tuple[str, bool] | None:
    """Map one output line to ``(error, local)``, or None when it is not an error line."""
    if m := _LOCAL.search(line):
        msg = m.group(1).strip().lower()
        return (f"local: {msg}, mtu={m.group(2)}" if m.group(2) else f"local: {msg}"), True
    if m := _FRAG.search(line):
        return f"frag-needed mtu={m.group(1)}", False
    if m := _FROM_ERR.match(line):
        text = m.group(1)
        low = text.lower()
        if "host unreachable" in low:
            return "unreachable", False
        if "net unreachable" in low:
            return "net-unreachable", False
        return _slug(text), False
    if line.startswith(("PING ", "---")) or "statistics" in line:
        return None
    if m := _SYS_ERR.match(line):
        text = m.group(1)
        low = text.lower()
        if "network is unreachable" in low:
            return "network-unreachable", True
        if "message too long" in low:
            return "local: message too long", True
        if "no route to host" in low:
            return "unreachable", True
        if "warning" in low and "icmp" in low:
            return _slug(text.split(":", 1)[-1]), False
        return f"local: {text.lower()}", True
    return None


def parse_ping(output: str, size: int) -> PingResult:
    """Parse the merged stdout/stderr of one iputils or busybox ping run.

    Works without a summary (ping killed hard) by counting reply lines; the RTT comes from the
    summary line when present, else from the mean of per-reply times.
    """
    sent: int | None = None
    received: int | None = None
    errors_count = 0
    rtt: float | None = None
    reply_seqs: set[str] = set()
    times: list[float] = []
    error: str | None = None
    local = False
    for raw in output.splitlines():
        line = raw.strip()
        if not line:
            continue
        if m := _SUMMARY.search(line):
            sent, received = int(m.group(1)), int(m.group(2))
            errors_count = int(m.group(3) or 0)
            continue
        if m := _RTT.search(line):
            rtt = float(m.group(1))
            continue
        if m := _REPLY.match(line):
            if m.group(1) not in reply_seqs:
                reply_seqs.add(m.group(1))
                if m.group(2):
                    times.append(float(m.group(2)))
            continue
        found = _classify_line(line)
        if found is not None and error is None:
            error, local = found
    if received is None:
        received = len(reply_seqs)
    if sent is None:
        sent = max(received, errors_count)
    if rtt is None and times:
        rtt = round(sum(times) / len(times), 3)
    if received == 0 and error is None and errors_count:
        error = "error"
    return PingResult(size=size, sent=sent, received=received, rtt_avg_ms=rtt, error=error,
                      local_error=local if error is not None else False)  # fmt: skip


def _fmt_seconds(value: float) -> str:
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text or "0"


def ping_argv(
    impl: Impl,
    dst: str,
    size: int,
    *,
    count: int,
    timeout_s: float,
    interval_s: float | None,
    df: DfMode | None,
    ping_path: str,
    fractional_timeout: bool = True,
) -> list[str]:
    """The argv of one ping run; ``timeout_s`` bounds the wait after the last request.

    ``-W`` is rounded up to whole seconds for busybox and for old iputils
    (``fractional_timeout=False``); the prober then stops ping earlier with SIGINT. ``-w`` is
    deliberately not used: iputils keeps sending past ``-c`` until a ``-w`` deadline.
    A ``ping_path`` whose basename is ``busybox`` is called as the ``ping`` applet.
    """
    if not 0 <= size <= MAX_PAYLOAD:
        raise SpecError(f"ping payload size {size} is outside 0..{MAX_PAYLOAD}")
    if count < 1:
        raise SpecError(f"ping count must be at least 1, got {count}")
    if timeout_s <= 0:
        raise SpecError(f"ping timeout must be positive, got {timeout_s}")
    argv = [ping_path]
    if impl == "busybox":
        if df is not None:
            raise SpecError("busybox ping cannot set the DF mode (-M); use iputils ping or no --df")
        if ping_path.rsplit("/", 1)[-1] == "busybox":
            argv.append("ping")
    elif impl != "iputils":
        raise SpecError(f"unknown ping implementation {impl!r}")
    argv += ["-n"] if impl == "iputils" else []
    argv += ["-c", str(count), "-s", str(size)]
    if interval_s is not None:
        argv += ["-i", _fmt_seconds(interval_s)]
    if impl == "iputils" and fractional_timeout:
        argv += ["-W", _fmt_seconds(max(timeout_s, 0.001))]
    else:
        argv += ["-W", str(max(1, math.ceil(timeout_s)))]
    if df is not None:
        if df not in DF_MODES:
            raise SpecError(f"DF mode must be one of {', '.join(DF_MODES)}, got {df!r}")
        argv += ["-M", df]
    argv.append(dst)
    return argv


@dataclass(frozen=True)
class PingTool:
    """What the guest offers: implementation, how to call it, and what it accepts."""

    impl: Impl
    path: str
    version: int | None
    fractional_timeout: bool
    min_interval_s: float


DETECT_COMMAND = (
    "v=$(LC_ALL=C /usr/bin/ping -V 2>&1); i=; case $v in *iputils*) i=1; "
    "echo 'impl iputils'; echo \"$v\" | head -n 1;; esac; "
    "if command -v busybox >/dev/null 2>&1 && busybox --list 2>/dev/null | grep -qx ping; then "
    "echo 'impl busybox busybox'; "
    "elif [ -z \"$i\" ] && command -v ping >/dev/null 2>&1; then echo 'impl busybox ping'; fi; "
    'echo "uid $(id -u)"'
)
"""Prints one ``impl`` line per ping found (iputils with its version line, busybox applet)."""

_DETECT_BUSYBOX_FIRST = (
    "if command -v busybox >/dev/null 2>&1 && busybox --list 2>/dev/null | grep -qx ping; then "
    "echo 'impl busybox busybox'; echo \"uid $(id -u)\"; else " + DETECT_COMMAND + "; fi"
)


def detect_command(df: str | None) -> str:
    """The detection command: without a DF mode, stop at busybox ping (skips iputils' load)."""
    return DETECT_COMMAND if df is not None else _DETECT_BUSYBOX_FIRST


def parse_detect(stdout: str, *, df: str | None = None) -> PingTool:
    """Interpret the output of :data:`DETECT_COMMAND` and choose the ping to use.

    Without a DF mode, busybox ping is preferred when the guest has both: the two send the same
    packets (neither touches IP_MTU_DISCOVER unless told to), but iputils is linked against
    libidn2/libunistring/libcap, and under TCG loading those costs ~25 ms per process against
    ~4 ms for the busybox applet, which dominates a sweep of ~70 concurrent pings. A DF mode
    needs iputils ``-M``.
    """
    lines = stdout.splitlines()
    impls = [ln.split() for ln in lines if ln.startswith("impl ")]
    uid_line = next((ln.split() for ln in lines if ln.startswith("uid ")), [])
    root = len(uid_line) == 2 and uid_line[1] == "0"
    iputils: PingTool | None = None
    busybox: PingTool | None = None
    for fields in impls:
        if len(fields) >= 2 and fields[1] == "iputils" and iputils is None:
            m = re.search(r"(?:s|\b)(\d{8})\b", stdout)
            version = int(m.group(1)) if m else None
            new = version is not None and version >= IPUTILS_FRACTIONAL_W
            small_ok = root or (version is not None and version >= IPUTILS_USER_2MS)
            iputils = PingTool("iputils", "/usr/bin/ping", version, new, 0.002 if small_ok else 0.2)
        elif len(fields) >= 3 and fields[1] == "busybox" and busybox is None:
            busybox = PingTool("busybox", fields[2], None, False, 0.002)
    if df is None and busybox is not None:
        return busybox
    if iputils is not None:
        return iputils
    if busybox is not None:
        return busybox
    raise GuestError("no ping in the guest: neither /usr/bin/ping (iputils) nor busybox ping")


_MARK = "@@xenvlan-ping"


Counts = int | Sequence[int]
"""Requests per size: one number for every size, or one per size."""


def _counts(sizes: Sequence[int], count: Counts) -> list[int]:
    counts = [count] * len(sizes) if isinstance(count, int) else list(count)
    if len(counts) != len(sizes):
        raise SpecError(f"{len(counts)} ping counts for {len(sizes)} sizes")
    return counts


class GuestProber:
    """Runs many pings concurrently inside the guest, one shell command per batch.

    Each ping writes a marker line and then its output to its own file in a temporary
    directory; the shell waits for all of them and prints the files with one ``cat``, so a batch
    costs one round trip, one process per size plus a handful, and roughly one timeout when
    sizes fail. When ping cannot take a sub-second ``-W`` (busybox, old iputils), one watchdog
    per batch interrupts every ping still running with SIGINT, on which both implementations
    print their summary; it fires ``timeout_s`` (plus the send time) after the last ping was
    started, so no ping gets less than its timeout.
    """

    def __init__(
        self,
        run: GuestShell,
        dst: str,
        *,
        impl: str | None = None,
        df: str | None = None,
        ping_path: str | None = None,
        timeout_s: float = 1.0,
        interval_s: float | None = None,
        max_parallel: int = 128,
    ) -> None:
        if impl not in (None, "iputils", "busybox"):
            raise SpecError(f"unknown ping implementation {impl!r}")
        if df is not None and df not in DF_MODES:
            raise SpecError(f"DF mode must be one of {', '.join(DF_MODES)}, got {df!r}")
        if impl == "busybox" and df is not None:
            raise SpecError("busybox ping cannot set the DF mode (-M); use iputils ping or no --df")
        self._run = run
        self.dst = dst
        self.df: DfMode | None = df  # type: ignore[assignment]
        self.timeout_s = timeout_s
        self.interval_s = interval_s
        self.max_parallel = max_parallel
        self.commands = 0
        self._tool: PingTool | None = None
        if impl == "iputils":
            self._tool = PingTool("iputils", ping_path or "/usr/bin/ping", None, True, 0.002)
        elif impl == "busybox":
            self._tool = PingTool("busybox", ping_path or "ping", None, False, 0.002)

    @property
    def tool(self) -> PingTool:
        """The ping implementation in use, detected in the guest on first use (one round trip).

        Without ``impl``, busybox ping is chosen when the guest has it and no DF mode is asked
        for, iputils otherwise (see :func:`parse_detect`).
        """
        if self._tool is None:
            res = self._run(detect_command(self.df), timeout=15.0)
            self.commands += 1
            self._tool = parse_detect(res.stdout, df=self.df)
            if self._tool.impl == "busybox" and self.df is not None:
                raise SpecError(
                    "the guest has only busybox ping, which cannot set the DF mode; drop --df"
                )
        return self._tool

    @property
    def interval(self) -> float:
        """Seconds between the requests of one ping: ``interval_s`` or the tool's minimum."""
        return self.interval_s if self.interval_s is not None else self.tool.min_interval_s

    def argv(self, size: int, count: int) -> list[str]:
        """The ping argv this prober uses for one size."""
        tool = self.tool
        return ping_argv(
            tool.impl,
            self.dst,
            size,
            count=count,
            timeout_s=self.timeout_s,
            interval_s=self.interval,
            df=self.df,
            ping_path=tool.path,
            fractional_timeout=tool.fractional_timeout,
        )

    def batch_command(self, sizes: Sequence[int], count: Counts) -> str:
        """The shell command line that probes ``sizes`` concurrently (``count`` requests each)."""
        tool = self.tool
        counts = _counts(sizes, count)
        watchdog = not (tool.impl == "iputils" and tool.fractional_timeout)
        lines = [
            "export LC_ALL=C",
            "d=$(mktemp -d /tmp/xenvlan-ping.XXXXXX 2>/dev/null) || { d=/tmp/xenvlan-ping.$$; "
            'mkdir "$d" || exit 97; }',
            'cd "$d" || exit 97',
        ]
        for i, (size, n) in enumerate(zip(sizes, counts, strict=True)):
            argv = " ".join(shlex.quote(a) for a in self.argv(size, n))
            # The group's child execs ping: one process per size, and $! is ping itself.
            group = f'{{ echo; echo "{_MARK} {i} {size}"; exec {argv}; }}'
            lines.append(f"{group} >{i} 2>&1 </dev/null & p{i}=$!")
        pids = " ".join(f"$p{i}" for i in range(len(sizes)))
        if watchdog and sizes:
            stop_after = _fmt_seconds(self.timeout_s + max(counts) * self.interval + 0.05)
            lines.append(
                f"(sleep {stop_after}; kill -INT {pids}) >/dev/null 2>&1 </dev/null & w=$!"
            )
        if sizes:
            lines.append(f"wait {pids}")
        if watchdog and sizes:
            lines.append("kill $w 2>/dev/null")
        if sizes:
            lines.append("cat " + " ".join(str(i) for i in range(len(sizes))))
        lines.append(f'echo; echo "{_MARK} end"; cd / && rm -rf "$d"')
        return "\n".join(lines)

    def probe(self, sizes: Sequence[int], *, count: Counts) -> list[PingResult]:
        """Ping every size ``count`` times (or ``count[i]`` times); results in size order given."""
        counts = _counts(sizes, count)
        results: list[PingResult] = []
        for start in range(0, len(sizes), self.max_parallel):
            chunk = list(sizes[start : start + self.max_parallel])
            if chunk:
                results += self._probe_chunk(chunk, counts[start : start + self.max_parallel])
        return results

    def _probe_chunk(self, sizes: list[int], counts: list[int]) -> list[PingResult]:
        command = self.batch_command(sizes, counts)
        # Nested guests (the Xen sandbox) need more: GuestSession.run multiplies this budget by
        # $XENVLAN_TIMEOUT_SCALE (xenvlan.timeouts), once; scaling it here too would square it.
        budget = self.timeout_s + max(counts) * self.interval + 10.0 + 0.05 * len(sizes)
        res = self._run(command, timeout=budget)
        self.commands += 1
        outputs = _split_batch(res.stdout, len(sizes))
        if outputs is None:
            tail = (res.stderr or res.stdout).strip()[-300:]
            raise GuestError(
                f"ping batch in the guest failed (exit {res.exit_status}): {tail or 'no output'}"
            )
        return [parse_ping(out, size) for out, size in zip(outputs, sizes, strict=True)]


def _split_batch(stdout: str, n: int) -> list[str] | None:
    """Cut a batch's stdout at the marker lines; None when the batch did not complete."""
    parts: dict[int, list[str]] = {}
    current: list[str] | None = None
    ended = False
    for line in stdout.splitlines():
        if line.startswith(_MARK + " "):
            fields = line.split()
            if fields[1] == "end":
                ended = True
                current = None
                continue
            current = parts.setdefault(int(fields[1]), [])
            continue
        if current is not None:
            current.append(line)
    if not ended or sorted(parts) != list(range(n)):
        return None
    return ["\n".join(parts[i]) for i in range(n)]
