"""Target of tests/test_native_markers.py: calls two functions a known number of times
(argv: how often each), so a tracer's counts can be checked against that."""

import sys


def native_alpha(i):
    return i + 1


def native_beta(i):
    return i * 2


def main(n_alpha, n_beta):
    for i in range(n_alpha):
        native_alpha(i)
    for i in range(n_beta):
        native_beta(i)


main(int(sys.argv[1]), int(sys.argv[2]))
