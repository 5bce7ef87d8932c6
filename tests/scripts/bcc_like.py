"""A tracer that attaches to pyusdt's probes in a process the way bcc does (for
tests/test_listen.py): it raises the probes' semaphores itself, through /proc/PID/mem,
`--early` seconds before it places its uprobes (perf uprobes without a reference counter,
on every site of each probe), so the kernel does not count them in the semaphores and a
SIGKILL leaves the semaphores raised while the kernel removes the uprobes.

    python bcc_like.py PID LIB PROBES [--early SECS]

PROBES is comma-separated. It waits until LIB is mapped in PID, prints
`raised MONOTONIC_NS` after raising, `attached MONOTONIC_NS` just before opening the
uprobes (then opens them), then reads commands on stdin: `count` prints
`count PROBE=N,...` (the hits of PID's thread PID on all sites of each probe), `detach`
closes the uprobes and lowers the semaphores (a clean exit) and ends. Root only.
"""

from __future__ import annotations

import os
import sys
import time

from interp_sema import Semaphores
from rel_uprobe import Uprobe, stapsdt_notes


def wait_mapped(pid: int, lib: str, timeout: float = 30) -> None:
    real = os.path.realpath(lib)
    deadline = time.monotonic() + timeout
    while True:
        with open(f"/proc/{pid}/maps") as f:
            if real in f.read():
                return
        if time.monotonic() > deadline:
            sys.exit(f"bcc_like: {real} not mapped in {pid} within {timeout} s")
        time.sleep(0.005)


def main(argv: list[str]) -> None:
    pid, lib, probes = int(argv[0]), os.path.realpath(argv[1]), argv[2].split(",")
    early = float(argv[argv.index("--early") + 1]) if "--early" in argv else 0.0
    wait_mapped(pid, lib)
    sems = Semaphores(pid, lib)
    for p in probes:
        sems.add(p, 1)
    print("raised", time.monotonic_ns(), flush=True)
    time.sleep(early)
    notes = stapsdt_notes(lib)
    print("attached", time.monotonic_ns(), flush=True)
    # No ref_ctr_offset: the semaphores are ours to raise and lower, as in bcc.
    uprobes = {p: [Uprobe(lib, (site, 0), pid) for site, _sema in notes[p]] for p in probes}
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "count":
            counts = {p: sum(u.count() for u in us) for p, us in uprobes.items()}
            print("count", ",".join(f"{p}={n}" for p, n in counts.items()), flush=True)
        elif cmd == "detach":
            break
    for us in uprobes.values():
        for u in us:
            u.close()
    for p in probes:
        sems.add(p, -1)
    sems.close()


if __name__ == "__main__":
    main(sys.argv[1:])
