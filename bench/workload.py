"""The benchmark's target program: a CPU-bound workload timed from the inside.

Run as `python workload.py WORK SIZE [options]` or `python -m pyusdt workload.py ...`.
It imports nothing from pyusdt, so the same file runs under plain python, under our
pyusdt and under the original pyusdt 0.1.1. Prints `BENCH_TIME <seconds>`, measured
with time.perf_counter around the workload only (start-up, waiting and exit excluded).

WORK is `fib` (recursive fib(SIZE)) or `json` (SIZE rounds of dataclass records to
dicts, json.dumps, json.loads and back to dataclasses).

options:
  --wait-events MASK  before starting the clock, wait (up to 60 s) until some
                      sys.monitoring tool has all the events of MASK enabled (a
                      tracer has attached and the probes' events are on), then
                      --settle more seconds (default 0.2) so every probe is attached.
                      Prints READY first: the harness attaches its tracer after that.
  --threads T[,T2..]  run the workload in T threads at once (same work each);
                      the time is from starting the first to joining the last. With
                      several counts, each repeat runs them one after the other (so
                      that they share the machine's moments) and BENCH_TIMES_T<count>
                      lines give each count's times.
  --repeat K          run it K times (default 1); BENCH_TIME is the fastest (other
                      load only ever adds time), BENCH_TIMES lists them all.
  --noop-events MASK  (plain python, for the breakdown) register a no-op C callable
                      for the events of MASK under a free tool id: what CPython's event
                      dispatch alone costs, without any probe. operator.is_ (fast-call,
                      allocates nothing) for the two-argument events, "".format (which
                      packs its arguments in a tuple) for the others.
  --fake-attach LIB=MASK  (for the breakdown) set the USDT semaphores of the probes in
                      MASK (event bits) in the library LIB, as a tracer would, but
                      without any uprobe: under PYUSDT_TRUST_SEMAPHORES=1 (which
                      the bench sets) pyusdt enables the events and its callbacks
                      run in full, minus the trap. Combine with --wait-events.
"""

from __future__ import annotations

import ctypes
import json
import struct
import sys
import threading
import time
from dataclasses import asdict, dataclass, field


def fib(n: int) -> int:
    if n < 2:
        return n
    return fib(n - 1) + fib(n - 2)


@dataclass
class Address:
    street: str
    city: str
    postcode: str
    country: str = "NZ"


@dataclass
class Item:
    sku: str
    quantity: int
    price: float
    tags: list[str] = field(default_factory=list)


@dataclass
class Order:
    order_id: int
    customer: str
    paid: bool
    address: Address
    items: list[Item]
    notes: dict[str, str] = field(default_factory=dict)


def make_orders(n: int) -> list[Order]:
    return [
        Order(
            order_id=i,
            customer=f"customer-{i:05d}",
            paid=i % 3 == 0,
            address=Address(f"{i} Queen Street", "Auckland", f"{1000 + i % 900}"),
            items=[
                Item(f"SKU-{i}-{j}", j + 1, round(9.99 * (j + 1), 2), [f"t{j}", "sale"])
                for j in range(4)
            ],
            notes={"gift": "no", "channel": "web"},
        )
        for i in range(50)
    ]


def order_from_dict(d: dict) -> Order:
    return Order(
        order_id=d["order_id"],
        customer=d["customer"],
        paid=d["paid"],
        address=Address(**d["address"]),
        items=[Item(**item) for item in d["items"]],
        notes=dict(d["notes"]),
    )


def json_rounds(rounds: int) -> int:
    orders = make_orders(50)
    total = 0
    for _ in range(rounds):
        text = json.dumps([asdict(o) for o in orders], sort_keys=True)
        back = [order_from_dict(d) for d in json.loads(text)]
        if back != orders:
            raise AssertionError("json round trip changed the records")
        total += len(text)
    return total


WORKS = {"fib": fib, "json": json_rounds}


def wait_for_events(mask: int, timeout: float) -> bool:
    mon = sys.monitoring
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for tool in range(6):
            if mon.get_events(tool) & mask == mask:
                return True
        time.sleep(0.002)
    return False


