"""`pyusdt-trace`: trace a Python program's pyusdt probes with bpftrace.

This file owns the `pyusdt-trace` console script. It has three modes:

- run: start the target as `python .../pyusdt/_trace_boot.py --wait=SECS ARGS...` (that is,
  `python -m pyusdt`, so the target's code only runs once bpftrace is attached), as the
  user who ran sudo unless --as-root, fill the probe library's path into the bpftrace
  program, run `bpftrace -p PID`, forward SIGINT/SIGTERM to the target and exit with its
  status;
- attach (-p PID): the same for a process that is already running and has pyusdt loaded;
  exits when that process does, or on SIGINT/SIGTERM;
- --ps: list the processes that have pyusdt loaded, with the probes attached in each.

Probe specs are rewritten to `usdt:/proc/PID/root/LIB:...`: that form attaches each probe
exactly once with `-p` on bpftrace 0.17 and 0.27 alike, and it reaches a library inside
another mount namespace (a container).
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

from pyusdt import PROBES, tools

PROG = "pyusdt-trace"
DEFAULT_WAIT = 10.0
USAGE = (
    f"usage: {PROG} [--bpftrace PATH] [--wait SECS] [--as-root] [--only GLOBS]"
    " (SCRIPT.bt | -e PROGRAM) [--] (script.py | -m module | -c code) [args...]\n"
    f"       {PROG} [--bpftrace PATH] -p PID (SCRIPT.bt | -e PROGRAM)\n"
    f"       {PROG} --tool NAME [FUNC] [--top N] [-o FILE] (-p PID | [--] program [args...])\n"
    f"       {PROG} --ps | --list-tools"
)
HELP = f"""{USAGE}

Run a Python program with `python -m pyusdt` and trace it with `bpftrace -p PID`.
The program starts only once bpftrace is attached, and everything it does is traced
(but nothing of pyusdt's own start-up code). Exits with the program's exit status,
after bpftrace has printed everything.

With -p PID, trace a running process that has pyusdt loaded (`python -m pyusdt ...` or
`import pyusdt`), also one in a container; exits when it does, or on Ctrl-C.
With --ps, list the processes that have pyusdt loaded: PID, Python version, the probes
attached now (from their semaphores; "(no-uprobe)" marks one whose semaphore is raised
with no uprobe on its sites, e.g. left by a killed bcc: pyusdt keeps it off) and the
command line.

With --tool NAME, run one of pyusdt's ready-made tools (bpftrace programs shipped in
pyusdt/tools/; --list-tools lists them) instead of a program of your own: calls, flow,
latency FUNC, syscalls, offcpu, exceptions. The program starts once the tool's BEGIN
has run and its USDT probes are enabled (bpftrace runs BEGIN before it attaches the
rest), and 0.5 s later for a tool with kernel probes (syscalls, offcpu: bpftrace attaches
those after the USDT probes and says nothing when it has); the tool's report is printed
when the trace ends, to stdout (or -o FILE), its "Tracing..." line to stderr.

In the bpftrace program, the probe library may be named as `usdt:PYUSDT:pyusdt:PROBE`,
`usdt:./libpyusdt.so:pyusdt:PROBE` (any path ending in libpyusdt*.so) or
`usdt:*:pyusdt:PROBE`; each is replaced by /proc/PID/root/ + the path of the library the
target loaded, which attaches every probe once. Probes: PY_START, PY_RESUME, PY_RETURN,
PY_YIELD, CALL, LINE, PY_UNWIND, PY_THROW, RAISE, RERAISE, EXCEPTION_HANDLED, C_RETURN,
C_RAISE (see the README).

options:
  -e PROGRAM        the bpftrace program text (instead of SCRIPT.bt)
  -p PID            trace the running process PID instead of starting a program
  --ps              list the processes that have pyusdt loaded, and exit
  --tool NAME       run the ready-made tool NAME (latency takes FUNC, a function name)
  --top N           with --tool calls/syscalls/offcpu/exceptions: show the first N rows
                    (default 20)
  -o FILE           with --tool: write the report to FILE instead of stdout
  --list-tools      list the ready-made tools, and exit
  --bpftrace PATH   the bpftrace binary (default: bpftrace on PATH)
  --wait SECS       how long the target waits for bpftrace to attach before running
                    untraced (default {DEFAULT_WAIT:g})
  --only GLOBS      trace only code whose module, qualname, module.qualname or file
                    matches one of these comma-separated globs (PYUSDT_FILTER for the
                    program; other code returns DISABLE and costs nothing)
  --as-root         under sudo, run the program as root too; by default it runs as the
                    user who ran sudo (SUDO_UID/SUDO_GID, their groups, HOME, USER)
  -h, --help        show this help

