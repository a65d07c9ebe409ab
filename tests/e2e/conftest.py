"""Fixtures for tests on real hosts (see tests/hosts/lab.py).

Without root or the lab's tools these tests skip on a developer machine; under ``CI=true``
they fail instead, so CI can never pass without having run them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.hosts.lab import Lab, TestHost, prerequisites_missing
from tests.hosts.runner import DeployRun, deploy, write_inventory
from tests.hosts.tarballs import DEFAULT_VERSION, TarballMismatch, TarballMissing, release_tarball


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.realhost)


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    missing = prerequisites_missing()
    if missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"real-host tests cannot run under CI: {missing}")
        pytest.skip(f"real-host tests need this machine set up: {missing}")
    lab = Lab(tmp_path_factory.mktemp("lab")).start()
    yield lab
    lab.stop()


def shared_tarball(version: str = DEFAULT_VERSION) -> Path:
    """A real release tarball from the shared directory (tests/hosts/tarballs.py). Missing:
    a failure under ``CI=true``, a skip naming the path elsewhere; a wrong digest always fails."""
    try:
        return release_tarball(version)
    except TarballMissing as missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"real-host tests cannot run under CI: {missing}")
        pytest.skip(str(missing))
    except TarballMismatch as mismatch:
        pytest.fail(str(mismatch))


@pytest.fixture(scope="session")
def release(lab):
    """``release(version)``: host data that makes hosts download that real release from the
    lab, with its pinned digest (no ``pgvector_allow_insecure``: a test of an old release
    says that itself)."""

    def data(version: str) -> dict:
        return {"pgvector_version": version, "pgvector_url": lab.serve(shared_tarball(version))}

    return data


@pytest.fixture(scope="session")
def tarball(release) -> dict:
    """Host data that makes hosts download the product's default release (0.8.6) from the lab."""
    return release(DEFAULT_VERSION)


@pytest.fixture(scope="session")
def aws(tmp_path_factory) -> dict:
    """A moto server on loopback standing in for AWS; returns the environment (boto3's
    standard variables, AWS_ENDPOINT_URL included) for pyinfra runs to use it."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    server.stop()


class Hosts:
    """Creates test hosts with unique names/addresses and destroys them at the end."""

    _next_index = 1

    def __init__(self, lab: Lab):
        self.lab = lab
        self.made: list[TestHost] = []

    def boot(self, name: str, systemd: bool = True, arch: str = "amd64", suite: str = "bookworm") -> TestHost:
        index = Hosts._next_index
        Hosts._next_index += 1
        host = self.lab.host(name, index, systemd=systemd, arch=arch, suite=suite).create().boot()
        self.made.append(host)
        return host

    def destroy(self):
        for host in self.made:
            host.destroy()


@pytest.fixture(scope="module")
def hosts(lab):
    made = Hosts(lab)
    yield made
    made.destroy()


def run_deploy(workdir: Path, entries: list[tuple[str, dict]], *args: str, **options) -> DeployRun:
    inventory = write_inventory(workdir / "inventory.py", entries)
    return deploy(inventory, *args, **options)


@pytest.fixture
def provision(tmp_path):
    """``provision(host, *args, env=None, recipe=..., **data)``: run the real deploy (or another
    recipe) against one host, with ``data`` as its host data."""

    def run(host: TestHost, *args: str, env: dict | None = None, recipe: str | None = None, **data) -> DeployRun:
        options = {"env": env} if recipe is None else {"env": env, "recipe": recipe}
        return run_deploy(tmp_path, [host.inventory_entry(**data)], *args, **options)

    return run
