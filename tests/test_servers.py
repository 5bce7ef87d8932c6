"""Preforking servers with pyusdt imported in the master (issue 9): uWSGI and gunicorn.

uWSGI (default: the app is loaded in the master, the workers are forked from C, so
Python's os.fork hooks never run in them) and gunicorn --preload (sync workers, forked
with os.fork) serve tests/scripts/server_app.py on 127.0.0.1. A real `bpftrace -p WORKER`
must see exactly the PY_START events of the requests that worker served (each request
calls a function named after it; the response says which worker served it), and a
SIGTERM must stop master and workers as it does when the app does not import pyusdt:
same exit status, same shutdown log, no panic.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import attach_bpftrace, finish, need_bpftrace, wait_mapped

SCRIPTS = Path(__file__).parent / "scripts"
BIN = Path(sys.executable).parent
PANIC = ("panicked", "threads should not terminate", "RUST_BACKTRACE")
# Requests the traced worker must serve, and the most requests sent to get there.
MIN_SERVED = 5
MAX_REQUESTS = 400

PROGRAM = (
    'usdt:PYUSDT:pyusdt:PY_START /strncmp(str(arg0), "req_", 4) == 0/ '
    '{ printf("%d %s\\n", pid, str(arg0)); }'
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(kind: str, port: int) -> list[str]:
    if kind == "uwsgi":
        # --die-on-term: SIGTERM shuts uWSGI 2.0 down (without it, SIGTERM reloads).
        # No --lazy-apps: the app (and pyusdt) is loaded in the master before the fork.
        return [
            str(BIN / "uwsgi"),
            "--master",
            "--processes",
            "2",
            "--http-socket",
            f"127.0.0.1:{port}",
            "--virtualenv",
            sys.prefix,
            "--pythonpath",
            str(SCRIPTS),
            "--module",
            "server_app",
            "--die-on-term",
        ]
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--preload",
        "--workers",
        "2",
        "--worker-class",
        "sync",
        "--bind",
        f"127.0.0.1:{port}",
        "--chdir",
        str(SCRIPTS),
        "server_app:application",
    ]


def get(port: int, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read().decode()
        assert resp.status == 200, (path, resp.status, body)
        return body
    finally:
        conn.close()


def children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(entry))
    return sorted(kids)


def wait_ready(server: subprocess.Popen, port: int, log: Path) -> list[int]:
    """Waits until the server answers and has its 2 workers; returns their pids."""
    for _ in range(600):
        if server.poll() is not None:
            raise AssertionError(f"server exited ({server.returncode}):\n{log.read_text()}")
        try:
            get(port, "/status")
        except OSError:
            time.sleep(0.1)
            continue
        workers = children(server.pid)
        if len(workers) == 2:
            return workers
        time.sleep(0.1)
    raise AssertionError(f"server not ready:\n{log.read_text()}")


def normalized(log: str) -> set[str]:
    """The server's log lines, without per-request lines, dates and numbers."""
    lines = set()
    for line in log.splitlines():
        if line.startswith("[pid: "):  # uWSGI's request log
            continue
        line = re.sub(r"^\[\d{4}-\d\d-\d\d [\d:]+ [+-]\d{4}\] ", "", line)  # gunicorn's
        line = re.sub(r"\[\w{3} \w{3} [ \d]\d [\d:]+ \d{4}\]", "[DATE]", line)  # uWSGI's
        line = re.sub(r"0x[0-9a-f]+|\d+", "N", line)
        lines.add(line.rstrip())
    return lines


def run_server(kind: str, tmp: Path, with_pyusdt: bool, traced: bool) -> dict:
    """Starts the server, sends requests (traced: until the first worker, under bpftrace,
    served MIN_SERVED), SIGTERMs the master and collects everything."""
    port = free_port()
    log = tmp / f"{kind}-{int(with_pyusdt)}{int(traced)}.log"
    env = {
        **os.environ,
        "PYUSDT_CHECK_MSEC": "10",
        "SERVER_APP_PYUSDT": str(int(with_pyusdt)),
        "HOME": str(tmp),  # gunicorn 25+ puts a control socket in ~/.gunicorn
    }
    with open(log, "w") as out:
        server = subprocess.Popen(
            command(kind, port),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp,
            start_new_session=True,
        )
    bt = None
    responses: list[tuple[int, int]] = []
    try:
        workers = wait_ready(server, port, log)
        traced_pid = workers[0]
        if with_pyusdt:
            for w in workers:
                wait_mapped(w)  # imported in the master, inherited
        if traced:
            bt = attach_bpftrace(traced_pid, PROGRAM)
            # Until the traced worker reports PY_START enabled (other answers are the
            # other worker's, untraced).
            for _ in range(2000):
                pid, probes = get(port, "/status").split()
                if pid == str(traced_pid) and "PY_START" in probes.split(","):
                    break
                time.sleep(0.01)
            else:
                raise AssertionError(f"PY_START never enabled in worker {traced_pid}")
        k = 0
        while k < MAX_REQUESTS:
            pid, served = map(int, get(port, f"/req/{k}").split())
            assert served == k
            responses.append((pid, k))
            k += 1
            if k >= 20 and sum(p == traced_pid for p, _ in responses) >= MIN_SERVED:
                break
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(90)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{kind} did not stop on SIGTERM:\n{log.read_text()}") from None
        bt_out = bt_err = ""
        if bt is not None:
            bt_out, bt_err = finish(bt, timeout=60)  # bpftrace exits with its worker
    finally:
        try:
            os.killpg(server.pid, signal.SIGKILL)  # whatever is left of master and workers
        except ProcessLookupError:
            pass
        server.wait()
        if bt is not None and bt.poll() is None:
            bt.kill()
            bt.communicate()
    return {
        "returncode": server.returncode,
        "log": log.read_text(errors="replace"),
        "responses": responses,
        "traced_pid": traced_pid,
        "workers": workers,
        "bt_out": bt_out,
        "bt_err": bt_err,
    }


@pytest.mark.parametrize("kind", ["uwsgi", "gunicorn"])
def test_preforked_worker_traced_exactly_and_stops_cleanly(tmp_path, kind):
    need_bpftrace()
    if kind == "uwsgi":
        assert (BIN / "uwsgi").exists(), f"uwsgi is not installed in {sys.prefix}"
    control = run_server(kind, tmp_path, with_pyusdt=False, traced=False)
    assert control["returncode"] is not None
    run = run_server(kind, tmp_path, with_pyusdt=True, traced=True)
    log, bt_out = run["log"], run["bt_out"]
    for text in PANIC:
        assert text not in log, log
        assert text not in run["bt_err"], run["bt_err"]
    w = run["traced_pid"]
    served = [f"req_{k}" for pid, k in run["responses"] if pid == w]
    assert len(served) >= MIN_SERVED, run["responses"]
    # Both workers served requests; each was answered by one of the master's workers.
    assert {pid for pid, _ in run["responses"]} <= set(run["workers"])
    seen = [(int(p), f) for p, f in re.findall(r"^(\d+) (req_\d+)$", bt_out, re.M)]
    assert seen == [(w, f) for f in served], (run["bt_err"], run["responses"])
    # Master and workers stop as they do without pyusdt.
    assert run["returncode"] == control["returncode"], log
    assert normalized(log) == normalized(control["log"]), log
