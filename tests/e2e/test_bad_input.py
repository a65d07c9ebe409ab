"""Bad input gets a clear error naming the problem and the fix, and nothing on the host
changes: every case compares a snapshot of the host's files before and after."""

from __future__ import annotations

import re

import pytest

from pgvector_deploy.releases import RELEASES
from tests.hosts.lab import GATEWAY, NET
from tests.hosts.tarballs import DEFAULT_VERSION


AMAZON_LINUX_2 = """NAME="Amazon Linux"
VERSION="2"
ID="amzn"
ID_LIKE="centos rhel fedora"
VERSION_ID="2"
PRETTY_NAME="Amazon Linux 2"
ANSI_COLOR="0;33"
CPE_NAME="cpe:2.3:o:amazon:amazon_linux:2"
HOME_URL="https://amazonlinux.com/"
"""


def refused_without_change(host, deploy, *expected: str):
    """Run ``deploy()``: it must fail, print every ``expected`` text, and leave the host's files
    exactly as they were."""
    before = host.snapshot()
    run = deploy()
    assert run.returncode != 0
    for text in expected:
        assert text in run.output, run.output
    assert host.snapshot() == before
    return run


@pytest.fixture(scope="module")
def fresh(hosts):
    host = hosts.boot("bad-input")
    host.ssh("sudo true")  # sudo's first use writes ~/.sudo_as_admin_successful: not ours
    return host


