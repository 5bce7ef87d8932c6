"""pyusdt performance benchmark (issue 4): `python bench/run.py [--runs N] [--json PATH] [--quick]`.

Prints a table of figures, each with its target and whether this run met it, and writes
them with every raw sample to JSON (default bench-results.json in the cwd). Every figure
is a ratio or a median of measurements taken side by side: all variants run once per
run, in a shuffled order, so that machine drift hits them alike; ratios are taken within
a run and their median over the runs is reported.

Figures (per Python version; 3.12, plus 3.13 when `matrix/provision --list` has it):
  1 untraced overhead   in-process time under `python -m pyusdt` / plain `python`
  2 traced vs floor     traced time / (plain time + probe hits x uprobe cost); the hits
                        are bpftrace's count(), the uprobe cost per hit comes from
                        bench/sdt_loop.c traced vs untraced with the same action, its
                        probe a standard SDT one (1-byte nop). pyusdt fires 5-byte-nop
                        sites on Linux 6.18+, which serves them faster (1-byte ones
                        elsewhere; bench/site_cost.py): the detail column also
                        gives the ratio to a floor built from the same C loop on such a
                        site ("nop5 floor")
  3 ours vs original    traced time, ours / pyusdt 0.1.1 (cp312 wheel; sdist elsewhere)
  4 attach latency      probe attached (semaphore set, as the target sees it) -> first
                        PY_START seen by bpftrace, default 100 ms poll (p50, max)
  5 3.13t scaling       traced throughput of 2 threads / 1 thread (same work per thread)
  6 import RSS          VmRSS added by `import pyusdt`
  7 filtered            json workload traced with all 13 probes attached but
                        PYUSDT_FILTER=json.encoder.* (one small module) / plain untraced
                        (`--filter-only`: measure just this figure)
Needs root and bpftrace for 2-5 (they are skipped with a note otherwise). A benchmark,
not a test: it never fails on a missed target; it exits non-zero only when it could
not measure at all.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import envs  # noqa: E402
import measure  # noqa: E402
from envs import EnvError, Python, log  # noqa: E402
from measure import MeasureError  # noqa: E402

# Workload sizes: "large" for the untraced overhead (long enough for 2 % to show),
# "small" for traced runs (every event costs a uprobe trap). Each target process runs
# its workload `*_repeat` times and reports the fastest (other load only adds time);
# an untraced sample is the fastest of measure.UNTRACED_PROCS such processes.
SIZES = {
    "full": {
        "large": {"fib": 27, "json": 40},
        "large_repeat": 5,
        "small": {"fib": 22, "json": 5},
        "small_repeat": 3,
        "threads": 23,
        "thread_repeat": 5,
        "sdt_n": 300_000,
        "sdt_repeat": 3,
        "latency_trials": 10,
    },
    "quick": {
        "large": {"fib": 24, "json": 8},
        "large_repeat": 2,
        "small": {"fib": 17, "json": 1},
        "small_repeat": 1,
        "threads": 17,
        "thread_repeat": 1,
        "sdt_n": 100_000,
        "sdt_repeat": 1,
        "latency_trials": 3,
    },
}

TARGETS = {
    "untraced": (1.02, "<="),
    "floor/start": (1.30, "<="),
    "floor/all": (1.50, "<="),
    "vs_orig/start": (0.55, "<="),
    "vs_orig/all": (0.60, "<="),
    "latency_max_ms": (100.0, "<="),
    "threads": (1.8, ">="),
    "rss_mib": (2.0, "<="),
    "filtered": (1.05, "<="),
}
# Figure 7's filter: one small stdlib module the json workload goes through per round.
FILTER_GLOBS = "json.encoder.*"


def met(value: float | None, target_key: str) -> bool | None:
    if value is None:
        return None
    target, op = TARGETS[target_key]
    return value <= target if op == "<=" else value >= target


def median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.size = SIZES["quick" if args.quick else "full"]
        self.runs = 1 if args.quick and args.runs is None else (args.runs or 5)
        self.notes: list[str] = []
        self.errors: list[str] = []
        self.jobs: dict[str, object] = {}  # key -> callable returning a sample dict
        self.samples: dict[str, list[dict | None]] = defaultdict(list)
        self.latency: dict[str, list[dict]] = {}
        self.figures: list[dict] = []
        self.pythons: dict[str, dict[str, Python | None]] = {}
        self.sdt_binary: str | None = None
        self.sdt5_binary: str | None = None

    # -- setup -------------------------------------------------------------------------
    def note(self, msg: str) -> None:
        log(msg)
        self.notes.append(msg)

    def can_trace(self) -> str | None:
        if measure.BPFTRACE is None:
            return "bpftrace is not installed"
        if os.geteuid() != 0:
            return "bpftrace needs root"
        return None

    def prepare(self) -> None:
        found = envs.provisioned()
        here = f"{sys.version_info.major}.{sys.version_info.minor}"
        if here == "3.12" and "3.12" not in found:
            found["3.12"] = getattr(sys, "_base_executable", sys.executable)
        wanted = self.args.versions or ["3.12", "3.13", "3.13t"]
        for version in wanted:
            if version not in found:
                self.note(f"{version}: not provisioned (matrix/provision --list); skipped")
                continue
            base = found[version]
            entry: dict[str, Python | None] = {"ours": None, "orig": None}
            try:
                entry["ours"] = envs.ours(version, base)
            except EnvError as exc:
                self.note(f"{version}: cannot build our pyusdt, skipped: {exc}")
                continue
            if not version.endswith("t") and not self.args.no_orig:
                try:
                    entry["orig"] = envs.original(version, base)
                except EnvError as exc:
                    first = str(exc).splitlines()[0]
                    self.note(
                        f"{version}: original pyusdt {envs.ORIG_VERSION} unavailable: {first}"
                    )
            self.pythons[version] = entry
        self.trace_problem = self.can_trace()
        if self.trace_problem:
            self.note(f"traced figures (2-5) skipped: {self.trace_problem}")
        else:
            try:
                self.sdt_binary, how = envs.build_sdt_loop()
                self.note(f"uprobe reference: bench/sdt_loop.c with {how}")
                self.sdt5_binary, how = envs.build_sdt_loop(nop5=True)
                self.note(f"nop5 uprobe reference: bench/sdt_loop.c with {how}")
            except EnvError as exc:
                self.note(f"floor figures skipped: {exc}")

    def add_jobs(self) -> None:
        large, small = self.size["large"], self.size["small"]
        for version, py in self.pythons.items():
            ours, orig = py["ours"], py["orig"]
            assert ours is not None
            if not self.trace_problem and not version.endswith("t"):
                w = ["json", str(large["json"]), "--repeat", str(self.size["large_repeat"])]
                self.jobs[f"{version}/filtered/json"] = lambda o=ours, w=w: measure.filtered_pair(
                    o, w, FILTER_GLOBS
                )
            if self.args.filter_only:
                continue
            if version.endswith("t"):
                if not self.trace_problem:
                    n = str(self.size["threads"])
                    # 1 and 2 threads alternate in each process (see workload.py).
                    w = ["fib", n, "--threads", "1,2", "--repeat", str(self.size["thread_repeat"])]
                    self.jobs[f"{version}/threads/untraced"] = lambda o=ours, w=w: measure.untraced(
                        o, w, True
                    )
                    # CPython's own dispatch to a no-op C callback on PY_START.
                    noop = [*w, "--noop-events", "0x1"]
                    self.jobs[f"{version}/threads/noop"] = lambda o=ours, w=noop: measure.untraced(
                        o, w, False
                    )
                    for ps in ("start", "all"):
                        self.jobs[f"{version}/threads/{ps}"] = lambda o=ours, w=w, ps=ps: (
                            measure.traced(o, w, ps)
                        )
                continue
            for work in ("fib", "json"):
                wl = [work, str(large[work]), "--repeat", str(self.size["large_repeat"])]
                ws = [work, str(small[work]), "--repeat", str(self.size["small_repeat"])]
                # Plain and -m pyusdt alternate in one job, so that they share the
                # machine's state of the moment.
                self.jobs[f"{version}/untraced/large/{work}"] = lambda o=ours, w=wl: (
                    measure.untraced_pair(o, w)
                )
                if self.trace_problem:
                    continue
                self.jobs[f"{version}/plain/small/{work}"] = lambda o=ours, w=ws: measure.untraced(
                    o, w, False
                )
                for ps, probes in measure.PROBE_SETS.items():
                    # The breakdown: CPython's dispatch to a no-op C callable, and our
                    # callbacks in full with the semaphores set but no uprobe (no trap;
                    # PYUSDT_TRUST_SEMAPHORES=1, since a semaphore alone enables nothing).
                    mask = hex(sum(measure.EVENT_BIT[p] for p in probes))
                    noop = [*ws, "--noop-events", mask]
                    fake = [*ws, "--fake-attach", f"{ours.lib}={mask}", "--wait-events", mask]
                    self.jobs[f"{version}/noop/{ps}/{work}"] = lambda o=ours, w=noop: (
                        measure.untraced(o, w, False)
                    )
                    self.jobs[f"{version}/fake/{ps}/{work}"] = lambda o=ours, w=fake: (
                        measure.untraced(o, w, True, env={"PYUSDT_TRUST_SEMAPHORES": "1"})
                    )
                for who, p in (("ours", ours), ("orig", orig)):
                    if p is None:
                        continue
                    for ps in ("start", "all"):
                        self.jobs[f"{version}/{who}/{ps}/{work}"] = lambda p=p, w=ws, ps=ps: (
                            measure.traced(p, w, ps)
                        )
            self.jobs[f"{version}/rss/ours"] = lambda o=ours: measure.rss_added(o, "pyusdt")
            if orig is not None:
                self.jobs[f"{version}/rss/orig"] = lambda o=orig: measure.rss_added(o, "libpyusdt")
        if self.sdt_binary and not self.trace_problem and self.jobs and not self.args.filter_only:
            n, k = self.size["sdt_n"], self.size["sdt_repeat"]
            for name, b in (("sdt", self.sdt_binary), ("sdt5", self.sdt5_binary)):
                if b is None:
                    continue
                self.jobs[f"{name}/untraced"] = lambda b=b: measure.sdt_loop(b, n, k, False)
                self.jobs[f"{name}/traced"] = lambda b=b: measure.sdt_loop(b, n, k, True)
                if any(v.endswith("t") for v in self.pythons):
                    # Do uprobe hits from 2 threads of one process scale (for figure 5)?
                    self.jobs[f"{name}/traced2"] = lambda b=b: measure.sdt_loop(
                        b, n, k, True, threads=2
                    )

    # -- running -----------------------------------------------------------------------
    def run(self) -> None:
        keys = sorted(self.jobs)
        for r in range(self.runs):
            order = keys[:]
            random.Random(1000 + r).shuffle(order)
            t0 = time.monotonic()
            for i, key in enumerate(order):
                progress(f"run {r + 1}/{self.runs} [{i + 1}/{len(order)}] {key}")
                try:
                    sample = self.jobs[key]()
                except (MeasureError, subprocess.SubprocessError, OSError) as exc:
                    self.errors.append(f"run {r + 1} {key}: {exc}")
                    sample = None
                self.samples[key].append(sample)
            progress(f"run {r + 1}/{self.runs} done in {time.monotonic() - t0:.0f} s", True)
        if not self.trace_problem and not self.args.filter_only:
            trials = self.size["latency_trials"]
            for version, py in self.pythons.items():
                if version.endswith("t"):
                    continue
                got = []
                for i in range(trials):
                    progress(f"{version} attach latency {i + 1}/{trials}")
                    try:
                        got.append(measure.latency(py["ours"]))
                    except (MeasureError, subprocess.SubprocessError, OSError) as exc:
                        self.errors.append(f"{version} latency trial {i + 1}: {exc}")
                progress(f"{version} attach latency: {len(got)} trials", True)
                self.latency[version] = got

    # -- figures -----------------------------------------------------------------------
    def per_run(self, key: str, field: str) -> list[float | None]:
        return [s[field] if s else None for s in self.samples.get(key, [])]

    def uprobe_cost_ns(self, loop: str = "sdt") -> list[float | None]:
        """Per run: (traced loop - untraced loop) / hits, in ns (`loop`: "sdt" for the
        standard probe, "sdt5" for the nop5 one)."""
        if f"{loop}/traced" not in self.samples:
            return [None] * self.runs
        out = []
        for t, u in zip(
            self.samples.get(f"{loop}/traced", []),
            self.samples.get(f"{loop}/untraced", []),
            strict=True,
        ):
            if t and u and t["hits"]:
                if t["hits"] != t["total"]:
                    self.errors.append(
                        f"{loop} loop: bpftrace counted {t['hits']} of {t['total']} hits"
                    )
                out.append((t["ns"] - u["ns"]) / t["n"])
            else:
                out.append(None)
        return out

    def sdt_scaling(self, loop: str = "sdt") -> float | None:
        """Throughput of traced uprobe hits in 2 threads / 1 thread (C loop)."""
        one, two = self.samples.get(f"{loop}/traced", []), self.samples.get(f"{loop}/traced2", [])
        return median(
            [2 * a["ns"] / b["ns"] if a and b else None for a, b in zip(one, two, strict=False)]
        )

    def figure(
        self,
        fig: str,
        version: str,
        what: str,
        value: float | None,
        target_key: str,
        unit: str = "x",
        detail: str = "",
        per_run: list | None = None,
    ) -> None:
        target, op = TARGETS[target_key]
        self.figures.append(
            {
                "figure": fig,
                "python": version,
                "what": what,
                "value": value,
                "unit": unit,
                "target": target,
                "op": op,
                "met": met(value, target_key),
                "detail": detail,
                "per_run": per_run,
            }
        )

    def compute(self) -> None:
        cost = self.uprobe_cost_ns()
        self.cost_median = median(cost)
        self.cost5 = self.uprobe_cost_ns("sdt5")
        self.cost5_median = median(self.cost5)
        for version, py in self.pythons.items():
            if not version.endswith("t"):
                self.compute_filtered(version)
            if self.args.filter_only:
                continue
            if version.endswith("t"):
                self.compute_threads(version)
                continue
            for work in ("fib", "json"):
                plain = self.per_run(f"{version}/untraced/large/{work}", "plain")
                ours_u = self.per_run(f"{version}/untraced/large/{work}", "pyusdt")
                ratios = [o / p if o and p else None for o, p in zip(ours_u, plain, strict=True)]
                self.figure(
                    "1 untraced",
                    version,
                    f"{work}: -m pyusdt / plain",
                    median(ratios),
                    "untraced",
                    detail=f"plain {ms(median(plain))}",
                    per_run=ratios,
                )
            for work in ("fib", "json"):
                plain = self.per_run(f"{version}/plain/small/{work}", "time")
                for ps in ("start", "all"):
                    self.compute_traced(version, work, ps, plain, cost, py["orig"] is not None)
            rss = self.per_run(f"{version}/rss/ours", "kib")
            orig_rss = median(self.per_run(f"{version}/rss/orig", "kib"))
            detail = f"original {orig_rss / 1024:.2f} MiB" if orig_rss is not None else ""
            mib = [k / 1024 if k is not None else None for k in rss]
            self.figure(
                "6 import RSS",
                version,
                "import pyusdt",
                median(mib),
                "rss_mib",
                "MiB",
                detail,
                per_run=mib,
            )
            trials = self.latency.get(version)
            if trials:
                # bpftrace 0.17 runs BEGIN before it attaches the usdt probes (their
                # semaphores are set 10-50 ms later), so "attached" is when the target
                # saw the semaphore set; BEGIN -> first event is shown as well.
                lat = [t["ms"] - t["attached_ms"] for t in trials if "attached_ms" in t]
                begin = [t["ms"] for t in trials]
                react = median(
                    [
                        t["enabled_ms"] - t["attached_ms"]
                        for t in trials
                        if "enabled_ms" in t and "attached_ms" in t
                    ]
                )
                self.figure(
                    "4 attach latency",
                    version,
                    "semaphore set -> first PY_START, max",
                    max(lat) if lat else None,
                    "latency_max_ms",
                    "ms",
                    f"p50 {fmt_ms(median(lat))}, n={len(lat)}; semaphore -> events enabled "
                    f"p50 {fmt_ms(react)}; BEGIN -> first event p50 {fmt_ms(median(begin))}, "
                    f"max {fmt_ms(max(begin))}",
                    per_run=lat,
                )

    def compute_filtered(self, version: str) -> None:
        key = f"{version}/filtered/json"
        plain, filt = self.per_run(key, "plain"), self.per_run(key, "filtered")
        if not any(plain):
            return
        ratios = [f / p if f and p else None for f, p in zip(filt, plain, strict=True)]
        hits = median(self.per_run(key, "hits"))
        self.figure(
            "7 filtered",
            version,
            f"json, all 13 probes, PYUSDT_FILTER={FILTER_GLOBS} / plain",
            median(ratios),
            "filtered",
            detail=f"plain {ms(median(plain))}; probe hits per workload run "
            + (f"{hits:,.0f}" if hits is not None else "?"),
            per_run=ratios,
        )

    def compute_traced(self, version, work, ps, plain, cost, have_orig) -> None:
        label = "PY_START" if ps == "start" else "all 6"
        ours = self.samples.get(f"{version}/ours/{ps}/{work}", [])
        if not ours:
            return
        noop = self.per_run(f"{version}/noop/{ps}/{work}", "time")
        fake = self.per_run(f"{version}/fake/{ps}/{work}", "time")
        floors, floors5, per_hit, dispatch, no_trap = [], [], [], [], []
        for s, p, c, c5, n, f in zip(ours, plain, cost, self.cost5, noop, fake, strict=True):
            ok = s and p and c and s["hits"]
            floors.append(s["time"] / (p + s["hits"] * c * 1e-9) if ok else None)
            floors5.append(s["time"] / (p + s["hits"] * c5 * 1e-9) if ok and c5 else None)
            per_hit.append((s["time"] - p) / s["hits"] * 1e9 if ok else None)
            dispatch.append((n - p) / s["hits"] * 1e9 if ok and n else None)
            no_trap.append((f - p) / s["hits"] * 1e9 if ok and f else None)
        hits = median([s["hits"] if s else None for s in ours])
        hits_txt = f"{hits:,.0f}" if hits is not None else "?"
        u, h, d, f = median(cost), median(per_hit), median(dispatch), median(no_trap)
        traced = ms(median([s["time"] if s else None for s in ours]))
        f5 = median(floors5)
        detail = (f"nop5 floor {f5:.2f}x" if f5 else "nop5 floor ?") + (
            f"; {hits_txt} hits; per hit {ns(h)} vs uprobe {ns(u)} (nop5 {ns(median(self.cost5))})"
            f"; untrapped: pyusdt callbacks {ns(f)}, no-op C callback {ns(d)}; traced {traced}"
        )
        self.figure(
            "2 traced/floor",
            version,
            f"{work} {label}",
            median(floors),
            f"floor/{ps}",
            detail=detail,
            per_run=floors,
        )
        if not have_orig:
            return
        orig = self.samples.get(f"{version}/orig/{ps}/{work}", [])
        ratios = [
            o["time"] / g["time"] if o and g else None for o, g in zip(ours, orig, strict=True)
        ]
        orig_floor = []
        for g, p, c in zip(orig, plain, cost, strict=True):
            orig_floor.append(g["time"] / (p + g["hits"] * c * 1e-9) if g and p and c else None)
        of = median(orig_floor)
        detail = (
            f"original {ms(median([g['time'] if g else None for g in orig]))}, "
            f"original/floor {of:.2f}"
            if of
            else ""
        )
        self.figure(
            "3 ours/original",
            version,
            f"{work} {label}",
            median(ratios),
            f"vs_orig/{ps}",
            detail=detail,
            per_run=ratios,
        )

    def compute_threads(self, version: str) -> None:
        scaling = {}
        for mode in ("untraced", "noop", "start", "all"):
            by_threads = self.per_run(f"{version}/threads/{mode}", "threads")
            t1 = [b.get(1) if b else None for b in by_threads]
            t2 = [b.get(2) if b else None for b in by_threads]
            scale = [2 * a / b if a and b else None for a, b in zip(t1, t2, strict=True)]
            scaling[mode] = median(scale)
            if mode in ("untraced", "noop"):
                continue
            label = "PY_START" if mode == "start" else "all 6"
            detail = ""
            if scaling["untraced"]:
                detail += f"untraced 2T/1T {scaling['untraced']:.2f}x (the machine's own scaling)"
            if scaling["noop"]:
                detail += f"; no-op C callback on PY_START {scaling['noop']:.2f}x"
            for loop, what in (("sdt", "C uprobe loop"), ("sdt5", "nop5")):
                c = self.sdt_scaling(loop)
                if c is not None:
                    detail += f"; {what} 2T/1T {c:.2f}x"
            self.figure(
                "5 3.13t threads",
                version,
                f"{label}: 2T/1T throughput",
                median(scale),
                "threads",
                detail=detail,
                per_run=scale,
            )

    # -- output ------------------------------------------------------------------------
    def table(self) -> str:
        rows = [("Python", "Figure", "What", "Value", "Target", "Met", "Detail")]
        for f in self.figures:
            v = f["value"]
            value = (
                "n/a" if v is None else (f"{v:.3f}" if f["unit"] == "x" else f"{v:.2f} {f['unit']}")
            )
            target = f"{f['op']} {f['target']:g}" + ("" if f["unit"] == "x" else f" {f['unit']}")
            mark = {True: "yes", False: "NO", None: "n/a"}[f["met"]]
            rows.append((f["python"], f["figure"], f["what"], value, target, mark, f["detail"]))
        widths = [max(len(r[i]) for r in rows) for i in range(6)]
        lines = []
        for i, r in enumerate(rows):
            lines.append(
                "  ".join(c.ljust(w) for c, w in zip(r[:6], widths, strict=True)) + "  " + r[6]
            )
            if i == 0:
                lines.append("-" * (sum(widths) + 12 + len(r[6])))
        return "\n".join(lines)


def progress(msg: str, done: bool = False) -> None:
    """A progress line on stderr: rewritten in place on a terminal, else only when done."""
    if sys.stderr.isatty():
        print(f"\r\033[Kbench: {msg}", end="\n" if done else "", file=sys.stderr, flush=True)
    elif done:
        log(msg)


def fmt_ms(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f} ms"


def ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds * 1e3:.1f} ms"


def ns(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f} ns"


def git_commit() -> str:
    proc = subprocess.run(
        ["git", "-C", str(envs.REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() or "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=None, help="runs per variant (default 5)")
    ap.add_argument("--json", default="bench-results.json", help="where to write the results")
    ap.add_argument("--quick", action="store_true", help="1 run, short workloads (smoke test)")
    ap.add_argument(
        "--versions",
        type=lambda s: s.split(","),
        default=None,
        help="comma-separated, default 3.12,3.13,3.13t (those provisioned)",
    )
    ap.add_argument("--no-orig", action="store_true", help="skip the original pyusdt 0.1.1")
    ap.add_argument(
        "--filter-only", action="store_true", help="measure only figure 7 (PYUSDT_FILTER)"
    )
    args = ap.parse_args()
    if args.runs is not None and args.runs < 1:
        ap.error("--runs must be >= 1")

    started = time.time()
    load_before = loadavg()
    bench = Bench(args)
    bench.prepare()
    if not bench.pythons:
        log("nothing to measure")
        return 1
    bench.add_jobs()
    t_prep = time.time() - started
    bench.run()
    bench.compute()
    load_after = loadavg()
    elapsed = time.time() - started

    table = bench.table()
    print(table)
    print(
        f"\nuprobe cost per hit (bpftrace count(), sdt_loop): {ns(bench.cost_median)}, "
        f"on a nop5 site {ns(bench.cost5_median)}; "
        f"runs: {bench.runs}; load average before {load_before}, after {load_after}; "
        f"{elapsed:.0f} s ({t_prep:.0f} s setup)"
    )
    for n in bench.notes:
        print(f"note: {n}")
    for e in bench.errors:
        print(f"error: {e}")
    missed = [f for f in bench.figures if f["met"] is False]
    print(
        f"\n{len(bench.figures) - len(missed)}/{len(bench.figures)} figures meet their target"
        + (" (a benchmark: missed targets do not fail it)" if missed else "")
    )

    result = {
        "meta": {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "commit": git_commit(),
            "host": platform.node(),
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "runs": bench.runs,
            "quick": args.quick,
            "sizes": bench.size,
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "seconds": round(elapsed, 1),
            "pythons": {
                v: {k: (vars(p) if p else None) for k, p in e.items()}
                for v, e in bench.pythons.items()
            },
            "uprobe_cost_ns_median": bench.cost_median,
            "uprobe_cost_nop5_ns_median": bench.cost5_median,
        },
        "figures": bench.figures,
        "samples": bench.samples,
        "latency_ms": bench.latency,
        "notes": bench.notes,
        "errors": bench.errors,
    }
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    log(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
