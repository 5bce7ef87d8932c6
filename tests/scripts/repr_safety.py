"""Target for test_repr_safety.py: values whose repr() would run Python code.

`python repr_safety.py count OUT` returns, yields and calls objects whose `__repr__`
counts its calls (per class, also inside containers, sets and bound methods), and
writes the counts to OUT as JSON.
`python repr_safety.py lock OUT` returns, yields and calls objects whose `__repr__`
takes a lock that the returning (yielding, calling) code holds; writes "done" to OUT.
`python repr_safety.py texts OUT` returns each of `values()` from `ret()` and writes
to OUT, as JSON, the text each should carry by default (`object.__repr__`, inside
containers too) and with PYUSDT_REPR=full (`repr()`), in the same order.
"""

import collections
import gc
import json
import re
import sys
import threading

COUNTS = collections.Counter()


def counted(self):
    COUNTS[type(self).__name__] += 1
    return "counted"


class Counting:
    __repr__ = counted

    def __call__(self):
        return 1

    def method(self):
        return 2


class CountingInt(int):
    __repr__ = counted


class CountingStr(str):
    __repr__ = counted


class CountingList(list):
    __repr__ = counted


class CountingDict(dict):
    __repr__ = counted


class CountingMeta(type):
    def __repr__(cls):
        COUNTS["CountingMeta"] += 1
        return "counted"


class WithCountingMeta(metaclass=CountingMeta):
    pass


class InSet:
    __repr__ = counted


class InList:
    __repr__ = counted


class InDict:
    __repr__ = counted


class BoundSelf:
    __repr__ = counted

    def method(self):
        return 3


class Called:
    __repr__ = counted

    def __call__(self):
        return 4


class Yielded:
    __repr__ = counted


# Every class above whose __repr__ the full mode must reach.
CATEGORIES = [
    "Counting",
    "CountingInt",
    "CountingStr",
    "CountingList",
    "CountingDict",
    "CountingMeta",
    "InSet",
    "InList",
    "InDict",
    "BoundSelf",
    "Called",
    "Yielded",
]


def ret(v):
    return v


def gen_one(v):
    yield v


def count():
    ret(Counting())
    ret(CountingInt(5))
    ret(CountingStr("s"))
    ret(CountingList([1]))
    ret(CountingDict(a=1))
    ret(WithCountingMeta)
    ret({InSet()})
    ret(frozenset([InSet()]))
    ret([1, InList()])
    ret((InList(), 2))
    ret({"k": InDict()})
    ret({InDict(): "v"})
    ret(BoundSelf().method)
    for _ in gen_one(Yielded()):
        pass
    for _ in gen_one([Yielded()]):
        pass
    Called()()  # CALL: the callable is the instance
    WithCountingMeta()  # CALL: the callable is the class
    m = BoundSelf().method
    m()  # CALL: the callable is a bound method


LOCK = threading.Lock()


class Locked:
    def __repr__(self):
        with LOCK:  # never free while the value is returned: a repr() would deadlock
            return "Locked"

    def __call__(self):
        return 5


def ret_locked():
    LOCK.acquire()
    return Locked()


def gen_locked():
    LOCK.acquire()
    yield [Locked()]


def lock():
    ret_locked()
    LOCK.release()
    for _ in gen_locked():
        LOCK.release()
    c = Locked()
    with LOCK:
        c()


class Plain:
    def method(self):
        return 6


class SubInt(int):
    pass


class SubStr(str):
    pass


class SubList(list):
    pass


class SubDict(dict):
    pass


class NonStrModule:
    pass


NonStrModule.__module__ = 42
NonStrModule.__name__ = "NSM"  # the text then has tp_name ("NSM"), not the qualname


class NoModule:
    pass


# type.__module__ cannot be deleted; the class dict itself can lose it.
del gc.get_referents(NoModule.__dict__)[0]["__module__"]


class InBuiltins:
    __module__ = "builtins"


class StrSubclass(str):
    pass


class SubclassModule:
    pass


SubclassModule.__module__ = StrSubclass("pkg.sub")


class Renamed:
    __module__ = "pkg.mod"


Renamed.__qualname__ = "Outer.Inner"
Renamed.__name__ = "Short"


class Meta(type):
    def __repr__(cls):
        return "Meta!"


class WithMeta(metaclass=Meta):
    pass


def make_local():
    class Local:
        pass

    return Local()


def texts_of(v, safe):
    """`v`'s expected probe text; containers built of their items' texts."""
    if type(v) is list:
        return "[" + ", ".join(texts_of(x, safe) for x in v) + "]"
    if type(v) is tuple:
        inner = ", ".join(texts_of(x, safe) for x in v)
        return "(" + inner + ("," if len(v) == 1 else "") + ")"
    if type(v) is dict:
        return (
            "{"
            + ", ".join(texts_of(k, safe) + ": " + texts_of(x, safe) for k, x in v.items())
            + "}"
        )
    if not safe or type(v) in (int, str, float, bool, type(None)):
        return repr(v)
    return object.__repr__(v)


def values():
    plain = Plain()
    return [
        plain,
        SubInt(7),
        SubStr("s"),
        SubList([1, 2]),
        SubDict(a=1),
        {1, 2},
        frozenset(["x"]),
        NonStrModule(),
        NoModule(),
        InBuiltins(),
        SubclassModule(),
        Renamed(),
        make_local(),
        WithMeta,
        plain.method,
        collections.OrderedDict(a=1),
        collections.deque([1]),
        re.compile("x"),
        iter([]),
        [1, plain, "a"],
        (SubInt(3),),
        {"k": {1}, SubStr("q"): [make_local()]},
    ]


def texts(out):
    vals = values()
    want = {
        "safe": [texts_of(v, True) for v in vals],
        "full": [texts_of(v, False) for v in vals],
    }
    for v in vals:
        ret(v)
    return want


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    if mode == "count":
        count()
        result = {c: COUNTS[c] for c in CATEGORIES}
    elif mode == "lock":
        lock()
        result = "done"
    else:
        result = texts(out)
    with open(out, "w") as f:
        json.dump(result, f)
