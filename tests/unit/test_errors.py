"""Failures as shell (pgvector_deploy.errors): ``fail`` prints its message verbatim and exits 1."""

from __future__ import annotations

import os
import subprocess

from pgvector_deploy.errors import Var, fail


def test_fail_prints_the_message_verbatim_on_stderr_and_exits_1():
    message = "it's $HOME and `date` and \"quotes\". Fix: nothing"
    result = subprocess.run(["sh", "-c", f"{fail(message)}\necho not reached"], capture_output=True, text=True, timeout=10)
    assert result.returncode == 1
    assert result.stderr == message + "\n"
    assert result.stdout == ""


def test_fail_keeps_backslashes_under_dash():
    # dash's echo turns \n, \c and friends into control characters (or stops printing).
    message = r"path C:\new\table and \c and a regex ^\d+$. Fix: nothing"
    assert os.path.realpath("/bin/sh").endswith("dash")  # Debian's /bin/sh, as on the hosts
    result = subprocess.run(["/bin/sh", "-c", fail(message, Var("tail"))], capture_output=True, text=True,
                            env={"tail": r" \t\\"}, timeout=10)  # fmt: skip
    assert result.returncode == 1
    assert result.stderr == message + r" \t\\" + "\n"
