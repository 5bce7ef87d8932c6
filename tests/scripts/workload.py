"""Workload for test_probes.py: each of the six events, in one small file.

Plain calls, methods, nested functions, generators (with `yield from`), a coroutine
run by asyncio, an exception raised and caught, a multi-line function and builtins.
No value or callable defined here has a Python-level __repr__, so recording reprs
runs no code of this file.
"""

import asyncio


class Account:
    def __init__(self, balance):
        self.balance = balance

    def deposit(self, amount):
        self.balance += amount
        return self.balance

    @staticmethod
    def fee(amount):
        return amount // 10


def add(a, b):
    return a + b


def outer(x):
    def inner(y):
        return y * 2

    return inner(x) + 1


def count_up(n):
    for i in range(n):  # noqa: UP028 - a plain yield, not a delegation
        yield i


def delegate():
    yield "first"
    got = yield from count_up(3)
    yield ("last", got)
    return "done"


async def double_later(x):
    await asyncio.sleep(0)
    return x * 2


async def gather_some():
    a = await double_later(5)
    b = await double_later(a)
    return [a, b]


def fail(message):
    raise ValueError(message)


def recover():
    try:
        fail("boom")
    except ValueError as e:
        return f"caught {e}"
    return "not reached"


# fmt: off
def spread_out(
    first,
    second,
    third,
):
    total = (
        first
        + second
        + third
    )
    return {
        "total": total,
        "parts": (first, second, third),
    }
# fmt: on


def long_text(n):
    return "x" * n


def main():
    acct = Account(100)
    acct.deposit(add(1, 2))
    print(Account.fee(acct.balance), outer(20))
    print(list(delegate()))
    print(asyncio.run(gather_some()))
    print(recover())
    print(spread_out(1, 2.5, 3))
    words = ["pear", "fig", "apple"]
    print(len(words), sorted(words), sorted(words, key=len))
    print(len(long_text(300)))


if __name__ == "__main__":
    main()