Everything after `--` (or after SCRIPT.bt / -e PROGRAM) is passed to `python -m pyusdt`.
Needs root (bpftrace does); bpftrace always runs as root. RLIMIT_MEMLOCK is raised for
bpftrace as far as allowed; on Linux 5.11+ (BPF memory is charged to the memory cgroup,
not to that limit) bpftrace 0.17's "couldn't set RLIMIT_MEMLOCK" error is not shown.

examples:
  sudo {PROG} -e 'usdt:PYUSDT:pyusdt:PY_START {{ @[str(arg0)] = count(); }}' -- app.py
  sudo {PROG} -p 1234 sample.bt
  sudo {PROG} --ps
  sudo {PROG} --tool calls --top 10 -- app.py
  sudo {PROG} --tool latency handle_request -p 1234
"""

# usdt:<lib>: or U:<lib>: where <lib> is PYUSDT, `*` / empty (with provider pyusdt), or
# any path whose file name is libpyusdt*.so (optionally quoted).
_PROBE_LIB_RE = re.compile(
    r"""(?<![\w$])(usdt|U):(?:PYUSDT|"[^"]*libpyusdt[^"/]*\.so"|[^\s:,{}"]*libpyusdt[^\s:,{}/"]*\.so)(?=:)"""
    r"""|(?<![\w$])(usdt|U):\*?(?=:pyusdt:)"""
)

# The target runs `python -m pyusdt ARGS` through this file (see its docstring).
_BOOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_trace_boot.py")

# The probes, in bit order.
_PROBES = PROBES

# bpftrace sets RLIMIT_MEMLOCK to infinity, and says so on stderr when it may not (0.17 as
# an ERROR, 0.27 as a WARNING).
_MEMLOCK_ERROR = re.compile(r"^(ERROR|WARNING): .*couldn't set RLIMIT_MEMLOCK")


class UsageError(Exception):
    pass


class OneLineError(UsageError):
    """A usage error reported in one line (no usage text after it)."""


def _error(message: str) -> None:
    sys.stderr.write(f"{PROG}: {message}\n")
    sys.stderr.flush()


def _fail(message: str, status: int) -> None:
    _error(message)
    sys.exit(status)


def rewrite_program(text: str, lib: str) -> str:
    """Put the library path `lib` into every pyusdt probe spec of a bpftrace program."""
    if not re.fullmatch(r"[\w./+-]+", lib):
        lib = '"' + lib.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return _PROBE_LIB_RE.sub(lambda m: f"{m.group(1) or m.group(2)}:{lib}", text)


def probe_lib(pid: int, lib: str) -> str:
    """The path by which bpftrace -p PID attaches once to `lib` (a path as PID sees it)."""
    return f"/proc/{pid}/root{lib}"


def probes_used(program: str) -> list[str] | None:
    """The pyusdt probe names a (rewritten) program attaches to, or None if not plain names.

    With the names, the target starts as soon as exactly these are enabled; without
    (wildcards, say), it waits until the tracer's set of attached probes stops changing.
    """
    names = re.findall(r":pyusdt:([^\s,{/:]*)", program)
    if not names or any(name not in _PROBES for name in names):
        return None
    return sorted(set(names), key=_PROBES.index)


@dataclass
class Options:
    bpftrace: str = "bpftrace"
    script: str | None = None
    program: str | None = None
    wait: float | None = None
    pid: int | None = None
    ps: bool = False
    as_root: bool = False
    only: str | None = None
    tool: str | None = None
    func: str | None = None
    top: int | None = None
    output: str | None = None
    list_tools: bool = False
    python_args: list[str] = field(default_factory=list)


def parse_args(argv: list[str]) -> Options:
    opts = Options()
    given: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if arg in ("-h", "--help"):
            sys.stdout.write(HELP)
            sys.exit(0)
        elif arg in ("--ps", "--as-root", "--list-tools"):
            given.append(arg)
            if arg == "--ps":
                opts.ps = True
            elif arg == "--list-tools":
                opts.list_tools = True
            else:
                opts.as_root = True
        elif opts.tool is not None and (arg in ("-m", "-c") or arg[:2] in ("-m", "-c")):
            break  # the program: `--tool calls -m module`
        elif name in ("--bpftrace", "--wait", "--tool", "--top", "--only") or arg in (
            "-e",
            "-p",
            "-o",
        ):
            if not eq or arg in ("-e", "-p", "-o"):
                if i + 1 >= len(argv):
                    raise UsageError(f"{arg} needs a value")
                i += 1
                value = argv[i]
            given.append(name)
            if arg == "-e":
                opts.program = value
            elif arg == "-p":
                if not value.isdigit() or int(value) <= 0:
                    raise UsageError(f"invalid PID: {value!r}")
                opts.pid = int(value)
            elif name == "--bpftrace":
                opts.bpftrace = value
            elif name == "--only":
                if not value.strip(", "):
                    raise UsageError(f"invalid --only value: {value!r}")
                opts.only = value
            elif name == "--tool":
                if value not in tools.TOOLS:
                    raise OneLineError(f"unknown tool: {value!r} (tools: {', '.join(tools.TOOLS)})")
                opts.tool = value
            elif name == "--top":
                if not value.isdigit() or int(value) <= 0:
                    raise OneLineError(f"invalid --top value: {value!r} (a positive number)")
                opts.top = int(value)
            elif arg == "-o":
                opts.output = value
            else:
                try:
                    opts.wait = float(value)
                except ValueError:
                    opts.wait = -1.0
                if not 0 <= opts.wait < float("inf"):
                    raise UsageError(f"invalid --wait value: {value!r}")
        elif arg == "--":
            i += 1
            break
        elif arg.startswith("-") and arg != "-" and opts.program is None and opts.script is None:
            raise UsageError(f"unknown option: {arg}")
        elif opts.tool is not None:
            if tools.TOOLS[opts.tool].func and opts.func is None:
                opts.func = arg
            else:
                break  # the program
        elif opts.program is None and opts.script is None:
            opts.script = arg
        else:
            break
        i += 1
    opts.python_args = argv[i:]
    for flag in ("--ps", "--list-tools"):
        if flag in given:
            if len(given) > 1 or opts.script is not None or opts.python_args:
                raise UsageError(f"{flag} takes no other arguments")
            return opts
    if opts.tool is not None:
        tool = tools.TOOLS[opts.tool]
        if opts.script is not None or opts.program is not None:
            raise OneLineError("--tool runs its own bpftrace program: no SCRIPT.bt or -e")
        if tool.func and not opts.func:
            raise OneLineError(f"--tool {tool.name} needs FUNC, the name of a function")
        if opts.top is not None and not tool.top:
            raise OneLineError(f"--top does not apply to --tool {tool.name}")
        opts.program = tool.source()
    elif "--top" in given or "-o" in given:
        raise OneLineError(f"{'--top' if '--top' in given else '-o'} is for --tool")
    if opts.program is None and opts.script is None:
        raise UsageError("a bpftrace script or -e PROGRAM is required")
    if opts.pid is not None:
        for option in ("--wait", "--as-root", "--only"):
            if option in given:
                raise UsageError(f"{option} is for starting a program, not for -p PID")
        if opts.python_args:
            raise UsageError(
                f"-p PID traces a running process: no program to run ({opts.python_args[0]!r})"
            )
    elif not opts.python_args:
        raise UsageError("no Python program to run (give it after `--`), or -p PID")
    if opts.wait is None:
        opts.wait = DEFAULT_WAIT
    return opts


def _find_bpftrace(name: str) -> str | None:
    if os.sep in name:
        return name if os.path.isfile(name) and os.access(name, os.X_OK) else None
    return shutil.which(name)


# -- /proc and ELF -----------------------------------------------------------------------------


@dataclass
class Mapping:
    start: int
    end: int
    offset: int
    path: str  # as the process sees it, without " (deleted)"


def _is_probe_lib(path: str) -> bool:
    name = os.path.basename(path)
    return name.startswith("libpyusdt") and ".so" in name


def _maps(pid: int) -> list[Mapping]:
    """The file mappings of process `pid` (OSError if it cannot be read)."""
    out = []
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            parts = line.rstrip("\n").split(None, 5)
            if len(parts) < 6 or not parts[5].startswith("/"):
                continue
            start, _, end = parts[0].partition("-")
            path = parts[5].removesuffix(" (deleted)")
            out.append(Mapping(int(start, 16), int(end, 16), int(parts[2], 16), path))
    return out


def _mapped_lib(pid: int) -> str | None:
    """The libpyusdt shared object mapped into process `pid` (its path there), if any yet."""
    try:
        for m in _maps(pid):
            if _is_probe_lib(m.path):
                return m.path
    except OSError:
        pass
    return None


def _u(data: bytes, fmt: str, offset: int) -> tuple:
    return struct.unpack_from(fmt, data, offset)


def stapsdt_semaphores(
    data: bytes,
    provider: str = "pyusdt",
    nargs: dict[str, int] | None = None,
    sites: dict[str, list[int]] | None = None,
) -> tuple[int, dict[str, int]]:
    """(link-time vaddr of the first PT_LOAD, {probe: link-time semaphore vaddr}) of an ELF.

    Reads the SystemTap SDT notes (section .note.stapsdt, note type 3): each note's
    descriptor is the probe's pc, the link-time address of .stapsdt.base and the
    semaphore's address, then "provider\\0name\\0args\\0". Probes without a semaphore are
    left out. The semaphore (and pc) is corrected by how far .stapsdt.base moved
    (prelink). `nargs` and `sites`, when given, receive each probe's argument count and
    its sites' link-time addresses (one note per site).
    """
    if data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] not in (1, 2):
        raise ValueError("not an ELF file")
    is64 = data[4] == 2
    e = "<" if data[5] == 1 else ">"
    w = "Q" if is64 else "I"
    if is64:
        phoff, shoff = _u(data, e + "QQ", 32)
        phentsize, phnum, shentsize, shnum, shstrndx = _u(data, e + "HHHHH", 54)
    else:
        phoff, shoff = _u(data, e + "II", 28)
        phentsize, phnum, shentsize, shnum, shstrndx = _u(data, e + "HHHHH", 42)

    first_load = None
    for k in range(phnum):
        off = phoff + k * phentsize
        if is64:
            p_type, _flags, p_offset, p_vaddr, _p, _fs, _ms, p_align = _u(data, e + "IIQQQQQQ", off)
        else:
            p_type, p_offset, p_vaddr, _p, _fs, _ms, _flags, p_align = _u(data, e + "8I", off)
        if p_type == 1 and p_offset == 0:  # PT_LOAD mapping the file's start
            first_load = p_vaddr & ~(max(p_align, 1) - 1)
            break
    if first_load is None:
        raise ValueError("no PT_LOAD segment at file offset 0")

    sections = []
    for k in range(shnum):
        off = shoff + k * shentsize
        if is64:
            name, stype, _fl, addr, offset, size = _u(data, e + "IIQQQQ", off)
        else:
            name, stype, _fl, addr, offset, size = _u(data, e + "6I", off)
        sections.append((name, stype, addr, offset, size))
    strtab = sections[shstrndx][3] if shstrndx < len(sections) else 0

    def section_name(s):
        return data[strtab + s[0] : data.index(b"\0", strtab + s[0])].decode(errors="replace")

    by_name = {section_name(s): s for s in sections}
    base = by_name.get(".stapsdt.base")
    notes = by_name.get(".note.stapsdt")
    found: dict[str, int] = {}
    if notes is None:
        return first_load, found
    pos, end = notes[3], notes[3] + notes[4]
    addr_size = 8 if is64 else 4
    while pos + 12 <= end:
        namesz, descsz, ntype = _u(data, e + "III", pos)
        name_at = pos + 12
        desc_at = name_at + ((namesz + 3) & ~3)
        pos = desc_at + ((descsz + 3) & ~3)
        if ntype != 3 or data[name_at : name_at + namesz].rstrip(b"\0") != b"stapsdt":
            continue
        pc, note_base, sem = _u(data, e + w * 3, desc_at)
        prov, probe, argspec = (
            data[desc_at + 3 * addr_size : desc_at + descsz].split(b"\0") + [b""]
        )[:3]
        if prov.decode(errors="replace") != provider or not sem:
            continue
        if nargs is not None:  # "8@%rdi -4@%edx ...": one operand per argument
            nargs[probe.decode(errors="replace")] = len(argspec.split())
        if base is not None:
            sem += base[2] - note_base
            pc += base[2] - note_base
        found[probe.decode(errors="replace")] = sem
        if sites is not None:
            sites.setdefault(probe.decode(errors="replace"), []).append(pc)
    return first_load, found


# What a probe site holds while no uprobe is on it: pyusdt's 1-byte and 5-byte x86-64 nops
# (0x0f starts only the latter) and the aarch64 nop. A uprobe replaces it with int3 or a
# call (x86-64) or brk (aarch64).
_SITE_NOPS = (b"\x90", b"\x0f\x1f\x44\x00\x00", b"\x1f\x20\x03\xd5")


def attached_probes(
    pid: int, maps: list[Mapping] | None = None, unpatched: set[str] | None = None
) -> dict[str, int] | None:
    """{probe: semaphore count} of the pyusdt probes attached in process `pid` now.

    The semaphores' addresses come from the library's SDT notes, moved by the address at
    which the process mapped the library (from /proc/PID/maps); the counts are read from
    /proc/PID/mem. None if the library or the memory cannot be read. `unpatched`, when
    given, receives the probes whose semaphore is raised but none of whose sites holds a
    uprobe (a tracer that died without lowering it, or one still attaching): pyusdt keeps
    those off.
    """
    try:
        maps = _maps(pid) if maps is None else maps
    except OSError:
        return None
    libs = [m for m in maps if _is_probe_lib(m.path)]
    if not libs:
        return None
    lib = libs[0]
    head = min((m for m in libs if m.path == lib.path), key=lambda m: (m.offset, m.start))
    data = None
    # map_files reaches the very file mapped (even deleted or in another mount namespace).
    for path in (f"/proc/{pid}/map_files/{head.start:x}-{head.end:x}", probe_lib(pid, lib.path)):
        try:
            with open(path, "rb") as f:
                data = f.read()
            break
        except OSError:
            continue
    if data is None:
        return None
    sites: dict[str, list[int]] = {}
    try:
        first_load, sems = stapsdt_semaphores(data, sites=sites)
    except (ValueError, struct.error, IndexError):
        return None
    bias = head.start - head.offset - first_load
    counts = {}
    try:
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            for probe, sem in sems.items():
                mem.seek(bias + sem)
                raw = mem.read(2)
                if len(raw) != 2:
                    return None
                counts[probe] = int.from_bytes(raw, sys.byteorder)
                if unpatched is not None and counts[probe]:
                    held = []
                    for pc in sites.get(probe, []):
                        mem.seek(bias + pc)
                        held.append(mem.read(5))
                    if all(code.startswith(_SITE_NOPS) for code in held):
                        unpatched.add(probe)
    except (OSError, ValueError, OverflowError):
        return None
    return counts


def python_version(pid: int, maps: list[Mapping]) -> str:
    """The Python version of process `pid`: from the extension's ABI tag (cpython-312,
    cpython-313t), else the mapped libpython, else the executable's name; "?" if none."""
    for m in maps:
        tag = re.search(r"\.cpython-(\d)(\d+)(t?)-", os.path.basename(m.path))
        if _is_probe_lib(m.path) and tag:
            return f"{tag[1]}.{tag[2]}{tag[3]}"
    for m in maps:
        lib = re.fullmatch(r"libpython(\d\.\d+t?)\.so.*", os.path.basename(m.path))
        if lib:
            return lib[1]
    try:
        exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        exe = ""
    found = re.fullmatch(r"python(\d\.\d+t?)", exe.removesuffix(" (deleted)"))
    return found[1] if found else "?"


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return "?"
    return " ".join(a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0"))


def _format_probes(counts: dict[str, int] | None, unpatched: set[str] | None = None) -> str:
    """The attached probes' names; a semaphore counts uprobes, not tracers, so it is
    1 however many tracers attached the probe. A probe whose semaphore is raised with no
    uprobe on its sites is marked `(no-uprobe)`: pyusdt does not enable it."""
    if counts is None:
        return "?"
    unpatched = unpatched or set()
    names = (p + ("(no-uprobe)" if p in unpatched else "") for p in _PROBES if counts.get(p))
    return ",".join(names) or "-"


def list_processes() -> list[tuple[int, str, str, str]]:
    """(pid, python version, attached probes, command line) of processes with pyusdt."""
    rows = []
    for entry in sorted((e for e in os.listdir("/proc") if e.isdigit()), key=int):
        pid = int(entry)
        if pid == os.getpid():  # this very script has pyusdt loaded too
            continue
        try:
            maps = _maps(pid)
        except OSError:
            continue
        if not any(_is_probe_lib(m.path) for m in maps):
            continue
        rows.append(
            (
                pid,
                python_version(pid, maps),
                _format_probes(attached_probes(pid, maps, unpatched := set()), unpatched),
                _cmdline(pid),
            )
        )
    return rows


def _ps() -> None:
    rows = [("PID", "PYTHON", "PROBES", "COMMAND")]
    rows += [(str(pid), v, p, c) for pid, v, p, c in list_processes()]
    widths = [max(len(r[k]) for r in rows) for k in range(3)]
    for row in rows:
        sys.stdout.write(
            f"{row[0]:>{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}\n"
        )


# -- running bpftrace --------------------------------------------------------------------------


def _raise_memlock() -> None:
    """RLIMIT_MEMLOCK to infinity for bpftrace (children inherit it), or as high as allowed.

    Without CAP_SYS_RESOURCE (some containers) the hard limit cannot be raised: then the
    soft limit goes up to the hard one.
    """
    inf = resource.RLIM_INFINITY
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (inf, inf))
    except (ValueError, OSError):
        try:
            _soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))
        except (ValueError, OSError):
            pass


