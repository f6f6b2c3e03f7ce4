"""`repro`: the whole experiment — lab, diagnosis, sweep, fix, sweep, revert, teardown, verdict.

Every host change (scenario set-up and fix) goes through the namespace's journal and is reverted
in a `finally`, so success, error, Ctrl-C and SIGTERM all leave the host as it was. The entries
carry the lab's name: after a kill -9, `xenvlan down` reverts them and removes the lab (the next
`repro` refuses to start over a pending journal).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import libvirt

from xenvlan import fault, signals
from xenvlan import host as dom0
from xenvlan import lab as lab_mod
from xenvlan.errors import HostChangeError, SpecError
from xenvlan.evidence.lab import EvidenceOptions
from xenvlan.host import firewall
from xenvlan.host import snapshot as hoststate
from xenvlan.host.fix import DEFAULT_METHOD
from xenvlan.host.journal import HostJournal, on_behalf_of
from xenvlan.host.netns import current_netns
from xenvlan.repro import scenarios as scenario
from xenvlan.repro.scenarios import HostChange
from xenvlan.spec import LabSpec
from xenvlan.sweep import lab as labsweep
from xenvlan.sweep.ping import IP_ICMP_HEADER
from xenvlan.sweep.search import SweepOptions, SweepResult
from xenvlan.virt import connection as hv

Progress = Callable[[str], None]
DEFAULT_RANGES = {"host": (0, 65507), "legacy-vlan": (0, 65507), "port-mtu": (1200, 4000)}


@dataclass(frozen=True)
class ReproOptions:
    """What `repro` runs."""

    scenario: str = "host"
    method: str = DEFAULT_METHOD
    lo: int | None = None
    hi: int | None = None
    count: int = 3
    port_mtu: int = 1400
    keep: bool = False
    #: Where the evidence captures go (kept after `down`); None: the lab's run dir, which a
    #: torn-down lab takes with it. `--report F.html` puts them in `F-captures/`.
    capture_dir: Path | None = None

    @property
    def emulated(self) -> bool:
        """Whether the cliff is an emulation (only legacy-vlan)."""
        return self.scenario == "legacy-vlan"

    def sweep_options(self, **kw: Any) -> SweepOptions:
        """Sweep options for this run's range."""
        lo_d, hi_d = DEFAULT_RANGES[self.scenario]
        lo = self.lo if self.lo is not None else lo_d
        hi = self.hi if self.hi is not None else hi_d
        return SweepOptions(lo=lo, hi=hi, count=self.count, **kw)

    def validate(self) -> None:
        """One-line SpecErrors for bad values."""
        if self.scenario not in scenario.SCENARIOS:
            raise SpecError(
                f"--scenario: {self.scenario!r} must be one of {', '.join(scenario.SCENARIOS)}"
            )
        if self.method not in dom0.METHODS:
            raise SpecError(f"--method: {self.method!r} must be one of {', '.join(dom0.METHODS)}")
        if not 576 <= self.port_mtu <= 9000:
            raise SpecError(f"--port-mtu: {self.port_mtu} is out of range 576..9000")
        self.sweep_options().validate()


@dataclass
class Step:
    """One step of the run: name, seconds, outcome."""

    name: str
    seconds: float = 0.0
    ok: bool = True
    detail: str = ""


@dataclass
class ReproResult:
    """Everything `repro` measured and did; `to_json` is the documented shape."""

    scenario: str
    emulated: bool
    lab: str
    environment: dict[str, Any]
    diagnosis: dict[str, Any] | None = None
    before: SweepResult | None = None
    after: SweepResult | None = None
    matrix: list[dict[str, Any]] = field(default_factory=list)
    matrix_results: list[tuple[str, SweepResult]] = field(default_factory=list)
    setup: list[HostChange] = field(default_factory=list)
    fix_method: str | None = None
    fix_changes: list[dict[str, Any]] = field(default_factory=list)
    reverted: list[dict[str, Any]] = field(default_factory=list)
    restored: bool = False
    restore_diff: list[str] = field(default_factory=list)
    verdict: ReproVerdict | None = None
    steps: list[Step] = field(default_factory=list)

    def sweeps(self) -> list[tuple[str, SweepResult]]:
        """(label, sweep) of every sweep the run made, in table order (CLI and report)."""
        if self.matrix_results:
            return list(self.matrix_results)
        named = (("before fix", self.before), (f"after {self.fix_method}", self.after))
        return [(name, r) for name, r in named if r is not None]

    def to_json(self) -> dict[str, Any]:
        """The JSON document of issue 5."""
        return {
            "scenario": self.scenario,
            "emulated": self.emulated,
            "lab": self.lab,
            "before": self.before.to_json() if self.before else None,
            "after": self.after.to_json() if self.after else None,
            "matrix": self.matrix,
            "fix": {
                "method": self.fix_method,
                "setup": [c.to_json() for c in self.setup],
                "changes": self.fix_changes,
                "reverted": self.reverted,
            },
            "restored": self.restored,
            "restore_diff": self.restore_diff,
            "verdict": self.verdict.to_json() if self.verdict else {},
            "diagnosis": self.diagnosis,
            "environment": self.environment,
            "timings": {s.name: round(s.seconds, 3) for s in self.steps},
        }


