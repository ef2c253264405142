"""Run model-written Python in a separate, limited process; never in the training process.

:func:`run_code` writes the snippet to a fresh temporary directory and runs it with the same
interpreter in isolated mode (``python -I -S``: no user site, no ``PYTHONPATH``, no current directory
on ``sys.path``), from that directory, with an empty environment. Layers, each one independent:

* **Wall time**: the child runs in its own session; at ``timeout`` seconds the whole process group is
  killed (SIGKILL). ``RLIMIT_CPU`` is a second stop for CPU-bound code.
* **Memory**: ``RLIMIT_AS`` (address space), so a huge allocation fails with ``MemoryError``.
* **Files**: ``RLIMIT_FSIZE`` caps every file the child writes (its output included); a guard
  installed before the snippet runs (a ``sys.addaudithook`` hook) refuses opening for writing,
  creating, renaming, removing or changing the mode of any path outside the working directory.
* **Processes**: ``RLIMIT_NPROC`` is set, and the guard refuses ``fork``, ``exec``, ``posix_spawn``,
  ``subprocess``, ``os.system`` and ``os.kill``; ``ctypes`` and ``_posixsubprocess`` (ways around the
  guard) cannot be imported. With ``unshare`` available the child also runs in its own PID namespace,
  so nothing it starts outlives it.
* **Network**: with ``unshare`` able to create a user + network namespace, the child has no network
  interface but loopback (``network_isolated=True`` in the result). Otherwise (and always, in
  addition) the guard refuses ``socket`` creation, ``connect``, ``bind`` and name lookups.

Limits, stated plainly: the audit-hook guard is a barrier against accidental or naive harm in
model-written code, not a security boundary against an adversary who targets CPython itself
(audit hooks can be bypassed from C, by memory corruption). ``RLIMIT_NPROC`` counts all processes of
the user and does not bind for root; where it does not, the guard and the PID namespace contain fork
bombs. Without ``unshare`` the file and network limits rest on the guard alone. For untrusted code at
scale, run the whole job in a container or VM as well.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from typing import List, Optional

__all__ = ["SandboxResult", "run_code", "namespaces_available"]

_OUTPUT_LIMIT = 1 << 20  # bytes of stdout/stderr (and of any file) the child may write

# Runs in the child before the snippet: installs the guard, then executes the snippet's file.
_PRELUDE = r'''
import os, sys
_ROOT = os.path.realpath(os.getcwd())
_NO_PROCESS = {"os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
               "subprocess.Popen", "os.kill", "os.killpg", "signal.pthread_kill", "pty.spawn"}
_NO_IMPORT = {"ctypes", "_ctypes", "_posixsubprocess", "multiprocessing", "_multiprocessing"}
_PATH_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.symlink", "os.link", "os.chmod",
                "os.chown", "os.truncate", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile",
                "os.chflags", "os.lchflags", "os.lchmod", "os.mkfifo", "os.mknod", "os.removexattr",
                "os.setxattr"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

def _inside(path):
    if isinstance(path, int):
        return True
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    real = os.path.realpath(os.fspath(path))
    return real == _ROOT or real.startswith(_ROOT + os.sep)

def _guard(event, args):
    if event in _NO_PROCESS:
        raise PermissionError("sandbox: " + event + " is not allowed")
    if event.startswith("socket.") or event in ("socket.__new__",):
        raise PermissionError("sandbox: network access (" + event + ") is not allowed")
    if event == "import" and args and str(args[0]).split(".")[0] in _NO_IMPORT:
        raise ImportError("sandbox: importing " + str(args[0]) + " is not allowed")
    if event == "open" and args:
        path, mode, flags = (list(args) + [None, None])[:3]
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS)
        if writing and path is not None and not _inside(path):
            raise PermissionError("sandbox: writing outside the working directory: " + str(path))
    if event in _PATH_EVENTS:
        for value in args:
            if isinstance(value, (str, bytes, os.PathLike)) and not _inside(value):
                raise PermissionError("sandbox: " + event + " outside the working directory: " + str(value))

sys.addaudithook(_guard)
_code = open("snippet.py", encoding="utf-8").read()
exec(compile(_code, "snippet.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
'''


@dataclass
class SandboxResult:
    """``ok``: exit status 0 within the time limit. ``reason``: ``ok`` | ``timeout`` | ``error``
    (non-zero exit or killed by a signal). Output is truncated to 1 MiB."""

    ok: bool
    returncode: Optional[int]
    stdout: str
    stderr: str
    timed_out: bool
    reason: str
    network_isolated: bool


@lru_cache(maxsize=1)
def namespaces_available() -> bool:
    """True when ``unshare`` can give a child its own user, network and PID namespaces here."""
    exe = shutil.which("unshare")
    if exe is None:
        return False
    try:
        done = subprocess.run([exe, "-r", "-n", "-p", "-f", "--kill-child", "--", sys.executable, "-I", "-S", "-c", "0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10, env={})
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _limits(memory_mb: int, cpu_s: int, nproc: int):
    def apply():  # runs in the child between fork and exec
        import resource

        def cap(which, value):
            try:
                soft, hard = resource.getrlimit(which)
                value = value if hard == resource.RLIM_INFINITY else min(value, hard)
                resource.setrlimit(which, (value, value))
            except (ValueError, OSError):
                pass  # a limit this platform does not offer: the other layers still hold

        cap(resource.RLIMIT_AS, memory_mb << 20)
        cap(resource.RLIMIT_CPU, cpu_s)
        cap(resource.RLIMIT_FSIZE, _OUTPUT_LIMIT)
        cap(resource.RLIMIT_CORE, 0)
        if hasattr(resource, "RLIMIT_NPROC"):
            cap(resource.RLIMIT_NPROC, nproc)

    return apply


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(_OUTPUT_LIMIT).decode("utf-8", "replace")
    except OSError:
        return ""


def run_code(code: str, timeout: float = 5.0, memory_mb: int = 512, nproc: int = 64,
             stdin: str = "", isolate_network: bool = True) -> SandboxResult:
    """Run ``code`` (Python source) in a limited child process and return what happened.

    ``timeout``: wall seconds before the process group is killed; ``memory_mb``: address-space limit;
    ``nproc``: ``RLIMIT_NPROC``; ``isolate_network``: use a network namespace when available (the
    socket guard applies either way). The working directory is fresh and removed afterwards.
    """
    return _run(code, timeout, memory_mb, nproc, stdin, isolate_network, guard=True)


def _run(code: str, timeout: float, memory_mb: int, nproc: int, stdin: str, isolate_network: bool,
         guard: bool) -> SandboxResult:
    """:func:`run_code`; ``guard=False`` leaves out the in-child guard (only to test the OS layers)."""
    if timeout <= 0 or memory_mb <= 0:
        raise ValueError(f"sandbox: timeout and memory_mb must be positive, got {timeout}, {memory_mb}")
    workdir = tempfile.mkdtemp(prefix="dpokit-sandbox-")
    try:
        with open(os.path.join(workdir, "snippet.py"), "w", encoding="utf-8") as f:
            f.write(code)
        prelude = _PRELUDE if guard else _PRELUDE.replace("sys.addaudithook(_guard)", "")
        command: List[str] = [sys.executable, "-I", "-S", "-c", prelude]
        isolated = bool(isolate_network and namespaces_available())
        if isolated:
            command = [shutil.which("unshare"), "-r", "-n", "-p", "-f", "--kill-child", "--"] + command
        out_path, err_path = os.path.join(workdir, ".stdout"), os.path.join(workdir, ".stderr")
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(command, cwd=workdir, env=env, stdin=subprocess.PIPE, stdout=out, stderr=err,
                                    start_new_session=True, close_fds=True,
                                    preexec_fn=_limits(memory_mb, max(1, int(timeout) + 1), nproc))
            timed_out = False
            try:
                proc.communicate(stdin.encode("utf-8"), timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: anything it started too
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        code_ = None if timed_out else proc.returncode
        ok = not timed_out and proc.returncode == 0
        return SandboxResult(ok=ok, returncode=code_, stdout=_read(out_path), stderr=_read(err_path),
                             timed_out=timed_out, reason="ok" if ok else ("timeout" if timed_out else "error"),
                             network_isolated=isolated)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
