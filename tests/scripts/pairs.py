"""Workload for test_pairing.py and test_exceptions.py: every way a Python frame can
start, suspend, resume and end, with known exception traffic, on two threads.

Frames: plain calls, generators (exhausted, closed, thrown into and recovering,
thrown into and dying, thrown into before their first next()), `yield from`,
coroutines under asyncio (gather, sleep(0), an exception crossing awaits, a
cancelled task), exceptions crossing frames, `with` blocks (exception suppressed
or not), try/finally re-raise, KeyboardInterrupt from a real SIGINT deep in a
call stack, C calls that return and that raise.
"""

import asyncio
import signal
import threading


class Boom(Exception):
    pass


class Suppress:
    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        return et is ValueError


def leaf(n):
    if n == 0:
        raise ValueError("deep down")
    return leaf(n - 1)


def crossing():
    try:
        leaf(4)
    except ValueError:
        pass
    try:
        try:
            leaf(1)
        finally:
            len("finally runs")
    except ValueError:
        pass
    try:
        try:
            raise Boom("mine")
        except Boom:
            raise
    except Boom:
        pass


def with_blocks():
    with Suppress():
        raise ValueError("suppressed")
    try:
        with Suppress():
            raise KeyError("escapes")
    except KeyError:
        pass
    with Suppress():
        pass


def counter(n):
    for i in range(n):  # noqa: UP028 - a generator frame of its own
        yield i


def catcher():
    while True:
        try:
            yield 1
        except Boom:
            yield "caught"


def delegate():
    yield from counter(3)
    return (yield from counter(2))


def generators():
    assert list(counter(5)) == [0, 1, 2, 3, 4]
    g = counter(10)
    next(g)
    g.close()
    c = catcher()
    next(c)
    assert c.throw(Boom("in")) == "caught"
    next(c)
    try:
        c.throw(RuntimeError("out"))
    except RuntimeError:
        pass
    fresh = counter(3)
    try:
        fresh.throw(Boom("fresh"))
    except Boom:
        pass
    assert list(delegate()) == [0, 1, 2, 0, 1]


async def step(i):
    await asyncio.sleep(0)
    if i == 2:
        raise Boom("async")
    return i


async def forever():
    while True:
        await asyncio.sleep(0)


async def amain():
    r = await asyncio.gather(step(0), step(1), step(2), return_exceptions=True)
    assert isinstance(r[2], Boom)
    t = asyncio.ensure_future(forever())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    t.cancel()
    try:
        await t
    except asyncio.CancelledError:
        pass


def interrupted(n):
    if n == 0:
        signal.raise_signal(signal.SIGINT)
        for _ in range(1000):
            pass
        return
    interrupted(n - 1)


def keyboard_interrupt():
    try:
        interrupted(3)
    except KeyboardInterrupt:
        pass


def c_calls():
    for s in ("1", "x", "2"):
        try:
            int(s)
        except ValueError:
            pass
    sorted([3, 1, 2])


def work():
    crossing()
    with_blocks()
    generators()
    c_calls()


def main():
    work()
    asyncio.run(amain())
    keyboard_interrupt()
    t = threading.Thread(target=work)
    t.start()
    t.join()
    print("pairs done")


main()
