"""The test lab: a private network of real Debian 12 hosts on this machine.

- ``Lab``: bridge ``pgvt0`` (10.231.0.1/16, the "VPC subnet"), an HTTP proxy on it for apt
  (the hosts have no other way out), and an HTTP server for pgvector tarballs.
- ``TestHost``: its own root filesystem, network namespace and veth on the bridge, booted
  by systemd-nspawn, either with systemd as PID 1 (like an EC2 instance) or with only sshd
  (like a container or minimal image with no init system). Reached over real SSH as
  ``admin`` with sudo, with strict host key checking.

Traffic stays on addresses of this machine's own namespaces: 10.231.0.0/16 (10.23x.0.0/16 for
lab slot x, see ``SLOT``).
"""

from __future__ import annotations

import fcntl
import functools
import http.server
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from .rootfs import CACHE, SUITE, base_tarball, ssh_keypair

# Several labs can run side by side on one machine, one per slot (PGV_TEST_LAB_SLOT, 0-9):
# each has its own bridge, /16, host directory, namespaces and lock. Slot 0 is the default.
SLOT = int(os.environ.get("PGV_TEST_LAB_SLOT", "0"))
assert 0 <= SLOT <= 9, "PGV_TEST_LAB_SLOT is a number from 0 to 9"
NET = f"10.{231 + SLOT}"  # the lab's "VPC": NET.0.0/16
BRIDGE = f"pgvt{SLOT}"
GATEWAY = f"{NET}.0.1"
SUBNET = f"{NET}.0.0/16"
PROXY_PORT = 8899
FILES_PORT = 8081
HOSTS_DIR = Path(os.environ.get("PGV_TEST_HOSTS", "/var/lib/pgv-test/hosts" + (f"-{SLOT}" if SLOT else "")))
NETNS_PREFIX = "pgvt-" if SLOT == 0 else f"pgvt{SLOT}-"
APT_ARCHIVES = CACHE / "apt-archives"
LAB_WAIT = int(os.environ.get("PGV_TEST_LAB_WAIT", "3600"))


def run(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, text=True, capture_output=True, **kwargs)


