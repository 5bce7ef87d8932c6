"""Target for test_values.py: values and callables whose repr() misbehaves.

`python values_target.py reprs` returns/yields/calls each kind of object once and
prints what the program itself sees, so traced and untraced output can be compared.
`python values_target.py interrupt` returns an object whose repr raises
KeyboardInterrupt and reports whether the program saw it.
"""

import sys


class RaisesInRepr:
    def __repr__(self):
        raise ValueError("no repr for you")


class NotAStr:
    def __repr__(self):
        return 42


class Recursive:
    def __repr__(self):
        return repr(self)


def helper(n):
    return f"<{n}>"


class Chatty:
    def __repr__(self):
        return "Chatty" + helper(7)


class Huge:
    def __repr__(self):
        return "H" * 100_000


class BadCallable:
    def __call__(self):
        return "called"

    def __repr__(self):
        raise ValueError("callable without repr")


class Interrupting:
    def __repr__(self):
        raise KeyboardInterrupt


def ret_raises():
    return RaisesInRepr()


def ret_not_str():
    return NotAStr()


def ret_recursive():
    return Recursive()


def ret_chatty():
    return Chatty()


def ret_huge():
    return Huge()


def ret_accents():
    return "\u00e9" * 5000


def yield_raises():
    yield RaisesInRepr()


def call_bad_callable():
    return BadCallable()()


def ret_interrupting():
    return Interrupting()


def after():
    return "after"


def show(label, value):
    print(label, type(value).__name__, sys.exc_info()[0])


def reprs():
    show("raises", ret_raises())
    show("not_str", ret_not_str())
    show("recursive", ret_recursive())
    show("chatty", ret_chatty())
    show("helper", helper(8))
    show("huge", ret_huge())
    show("accents", ret_accents())
    show("yield", list(yield_raises())[0])
    show("callable", call_bad_callable())
    show("after", after())


def interrupt():
    try:
        ret_interrupting()
    except KeyboardInterrupt:
        print("program saw KeyboardInterrupt")
    else:
        print("no KeyboardInterrupt")
    show("after", after())


if __name__ == "__main__":
    {"reprs": reprs, "interrupt": interrupt}[sys.argv[1]]()
