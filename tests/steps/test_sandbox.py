"""The code sandbox: hostile snippets cannot hurt the process that runs them, a normal one returns its
result. Every test runs a child for at most a few seconds."""

import json
import os
import time

import pytest

from dpokit.steps import sandbox
from dpokit.steps.sandbox import namespaces_available, run_code


def test_normal_snippet_returns_its_result():
    r = run_code("import json, sys\nprint(json.dumps({'sum': sum(range(10)), 'argv': sys.argv[:0]}))", timeout=5)
    assert r.ok and r.reason == "ok" and r.returncode == 0
    assert json.loads(r.stdout) == {"sum": 45, "argv": []}


def test_failing_snippet_reports_its_error():
    r = run_code("assert 1 + 1 == 3, 'wrong'", timeout=5)
    assert not r.ok and r.reason == "error" and r.returncode == 1 and "AssertionError: wrong" in r.stderr


def test_stdin_is_passed():
    r = run_code("print(input()[::-1])", stdin="abc\n", timeout=5)
    assert r.stdout.strip() == "cba"


def test_infinite_loop_is_killed_at_the_limit():
    start = time.monotonic()
    r = run_code("while True:\n    pass", timeout=1.5)
    elapsed = time.monotonic() - start
    assert r.timed_out and r.reason == "timeout" and not r.ok
    assert elapsed < 5.0


def test_sleeping_child_processes_are_killed_with_the_group():
    # even a snippet that tries to leave something behind leaves nothing running: it cannot fork
    r = run_code("import os\npid = os.fork()\nimport time\ntime.sleep(30)", timeout=1.5)
    assert not r.ok and "os.fork is not allowed" in r.stderr


@pytest.mark.parametrize("bomb", [
    "import os\nwhile True:\n    os.fork()",
    "import subprocess, sys\nwhile True:\n    subprocess.Popen([sys.executable, '-c', 'while True: pass'])",
    "import os\nwhile True:\n    os.posix_spawn('/bin/sh', ['sh'], {})",
    "import os\nos.system(':(){ :|:& };:')",
    "import multiprocessing\nwhile True:\n    multiprocessing.Process(target=lambda: None).start()",
])
def test_fork_bomb_is_contained(bomb):
    before = len(os.listdir("/proc")) if os.path.isdir("/proc") else None
    start = time.monotonic()
    r = run_code(bomb, timeout=2)
    assert not r.ok and time.monotonic() - start < 5.0
    assert "not allowed" in r.stderr, r.stderr
    if before is not None:  # no process explosion left behind (other work on the machine may vary a little)
        assert len(os.listdir("/proc")) < before + 20


def test_file_write_outside_its_directory_is_refused(tmp_path):
    target = tmp_path / "escaped.txt"
    for snippet in (f"open({str(target)!r}, 'w').write('x')",
                    f"import os\nfd = os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)\nos.write(fd, b'x')",
                    f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')",
                    f"open('../{target.name}', 'w').write('x')",
                    f"import os\nos.symlink({str(target)!r}, 'link')\nopen('link', 'w').write('x')"):
        r = run_code(snippet, timeout=5)
        assert not r.ok and "sandbox:" in r.stderr, (snippet, r.stderr)
        assert not target.exists(), snippet


def test_removing_files_outside_is_refused(tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    r = run_code(f"import os\nos.remove({str(keep)!r})", timeout=5)
    assert not r.ok and keep.read_text() == "precious"


def test_writing_inside_its_own_directory_works_and_is_removed():
    r = run_code("import os\nopen('scratch.txt', 'w').write('hi')\nprint(os.getcwd())", timeout=5)
    assert r.ok, r.stderr
    workdir = r.stdout.strip()
    assert "dpokit-sandbox-" in workdir and not os.path.exists(workdir)


def test_socket_connect_fails():
    snippets = ["import socket\ns = socket.socket()\ns.connect(('1.1.1.1', 80))",
                "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)",
                "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=1)"]
    for snippet in snippets:
        r = run_code(snippet, timeout=5)
        assert not r.ok, snippet


@pytest.mark.skipif(not namespaces_available(), reason="unshare cannot create user+network namespaces here")
def test_network_namespace_alone_blocks_outside_connections():
    # the OS layer without the in-child guard: the namespace has no route out
    r = sandbox._run("import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('1.1.1.1', 80))",
                     5, 512, 64, "", True, guard=False)
    assert r.network_isolated and not r.ok and "unreachable" in r.stderr.lower(), r.stderr


def test_huge_allocation_fails():
    r = run_code("x = bytearray(8 * 1024 ** 3)\nprint('allocated')", timeout=5, memory_mb=256)
    assert not r.ok and "MemoryError" in r.stderr and "allocated" not in r.stdout


def test_memory_limit_holds_without_the_guard():
    r = sandbox._run("x = bytearray(8 * 1024 ** 3)", 5, 256, 64, "", True, guard=False)
    assert not r.ok and "MemoryError" in r.stderr


def test_output_and_files_are_capped():
    r = run_code("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", timeout=3)
    assert not r.ok and len(r.stdout) <= 1 << 20
    r = run_code("f = open('big', 'wb')\nf.write(b'x' * (8 << 20))", timeout=3)
    assert not r.ok


def test_cannot_signal_the_parent():
    r = run_code("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", timeout=5)
    assert not r.ok and "os.kill is not allowed" in r.stderr


def test_guard_escape_routes_are_closed():
    for module in ("ctypes", "_posixsubprocess"):
        r = run_code(f"import {module}", timeout=5)
        assert not r.ok and "not allowed" in r.stderr, module


def test_isolated_interpreter_ignores_the_parent_environment(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/nonexistent-dpokit-path")
    monkeypatch.setenv("SECRET_TOKEN", "abc")
    r = run_code("import os, sys\nprint(os.environ.get('SECRET_TOKEN'), sys.flags.isolated, "
                 "any('nonexistent' in p for p in sys.path))", timeout=5)
    assert r.stdout.split() == ["None", "1", "False"]


def test_bad_limits_are_named():
    with pytest.raises(ValueError, match="timeout and memory_mb must be positive"):
        run_code("pass", timeout=0)
