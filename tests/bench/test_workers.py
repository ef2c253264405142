"""How ``dpokit bench`` reports a worker that runs out of memory or is killed (a result, not a crash)."""

import signal

import pytest

from dpokit.bench.workers import failure, is_out_of_memory, spawn


def test_a_worker_killed_by_sigkill_is_reported_as_out_of_memory():
    out = failure(-signal.SIGKILL, "", "trl")
    assert out["out_of_memory"] is True and out["signal"] == 9
    assert out["failed"] == "killed by SIGKILL (on Linux, the out-of-memory killer)"


def test_other_signals_and_errors_are_failures_not_out_of_memory():
    assert failure(-signal.SIGTERM, "", "x") == {"failed": "killed by SIGTERM", "out_of_memory": False, "signal": 15}
    out = failure(1, "Traceback ...\nValueError: bad", "padded")
    assert out["out_of_memory"] is False and out["failed"] == "worker 'padded' exited with status 1"
    assert "ValueError: bad" in out["stderr"]
    assert failure(1, "RuntimeError: CUDA out of memory. Tried to allocate", "t")["out_of_memory"] is True


@pytest.mark.parametrize("error, oom", [(MemoryError(), True),
                                        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"), True),
                                        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
                                        (RuntimeError("shape mismatch"), False), (ValueError("memory"), False)])
def test_is_out_of_memory(error, oom):
    assert is_out_of_memory(error) is oom


def test_a_worker_over_its_memory_limit_reports_out_of_memory(tmp_path):
    # A fresh process under a 3 GiB address-space limit asked for 6 GiB: reported, not raised.
    out = spawn({"kind": "memory", "bytes": 6 * 2 ** 30, "memory_limit_gb": 3.0}, str(tmp_path), "probe")
    assert out["out_of_memory"] is True, out
    assert out["failed"].startswith("out of memory: RuntimeError:"), out


def test_a_worker_within_its_memory_limit_runs(tmp_path):
    out = spawn({"kind": "memory", "bytes": 64 * 2 ** 20, "memory_limit_gb": 3.0}, str(tmp_path), "probe")
    assert out["allocated"] == 64 * 2 ** 20 and out["peak_bytes"] >= 48 * 2 ** 20, out
