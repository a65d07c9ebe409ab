"""The app's connection details for its containers: printed without the password and, with
``pg_app_env_file``, written on the host as an env file for ``docker run --env-file`` and
Compose's ``env_file`` (mode 0600, root:root).

A container reaches the host at its bridge's gateway: ``172.17.0.1`` on docker0 (the
default), or ``host.docker.internal`` when the container runs with ``--add-host
host.docker.internal:host-gateway`` (``pg_app_host``). The file holds ``DATABASE_URL``
(password percent-encoded) and libpq's ``PGHOST``, ``PGPORT``, ``PGUSER``, ``PGPASSWORD``
and ``PGDATABASE``.

How the password travels: on the file's writer's standard input, never on a command line and
never in pyinfra's output. pyinfra's own upload (``files.put``, ``FileUploadCommand``) is not
used: with sudo it first writes, over SFTP as the login user, ``/tmp/pyinfra-<sha1 of the
target path>``, created with the SFTP server's umask (usually 0644, so readable by every local
user for a moment), then ``cp``s it, which creates a new target with that same mode. Here the
content goes into a ``mktemp`` file (0600 from the start, umask 077) next to the target, which
is then renamed over it.

Whether the file is current is decided by a sha256 of the wanted content against the file's
sha256, mode and owner, which is all the fact prints.

Example::

    appenv.env_file(plan, name="App env file for containers is current")
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

from pyinfra import host, logger
from pyinfra.api import StringCommand, operation

from .errors import fail
from .facts import EnvFileState
from .managed_files import install_from_stdin, sha256_text, stdin_file_preamble
from .networking import app_address, on_this_host
from .plan import Plan
from .shell import fails_host_on_error, host_locked

DOCKER0_GATEWAY = "172.17.0.1"  # Docker's default bridge, when the host has none (yet)
FILE_MODE = "600"
FILE_OWNER = "root:root"
# Values that mean the same, unquoted, to Compose's env_file and to docker run --env-file
# (printable ASCII without spaces, quotes, backslash, $ for Compose's interpolation, # and `).
_PLAIN = re.compile(r"^[!%&(-\[\]-_a-z{-~]+\Z")


@dataclass(frozen=True)
class Connection:
    """What a container needs to reach the app's database."""

    host: str
    port: int
    user: str
    password: str
    database: str
    sslmode: str | None = None  # require / verify-full for a host beyond this one; None: a bridge
    sslrootcert: str | None = None  # the CA for verify-full

    def url(self, password: str | None = None) -> str:
        """``postgresql://user:password@host:port/database``, the password percent-encoded;
        ``password="<password>"`` shows that placeholder instead, as is; then
        ``?sslmode=...`` (and ``&sslrootcert=...``) when TLS is asked for."""
        shown = quote(self.password, safe="") if password is None else password
        query = "&".join(f"{name}={quote(value, safe='/')}" for name, value in self.tls_parameters().items())
        base = f"postgresql://{quote(self.user, safe='')}:{shown}@{self.host}:{self.port}/{quote(self.database, safe='')}"
        return f"{base}?{query}" if query else base

    def tls_parameters(self) -> dict[str, str]:
        """libpq's sslmode and sslrootcert, those that are set."""
        return {name: value for name, value in (("sslmode", self.sslmode), ("sslrootcert", self.sslrootcert)) if value}

    def __repr__(self) -> str:
        return f"Connection({self.url('<password>')!r})"

    __str__ = __repr__


def connection(plan: Plan, address: str | None = None) -> Connection:
    """The app's connection from a container: ``pg_app_host``, else the Docker bridge gateway
    found on the host (docker0 first), else Docker's default 172.17.0.1; or to ``address``.
    TLS (``tls_for``) when that address is beyond this host and its bridges."""
    app = plan.settings.app
    address = address or app.host or app_address(plan.profile["bridges"]) or DOCKER0_GATEWAY
    sslmode, sslrootcert = tls_for(plan, address)
    return Connection(
        host=address, port=plan.port, user=app.user, password=str(app.password), database=app.database,
        sslmode=sslmode, sslrootcert=sslrootcert,
    )  # fmt: skip