def noop_monitoring(mask: int) -> None:
    import operator

    mon = sys.monitoring
    tool = next(t for t in (5, 4, 3) if mon.get_tool(t) is None)
    mon.use_tool_id(tool, "bench-noop")
    two_args = mon.events.PY_START | mon.events.PY_RESUME | mon.events.LINE
    for bit in range(6):
        if mask & (1 << bit):
            # C callables that return at once: is_(code, offset) -> bool, and
            # "".format(*args) -> "" for the events with more arguments.
            noop = operator.is_ if (1 << bit) & two_args else "".format
            mon.register_callback(tool, 1 << bit, noop)
    mon.set_events(tool, mask)


PROBE_OF_BIT = ["PY_START", "PY_RESUME", "PY_RETURN", "PY_YIELD", "CALL", "LINE"]


def stapsdt_semaphores(path: str) -> dict[str, int]:
    """Probe name -> link-time address of its semaphore, from the ELF .note.stapsdt."""
    data = open(path, "rb").read()
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab = sections[shstrndx][4]
    found = {}
    for name_off, _type, _flags, _addr, offset, size in sections:
        name = data[strtab + name_off : data.index(b"\0", strtab + name_off)]
        if name != b".note.stapsdt":
            continue
        pos = offset
        while pos < offset + size:
            namesz, descsz, _ntype = struct.unpack_from("<III", data, pos)
            desc = pos + 12 + (namesz + 3) // 4 * 4
            _pc, _base, sema = struct.unpack_from("<QQQ", data, desc)
            provider, probe = data[desc + 24 : desc + descsz].split(b"\0")[:2]
            if provider == b"pyusdt":
                found[probe.decode()] = sema
            pos = desc + (descsz + 3) // 4 * 4
    return found


def fake_attach(lib: str, mask: int) -> None:
    """Sets the semaphores of the probes in `mask` as the kernel does for a tracer."""
    import os

    real = os.path.realpath(lib)
    base = None
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and fields[5] == real and int(fields[2], 16) == 0:
                base = int(fields[0].split("-")[0], 16)
                break
    if base is None:
        sys.exit(f"workload: {lib} is not loaded")
    semaphores = stapsdt_semaphores(real)
    for bit, probe in enumerate(PROBE_OF_BIT):
        if mask & (1 << bit):
            ctypes.c_uint16.from_address(base + semaphores[probe]).value += 1


def run_once(work, size: int, threads: int | None) -> float:
    if threads is None:
        t0 = time.perf_counter()
        work(size)
        return time.perf_counter() - t0
    workers = [threading.Thread(target=work, args=(size,)) for _ in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - t0


def main(argv: list[str]) -> None:
    work, size = WORKS[argv[0]], int(argv[1])
    opts = argv[2:]
    mask, settle, threads, repeat, noop, fake = 0, 0.2, None, 1, 0, None
    while opts:
        opt, value, opts = opts[0], opts[1], opts[2:]
        if opt == "--wait-events":
            mask = int(value, 0)
        elif opt == "--settle":
            settle = float(value)
        elif opt == "--threads":
            threads = [int(t) for t in value.split(",")]
        elif opt == "--repeat":
            repeat = int(value)
        elif opt == "--noop-events":
            noop = int(value, 0)
        elif opt == "--fake-attach":
            lib, _, fake_mask = value.rpartition("=")
            fake = (lib, int(fake_mask, 0))
        else:
            sys.exit(f"workload: unknown option {opt}")
    if fake:
        fake_attach(*fake)
    if mask:
        print("READY", flush=True)  # loaded: the tracer can attach now
        if not wait_for_events(mask, 60):
            sys.exit("workload: the tracer's events were not enabled within 60 s")
        time.sleep(settle)
    if noop:
        noop_monitoring(noop)
    per_count: dict[int | None, list[float]] = {t: [] for t in threads or [None]}
    for _ in range(repeat):
        for t, ts in per_count.items():
            ts.append(run_once(work, size, t))
    if len(per_count) > 1:
        for t, ts in per_count.items():
            print(f"BENCH_TIMES_T{t} " + " ".join(f"{x:.9f}" for x in ts), flush=True)
    times = [x for ts in per_count.values() for x in ts]
    print(f"BENCH_TIME {min(times):.9f}", flush=True)
    print("BENCH_TIMES " + " ".join(f"{t:.9f}" for t in times), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
