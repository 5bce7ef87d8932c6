"""Raises and lowers pyusdt's USDT semaphores in another process, as a tracer
attaching and detaching does (bpftrace -p raises the semaphore of each probe
it attaches), but in microseconds, so a test can toggle hundreds of times.
Writes the 16-bit counters through /proc/PID/mem (root). Only use it on
probes no real tracer is attached to in that process. A raised semaphore
alone enables nothing (pyusdt also wants the probe's site patched by a
tracer) unless the process runs with PYUSDT_TRUST_SEMAPHORES=1; what bcc
does (raise the semaphores itself, place its uprobes later, leave the
semaphores raised when SIGKILLed) is this plus tests/scripts/bcc_like.py."""

from __future__ import annotations

import os
import struct

from rel_uprobe import stapsdt_probes


def semaphores(lib: str, provider: str = "pyusdt") -> dict[str, int]:
    """{probe name: semaphore virtual address in the ELF file} (64-bit LE ELF)."""
    return {name: sema for name, (_pc, sema) in stapsdt_probes(lib, provider).items() if sema}


class Semaphores:
    """The semaphores of `lib` as mapped in process `pid`."""

    def __init__(self, pid: int, lib: str) -> None:
        real = os.path.realpath(lib)
        start = None
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and parts[5] == real and int(parts[2], 16) == 0:
                    start = int(parts[0].split("-")[0], 16)
                    break
        if start is None:
            raise LookupError(f"{real} is not mapped in process {pid}")
        # Shared objects are linked at 0: the load bias is the first mapping.
        self.addr = {name: start + vaddr for name, vaddr in semaphores(real).items()}
        self.fd = os.open(f"/proc/{pid}/mem", os.O_RDWR)

    def get(self, probe: str) -> int:
        return struct.unpack("<H", os.pread(self.fd, 2, self.addr[probe]))[0]

    def add(self, probe: str, delta: int) -> None:
        os.pwrite(self.fd, struct.pack("<H", self.get(probe) + delta), self.addr[probe])

    def close(self) -> None:
        os.close(self.fd)
