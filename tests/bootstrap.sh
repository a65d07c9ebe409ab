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
    openssh-client ca-certificates tar procps util-linux qemu-user-static binfmt-support
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'
