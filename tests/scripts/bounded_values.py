"""Values whose reprs the bounded-repr test compares with Python's own (tests/test_bounded_repr.py).

`VALUES` is imported by the test to compute the expected reprs; run as a script, it
returns each value from `ret` so that PY_RETURN carries its repr.
"""


class Loud(list):
    def __repr__(self):
        return "Loud!"


class Bad:
    def __repr__(self):
        raise ValueError("no")


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