def _memcg_accounts_bpf() -> bool:
    """Linux 5.11+ charges BPF memory to the memory cgroup; RLIMIT_MEMLOCK is not used."""
    found = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return bool(found) and (int(found[1]), int(found[2])) >= (5, 11)


class Tracer:
    """bpftrace -p PID FILE [ARGS], stdout shared with us (or, for a tool, read line by
    line into its Report); stderr passed on line by line, without bpftrace 0.17's
    RLIMIT_MEMLOCK error where that limit does not matter."""

    def __init__(
        self,
        bpftrace: str,
        pid: int,
        bt_file: str,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        report: tools.Report | None = None,
    ):
        _raise_memlock()
        self.report = report
        # A tool is pyusdt's own program, written for bpftrace 0.17 and newer alike: the
        # newer ones' warnings about it (while loops deprecated, sign casts) are noise there.
        quiet = ["--no-warnings"] if report is not None else []
        self.proc = subprocess.Popen(
            [bpftrace, *quiet, "-p", str(pid), bt_file, *(args or [])],
            process_group=0,
            stderr=subprocess.PIPE,
            stdout=subprocess.PIPE if report is not None else None,
            env=env,
        )
        self._drop_memlock = _memcg_accounts_bpf()
        self._copier = threading.Thread(target=self._copy_stderr, daemon=True)
        self._copier.start()
        self._reader = None
        if report is not None:
            self._reader = threading.Thread(target=self._read_stdout, daemon=True)
            self._reader.start()

    def _copy_stderr(self) -> None:
        assert self.proc.stderr is not None
        out = sys.stderr.buffer
        for line in self.proc.stderr:
            if self._drop_memlock and _MEMLOCK_ERROR.match(line.decode(errors="replace")):
                continue
            out.write(line)
            out.flush()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None and self.report is not None
        for line in self.proc.stdout:
            self.report.feed(line.decode(errors="replace"))

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float | None = None) -> int:
        status = self.proc.wait(timeout)
        self._copier.join()
        if self._reader is not None:
            self._reader.join()
            self._reader = None
            assert self.report is not None
            self.report.finish()
        return status

    def stop(self, sig: int, grace: float) -> int:
        _stop(self.proc, sig, grace)
        return self.wait()


