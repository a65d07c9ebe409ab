#!/bin/sh
# Installs what the tests need on a fresh Debian/Ubuntu machine (as root), into ./.venv:
# the toolkit with its test extras, and the lab's tools (debootstrap, systemd-nspawn, an HTTP
# proxy for the test hosts' apt, ssh). Safe to run again.
set -eu
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
apt-get -q update
apt-get -q -y install --no-install-recommends \
    python3 python3-venv python3-pip debootstrap systemd-container tinyproxy iproute2 \
    openssh-client ca-certificates tar procps util-linux qemu-user-static binfmt-support \
    postgresql-15 postgresql-server-dev-15 gcc make libc6-dev openssl
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'
# Unit tests that start a throwaway PostgreSQL 15 on this machine (migrations, Alembic, the
# PgvectorState fact) need pgvector in it: built here from the same real 0.8.0 tarball the
# test hosts build (tests/hosts/tarballs.py fetches it through a private apt configuration).
if [ ! -f /usr/share/postgresql/15/extension/vector.control ]; then
    tarball=$(.venv/bin/python -c 'from tests.hosts.tarballs import real_tarball; print(real_tarball())')
    build=$(mktemp -d)
    tar -C "$build" -xzf "$tarball"
    make -s -C "$build"/pgvector-* OPTFLAGS="" with_llvm=no PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config install
    rm -rf "$build"
fi