class StepRecorder:
    """Runs the steps, timing each and reporting progress."""

    def __init__(self, result: ReproResult, progress: Progress) -> None:
        self.result = result
        self.progress = progress

    @contextmanager
    def step(self, name: str) -> Iterator[Step]:
        """Time one step; failures are recorded and re-raised."""
        st = Step(name)
        self.result.steps.append(st)
        self.progress(f"{name} ...")
        t0 = time.monotonic()
        try:
            yield st
        except BaseException as exc:
            st.ok = False
            st.detail = str(exc) or type(exc).__name__
            raise
        finally:
            st.seconds = time.monotonic() - t0
            self.progress(f"{name}: {st.seconds:.1f}s{' — ' + st.detail if st.detail else ''}")


def _cliff(r: SweepResult | None) -> bool:
    return bool(r and r.smallest_failing is not None)


def _edge(r: SweepResult) -> str:
    if r.smallest_failing is None:
        return f"every size delivered ({r.lo}..{r.hi})"
    lp = r.largest_passing
    lp_s = f"{lp} (IP {lp + IP_ICMP_HEADER})" if lp is not None else "none"
    return (
        f"last pass {lp_s}, first fail {r.smallest_failing} "
        f"(IP {r.smallest_failing + IP_ICMP_HEADER})"
    )


class ReproCode(StrEnum):
    """What a whole `repro` concluded (not a sweep's code: see `sweep.verdict.SweepCode`)."""

    CLIFF_REMOVED = "cliff-removed"
    NOTHING_TO_FIX = "nothing-to-fix"
    CLIFF_NOT_REMOVED = "cliff-not-removed"
    BRNF_REFRAGMENTS = "brnf-refragments"
    BRNF_NO_DIFFERENCE = "brnf-no-difference"


@dataclass(frozen=True)
class ReproVerdict:
    """The run's conclusion and the sentence that states its evidence."""

    code: ReproCode
    text: str

    def to_json(self) -> dict[str, str]:
        return {"code": str(self.code), "text": self.text}


BOUNDARY_COLUMNS = ("largest passing", "IP", "smallest failing", "IP", "verdict")


def boundary_cells(sweep: SweepResult) -> list[str]:
    """One sweep's row under BOUNDARY_COLUMNS, the same in the CLI table and the report."""
    lp, sf = sweep.largest_passing, sweep.smallest_failing
    return [
        str(lp) if lp is not None else "-",
        str(lp + IP_ICMP_HEADER) if lp is not None else "-",
        str(sf) if sf is not None else "-",
        str(sf + IP_ICMP_HEADER) if sf is not None else "-",
        str(sweep.verdict.code),
    ]


def verdict_for(
    before: SweepResult, after: SweepResult, method: str, emulated: bool
) -> ReproVerdict:
    """Cliff present and removed / nothing to fix / not removed, with the evidence."""
    tag = " (emulated legacy 2.6.17-2.6.34 behaviour)" if emulated else ""
    if not _cliff(before):
        return ReproVerdict(
            ReproCode.NOTHING_TO_FIX,
            f"no cliff before the fix{tag}: {_edge(before)}; nothing for {method} to fix",
        )
    if not _cliff(after):
        return ReproVerdict(
            ReproCode.CLIFF_REMOVED,
            f"cliff present{tag} and removed by the fix {method}: before {_edge(before)}"
            f" [{before.verdict.code}]; after {_edge(after)}",
        )
    return ReproVerdict(
        ReproCode.CLIFF_NOT_REMOVED,
        f"cliff not removed by the fix {method}{tag}: before {_edge(before)}; after "
        f"{_edge(after)} [{after.verdict.code}], so something else is at work: see the diagnosis",
    )


def environment(choice: hv.Choice, conn: libvirt.virConnect, emulated: bool) -> dict[str, Any]:
    """Kernel, libvirt, domain type, emulation flag."""
    lv = conn.getLibVersion()
    return {
        "kernel": platform.release(),
        "libvirt": f"{lv // 1000000}.{lv // 1000 % 1000}.{lv % 1000}",
        "uri": choice.uri,
        "domain_type": choice.domain_type,
        "hypervisor_reason": choice.reason,
        "emulated": emulated,
        "netns_inode": current_netns().inode,
    }