def _stop(proc: subprocess.Popen, sig: int, grace: float) -> None:
    """Send `sig` to proc if it still runs; SIGKILL it if it is still running after `grace`.

    The signal is repeated every half second meanwhile: bpftrace 0.17 now and then
    misses a SIGINT while it sits in epoll_wait, and a killed bpftrace prints nothing.
    """
    deadline = time.monotonic() + grace
    while proc.poll() is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            proc.kill()
            proc.wait()
            return
        try:
            proc.send_signal(sig)
            proc.wait(min(0.5, remaining))
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def _exit_like(returncode: int) -> None:
    """Exit with the target's status; if a signal killed it, die by the same signal."""
    sys.stdout.flush()
    sys.stderr.flush()
    if returncode < 0:
        sig = -returncode
        try:
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
        except (OSError, ValueError):
            pass
        sys.exit(128 + sig)
    sys.exit(returncode)


def _write_program(tmpdir: str, script: str | None, program: str) -> str:
    bt_file = os.path.join(tmpdir, os.path.basename(script) if script else "program.bt")
    with open(bt_file, "w", encoding="utf-8") as f:
        f.write(program)
    return bt_file


# -- tools -------------------------------------------------------------------------------------


def library_probes(pid: int, lib: str) -> dict[str, int] | None:
    """{probe: number of arguments} of the pyusdt probes in the library `lib` that process
    `pid` mapped."""
    for path in (probe_lib(pid, lib), lib):
        nargs: dict[str, int] = {}
        try:
            with open(path, "rb") as f:
                stapsdt_semaphores(f.read(), nargs=nargs)
            return nargs
        except (OSError, ValueError, struct.error, IndexError):
            continue
    return None


