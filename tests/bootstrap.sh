#!/bin/sh
# Installs what the tests need on a fresh Debian/Ubuntu machine (as root), into ./.venv:
# the toolkit with its test extras, and the lab's tools (debootstrap, systemd-nspawn, an HTTP
# proxy for the test hosts' apt, stunnel for the lab's S3, ssh), pgBackRest for the unit tests
# that run the restore, the probe and the drill against a local repository, and shellcheck for the unit
# tests that check every shell script (tests/unit/test_shellcheck.py). Safe to run again.
set -eu
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
apt-get -q update
apt-get -q -y install --no-install-recommends \
    python3 python3-venv python3-pip debootstrap systemd-container tinyproxy iproute2 \
    openssh-client ca-certificates tar procps util-linux qemu-user-static binfmt-support \
    postgresql-15 postgresql-server-dev-15 gcc make libc6-dev openssl stunnel4 shellcheck pgbackrest
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'
# Unit tests that start a throwaway PostgreSQL 15 on this machine (migrations, Alembic, the
# PgvectorState fact) need pgvector in it: the product's default release, built here from the
# same real tarball the test hosts build. It is read from the shared directory beside the
# repository (../shared/pgvector-tarballs, or PGV_TEST_TARBALLS) and used only if its sha256
# is the pin (tests/hosts/tarballs.py); nothing is downloaded. Skipped once that version is
# installed. (DESTDIR, if set, is where make installs and where the check looks.)
version=$(.venv/bin/python -c 'from tests.hosts.tarballs import DEFAULT_VERSION; print(DEFAULT_VERSION)')
extension=${DESTDIR:-}/usr/share/postgresql/15/extension
if ! grep -qx "default_version = '$version'" "$extension/vector.control" 2>/dev/null \
    || [ ! -f "$extension/vector--$version.sql" ] || [ ! -f "${DESTDIR:-}/usr/lib/postgresql/15/lib/vector.so" ]; then
    tarball=$(.venv/bin/python -m tests.hosts.tarballs "$version")
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    tar -C "$build" -xzf "$tarball"
    pgxs() { make -s -C "$build/pgvector-$version" OPTFLAGS="" with_llvm=no PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config "$@"; }
    pgxs && pgxs install  # the whole build first: install only what built
    echo "bootstrap: pgvector $version built and installed into PostgreSQL 15 from $tarball"
fi
