"""Target for test_cprofile.py: a small call tree, profiled with cProfile in one of
three ways (argv[1]):

  plain    just run main() (the test runs it under `python -m cProfile -m pyusdt`)
  profile  import pyusdt, then cProfile.Profile() around main(), stats to stdout
  run      cProfile.run() of code that imports pyusdt (first import) and runs main()

Before main() it imports pyusdt and reads one line from stdin: "go" runs at once,
"go PROBES" first waits until those probes are enabled (the test has attached bpftrace).
"""

import sys


def square(i):
    return i * i


def work(n):
    total = 0
    for i in range(n):
        total += square(i)
    return total


def main():
    grand = 0
    for _ in range(5):
        grand += work(10)
    print("grand total", grand)


def go():
    import pyusdt

    words = sys.stdin.readline().split()
    assert words[0] == "go", words
    if len(words) > 1:
        assert pyusdt.wait_for_tracer(60, words[1].split(",")), pyusdt.status()


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "plain":
        go()
        main()
    elif mode == "profile":
        import cProfile
        import pstats

        import pyusdt

        go()
        prof = cProfile.Profile()
        prof.enable()
        main()
        tools = [sys.monitoring.get_tool(2), pyusdt.status()["tool_id"]]
        prof.disable()
        print("tools during profile:", tools)
        print("pyusdt enabled during profile:", pyusdt.status()["enabled"])
        pstats.Stats(prof, stream=sys.stdout).sort_stats("ncalls").print_stats()
    elif mode == "run":
        import cProfile

        assert "pyusdt" not in sys.modules
        cProfile.run("import pyusdt\ngo()\nmain()", sort="ncalls")
        assert "pyusdt" in sys.modules
    else:
        sys.exit(f"unknown mode {mode!r}")