@dataclass
class _Setup:
    """What bpftrace runs: the program, its positional parameters, environment, report."""

    program: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None
    report: tools.Report | None = None


def _setup(opts: Options, pid: int, lib: str, program: str, on_ready=None, out=None) -> _Setup:
    """For --tool: the tool's program without the optional probes `lib` lacks (a one-line
    error, exit 2, if it lacks one the tool needs), and its report."""
    program = rewrite_program(program, probe_lib(pid, lib))
    if opts.tool is None:
        return _Setup(program)
    tool = tools.TOOLS[opts.tool]
    try:
        program = tools.adapt(tool, program, library_probes(pid, lib))
    except tools.ToolError as exc:
        raise OneLineError(f"{exc} (process {pid})") from None
    report = tools.Report(tool, opts.top or tools.DEFAULT_TOP, out or sys.stdout, on_ready)
    return _Setup(
        program, tools.bpftrace_args(tool, opts.func, pid), tools.bpftrace_env(tool), report
    )


def _open_output(opts: Options):
    if opts.output is None:
        return None
    try:
        return open(opts.output, "w", encoding="utf-8")
    except OSError as exc:
        _fail(f"cannot write {opts.output}: {exc.strerror or exc}", 1)


# -- run mode ----------------------------------------------------------------------------------