def tls_for(plan: Plan, address: str) -> tuple[str | None, str | None]:
    """(sslmode, sslrootcert) for clients connecting to ``address``: none on a Docker bridge
    (its traffic stays on the host; ``host.docker.internal`` is docker0's gateway), else
    ``require``, or ``verify-full`` against pg_ssl_ca_file when it is set. A host name we
    cannot place counts as beyond the host."""
    if address in ("host.docker.internal", DOCKER0_GATEWAY) or on_this_host(address, None, plan.profile["bridges"]):
        return None, None
    ca = plan.settings.tls.ca_file
    return ("verify-full", ca) if ca else ("require", None)


def env_value(text: str) -> str | None:
    """``text`` written so Compose's env_file reads it back unchanged: as is when that means the
    same everywhere, else single-quoted (Compose takes those literally, ``\\'`` being a quote).
    None when Compose cannot read it back (a backslash before a quote or at the end)."""
    if _PLAIN.match(text):
        return text
    if "\\'" in text or text.endswith("\\"):
        return None
    return "'" + text.replace("'", "\\'") + "'"


def render_env_file(conn: Connection) -> str:
    lines = [
        "# Managed by pgvector-deploy: rewritten by every run (edit the host data, not this file).",
        "# How the app's containers reach its database: docker run --env-file, or Compose's env_file.",
    ]
    if conn.host == "host.docker.internal":
        lines.append(
            "# host.docker.internal needs: docker run --add-host host.docker.internal:host-gateway "
            '(Compose: extra_hosts: ["host.docker.internal:host-gateway"])'
        )
    lines += [
        f"DATABASE_URL={conn.url()}",
        f"PGHOST={conn.host}",
        f"PGPORT={conn.port}",
        f"PGUSER={conn.user}",
        *(f"PG{name.upper()}={value}" for name, value in conn.tls_parameters().items()),
    ]
    password = env_value(conn.password)
    if password is None:
        lines.append("# PGPASSWORD left out: Compose cannot read this password back from an env file; use DATABASE_URL.")
    else:
        if password != conn.password:
            lines.append("# PGPASSWORD is quoted for Compose (docker run --env-file would keep the quotes; use DATABASE_URL there).")
        lines.append(f"PGPASSWORD={password}")
    lines.append(f"PGDATABASE={conn.database}")
    for line in lines:
        # Every value but the password (quoted above) is plain; a guard behind the validation
        # of host data: nothing else may start another line, variable or quote in this file.
        name, _, value = line.partition("=")
        if not line.startswith("#") and name != "PGPASSWORD" and not (re.fullmatch(r"[A-Z_]+", name) and _PLAIN.match(value)):
            raise ValueError(f"{name} for the env file is not plain text: {value!r}")
    return "\n".join(lines) + "\n"


# Where the env file's path is a directory (mv would put the file inside it).
DIRECTORY_FIX = "set pg_app_env_file to a file path, such as /etc/pgvector-deploy/app.env."


def write_script(path: str) -> str:
    """Shell: the content from standard input into ``path``, 0600 root:root, replaced in one
    rename; the temporary file is private from its creation and removed on any failure. No copy
    of the previous file is kept: it holds the app role's password."""
    return install_from_stdin(path, FILE_MODE, FILE_OWNER, keep_copy=False, directory_fix=DIRECTORY_FIX, temp_name=".pgvector-deploy-env")


