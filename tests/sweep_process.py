"""A sweep run as its own process (``layertune sweep`` with its own local Ray): started,
waited on until a condition holds, broken, and finished; the fault tests' tools."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest


def start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended before the fault (rc {proc.returncode}):\n"
                        f"{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for the sweep:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 300.0) -> int:
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"the sweep did not end:\n{log.read_text()[-3000:]}")


def kill_group(proc: subprocess.Popen) -> None:
    """What is left of a killed driver's local Ray (its workers die with it on their own)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