def run(spec: LabSpec, opts: ReproOptions, progress: Progress) -> ReproResult:
    """The whole experiment. Host changes are always reverted; the lab torn down unless kept."""
    opts.validate()
    existing = HostJournal.load(HostJournal.path_for())
    if existing is not None and existing.entries:
        labs = ", ".join(sorted(existing.labs()))
        raise HostChangeError(
            f"a journal of host changes is pending ({existing.path}"
            + (f", left by lab {labs}" if labs else "")
            + "): "
            + ("`xenvlan down` or " if labs else "")
            + "`xenvlan fix revert` first"
        )
    conn, choice = hv.open_connection(spec.connect)
    try:
        reused = spec.name in lab_mod.labs_present(conn)
        result = ReproResult(
            scenario=opts.scenario,
            emulated=opts.emulated,
            lab=spec.name,
            environment=environment(choice, conn, opts.emulated),
        )
        runner = StepRecorder(result, progress)
        try:
            with runner.step("up") as st:
                if reused:
                    st.detail = f"reusing running lab {spec.name}"
                else:
                    lab_mod.up(spec, lab_mod.UpOptions(), progress)
            fault.point("after-up")
            with on_behalf_of(spec.name):
                _experiment(conn, choice, spec, opts, runner)
        finally:
            if not reused and not opts.keep:
                with signals.deferred(), runner.step("down"):
                    lab_mod.down_lab(conn, spec.name, progress)
        return result
    finally:
        conn.close()


def _experiment(
    conn: libvirt.virConnect,
    choice: hv.Choice,
    spec: LabSpec,
    opts: ReproOptions,
    runner: StepRecorder,
) -> None:
    result = runner.result
    status = labsweep.lab_status(conn, choice, spec.name)
    ports = [
        (g.host_port, g.host_port_mtu) for g in status.guests if g.host_port and g.host_port_mtu
    ]
    lab_ports = {p: f"{spec.name}/{g.name}" for g in status.guests if (p := g.host_port)}
    with runner.step("diagnose"):
        result.diagnosis = dom0.diagnose(lab_ports=lab_ports).to_json()
    snap = hoststate.snapshot()
    try:
        if opts.scenario == "port-mtu":
            _port_mtu(status, opts, runner, ports)
        else:
            _fix_cycle(status, opts, runner, ports)
    finally:
        with signals.deferred(), runner.step("revert") as st:
            rep = dom0.fix_revert()
            result.reverted = [
                {"kind": a.kind, "key": a.key, "original": a.original, "result": a.result}
                for a in rep.reverted
            ]
            after = hoststate.snapshot()
            result.restore_diff = hoststate.diff(snap, after)
            result.restored = not result.restore_diff
            st.detail = (
                "host restored exactly" if result.restored else "; ".join(result.restore_diff)
            )


def _sweep(status: lab_mod.LabStatus, opts: SweepOptions) -> SweepResult:
    return labsweep.sweep_lab(status, opts)[0]


def _fix_cycle(
    status: lab_mod.LabStatus,
    opts: ReproOptions,
    runner: StepRecorder,
    ports: list[tuple[str, int]],
) -> None:
    result = runner.result
    if opts.scenario == "legacy-vlan":
        with runner.step("emulate"), HostJournal.open() as journal:
            result.setup = scenario.emulate_legacy_vlan(journal, status.lab, ports)
        fault.point("after-emulate")
    chain = firewall.chain_name(status.lab) if opts.emulated else None
    with runner.step("sweep-before") as st:
        ev = EvidenceOptions(tag="before-", emulation_chain=chain, capture_dir=opts.capture_dir)
        result.before = _sweep(status, opts.sweep_options(evidence=ev))
        st.detail = result.before.verdict.code
    bridge = status.bridge if opts.method == "bridge" else None
    with runner.step("fix") as st:
        rep = dom0.fix_apply(opts.method, bridge=bridge)
        result.fix_method = rep.method
        result.fix_changes = [c.to_json() for c in rep.changes]
        st.detail = "; ".join(f"{c.name} {c.before} -> {c.after}" for c in rep.changes)
    fault.point("after-fix")
    with runner.step("sweep-after") as st:
        ev = EvidenceOptions(tag="after-", emulation_chain=chain, capture_dir=opts.capture_dir)
        result.after = _sweep(status, opts.sweep_options(evidence=ev))
        st.detail = result.after.verdict.code
    result.verdict = verdict_for(result.before, result.after, opts.method, opts.emulated)


