"""Root filesystems for test hosts: a fresh, EC2-like Debian 12 (or 13), built once and cached.

``base_tarball()`` runs debootstrap (about a minute) only when the recipe below changed or
no cached tarball exists; every test host unpacks its own copy (a few seconds). The suite
is a parameter: ``bookworm`` (Debian 12, the default) or ``trixie`` (Debian 13), each with
its own cache key, so a recipe change rebuilds both and CI builds each once. What makes
it EC2-like: user ``admin`` with passwordless sudo (as cloud-init sets up), key-only SSH,
``PermitRootLogin no``, no resolver, apt through the lab's proxy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

CACHE = Path(os.environ.get("PGV_TEST_CACHE", "/var/cache/pgv-test"))
SUITE = "bookworm"  # the default suite
SUITES = ("bookworm", "trixie")
PACKAGES = "openssh-server,iproute2,procps,ca-certificates,sudo,curl,python3,systemd,systemd-sysv,dbus"

# Applied inside the new root filesystem (chroot) after debootstrap; part of the cache key.
# {suite} is the suite's codename (replaced, not str.format: the shell has braces).
CUSTOMISE = r"""
set -eu
useradd --create-home --shell /bin/bash admin
echo 'admin ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/90-cloud-init-users
chmod 0440 /etc/sudoers.d/90-cloud-init-users
install -d -m 0700 -o admin -g admin /home/admin/.ssh
sed -i -e 's/^#\?PermitRootLogin.*/PermitRootLogin no/' -e 's/^#\?PasswordAuthentication.*/PasswordAuthentication no/' /etc/ssh/sshd_config
grep -q '^PermitRootLogin no' /etc/ssh/sshd_config || echo 'PermitRootLogin no' >> /etc/ssh/sshd_config
echo 'UseDNS no' >> /etc/ssh/sshd_config
rm -f /etc/ssh/ssh_host_*
: > /etc/resolv.conf
cat > /etc/apt/sources.list <<'EOF'
deb http://deb.debian.org/debian {suite} main
deb http://deb.debian.org/debian {suite}-updates main
deb http://deb.debian.org/debian-security {suite}-security main
EOF
echo 'Acquire::http::Proxy "http://10.231.0.1:8899";' > /etc/apt/apt.conf.d/90-test-lab-proxy
rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
: > /etc/machine-id
systemctl enable ssh >/dev/null 2>&1 || true
"""


def _mirror() -> str:
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    return "http://deb.debian.org/debian"


def customise(suite: str) -> str:
    return CUSTOMISE.replace("{suite}", suite)


def _recipe_key(arch: str, suite: str = SUITE) -> str:
    # The rendered recipe: bookworm's key is the one it had before suites were a parameter.
    text = "\n".join([suite, PACKAGES, customise(suite), arch])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def base_tarball(arch: str = "amd64", suite: str = SUITE) -> Path:
    """The cached root filesystem tarball for ``arch`` and ``suite``, built if needed."""
    if suite not in SUITES:
        raise ValueError(f"no test-host recipe for suite {suite!r}; known: {', '.join(SUITES)}")
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / f"rootfs-{suite}-{arch}-{_recipe_key(arch, suite)}.tar"
    if tarball.exists():
        return tarball
    build = CACHE / f"build-{suite}-{arch}"
    shutil.rmtree(build, ignore_errors=True)
    subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={PACKAGES}", f"--arch={arch}", suite, str(build), _mirror()],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(["chroot", str(build), "sh", "-c", customise(suite)], check=True)
    partial = tarball.with_suffix(".partial")
    subprocess.run(["tar", "-C", str(build), "--numeric-owner", "-cf", str(partial), "."], check=True)
    partial.rename(tarball)
    shutil.rmtree(build, ignore_errors=True)
    return tarball


def ssh_keypair() -> tuple[Path, str]:
    """The lab's SSH key (created once): private key path and public key text."""
    CACHE.mkdir(parents=True, exist_ok=True)
    key = CACHE / "id_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pgv-test", "-f", str(key)], check=True)
    return key, key.with_suffix(".pub").read_text().strip()
