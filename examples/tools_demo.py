"""A small program for pyusdt's ready-made tools (bundled example, runs ~1 s).

    sudo pyusdt-trace --tool calls -- examples/tools_demo.py
    sudo pyusdt-trace --tool latency parse -- examples/tools_demo.py

Parses rows (some bad: ValueError, caught by the caller), looks keys up in a cache (misses
are KeyErrors), stats files, and sleeps in a worker thread.
"""

import os
import threading
import time


class Cache:
    def __init__(self):
        self.data = {}

    def lookup(self, key):
        try:
            return self.data[key]
        except KeyError:
            self.data[key] = len(key)
            return self.data[key]


def parse(row):
    if not row.isdigit():
        raise ValueError(row)
    return int(row)


def load(rows, cache):
    total = 0
    for row in rows:
        try:
            total += parse(row)
        except ValueError:
            total += cache.lookup(row)
    return total


def scan(paths):
    return sum(os.stat(p).st_size for p in paths)


def worker():
    for _ in range(4):
        time.sleep(0.1)


def main():
    cache = Cache()
    thread = threading.Thread(target=worker)
    thread.start()
    rows = [str(i) if i % 10 else f"x{i % 30}" for i in range(2000)]
    print("total", load(rows, cache))
    print("bytes", scan([__file__] * 500) > 0)
    time.sleep(0.2)
    thread.join()


if __name__ == "__main__":
    main()
