"""aarch64 (Graviton-like) test hosts on this x86_64 machine, through qemu-user emulation.

The kernel runs aarch64 binaries with qemu via binfmt_misc. Debian registers qemu with
flags ``PF``, which ignore setuid bits, so sudo inside fails with "effective uid is not 0";
we register it again with ``OCPF`` (credentials from the binary), and sudo works.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

BINFMT = Path("/proc/sys/fs/binfmt_misc")
DEFINITION = Path("/usr/share/binfmts/qemu-aarch64")
FLAGS = "OCPF"


def aarch64_missing() -> str | None:
    """Why emulated aarch64 hosts cannot run here, or None."""
    if not DEFINITION.exists():
        return "qemu-user-static is not installed (tests/bootstrap.sh installs it)"
    return None


def enable_aarch64() -> None:
    """Register qemu-aarch64 with binfmt_misc using flags OCPF (idempotent)."""
    if not (BINFMT / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=True)
    entry = BINFMT / "qemu-aarch64"
    if entry.exists():
        flags = next((l.split()[1] for l in entry.read_text().splitlines() if l.startswith("flags:")), "")
        if set(flags) == set(FLAGS):
            return
        entry.write_text("-1")  # remove the PF registration
    fields = {}
    for line in DEFINITION.read_text().splitlines():
        key, _, value = line.partition(" ")
        fields[key] = value.strip()
    line = f":qemu-aarch64:M:{fields['offset']}:{fields['magic']}:{fields['mask']}:{fields['interpreter']}:{FLAGS}"
    fd = os.open(BINFMT / "register", os.O_WRONLY)
    try:
        os.write(fd, line.encode())  # the kernel decodes the \\x escapes itself
    finally:
        os.close(fd)