def with_role_password_script(path: str, psql: str) -> str:
    """Shell: the env file and the role's password, changed in one command, so that no later
    step of the run (a migration, the smoke suite) can fail between them and leave containers
    with a password the role no longer has.

    Standard input: the sha256 of the env file's content, the SQL that sets the password (one
    line), then the content. Nothing changes unless the content arrived whole. The new file is
    renamed into place first; if the SQL then fails, the previous file (or none) is put back.
    From the rename on, a dropped connection or SIGTERM no longer interrupts the pair."""
    return f"""{stdin_file_preamble(path, DIRECTORY_FIX)}
IFS= read -r want
IFS= read -r sql
tmp=$(mktemp "$dir/.pgvector-deploy-env.XXXXXX")
old=
trap 'rm -f "$tmp" ${{old:+"$old"}}' EXIT
cat > "$tmp"
[ "$(sha256sum < "$tmp" | cut -d' ' -f1)" = "$want" ] || {fail("the env file's content did not arrive whole (the connection dropped?); nothing was changed. Fix: run again.")}
chown root:root "$tmp"
chmod 0600 "$tmp"
# From here on the file and the role change together: a dropped connection (SIGHUP, SIGPIPE)
# or a stop must not leave one changed without the other.
trap '' HUP INT TERM PIPE
# The previous file, kept by a second name (a hard link: same content, mode and owner) to put back.
if [ -e "$file" ] || [ -L "$file" ]; then
  old=$(mktemp "$dir/.pgvector-deploy-env-old.XXXXXX")
  ln -f -P "$file" "$old"
fi
mv -f "$tmp" "$file"
# printf is the shell's own: the verifier is in no command line.
if ! printf '%s\\n' "$sql" | {psql}; then
  if [ -n "$old" ]; then mv -f "$old" "$file"; else rm -f "$file"; fi
  old=
  {fail(f"the app role's password could not be set (PostgreSQL's error is above), so {path} was put back as it was: the role and the file keep the old password. Fix: correct what PostgreSQL names, then run again.")}
fi
[ -z "$old" ] || rm -f "$old"
trap - EXIT
"""


def with_role_password(plan: Plan, psql: str, sql: str) -> StringCommand:
    """The command that runs ``sql`` (one line, setting the app role's password) through
    ``psql`` (reading standard input) and writes the env file with that password, together
    (``with_role_password_script``); everything secret on its standard input."""
    if "\n" in sql:
        raise ValueError("the password's SQL must be one line")
    content = render_env_file(connection(plan))
    return StringCommand(
        with_role_password_script(plan.settings.app.env_file, psql), _stdin=f"{sha256_text(content)}\n{sql}\n{content}"
    )


def _executing() -> bool:
    state = getattr(host, "state", None)
    return bool(state is not None and state.is_executing)


@operation()
@host_locked
@fails_host_on_error
def env_file(plan: Plan):
    """Print the app's connection string (without the password) and, with ``pg_app_env_file``,
    keep that env file current on the host (only written when it differs).

    .. code:: python

        appenv.env_file(plan, name="App env file for containers is current")
    """
    app = plan.settings.app
    conn = connection(plan)
    if _executing():  # once, when the deploy runs (not also while pyinfra looks for changes)
        where = f"; env file on the host: {app.env_file}" if app.env_file else ""
        logger.info(f"{host.print_prefix}App containers connect with {conn.url('<password>')}{where}")
        for address in plan.settings.listen_addresses:  # clients in the VPC: TLS only (hostssl)
            logger.info(f"{host.print_prefix}Clients beyond this host connect with {connection(plan, address).url('<password>')}")
    if app.env_file is None:
        host.noop("no env file (pg_app_env_file is not set)")
        return
    content = render_env_file(conn)
    state = plan.fact(EnvFileState, path=app.env_file)
    if state == {"sha256": sha256_text(content), "mode": FILE_MODE, "owner": FILE_OWNER}:
        host.noop(f"{app.env_file} is current")
        return
    # Not files.put: it uploads to a temporary file and sets the mode after moving it into place
    # (the password readable meanwhile), and asks File and Sha1File facts in every run.
    yield StringCommand(write_script(app.env_file), _stdin=content)
