"""Per-kernel site cost, side by side: `python bench/kernel_sites.py [--kernels 6.1,6.12,5.10]
[--n N] [--host-n N] [--json PATH]` (part of `nox -s bench`).

Runs bench/site_cost.py on the host kernel (with this Python's pyusdt) and, through
matrix/kernel-suite --no-tests, in a qemu guest of each of Debian's kernels
(matrix/kernels), then prints one row per kernel: the site pyusdt fires there, the
median cost per hit of each site and pyusdt's ratios (taken within each run, then
their median) to the two C references (a 1-byte-nop site, the original's, and a
5-byte-nop one) and to the 1-byte site in its own process. Guest figures are
inflated by TCG emulation: compare ratios, not ns.
Needs root and bpftrace, and qemu-system-x86_64 for the guests; without them it
prints one line saying what it skipped and why, and exits 0. A benchmark: it exits
non-zero only when it cannot measure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KERNELS = "6.1,6.12,5.10"


def unavailable() -> str | None:
    """Why the guests cannot run here, or None."""
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 not found (apt-get install qemu-system-x86 busybox-static)"
    return None


def row(name: str, data: dict) -> list[str]:
    costs = data["costs"]
    med = {k: statistics.median(v) for k, v in costs.items()}

    def ratio(ref: str) -> str:
        # Within a run (its sites measured one after the other), then the median.
        per_run = [p / r for p, r in zip(costs["pyusdt"], costs[ref], strict=True)]
        return f"{statistics.median(per_run):.2f}"

    return [
        name,
        data["fired"],
        *(f"{med[k]:.0f}" for k in ("nop1", "nop5", "nop1-py", "pyusdt")),
        ratio("nop1"),
        ratio("nop5"),
        ratio("nop1-py"),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--kernels",
        default=os.environ.get("PYUSDT_BENCH_KERNELS", KERNELS),
        help=f"comma-separated, default {KERNELS} (env PYUSDT_BENCH_KERNELS;"
        " 'none': only the host)",
    )
    ap.add_argument("--n", type=int, default=60_000, help="hits per loop in a guest")
    ap.add_argument("--host-n", type=int, default=300_000, help="hits per loop on the host")
    ap.add_argument("--json", type=Path, help="write every kernel's samples here")
    args = ap.parse_args()
    kernels = [] if args.kernels in ("none", "") else args.kernels.split(",")
    if os.geteuid() != 0 or shutil.which("bpftrace") is None:
        print("kernel_sites: skipped the per-kernel site cost: it needs root and bpftrace")
        return 0
    out = Path(tempfile.mkdtemp(prefix="pyusdt-kernel-sites."))
    results: dict[str, dict] = {}
    try:
        subprocess.run(
            [
                sys.executable,
                HERE / "site_cost.py",
                "--n",
                str(args.host_n),
                "--runs",
                "3",
                "--json",
                out / "host.json",
            ],
            check=True,
        )
        results[f"{os.uname().release} (host)"] = json.loads((out / "host.json").read_text())
        why = unavailable()
        if kernels and why:
            print(f"kernel_sites: skipped the guests {','.join(kernels)}: {why}")
            kernels = []
        if kernels:
            subprocess.run(
                [
                    "bash",
                    ROOT / "matrix" / "kernel-suite",
                    "--kernel",
                    ",".join(kernels),
                    "--no-tests",
                    "--bench-n",
                    str(args.n),
                    "--json-dir",
                    out,
                ],
                check=True,
            )
            for k in kernels:
                data = json.loads((out / f"site_cost-{k}.json").read_text())
                results[f"{data['kernel']} (qemu TCG)"] = data
    except subprocess.CalledProcessError as e:
        print(f"kernel_sites: cannot measure: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(out, ignore_errors=True)
    rows = [
        [
            "kernel",
            "site pyusdt fires",
            "nop1 ns",
            "nop5 ns",
            "nop1-py ns",
            "pyusdt ns",
            "pyusdt/nop1",
            "pyusdt/nop5",
            "pyusdt/nop1-py",
        ]
    ]
    rows += [row(name, data) for name, data in results.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print("\nper-hit cost of a probe site per kernel (bench/site_cost.py; medians of 3 runs,")
    print("ratios taken within a run; guests under qemu TCG: compare ratios, not ns)")
    for i, r in enumerate(rows):
        print(
            "  ".join(
                c.rjust(w) if i and j > 1 else c.ljust(w)
                for j, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
