"""Deterministic workload for the interpreter tests: every function is named
`wl_*` (the tests count only those) and fires all six probes: calls, returns,
lines, and a generator's yields and resumes."""


def wl_leaf(x):
    return x * 2 + 1


def wl_fib(n):
    if n < 2:
        return n
    return wl_fib(n - 1) + wl_fib(n - 2)


def wl_gen(n):
    for i in range(n):
        yield wl_leaf(i)


def wl_work(rounds):
    total = 0
    for r in range(rounds):
        total += wl_fib(12) + r
        total += sum(wl_gen(20))
    return total
