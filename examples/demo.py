"""A small program to watch with pyusdt (bundled example, runs ~2.5 s).

    sudo pyusdt-trace sample.bt -- examples/demo.py

Functions calling functions, a generator, a couple of loops and short sleeps, so that a
live trace (PY_START/PY_RETURN, PY_YIELD/PY_RESUME, CALL, LINE) is easy to follow.
"""

import time


def greet(name):
    return f"hello, {name}"


def square(n):
    return n * n


def countdown(n):
    """A generator: each value is a PY_YIELD, each next() a PY_RESUME."""
    while n > 0:
        yield n
        n -= 1


def work(step):
    total = sum(square(i) for i in range(step + 3))
    time.sleep(0.25)
    return total


def main():
    print(greet("pyusdt"))
    for step in range(5):
        print(f"step {step}: total={work(step)}")
    for value in countdown(3):
        print(f"countdown {value}")
        time.sleep(0.3)
    print("done")


if __name__ == "__main__":
    main()
