"""Values whose reprs the bounded-repr test compares with Python's own (tests/test_bounded_repr.py).

`VALUES` is imported by the test to compute the expected reprs; run as a script, it
returns each value from `ret` so that PY_RETURN carries its repr.
"""

import collections
import gc
import math
import re


class Loud(list):
    def __repr__(self):
        return "Loud!"


class Bad:
    def __repr__(self):
        raise ValueError("no")


class Plain:
    __module__ = "pkg.mod"  # the same in the target (run as __main__) and in the test


class Renamed:
    __module__ = "pkg.mod"


Renamed.__qualname__ = "Outer.Inner"


class NonStrModule:
    pass


NonStrModule.__module__ = 42


class NoModule:
    pass


# type.__module__ cannot be deleted; the class dict itself can lose it.
del gc.get_referents(NoModule.__dict__)[0]["__module__"]


class StrSubclass(str):
    pass


class SubclassModule:
    pass


SubclassModule.__module__ = StrSubclass("pkg.sub")


class InBuiltins:
    __module__ = "builtins"


class Meta(type):
    def __repr__(cls):
        return "Meta!"


class WithMeta(metaclass=Meta):
    pass


class PlainMeta(type):
    pass


class WithPlainMeta(metaclass=PlainMeta):
    __module__ = "pkg.mod"


class MyList(list):
    __module__ = "pkg.mod"


def ret(v):
    return v


def values():
    rec_list = [1, 2]
    rec_list.append(rec_list)
    rec_dict = {"a": 1}
    rec_dict["self"] = rec_dict
    return [
        "x" * 2000 + "'",  # quote decided by a quote past the bound
        "x" * 2000 + "'\"",  # both quotes past the bound
        "ab'c" + "y" * 3000,  # quote inside the bound
        ("é\n\t\x00" + "z" * 5) * 400,  # escapes and multi-byte characters
        b"q" * 3000 + b"'",  # bytes, quote past the bound
        bytes(range(256)) * 10,
        [
            {"id": i, "name": f"o'neil-{i}", "tags": ["a", "b"], "ok": i % 2 == 0}
            for i in range(300)
        ],
        tuple(range(1000)),
        (1,),
        ((1,), (), [], {}),
        [[[["deep"] * 3] * 3] * 3] * 50,
        rec_list,
        rec_dict,
        {i: str(i) * 5 for i in range(400)},
        [1, "a", None, 2.5, True, b"b", ("t",)],
        [Loud([1]), Loud()],
        [1, 2, Bad()],
        [],
        {},
        (),
        0,
        -5,
        2**63 - 1,
        -(2**63),
        2**70,
        True,
        ret,
        lambda: None,
        Loud.__repr__,
        long_name(),
        [ret, 12, -(2**64)],
        # singletons
        None,
        False,
        ...,
        NotImplemented,
        # classes: static, heap, renamed, odd __module__, metaclasses
        int,
        type,
        object,
        collections.OrderedDict,
        re.Pattern,
        Plain,
        Renamed,
        NonStrModule,
        NoModule,
        SubclassModule,
        InBuiltins,
        WithMeta,
        WithPlainMeta,
        MyList,
        # built-in functions and methods, method descriptors
        len,
        math.sqrt,
        [].append,
        {}.get,
        dict.fromkeys,
        MyList().append,
        dict.items,
        str.join,
        re.Pattern.match,
        # floats
        0.0,
        -0.0,
        2.5,
        0.1,
        1e22,
        1e16,
        1.5e-300,
        float("inf"),
        float("-inf"),
        float("nan"),
        # str: quotes, escapes, lengths around the bound, non-ASCII
        "",
        "plain",
        "it's",
        'say "hi"',
        "both ' and \"",
        "\t\n\r\x00\x01\x1f\x7f\\ end",
        "x" * 200,
        "x" * 300,
        "y" * 1000 + "'",
        "z" * 1030,
        "'" * 600,
        "\x00" * 300,
        "héllo",
        "日本語",
        # the same inside containers (bounded.rs)
        [None, True, False, 1.25, len, int, Plain, dict.items, [].append, "a'b", "\t"],
        {"k": None, int: "v", "q'": ('"',)},
    ]


def long_name():
    def inner():
        pass

    inner.__qualname__ = "q" * 300
    return inner


VALUES = values()


if __name__ == "__main__":
    for v in VALUES:
        ret(v)