@dataclass
class User:
    uid: int
    gid: int
    groups: list[int]
    env: dict[str, str]


def invoking_user(as_root: bool) -> User | None:
    """Under sudo (we are root, SUDO_UID names another user): whom to run the target as."""
    uid, gid = os.environ.get("SUDO_UID", ""), os.environ.get("SUDO_GID", "")
    if as_root or os.geteuid() != 0 or not uid.isdigit() or int(uid) == 0:
        return None
    import pwd

    try:
        pw = pwd.getpwuid(int(uid))
    except KeyError:
        pw = None
    if not gid.isdigit():
        if pw is None:
            _fail(f"SUDO_UID={uid} but no SUDO_GID and no such user (try --as-root)", 2)
        gid = str(pw.pw_gid)
    env = dict(os.environ)
    groups = [int(gid)]
    if pw is not None:
        env.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name)
        try:
            groups = os.getgrouplist(pw.pw_name, int(gid))
        except OSError:
            pass
    return User(int(uid), int(gid), groups, env)


def _spawn_target(user: User | None, args: list[str], gate: int | None = None) -> subprocess.Popen:
    """Start the target; with `gate` (a pipe's read end), it also waits for a byte (or
    EOF) on that pipe before its first line (see _trace_boot.py)."""
    cmd = [sys.executable, _BOOT, *args]
    env = user.env if user is not None else None
    fds: tuple[int, ...] = ()
    if gate is not None:
        env = dict(env if env is not None else os.environ)
        env["PYUSDT_TRACE_GATE"] = str(gate)
        fds = (gate,)
    if user is None:
        return subprocess.Popen(cmd, env=env, pass_fds=fds)
    try:
        return subprocess.Popen(
            cmd,
            user=user.uid,
            group=user.gid,
            extra_groups=user.groups,
            env=env,
            pass_fds=fds,
        )
    except PermissionError as exc:
        _fail(
            f"cannot run {exc.filename or sys.executable} as uid {user.uid} (the user who ran"
            f" sudo): {exc.strerror}; make it readable by that user, or use --as-root",
            1,
        )
        raise


