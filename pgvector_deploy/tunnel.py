"""Reach an address as the host sees it, from the control machine, through pyinfra's connection.

The smoke suite's ``app_over_tcp`` logs in as the app with psycopg on the control machine, so
the app's password never reaches the host. The app connects to the Docker bridge gateway,
an address that exists only on the host: over pyinfra's SSH connection, a ``direct-tcpip``
channel from the host's sshd to (gateway, port) carries the connection; with ``@local`` the
address is this machine's own and psycopg connects to it directly. Other connectors
(``@docker`` ...) cannot carry it.

libpq needs a socket to connect to, so the channel is offered on a Unix socket in a private
``mkdtemp`` directory (mode 0700: no other local user can use the tunnel). One thread
accepts at most ``connections`` clients, one after the other, and pipes each to a channel
of its own; everything is closed when the ``with`` block ends, and every wait is bounded.

Example::

    with tunnel.reach(host, "172.17.0.1", 5432) as where:
        psycopg.connect(**where.keywords, user="app", dbname="app", password=password, connect_timeout=10)
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from paramiko.ssh_exception import ChannelException, SSHException
from pyinfra.connectors.local import LocalConnector
from pyinfra.connectors.ssh import SSHConnector

CHANNEL_TIMEOUT = 10  # seconds for sshd to open the channel (its connect to the address)
ACCEPT_WAIT = 30  # seconds the tunnel waits for the next client before it stops
LIFETIME = 120  # seconds at most for one connection piped through it
_TICK = 0.2  # seconds between looks at the stop flag
_CHUNK = 65536
# OpenSSH's answer when the server's configuration forbids forwarding (AllowTcpForwarding no,
# DisableForwarding, a restrict/no-port-forwarding key): RFC 4254's SSH_OPEN_ADMINISTRATIVELY_PROHIBITED.
_PROHIBITED = 1


class Unreachable(Exception):
    """The address cannot be reached this way at all (the check is not run: a skip)."""


class TunnelFailed(Exception):
    """The tunnel was possible but did not connect (the check fails)."""


def route(host) -> str:
    """``"ssh"`` or ``"local"``: how ``reach`` gets to the host's addresses; ``Unreachable``
    (naming the connector) for any other connector."""
    connector = getattr(host, "connector", None)
    if isinstance(connector, SSHConnector):
        return "ssh"
    if isinstance(connector, LocalConnector):
        return "local"
    name = f"pyinfra's {type(connector).__name__}" if connector is not None else "no pyinfra"
    raise Unreachable(f"{name} connector cannot carry a TCP connection to the host's addresses (needs SSH or @local)")


@contextmanager
def reach(host, address: str, port: int, connections: int = 2) -> Iterator["Pipe | Direct"]:
    """What reaches ``address:port`` as the host sees it, for up to ``connections``
    connections made one after the other inside the block: ``.keywords`` for libpq (``host``,
    ``port``), ``.error`` why the last connection never got there (``Unreachable``: a skip;
    ``TunnelFailed``: a failure), ``.describe(text)`` an error text without local paths.

    Raises ``Unreachable`` for a connector that cannot, ``TunnelFailed`` when pyinfra's SSH
    connection is closed.
    """
    if route(host) == "local":
        yield Direct(address, int(port))
        return
    client = host.connector.client
    transport = client.get_transport() if client is not None else None
    if transport is None or not transport.is_active():
        raise TunnelFailed("pyinfra's SSH connection to the host is not open")
    pipe = Pipe(transport, address, int(port), connections)
    try:
        pipe.start()
        yield pipe
    finally:
        pipe.close()


class Direct:
    """``@local``: the address is this machine's own."""

    error = None

    def __init__(self, address: str, port: int):
        self.keywords = {"host": address, "port": port}

    def describe(self, text: str) -> str:
        return text


class Pipe:
    """A Unix socket in a private directory whose clients are piped, one at a time, to
    ``direct-tcpip`` channels to ``address:port``; ``error`` keeps why a channel did not open."""

    def __init__(self, transport, address: str, port: int, connections: int):
        self.transport = transport
        self.address = address
        self.port = port
        self.connections = connections
        self.error: Exception | None = None
        self.keywords: dict = {}
        self.directory: str | None = None
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="pgvector-deploy-tunnel-")  # mode 0700
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(os.path.join(self.directory, f".s.PGSQL.{self.port}"))  # libpq's name
        listener.listen(1)
        listener.settimeout(_TICK)
        self._listener = listener
        self._thread = threading.Thread(target=self._serve, name=f"tunnel to {self.address}:{self.port}", daemon=True)
        self._thread.start()
        self.keywords = {"host": self.directory, "port": self.port}

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2 * _TICK + 5)
        if self._listener is not None:
            self._listener.close()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def describe(self, text: str) -> str:
        """``text`` with the local socket's path replaced by the address it stands for."""
        if self.directory:
            text = text.replace(f'socket "{self.directory}/.s.PGSQL.{self.port}"', f"{self.address}:{self.port} (through SSH)")
            text = text.replace(self.directory, f"{self.address} (through SSH)")
        return text

    def _serve(self) -> None:
        served = 0
        idle_until = time.monotonic() + ACCEPT_WAIT
        while served < self.connections and not self._stop.is_set() and time.monotonic() < idle_until:
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            served += 1
            with client:
                self._carry(client)
            idle_until = time.monotonic() + ACCEPT_WAIT

    def _carry(self, client: socket.socket) -> None:
        try:
            channel = self.transport.open_channel(
                "direct-tcpip", (self.address, self.port), ("127.0.0.1", 0), timeout=CHANNEL_TIMEOUT
            )
        except ChannelException as error:
            if error.code == _PROHIBITED:
                self.error = Unreachable(
                    f"the host's SSH server does not allow TCP forwarding ({error.text}); "
                    "allow it for the deploy user (AllowTcpForwarding) to run this check"
                )
            else:
                self.error = TunnelFailed(f"the host could not connect to {self.address}:{self.port}: {error.text}")
            return
        except (SSHException, OSError, EOFError) as error:
            self.error = TunnelFailed(f"no SSH channel to {self.address}:{self.port}: {error or type(error).__name__}")
            return
        try:
            self._pump(client, channel)
        finally:
            channel.close()

    def _pump(self, client: socket.socket, channel) -> None:
        # A peer that stops reading makes a send time out instead of holding the thread.
        client.settimeout(CHANNEL_TIMEOUT)
        channel.settimeout(CHANNEL_TIMEOUT)
        deadline = time.monotonic() + LIFETIME
        while not self._stop.is_set() and time.monotonic() < deadline:
            readable, _, _ = select.select([client, channel], [], [], _TICK)
            for source, target in ((client, channel), (channel, client)):
                if source not in readable:
                    continue
                try:
                    data = source.recv(_CHUNK)
                    if not data:
                        return
                    target.sendall(data)
                except (OSError, SSHException, EOFError):
                    return