def _port_mtu(
    status: lab_mod.LabStatus,
    opts: ReproOptions,
    runner: StepRecorder,
    ports: list[tuple[str, int]],
) -> None:
    """Lower b's port MTU; sweep DF set/cleared with bridge-netfilter on/off; explain."""
    result = runner.result
    peer = status.guests[1]
    if not peer.host_port:
        raise HostChangeError(f"guest {peer.name} has no host port")
    with runner.step("setup"), HostJournal.open() as journal:
        result.setup.append(
            scenario.set_link_mtu(
                journal, peer.host_port, opts.port_mtu, f"scenario port-mtu: {peer.name}'s port"
            )
        )
    runs: dict[tuple[bool, str], SweepResult] = {}
    for brnf in (True, False):
        with HostJournal.open() as journal:
            result.setup += scenario.set_bridge_netfilter(
                journal, brnf, f"scenario port-mtu: bridge-netfilter {'on' if brnf else 'off'}"
            )
        for df in ("do", "dont"):
            name = f"sweep brnf={'on' if brnf else 'off'} df={df}"
            with runner.step(name) as st:
                ev = EvidenceOptions(
                    tag=f"brnf-{'on' if brnf else 'off'}-df-{df}-", capture_dir=opts.capture_dir
                )
                r = _sweep(status, opts.sweep_options(df=df, evidence=ev))
                runs[(brnf, df)] = r
                result.matrix_results.append((f"brnf {'on' if brnf else 'off'}, DF {df}", r))
                st.detail = _edge(r)
            result.matrix.append(
                {"bridge_netfilter": brnf, "df": df, "sweep": r.to_json(), "edge": _edge(r)}
            )
    result.before, result.after = runs[(True, "dont")], runs[(False, "dont")]
    result.fix_method = "bridge-nf-call-iptables=0 (bridge-netfilter off)"
    result.verdict = explain_port_mtu(runs, peer.host_port, opts.port_mtu, result.before.mtu)


def explain_port_mtu(
    runs: dict[tuple[bool, str], SweepResult], port: str, port_mtu: int, sender_mtu: int | None
) -> ReproVerdict:
    """What bridge-netfilter changed, read off the four measured sweeps."""

    def ip(v: int | None) -> str:
        return "none" if v is None else f"{v + IP_ICMP_HEADER}"

    on_do, on_dont = runs[(True, "do")], runs[(True, "dont")]
    off_do, off_dont = runs[(False, "do")], runs[(False, "dont")]
    parts = [
        f"{port} has MTU {port_mtu}, the sender {sender_mtu or '?'}.",
        f"Plain bridge (bridge-netfilter off): largest IP delivered {ip(off_dont.largest_passing)}"
        f" with DF cleared and {ip(off_do.largest_passing)} with DF set"
        + (
            f" — frames over MTU+4 are dropped whatever DF says (a tagged frame may carry "
            f"{port_mtu + 4} bytes of IP: the VLAN header does not count against the MTU)."
            if off_dont.largest_passing == off_do.largest_passing
            else "."
        ),
        f"With bridge-netfilter: DF set delivers up to IP {ip(on_do.largest_passing)}"
        + (
            " (the MTU itself: the VLAN allowance is lost once netfilter has the packet)"
            if on_do.largest_passing is not None
            and on_do.largest_passing + IP_ICMP_HEADER == port_mtu
            else ""
        )
        + f"; DF cleared delivers up to IP {ip(on_dont.largest_passing)}",
    ]
    refrag = on_dont.largest_passing is not None and (
        off_dont.largest_passing is None or on_dont.largest_passing > off_dont.largest_passing
    )
    if refrag:
        parts[-1] += (
            ": datagrams longer than the port MTU are refragmented by the bridge and delivered, "
            "while a plain bridge drops them"
        )
        if (
            on_dont.smallest_failing is not None
            and sender_mtu
            and (on_dont.smallest_failing + IP_ICMP_HEADER == sender_mtu + 1)
        ):
            parts[-1] += (
                f"; datagrams the sender itself fragmented (IP > {sender_mtu}) still die, because "
                f"their largest fragment ({sender_mtu}) exceeds the port MTU, and "
                "bridge-netfilter refragments only into pieces as large as those it received"
            )
        code = ReproCode.BRNF_REFRAGMENTS
    else:
        parts[-1] += "; bridge-netfilter made no difference in what got through"
        code = ReproCode.BRNF_NO_DIFFERENCE
    parts[-1] += "."
    parts.append("No ICMP error comes back in any case: a bridge drops silently.")
    named = [
        f"bridge-netfilter {'on' if brnf else 'off'}, DF {df}: {culprit}"
        for (brnf, df), r in runs.items()
        for rep in r.evidence[:1]
        if (culprit := rep.failing.culprit())
    ]
    if named:
        parts.append("The kernel dropped the first failing size in " + "; ".join(named) + ".")
    return ReproVerdict(code, " ".join(parts))
