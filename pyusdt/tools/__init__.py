"""pyusdt's ready-made tools: bpftrace programs (NAME.bt, next to this file) and the
code that adapts them to a probe library and turns bpftrace's output into a report.

Each NAME.bt is a complete bpftrace program, with the header convention of bpftrace's
own tools/ (what it does, usage, example output); its first header line says what the
tool does and is what `pyusdt-trace --list-tools` shows. It names the library as
`usdt:PYUSDT:` (pyusdt-trace fills in the path) and may take one positional parameter
($1): FUNC for latency, the traced PID for the tools that also use kernel tracepoints.

The programs are laid out so that `adapt()` can drop probes the library does not have
(an older pyusdt without PY_UNWIND / PY_THROW): each probe spec on a line of its own,
the action block from a line `{` to a line `}`.

The report side: bpftrace prints the tool's maps when it ends (`@map[k1, k2]: value`),
and a `Report` joins them into one sorted table; flow's event lines are indented per
thread and put in time order as they arrive.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

_HERE = os.path.dirname(os.path.abspath(__file__))

# Probes a tool can go without: its pairing then falls back to a stack that drops frames
# left unseen (see calls.bt).
OPTIONAL_PROBES = ("PY_RESUME", "PY_YIELD", "PY_THROW", "PY_UNWIND")


@dataclass
class Tool:
    name: str
    func: bool = False  # takes FUNC ($1)
    pid_param: bool = False  # takes the target's PID as $1
    top: bool = False  # a table: --top N applies
    strlen: int = 128  # BPFTRACE_STRLEN that fits its keys in the BPF stack
    optional: tuple[str, ...] = OPTIONAL_PROBES  # probes it can run without

    @property
    def path(self) -> str:
        return os.path.join(_HERE, f"{self.name}.bt")

    def source(self) -> str:
        with open(self.path, encoding="utf-8") as f:
            return f.read()

    def summary(self) -> str:
        """The header's first line, after the file name."""
        found = re.search(rf"^ \* {re.escape(self.name)}\.bt\s+(.*)$", self.source(), re.M)
        return found[1].strip() if found else ""


TOOLS = {
    t.name: t
    for t in (
        Tool("calls", top=True),
        Tool("flow"),
        Tool("latency", func=True),
        Tool("syscalls", pid_param=True, top=True),
        Tool("offcpu", pid_param=True, top=True),
        Tool("exceptions", top=True, strlen=96, optional=()),
    )
}
DEFAULT_TOP = 20


class ToolError(Exception):
    pass


def list_tools() -> str:
    width = max(len(n) for n in TOOLS)
    lines = []
    for tool in TOOLS.values():
        usage = " FUNC" if tool.func else ""
        lines.append(f"{(tool.name + usage):<{width + 5}}  {tool.summary()}")
    return "\n".join(lines) + "\n"


_SPEC_RE = re.compile(r"^usdt:[^:\s]*:pyusdt:(\w+),?$")


def probes_of(program: str) -> list[str]:
    return [m[1] for line in program.splitlines() if (m := _SPEC_RE.match(line.strip()))]


# Kernel probes of a tool (its tracepoints): bpftrace attaches them after the USDT probes
# declared before them (a tool's maps must be typed by those first, on bpftrace 0.17).
_KERNEL_PROBE_RE = re.compile(r"^(tracepoint|kprobe|kretprobe|kfunc|fentry|rawtracepoint):")
# How long a tool's target waits, once its USDT probes are enabled, for those to follow.
KERNEL_PROBES_SETTLE = 0.5


def settle_of(program: str) -> float:
    """Seconds the target waits after the tool's USDT probes are enabled: for bpftrace to
    attach the tool's kernel probes too (it prints nothing when it has)."""
    kernel = any(_KERNEL_PROBE_RE.match(line.strip()) for line in program.splitlines())
    return KERNEL_PROBES_SETTLE if kernel else 0.0


def has_qualname(available: dict[str, int] | set[str]) -> bool:
    """True if PY_START and PY_RESUME carry co_qualname (arg5)."""
    return isinstance(available, dict) and all(
        available.get(p, 0) >= 6 for p in ("PY_START", "PY_RESUME")
    )


