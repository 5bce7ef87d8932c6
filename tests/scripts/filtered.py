"""Workload for test_filter.py: the main script calls code of its own and of the small
module `hot` (next to it) on two threads; a PYUSDT_FILTER matching `hot` must give
exactly hot's events."""

import sys
import threading

import hot


def busy(n):
    total = 0
    for i in range(n):
        total += len(str(i))
    try:
        raise KeyError(n)
    except KeyError:
        pass
    return total


def work():
    for i in range(50):
        busy(20)
        hot.step(i)
    list(hot.gen(4))
    try:
        hot.fail()
    except ValueError:
        pass


work()
t = threading.Thread(target=work)
t.start()
t.join()
sys.stdout.write("filtered done\n")
