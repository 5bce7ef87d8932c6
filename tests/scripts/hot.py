"""The small module test_filter.py's PYUSDT_FILTER selects."""


def step(i):
    return helper(i) + len([i])


def helper(i):
    return i * 2


def gen(n):
    for i in range(n):  # noqa: UP028 - a generator frame of its own
        yield i


def fail():
    raise ValueError("hot failure")