def adapt(tool: Tool, program: str, available: dict[str, int] | set[str] | None) -> str:
    """The program for a library with these probes ({name: number of arguments}, or just
    the names): without the optional probes it lacks (ToolError if it lacks a needed one),
    and where PY_START and PY_RESUME have no qualname (arg5), with the function's name
    (arg0) on the lines marked `/* qualname */`. `available` None: unknown, leave the
    program as it is."""
    if available is None:
        return program
    if not has_qualname(available):
        program = "\n".join(
            ln.replace("arg5", "arg0") if "/* qualname */" in ln else ln
            for ln in program.splitlines()
        ) + ("\n" if program.endswith("\n") else "")
    missing = [p for p in dict.fromkeys(probes_of(program)) if p not in available]
    needed = [p for p in missing if p not in tool.optional]
    if needed:
        raise ToolError(
            f"tool {tool.name} needs the {', '.join(needed)} probe"
            f"{'s' if len(needed) > 1 else ''}, which this pyusdt does not have"
        )
    if not missing:
        return program
    lines = program.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        if not _SPEC_RE.match(lines[i].strip()):
            out.append(lines[i])
            i += 1
            continue
        group = []
        while i < len(lines) and _SPEC_RE.match(lines[i].strip()):
            group.append(lines[i])
            i += 1
        kept = [ln for ln in group if _SPEC_RE.match(ln.strip())[1] in available]
        if kept:
            kept = [ln.rstrip().rstrip(",") + "," for ln in kept]
            kept[-1] = kept[-1][:-1]
            out.extend(kept)
            continue
        # No probe left: drop the predicate and the block.
        while i < len(lines) and lines[i] != "}":
            i += 1
        i += 1
    return "\n".join(out) + "\n"


def bpftrace_args(tool: Tool, func: str | None, pid: int) -> list[str]:
    if tool.func:
        return [func or ""]
    if tool.pid_param:
        return [str(pid)]
    return []


def bpftrace_env(tool: Tool) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("BPFTRACE_STRLEN", str(tool.strlen))
    # Room for deep stacks of many threads (@frame is keyed by thread and depth).
    env.setdefault("BPFTRACE_MAP_KEYS_MAX", "65536")
    return env


# -- reports ----------------------------------------------------------------------------------


def human_ns(ns: float) -> str:
    if ns < 1000:
        return f"{ns:.0f} ns"
    for unit, scale in (("us", 1e3), ("ms", 1e6)):
        if ns < scale * 1000:
            return f"{ns / scale:.2f} {unit}"
    return f"{ns / 1e9:.3f} s"


_MAP_LINE = re.compile(r"^@(\w+)\[(.*)\]: (-?\d+)$")
_SCALAR_LINE = re.compile(r"^@(\w+): (-?\d+)$")


def parse_maps(lines: list[str], nkeys: dict[str, int]) -> dict[str, dict[tuple, int]]:
    """{map: {key tuple: value}} from bpftrace's map lines `@m[k1, k2, k3]: v`.

    A key is split on ", " into at most nkeys[map] fields, so only the last field (the
    file name) may itself contain ", "; fields that are decimal numbers become ints.
    """
    maps: dict[str, dict[tuple, int]] = {}
    for line in lines:
        m = _MAP_LINE.match(line)
        if not m or m[1] not in nkeys:
            continue
        parts = m[2].split(", ", nkeys[m[1]] - 1)
        key = tuple(int(p) if re.fullmatch(r"-?\d+", p) else p for p in parts)
        maps.setdefault(m[1], {})[key] = int(m[3])
    return maps


def _table(header: list[str], rows: list[list[str]], left: int) -> str:
    """Columns: the first `left` left-aligned, the rest right-aligned."""
    widths = [max(len(r[k]) for r in [header, *rows]) for k in range(len(header))]
    out = []
    for row in [header, *rows]:
        cells = [
            f"{c:<{w}}" if k < left else f"{c:>{w}}"
            for k, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out) + "\n"


def _where(line: object, file: object) -> str:
    return f"{file}:{line}"


def syscall_name(nr: int) -> str:
    if os.uname().machine == "x86_64":
        from pyusdt.tools._syscall_names import X86_64

        name = X86_64.get(nr)
        if name:
            return name
    return f"syscall_{nr}"