CASES = {
    "wrong sha256": (
        {"pgvector_sha256": "0" * 64},
        [f"has sha256 {RELEASES[DEFAULT_VERSION].sha256}", "expected " + "0" * 64],
    ),
    "unreachable pgvector_url": (
        {"pgvector_url": f"http://{GATEWAY}:9/v0.8.6.tar.gz"},
        [f"could not download the pgvector tarball from http://{GATEWAY}:9/v0.8.6.tar.gz", "Fix:"],
    ),
    "pgvector_tarball missing on the control machine": (
        {"pgvector_tarball": "/nonexistent/v0.8.6.tar.gz"},
        ["pgvector_tarball '/nonexistent/v0.8.6.tar.gz' does not exist on the control machine", "Fix:"],
    ),
    "version that is not a version": (
        {"pgvector_version": "latest"},
        ["pgvector_version 'latest' is not a version", "Fix:"],
    ),
    "version below the security floor": (
        {"pgvector_version": "0.8.1", "pgvector_allow_insecure": False},
        ["pgvector 0.8.1 is below the security floor 0.8.2", "CVE-2026-3172", "Fix:"],
    ),
    "invalid CIDR in pg_docker_subnets": (
        {"pg_docker_subnets": ["172.20.0.0/16", "172.21.0.0/33"]},
        ["pg_docker_subnets: '172.21.0.0/33' is not a valid CIDR", "Fix:"],
    ),
    "app user named postgres": (
        {"pg_app_user": "postgres", "pg_app_password": "secret"},
        ["pg_app_user: 'postgres' is reserved", "Fix:"],
    ),
    "empty app password": (
        {"pg_app_user": "app", "pg_app_password": ""},
        ["pg_app_password: the password is empty", "Fix:"],
    ),
    "database name that is not an identifier": (
        {"pg_app_user": "app", "pg_app_password": "secret", "pg_app_database": "my-app;drop"},
        ["pg_app_database: 'my-app;drop' is not a valid name", "Fix:"],
    ),
    "listen address with a zone id and a setting behind it": (
        {"pg_listen_addresses": ["fe80::1%eth0'\nshared_preload_libraries = 'evil"]},
        ["pg_listen_addresses: ", "has a zone id", "Fix:"],
    ),
    "app user that is an SQL keyword": (
        {"pg_app_user": "user", "pg_app_password": "secret"},
        ["pg_app_user: 'user' is an SQL keyword", "Fix:"],
    ),
    "a password that is not text": (
        {"pg_app_user": "app", "pg_app_password": ["secret"]},
        ["pg_app_password is not text (list)", "Fix:"],
    ),
    "a boolean that is not true or false": (
        {"pgvector_portable": "maybe"},
        ["pgvector_portable: 'maybe' is not true or false. Fix:"],
    ),
    "SSM parameter that does not exist": (
        {"pg_app_user": "app", "pg_app_password_ssm": "/pgvector-deploy/missing"},
        ["pg_app_password_ssm: SSM parameter '/pgvector-deploy/missing' does not exist", "Fix:"],
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_input_is_refused_before_any_change(case, fresh, tarball, provision, aws):
    data, expected = CASES[case]
    refused_without_change(fresh, lambda: provision(fresh, env=aws, **{**tarball, **data}), *expected)


def test_port_taken_by_another_program_is_refused(fresh, tarball, provision):
    fresh.sudo("nohup python3 -m http.server 5432 >/dev/null 2>&1 & echo $! > /run/port-blocker.pid; sleep 1")
    try:
        refused_without_change(
            fresh, lambda: provision(fresh, **tarball), "port 5432 is taken by /usr/bin/python3", "Fix:"
        )
    finally:
        fresh.sudo("kill $(cat /run/port-blocker.pid)")


def test_unsupported_distribution_is_refused(fresh, tarball, provision):
    """A host whose os-release says Amazon Linux 2 (end of life, no PostgreSQL 15)."""
    fresh.sudo(f"rm /etc/os-release && printf '%s' '{AMAZON_LINUX_2}' > /etc/os-release")
    try:
        refused_without_change(
            fresh,
            lambda: provision(fresh, **tarball),
            "unsupported host: found Amazon Linux 2 on x86_64",
            "supported: Debian 12 (bookworm)",
        )
    finally:
        fresh.sudo("ln -sf ../usr/lib/os-release /etc/os-release")


def test_a_tarball_that_is_not_pgvector_is_refused_before_any_change(fresh, lab, provision, tmp_path):
    """The digest matches what the user pinned, but the content is not pgvector 0.9.1."""
    import io
    import tarfile

    from tests.hosts.tarballs import sha256

    path = tmp_path / "v0.9.1.tar.gz"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.addfile(tarfile.TarInfo("not-pgvector/README"), io.BytesIO(b""))
    path.write_bytes(buffer.getvalue())
    url = lab.serve(path)
    refused_without_change(
        fresh,
        lambda: provision(fresh, pgvector_version="0.9.1", pgvector_sha256=sha256(path), pgvector_url=url),
        "is not pgvector 0.9.1 (no pgvector-0.9.1/vector.control in it)",
    )


def test_a_login_without_passwordless_sudo_is_refused(fresh, tarball, provision):
    fresh.sudo("id nosudo >/dev/null 2>&1 || { useradd -m nosudo && install -d -m 700 -o nosudo -g nosudo ~nosudo/.ssh "
               "&& install -m 600 -o nosudo -g nosudo ~admin/.ssh/authorized_keys ~nosudo/.ssh/; }")  # fmt: skip
    refused_without_change(
        fresh, lambda: provision(fresh, ssh_user="nosudo", **tarball), "cannot run sudo without a password. Fix:"
    )


def test_a_disk_too_full_to_build_is_refused(fresh, tarball, provision):
    fresh.sudo("mount -t tmpfs -o size=50m tmpfs /var/tmp")
    try:
        refused_without_change(
            fresh,
            lambda: provision(fresh, **tarball),
            "MB free on the file system of /var/tmp; a pgvector build needs 200 MB. Fix:",
        )
    finally:
        fresh.sudo("umount /var/tmp")


def test_an_unreachable_host_is_named_and_the_others_still_run(fresh, tarball, tmp_path):
    """<lab>.250.2 is on the lab network but nothing answers there."""
    from tests.e2e.conftest import run_deploy

    ghost = ("ghost", {"ssh_hostname": f"{NET}.250.2", "ssh_user": "admin", "ssh_connect_timeout": 3})
    run = run_deploy(tmp_path, [ghost, fresh.inventory_entry(**{**tarball, "pgvector_version": "latest"})])
    assert run.returncode != 0
    assert re.search(r"\[ghost\]\s+Could not connect", run.output), run.output
    assert "[bad-input]" in run.output and "pgvector_version 'latest' is not a version" in run.output