def _wait_for_lib(child: subprocess.Popen, timeout: float) -> str | None:
    """Wait until the target has loaded the probe library; None if it exited first."""
    deadline = time.monotonic() + timeout
    while child.poll() is None:
        lib = _mapped_lib(child.pid)
        if lib is not None:
            return lib
        if time.monotonic() > deadline:
            break
        time.sleep(0.005)
    if child.poll() is None:
        # Could not see it (no /proc?): use the library this interpreter would load.
        import pyusdt

        return os.path.abspath(pyusdt.lib_path())
    return None


def run(opts: Options, bpftrace: str, program: str) -> None:
    # Ctrl-C at a terminal reaches the target directly (same process group); anything else
    # sent to us is forwarded. bpftrace runs in its own process group so that it keeps
    # tracing until the target has finished, then flushes its output.
    child: subprocess.Popen | None = None

    def forward(signum, _frame):
        if child is None or child.poll() is not None:
            return
        if signum == signal.SIGINT:
            try:
                tty = os.open("/dev/tty", os.O_RDONLY)
                try:
                    if os.tcgetpgrp(tty) == os.getpgrp():
                        return  # the terminal sent it to the target too
                finally:
                    os.close(tty)
            except OSError:
                pass
        child.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)

    # Which probes to wait for can be known before the library's path is.
    probes = probes_used(rewrite_program(program, "/libpyusdt.so"))
    options = [f"--wait={opts.wait:g}"] + ([f"--probes={','.join(probes)}"] if probes else [])
    if opts.only is not None:
        # Read when the target loads pyusdt (not `--only`, which re-executes it).
        os.environ["PYUSDT_FILTER"] = opts.only
    # A tool's target also waits for the tool's BEGIN line (every probe attached).
    gate_r, gate_w = os.pipe() if opts.tool is not None else (None, None)
    gate = [gate_w]
    gate_probes: list[str] = []
    gate_settle = [0.0]

    def release() -> None:
        """Let the target run: its line names the probes it waits for, then how long to
        wait after they are enabled (see _trace_boot)."""
        if gate[0] is not None:
            fd, gate[0] = gate[0], None
            try:
                os.write(fd, f"{','.join(gate_probes)} {gate_settle[0]:g}\n".encode())
            except OSError:
                pass
            os.close(fd)

    out = _open_output(opts)
    child = _spawn_target(invoking_user(opts.as_root), [*options, *opts.python_args], gate_r)
    if gate_r is not None:
        os.close(gate_r)
    tmpdir = None
    try:
        lib = _wait_for_lib(child, timeout=max(opts.wait or 0.0, 5.0))
        if lib is None:  # the target failed before loading pyusdt (it said why)
            _exit_like(child.wait())
        try:
            setup = _setup(opts, child.pid, lib, program, release, out)
        except OneLineError as exc:
            _stop(child, signal.SIGKILL, 1.0)
            _fail(str(exc), 2)
        gate_probes.extend(tools.probes_of(setup.program))
        gate_settle[0] = tools.settle_of(setup.program)
        tmpdir = tempfile.mkdtemp(prefix="pyusdt-trace-")
        bt_file = _write_program(tmpdir, opts.script, setup.program)
        try:
            tracer = Tracer(bpftrace, child.pid, bt_file, setup.args, setup.env, setup.report)
        except OSError as exc:
            _error(f"cannot run {bpftrace}: {exc.strerror or exc}")
            _stop(child, signal.SIGKILL, 1.0)
            sys.exit(1)

        while True:
            status = child.poll()
            if status is not None:
                break
            tracer_status = tracer.poll()
            if tracer_status is not None and tracer_status != 0:
                # bpftrace failed. If the target just exited, that was probably why.
                try:
                    status = child.wait(0.25)
                    break
                except subprocess.TimeoutExpired:
                    pass
                # A bad program, no permission, ...: bpftrace said why.
                _stop(child, signal.SIGTERM, 1.0)
                tracer.wait()
                sys.exit(tracer_status if tracer_status > 0 else 1)
            time.sleep(0.01)

        # bpftrace -p exits when the target does; give it time to flush, then nudge it.
        try:
            tracer.wait(2.0)
        except subprocess.TimeoutExpired:
            tracer.stop(signal.SIGINT, 5.0)
        if out is not None:
            out.close()
        _exit_like(status)
    finally:
        release()
        if child.poll() is None:
            _stop(child, signal.SIGKILL, 1.0)
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)