def report_calls(lines: list[str], top: int) -> str:
    maps = parse_maps(lines, {"calls": 3, "total_ns": 3, "max_ns": 3})
    counts = maps.get("calls", {})
    total, longest = maps.get("total_ns", {}), maps.get("max_ns", {})
    keys = sorted(counts, key=lambda k: (-total.get(k, 0), -counts[k], str(k)))[:top]
    rows = [
        [
            str(k[0]),
            _where(k[1], k[2]),
            str(counts[k]),
            human_ns(total.get(k, 0)),
            human_ns(total.get(k, 0) / counts[k]),
            human_ns(longest.get(k, 0)),
        ]
        for k in keys
    ]
    return _table(["FUNCTION", "FILE:LINE", "CALLS", "TOTAL", "MEAN", "MAX"], rows, 2)


def report_syscalls(lines: list[str], top: int) -> str:
    maps = parse_maps(lines, {"syscalls": 4, "total_ns": 4})
    counts, total = maps.get("syscalls", {}), maps.get("total_ns", {})
    keys = sorted(counts, key=lambda k: (-counts[k], -total.get(k, 0), str(k)))[:top]
    rows = []
    for k in keys:
        t = total.get(k)
        rows.append(
            [
                str(k[0]),
                _where(k[1], k[3]),
                syscall_name(int(k[2])),
                str(counts[k]),
                human_ns(t) if t is not None else "-",
                human_ns(t / counts[k]) if t is not None else "-",
            ]
        )
    return _table(["FUNCTION", "FILE:LINE", "SYSCALL", "COUNT", "TOTAL", "MEAN"], rows, 3)


def report_offcpu(lines: list[str], top: int) -> str:
    maps = parse_maps(lines, {"offcpu_ns": 3, "switches": 3})
    names: dict[int, str] = {}
    for line in lines:
        m = re.match(r"^@name\[(\d+)\]: (.*)$", line)
        if m:
            names[int(m[1])] = m[2]
    off, switches = maps.get("offcpu_ns", {}), maps.get("switches", {})
    # Join by text: two addresses may hold the same name.
    joined: dict[tuple, list[int]] = {}
    for k, ns in off.items():
        key = (names.get(k[0], f"?{k[0]:#x}"), k[1], names.get(k[2], f"?{k[2]:#x}"))
        acc = joined.setdefault(key, [0, 0])
        acc[0] += ns
        acc[1] += switches.get(k, 0)
    keys = sorted(joined, key=lambda k: (-joined[k][0], str(k)))[:top]
    rows = [
        [
            str(k[0]),
            _where(k[1], k[2]),
            human_ns(joined[k][0]),
            str(joined[k][1]),
            human_ns(joined[k][0] / max(joined[k][1], 1)),
        ]
        for k in keys
    ]
    return _table(["FUNCTION", "FILE:LINE", "OFF-CPU", "SWITCHES", "MEAN"], rows, 2)


def report_exceptions(lines: list[str], top: int) -> str:
    kinds = ("raised", "reraised", "handled", "escaped")
    maps = parse_maps(lines, dict.fromkeys(kinds, 4))
    keys: set[tuple] = set()
    for kind in kinds:
        keys |= set(maps.get(kind, {}))

    def counts(k: tuple) -> list[int]:
        return [maps.get(kind, {}).get(k, 0) for kind in kinds]

    ordered = sorted(keys, key=lambda k: (-sum(counts(k)), str(k)))[:top]
    rows = [[str(k[0]), _where(k[2], k[3]), str(k[1]), *map(str, counts(k))] for k in ordered]
    header = ["FUNCTION", "FILE:LINE", "EXCEPTION", "RAISED", "RERAISED", "HANDLED", "ESCAPED"]
    return _table(header, rows, 3)


def report_latency(lines: list[str]) -> str:
    hist: list[str] = []
    other: list[str] = []
    section = other
    for line in lines:
        if line.startswith("@"):
            section = hist if line.startswith("@ns:") else other
        if line.strip():
            section.append(line.rstrip())
    if not hist:
        hist = ["@ns:", "(no calls)"]
    return "\n".join(hist + [""] + other) + "\n"


REPORTS: dict[str, Callable[[list[str], int], str]] = {
    "calls": report_calls,
    "syscalls": report_syscalls,
    "offcpu": report_offcpu,
    "exceptions": report_exceptions,
}


@dataclass
class FlowEvent:
    ns: int
    tid: int
    depth: int
    kind: str
    name: str
    line: int
    dur: int | None
    file: str