def prerequisites_missing() -> str | None:
    """Why real test hosts cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("debootstrap", "systemd-nspawn", "tinyproxy", "stunnel4", "ip", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (tests/bootstrap.sh installs it)"
    return None


class _RecordingHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]  # set per lab: every path asked for, so tests can see downloads

    def log_message(self, *args):  # keep pytest output readable
        pass

    def do_GET(self):
        self.requests.append(self.path)
        super().do_GET()


class Lab:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.files_dir = workdir / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.key, self.public_key = ssh_keypair()
        self.known_hosts = workdir / "known_hosts"
        self.known_hosts.touch()
        self.requests: list[str] = []
        self._proxy: subprocess.Popen | None = None
        self._files: http.server.ThreadingHTTPServer | None = None

    def start(self) -> "Lab":
        # One lab per machine: a second one would tear down the first one's hosts. A second
        # test run waits its turn (up to LAB_WAIT seconds) instead of failing at once.
        self._lock = open(f"/run/pgv-test-lab{SLOT or ''}.lock", "w")
        deadline = time.monotonic() + LAB_WAIT
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"another test lab ran on this machine for over {LAB_WAIT}s; wait for it to finish") from None
                time.sleep(2)
        cleanup_stale()
        run("ip", "link", "add", BRIDGE, "type", "bridge")
        run("ip", "addr", "add", f"{GATEWAY}/16", "dev", BRIDGE)
        run("ip", "link", "set", BRIDGE, "up")
        conf = self.workdir / "tinyproxy.conf"
        conf.write_text(
            f"User nobody\nGroup nogroup\nPort {PROXY_PORT}\nListen {GATEWAY}\nTimeout 600\n"
            f"MaxClients 64\nLogLevel Warning\nAllow {SUBNET}\nDisableViaHeader Yes\n"
        )
        self._proxy = subprocess.Popen(
            ["tinyproxy", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        handler_class = type("Handler", (_RecordingHandler,), {"requests": self.requests})
        handler = functools.partial(handler_class, directory=str(self.files_dir))
        self._files = http.server.ThreadingHTTPServer((GATEWAY, FILES_PORT), handler)
        threading.Thread(target=self._files.serve_forever, daemon=True).start()
        wait_for_port(GATEWAY, PROXY_PORT, 10)
        return self

    def stop(self) -> None:
        if self._files:
            self._files.shutdown()
            self._files.server_close()
        if self._proxy:
            self._proxy.terminate()
            self._proxy.wait(10)
        run("ip", "link", "del", BRIDGE, check=False)
        self._lock.close()

    def serve(self, path: Path, name: str | None = None) -> str:
        """Serve a file over HTTP to the hosts; returns its URL."""
        name = name or path.name
        shutil.copyfile(path, self.files_dir / name)
        return f"http://{GATEWAY}:{FILES_PORT}/{name}"

    def host(self, name: str, index: int, systemd: bool = True, arch: str = "amd64", suite: str = SUITE) -> "TestHost":
        return TestHost(self, name, index, systemd, arch, suite)


def cleanup_stale() -> None:
    """Remove what an interrupted earlier run left: nspawn processes, namespaces, bridge."""
    for pid_file in HOSTS_DIR.glob("*.pid"):
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
        pid_file.unlink(missing_ok=True)
    for line in run("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(NETNS_PREFIX):
            run("ip", "netns", "del", name, check=False)
    run("ip", "link", "del", BRIDGE, check=False)


def wait_for_port(address: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing answered on {address}:{port} within {timeout}s")
            time.sleep(0.2)


class TestHost:
    """A real Debian 12 (or 13, ``suite="trixie"``) host: own root filesystem, network namespace,
    and (optionally) systemd."""

    def __init__(self, lab: Lab, name: str, index: int, systemd: bool, arch: str = "amd64", suite: str = SUITE):
        self.lab = lab
        self.name = name
        self.index = index
        self.systemd = systemd
        self.arch = arch  # Debian's name: amd64, or arm64 (emulated, see emulation.py)
        self.suite = suite  # Debian's codename: bookworm (Debian 12), or trixie (Debian 13)
        # .debs kept per suite: bookworm's where they always were.
        self.apt_archives = APT_ARCHIVES / (arch if suite == SUITE else f"{suite}-{arch}")
        self.address = f"{NET}.{index}.2"
        self.netns = f"{NETNS_PREFIX}{name}"
        self.root = HOSTS_DIR / name
        self.pid_file = HOSTS_DIR / f"{name}.pid"
        self.log = HOSTS_DIR / f"{name}.log"
        self._process: subprocess.Popen | None = None
        self.containers: list[AppContainer] = []

    # -- lifecycle -------------------------------------------------------------------------
    def create(self) -> "TestHost":
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        run("tar", "-C", str(self.root), "--numeric-owner", "-xf", str(base_tarball(self.arch, self.suite)))
        (self.root / "etc/hostname").write_text(self.name + "\n")
        (self.root / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {self.name}\n::1 localhost\n")
        keys = self.root / "home/admin/.ssh/authorized_keys"
        keys.write_text(self.lab.public_key + "\n")
        os.chown(keys, *_owner(self.root / "home/admin"))
        keys.chmod(0o600)
        run("chroot", str(self.root), "ssh-keygen", "-A")  # fresh host keys for every host
        host_key = (self.root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[:2]
        others = [line for line in self.lab.known_hosts.read_text().splitlines() if not line.startswith(self.address + " ")]
        self.lab.known_hosts.write_text("".join(f"{line}\n" for line in others) + f"{self.address} {' '.join(host_key)}\n")
        # Reuse .debs earlier hosts downloaded (apt still verifies and installs them).
        self.apt_archives.mkdir(parents=True, exist_ok=True)
        for deb in self.apt_archives.glob("*.deb"):
            os.link(deb, self.root / "var/cache/apt/archives" / deb.name)
        # apt's way out is this lab's proxy (the cached root filesystem names slot 0's).
        (self.root / "etc/apt/apt.conf.d/90-test-lab-proxy").write_text(f'Acquire::http::Proxy "http://{GATEWAY}:{PROXY_PORT}";\n')
        run("ip", "netns", "add", self.netns)
        outside, inside = f"pv{SLOT}h{self.index}a", f"pv{SLOT}h{self.index}b"
        run("ip", "link", "del", outside, check=False)  # left by an interrupted run
        run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        run("ip", "link", "set", outside, "master", BRIDGE, "up")
        run("ip", "link", "set", inside, "netns", self.netns)
        self.netns_run("ip", "link", "set", "lo", "up")
        self.netns_run("ip", "link", "set", inside, "name", "eth0")
        self.netns_run("ip", "addr", "add", f"{self.address}/16", "dev", "eth0")
        self.netns_run("ip", "link", "set", "eth0", "up")
        self.netns_run("ip", "route", "add", "default", "via", GATEWAY)
        return self

    def boot(self) -> "TestHost":
        command = [
            "systemd-nspawn", "-D", str(self.root), "-M", self.name,
            f"--network-namespace-path=/run/netns/{self.netns}",
            "--register=no", "--keep-unit", "--resolv-conf=off", "--timezone=off",
            "--link-journal=no", "--console=passive",
        ]  # fmt: skip
        if self.systemd:
            command.append("-b")
        else:
            # No init system: nspawn's stub is PID 1 and runs only sshd.
            command += ["--as-pid2", "/bin/sh", "-c", "mkdir -p /run/sshd && exec /usr/sbin/sshd -D -e"]
        with open(self.log, "ab") as log:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                # The host owns its network namespace, so its net.* sysctls are its own to set,
                # as on a VM (nspawn would mount /proc/sys/net read-only).
                env={**os.environ, "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network"},
            )  # fmt: skip
        self.pid_file.write_text(str(self._process.pid))
        self.wait_for_ssh()
        return self

    def wait_for_ssh(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._process and self._process.poll() is not None:
                raise RuntimeError(f"{self.name} stopped while booting; see {self.log}")
            result = self.ssh("true", check=False, timeout=10)
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not answer SSH in {timeout}s: {result.stderr}")
            time.sleep(0.5)

    def wait_until(self, command: str, timeout: float = 90) -> None:
        """Poll ``command`` (run with sudo) until it succeeds, e.g. a service finishing boot."""
        deadline = time.monotonic() + timeout
        while self.ssh(f"sudo sh -c {shlex.quote(command)}", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {command!r} did not succeed within {timeout}s")
            time.sleep(1)

    def shutdown(self, timeout: float = 60) -> None:
        if self._process and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        self.pid_file.unlink(missing_ok=True)

    def destroy(self) -> None:
        self.shutdown()
        # Keep what apt downloaded for the next hosts.
        for deb in (self.root / "var/cache/apt/archives").glob("*.deb"):
            target = self.apt_archives / deb.name
            if not target.exists():
                try:
                    os.link(deb, target)
                except FileExistsError:  # another lab's host kept the same file meanwhile
                    pass
        for container in self.containers:
            run("ip", "netns", "del", container.netns, check=False)
        run("ip", "netns", "del", self.netns, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- simulated Docker networking inside the host ------------------------------------------
    def add_bridge(self, name: str, gateway: str) -> None:
        """A Linux bridge in the host's namespace, as Docker makes (docker0, br-<id>)."""
        self.netns_run("ip", "link", "add", name, "type", "bridge")
        self.netns_run("ip", "addr", "add", gateway, "dev", name)
        self.netns_run("ip", "link", "set", name, "up")

    def remove_bridge(self, name: str) -> None:
        self.netns_run("ip", "link", "del", name, check=False)

    def add_container(self, name: str, bridge: str, address: str) -> "AppContainer":
        """A network namespace plugged into ``bridge`` like a container: ``address`` is
        CIDR, its default route is the bridge's gateway (the host)."""
        container = AppContainer(f"{NETNS_PREFIX}{self.index}-{name}", address)
        run("ip", "netns", "del", container.netns, check=False)
        run("ip", "netns", "add", container.netns)
        outside = f"pv{SLOT}{self.index}{name[:4]}"
        run("ip", "link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", container.netns)
        run("ip", "link", "set", outside, "netns", self.netns)
        self.netns_run("ip", "link", "set", outside, "master", bridge, "up")
        container.run("ip", "link", "set", "lo", "up")
        container.run("ip", "addr", "add", address, "dev", "eth0")
        container.run("ip", "link", "set", "eth0", "up")
        gateway = self.netns_run("ip", "-o", "-4", "addr", "show", "dev", bridge).stdout.split()[3].split("/")[0]
        container.run("ip", "route", "add", "default", "via", gateway)
        self.containers.append(container)
        return container

    # -- using it --------------------------------------------------------------------------
    def netns_run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run("ip", "netns", "exec", self.netns, *args, check=check)

    def ssh(
        self, command: str, check: bool = True, timeout: float = 600, input: str | None = None
    ) -> subprocess.CompletedProcess:
        """Run ``command`` on the host as admin over SSH (prefix ``sudo`` for root); ``input``
        goes to its standard input (keeps secrets out of command lines and sudo's log)."""
        result = subprocess.run(
            ["ssh", "-i", str(self.lab.key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
             "-o", f"UserKnownHostsFile={self.lab.known_hosts}", "-o", "ConnectTimeout=5",
             f"admin@{self.address}", command],
            text=True, capture_output=True, timeout=timeout, input=input,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"{self.name}: {command!r} failed ({result.returncode}): {result.stderr}")
        return result

    def sudo(self, command: str, check: bool = True, input: str | None = None) -> str:
        return self.ssh(f"sudo sh -c {shlex.quote(command)}", check=check, input=input).stdout

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the postgres superuser on the host; returns bare rows."""
        command = f"runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d {shlex.quote(database)} -c {shlex.quote(sql)}"
        return self.sudo(command).strip()

    def snapshot(self) -> dict[str, tuple]:
        """What a run of the toolkit could change on the host, so that two equal snapshots
        mean it changed nothing: every file and directory under /etc, /usr, /opt, /srv, /var
        and /home (size, mtime, mode, owner; packages land in /usr and dpkg's status, our
        configuration in /etc, the build in /var/tmp, our cache and stamp in /var), and, with
        PostgreSQL up, its roles, databases, extension versions, a checksum of every
        database's contents (pg_dumpall), the cluster's identity and the server's start time.

        Never the housekeeping that changes by itself, or whenever anyone connects (a
        snapshot that includes it makes a flaky test): inside a data directory only its
        top-level configuration files and PG_VERSION count (not pg_internal.init, the WAL,
        statistics or postmaster.pid), and logs, sudo's lecture marks, systemd's and apt's
        own state are left out. Directories count by name, mode and owner only."""
        volatile = {
            "var/log", "var/lib/sudo", "var/lib/systemd", "var/cache/ldconfig", "var/lib/private",
            "var/lib/apt/lists", "var/lib/apt/periodic", "var/cache/apt", "var/cache/man", "var/lib/dhcp",
            "var/lib/logrotate",
        }  # fmt: skip
        housekeeping = {"postmaster.pid", "postmaster.opts", "current_logfiles"}
        found: dict[str, tuple] = {}
        for top in ("etc", "usr", "opt", "srv", "var", "home"):
            for directory, dirs, files in os.walk(self.root / top):
                relative = os.path.relpath(directory, self.root)
                if "PG_VERSION" in files and "global" in dirs:  # a data directory
                    dirs[:] = []
                    files = [name for name in files if name not in housekeeping]
                dirs[:] = [d for d in dirs if os.path.join(relative, d) not in volatile]
                for name in dirs:  # a directory's mtime moves when a temp file comes and goes
                    stat = os.lstat(os.path.join(directory, name))
                    found[os.path.join(relative, name)] = (0, 0, stat.st_mode, stat.st_uid, stat.st_gid)
                for name in files:
                    stat = os.lstat(os.path.join(directory, name))
                    found[os.path.join(relative, name)] = (stat.st_size, stat.st_mtime_ns, stat.st_mode, stat.st_uid, stat.st_gid)
        found.update(self._server_snapshot())
        return found

    def _server_snapshot(self) -> dict[str, tuple]:
        """PostgreSQL's side of ``snapshot``, read as superuser; nothing when it is not up."""
        if self.sudo("pg_isready -q -p 5432 && echo up || true").strip() != "up":
            return {"server": ("down",)}
        queries = {
            "server:roles": "SELECT string_agg(concat_ws(' ', rolname, rolsuper, rolcreatedb, rolcreaterole, rolcanlogin, "
            "rolreplication, rolbypassrls, md5(coalesce(rolpassword, ''))), ';' ORDER BY rolname) FROM pg_authid",
            "server:databases": "SELECT string_agg(concat_ws(' ', datname, pg_get_userbyid(datdba), datallowconn, datacl::text), "
            "';' ORDER BY datname) FROM pg_database",
            "server:identity": "SELECT system_identifier || ' ' || pg_postmaster_start_time() FROM pg_control_system()",
        }  # fmt: skip
        found = {key: (self.psql(sql),) for key, sql in queries.items()}
        for database in self.psql("SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1").split():
            found[f"server:extensions:{database}"] = (  # qualified: a planted public.pg_extension may come first
                self.psql("SELECT string_agg(extname || ' ' || extversion, ';' ORDER BY extname) FROM pg_catalog.pg_extension", database),
            )
        # pg_dumpall (15.14 on) wraps its output in \restrict <a random key>: not contents.
        dump = (
            "set -e; dump=$(runuser -u postgres -- pg_dumpall -p 5432 --no-comments); "
            "printf '%s\\n' \"$dump\" | grep -Ev '^\\\\(un)?restrict ' | sha256sum"
        )
        found["server:contents"] = (self.sudo(dump).split()[0],)
        return found

    def init_pid(self) -> int:
        """This machine's process id of the host's PID 1: its processes share that pid
        namespace, and ``/proc/<it>/root`` is the host's filesystem as the host sees it
        (with its own tmpfs /tmp, /run and /dev/shm, which ``root`` does not show)."""
        assert self._process is not None and self._process.poll() is None, f"{self.name} is not running"
        children = Path(f"/proc/{self._process.pid}/task/{self._process.pid}/children").read_text().split()
        return int(children[0])

    def inventory_entry(self, **data) -> tuple[str, dict]:
        connection = {
            "ssh_hostname": self.address,
            "ssh_user": "admin",
            "ssh_key": str(self.lab.key),
            "ssh_known_hosts_file": str(self.lab.known_hosts),
            "ssh_strict_host_key_checking": "yes",
        }
        return self.name, {**connection, **data}


class AppContainer:
    """A network namespace standing in for an app's Docker container."""

    def __init__(self, netns: str, address: str):
        self.netns = netns
        self.address = address

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run("ip", "netns", "exec", self.netns, *args, check=check)

    def query(self, dsn: str, sql: str) -> subprocess.CompletedProcess:
        """Connect with psycopg from inside the namespace, as the containerised app would."""
        code = (
            "import sys, psycopg\n"
            "with psycopg.connect(sys.argv[1], connect_timeout=5) as conn:\n"
            "    print(conn.execute(sys.argv[2]).fetchone()[0])\n"
        )
        return run("ip", "netns", "exec", self.netns, sys.executable, "-c", code, dsn, sql, check=False)


def _owner(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_uid, stat.st_gid