# -- attach mode -------------------------------------------------------------------------------


def _running(pid: int) -> bool:
    """True while `pid` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] not in (b"Z", b"X")


def attach(opts: Options, lib: str, bpftrace: str, program: str) -> None:
    pid = opts.pid
    assert pid is not None
    stop_requested: list[int] = []

    def request_stop(signum, _frame):
        stop_requested.append(signum)

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        setup = _setup(opts, pid, lib, program, out=_open_output(opts))
    except OneLineError as exc:
        _fail(str(exc), 2)
    tmpdir = tempfile.mkdtemp(prefix="pyusdt-trace-")
    try:
        bt_file = _write_program(tmpdir, opts.script, setup.program)
        try:
            tracer = Tracer(bpftrace, pid, bt_file, setup.args, setup.env, setup.report)
        except OSError as exc:
            _fail(f"cannot run {bpftrace}: {exc.strerror or exc}", 1)
        gone_since = None
        while tracer.poll() is None:
            if stop_requested:
                status = tracer.stop(signal.SIGINT, 5.0)
                break
            if not _running(pid):
                # bpftrace -p exits when the target does; give it time, then nudge it.
                gone_since = gone_since or time.monotonic()
                if time.monotonic() - gone_since > 2.0:
                    status = tracer.stop(signal.SIGINT, 5.0)
                    break
            time.sleep(0.01)
        else:
            status = tracer.wait()
        sys.stdout.flush()
        sys.exit(status if status > 0 else 1 if status < 0 else 0)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        opts = parse_args(argv)
    except OneLineError as exc:
        _fail(str(exc), 2)
    except UsageError as exc:
        _error(str(exc))
        sys.stderr.write(f"{USAGE}\nTry '{PROG} --help' for more information.\n")
        sys.exit(2)
    if opts.ps:
        _ps()
        return
    if opts.list_tools:
        sys.stdout.write(tools.list_tools())
        return
    if opts.pid is not None and not os.path.exists(f"/proc/{opts.pid}"):
        _fail(f"no such process: {opts.pid}", 2)

    bpftrace = _find_bpftrace(opts.bpftrace)
    if bpftrace is None:
        _fail(f"bpftrace not found: {opts.bpftrace} (install bpftrace or pass --bpftrace PATH)", 1)
    if os.geteuid() != 0:
        _fail("bpftrace needs root: run this as root (e.g. with sudo)", 1)
    program = opts.program
    if program is None:
        try:
            with open(opts.script, encoding="utf-8") as f:
                program = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            _fail(f"cannot read {opts.script}: {exc.strerror or exc}", 1)

    if opts.pid is None:
        run(opts, bpftrace, program)
        return
    try:
        lib = None
        for m in _maps(opts.pid):
            if _is_probe_lib(m.path):
                lib = m.path
                break
    except OSError as exc:
        if not os.path.exists(f"/proc/{opts.pid}"):
            _fail(f"no such process: {opts.pid}", 2)
        _fail(f"cannot read /proc/{opts.pid}/maps: {exc.strerror or exc}", 2)
    if lib is None:
        _fail(
            f"process {opts.pid} has not loaded pyusdt (no libpyusdt*.so in /proc/{opts.pid}/maps;"
            " run it with `python -m pyusdt` or `import pyusdt`)",
            2,
        )
    attach(opts, lib, bpftrace, program)


if __name__ == "__main__":
    main()