_FLOW_START = re.compile(r"^(\d+) (\d+) (\d+) > (\S+) (-?\d+) (.*)$")
_FLOW_END = re.compile(r"^(\d+) (\d+) (\d+) < (\S+) (-?\d+) (\d+)$")


def parse_flow(line: str) -> FlowEvent | None:
    m = _FLOW_START.match(line)
    if m:
        return FlowEvent(int(m[1]), int(m[2]), int(m[3]), ">", m[4], int(m[5]), None, m[6])
    m = _FLOW_END.match(line)
    if m:
        return FlowEvent(int(m[1]), int(m[2]), int(m[3]), "<", m[4], int(m[5]), int(m[6]), "")
    return None


def format_flow(ev: FlowEvent, t0: int) -> str:
    indent = "  " * ev.depth
    if ev.kind == ">":
        what = f"{indent}-> {ev.name} ({ev.file}:{ev.line})"
    else:
        what = f"{indent}<- {ev.name} {human_ns(ev.dur or 0)}"
    return f"{(ev.ns - t0) / 1000:12.3f} {ev.tid:>8}  {what}"


@dataclass
class Report:
    """Consumes bpftrace's stdout for a tool; writes the report to `out`.

    `on_ready` is called at the tool's BEGIN line (all probes attached): that releases a
    target started by pyusdt-trace. The BEGIN line goes to stderr, so `out` holds only
    the report.
    """

    tool: Tool
    top: int
    out: TextIO
    on_ready: Callable[[], None] | None = None
    lines: list[str] = field(default_factory=list)
    _ready: bool = False
    _pending: list[tuple[float, FlowEvent]] = field(default_factory=list)
    _t0: int | None = None
    _names: dict[tuple[int, int], str] = field(default_factory=dict)  # flow: qualnames
    _done: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    HOLD = 0.2  # flow: seconds an event is held back, for events from other CPUs

    def feed(self, line: str) -> None:
        line = line.rstrip("\n")
        if not self._ready:
            if line.startswith("Attaching ") or not line:
                return
            self._ready = True
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
            if self.tool.name == "flow":
                self._write(f"{'TIME(us)':>12} {'TID':>8}  CALL\n")
                threading.Thread(target=self._flush_ticker, daemon=True).start()
            if self.on_ready is not None:
                self.on_ready()
            return
        if self.tool.name == "flow":
            ev = parse_flow(line)
            if ev is not None:
                with self._lock:
                    self._pending.append((time.monotonic(), ev))
                self.flush_flow(time.monotonic() - self.HOLD)
            return
        self.lines.append(line)

    def _write(self, text: str) -> None:
        try:
            self.out.write(text)
            self.out.flush()
        except (BrokenPipeError, ValueError):  # `pyusdt-trace ... | head`
            pass

    def _flush_ticker(self) -> None:
        """Flow: print held events while no new ones arrive (the program sleeps, say)."""
        while not self._done:
            time.sleep(self.HOLD / 2)
            self.flush_flow(time.monotonic() - self.HOLD)

    def flush_flow(self, before: float = float("inf")) -> None:
        with self._lock:
            if not self._pending:
                return
            if not any(t <= before for t, _ in self._pending):
                return
            # Everything that arrived before `before`, plus what is older than the newest
            # of those, in time order.
            self._pending.sort(key=lambda p: p[1].ns)
            limit = max(ev.ns for t, ev in self._pending if t <= before)
            ready = [p for p in self._pending if p[1].ns <= limit]
            self._pending = [p for p in self._pending if p[1].ns > limit]
            if self._t0 is None:
                self._t0 = ready[0][1].ns
            for _, ev in ready:
                # An end line has the name; its start, at the same depth, the qualname.
                if ev.kind == ">":
                    self._names[(ev.tid, ev.depth)] = ev.name
                else:
                    start = self._names.get((ev.tid, ev.depth), "")
                    if start == ev.name or start.endswith("." + ev.name):
                        ev.name = start
            text = "".join(format_flow(ev, self._t0) + "\n" for _, ev in ready)
        self._write(text)

    def finish(self) -> None:
        self._done = True
        if not self._ready:  # bpftrace failed before BEGIN (it said why): no report
            return
        if self.tool.name == "flow":
            self.flush_flow()
            return
        report = REPORTS.get(self.tool.name)
        if report is None:  # latency: bpftrace's histogram as it printed it, then the count
            self._write(report_latency(self.lines))
            return
        self._write(report(self.lines, self.top))
