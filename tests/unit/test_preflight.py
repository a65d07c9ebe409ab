"""Look before touching: port ownership and planning (pgvector_deploy.preflight)."""

from __future__ import annotations

import pytest

from pgvector_deploy.facts import HostProfile, LoginAccess, parse_host_profile
from pgvector_deploy.loading import load_settings
from pgvector_deploy.plan import POSTGRES_PORT, Plan, tarball_path
from pgvector_deploy.platforms import UnsupportedHost
from pgvector_deploy.preflight import Refusal, check_port, look, make_plan

from .conftest import recorded_lines, with_changes

DOCKER_LINE = 'LISTEN 0 4096 0.0.0.0:5432 0.0.0.0:* users:(("docker-proxy",pid=811,fd=4))'
NGINX_LINE = 'LISTEN 0 511 0.0.0.0:5432 0.0.0.0:* users:(("nginx",pid=901,fd=6))'


def cluster(major=15, name="main", port=5432, status="online"):
    return {"major": major, "name": name, "port": port, "status": status,
            "data_dir": f"/var/lib/postgresql/{major}/{name}"}


def listener(exe, line):
    process = line.split('users:(("', 1)[1].split('"', 1)[0] if 'users:(("' in line else ""
    return {"exe": exe, "process": process, "line": line}


def refusal_of(profile, platform, port=POSTGRES_PORT) -> str:
    with pytest.raises(UnsupportedHost) as error:
        check_port(profile, platform, port)
    return str(error.value)


# --- check_port -----------------------------------------------------------------------------


def test_port_check_passes_for_a_fresh_host(fresh_profile, debian12):
    assert check_port(fresh_profile, debian12, 5432) is None


def test_port_check_passes_when_our_own_15_cluster_owns_5432(provisioned_profile, debian12):
    assert check_port(provisioned_profile, debian12, 5432) is None


def test_nginx_on_the_port_is_refused(fresh_profile, debian12):
    profile = with_changes(fresh_profile, listeners=[listener("/usr/sbin/nginx", NGINX_LINE)])
    message = refusal_of(profile, debian12)
    assert "port 5432 is taken by /usr/sbin/nginx" in message
    assert NGINX_LINE in message
    assert "Fix:" in message


def test_docker_proxy_on_the_port_is_refused(fresh_profile, debian12):
    profile = with_changes(fresh_profile, listeners=[listener("/usr/bin/docker-proxy", DOCKER_LINE)])
    message = refusal_of(profile, debian12)
    assert "taken by /usr/bin/docker-proxy" in message
    assert "a docker-proxy here is a container publishing 5432" in message


def test_listener_without_exe_is_named_by_its_process(fresh_profile, debian12):
    profile = with_changes(fresh_profile, listeners=[listener("", DOCKER_LINE)])
    assert "taken by docker-proxy" in refusal_of(profile, debian12)


def test_another_postgres_binary_on_the_port_is_refused(fresh_profile, debian12):
    line = 'LISTEN 0 244 127.0.0.1:5432 0.0.0.0:* users:(("postgres",pid=77,fd=6))'
    profile = with_changes(fresh_profile, listeners=[listener("/usr/lib/postgresql/16/bin/postgres", line)])
    message = refusal_of(profile, debian12)
    assert "another PostgreSQL (/usr/lib/postgresql/16/bin/postgres)" in message
    assert "Fix:" in message


def test_postgresql_16_cluster_on_5432_is_refused(fresh_profile, debian12):
    profile = with_changes(fresh_profile, clusters=[cluster(major=16)])
    message = refusal_of(profile, debian12)
    assert "port 5432 belongs to PostgreSQL 16 (cluster 16/main, online)" in message
    assert "Fix:" in message


def test_postgresql_16_cluster_on_another_port_is_fine(fresh_profile, debian12):
    assert check_port(with_changes(fresh_profile, clusters=[cluster(major=16, port=5433)]), debian12, 5432) is None


def test_our_15_main_cluster_on_5433_is_refused(fresh_profile, debian12):
    profile = with_changes(fresh_profile, clusters=[cluster(port=5433)])
    message = refusal_of(profile, debian12)
    assert "cluster 15/main listens on port 5433" in message
    assert "port = 5432 in /etc/postgresql/15/main/postgresql.conf" in message


def test_port_check_passes_for_our_own_cluster_on_a_host_without_ss(provisioned_profile, debian12):
    # Without ss, HostProfile finds the listener's process through /proc (socket inode -> fd).
    profile = with_changes(
        provisioned_profile,
        listeners=[{"exe": "/usr/lib/postgresql/15/bin/postgres", "process": "", "line": "pid 812, found without ss"}],
    )
    assert check_port(profile, debian12, 5432) is None


def test_port_check_refuses_an_unidentified_listener(provisioned_profile, debian12):
    profile = with_changes(
        provisioned_profile, clusters=[], listeners=[{"exe": "", "process": "", "line": "pid , found without ss"}]
    )
    with pytest.raises(UnsupportedHost, match="port 5432 is taken by an unknown process"):
        check_port(profile, debian12, 5432)


# --- make_plan ------------------------------------------------------------------------------


def test_make_plan_for_the_fresh_recorded_host(fresh_profile):
    settings = load_settings({})
    plan = make_plan(settings, fresh_profile)
    assert isinstance(plan, Plan)
    assert plan.platform.key == "debian-12"
    assert plan.settings is settings
    assert plan.port == 5432
    assert plan.cached_tarball == "/var/cache/pgvector-deploy/pgvector-0.8.6.tar.gz"


def test_make_plan_for_the_provisioned_recorded_host(provisioned_profile):
    plan = make_plan(load_settings({"pgvector_version": "0.8.0", "pgvector_allow_insecure": True}), provisioned_profile)
    assert plan.cached_tarball == tarball_path("0.8.0")


def test_make_plan_refuses_amazon_linux_2(fresh_profile):
    profile = with_changes(
        fresh_profile,
        os_release={"ID": "amzn", "VERSION_ID": "2", "PRETTY_NAME": "Amazon Linux 2"},
        package_tools=["yum"],
    )
    with pytest.raises(UnsupportedHost, match="found Amazon Linux 2 on x86_64"):
        make_plan(load_settings({}), profile)


def test_make_plan_refuses_debian_without_apt_get(fresh_profile):
    with pytest.raises(UnsupportedHost, match="without apt-get"):
        make_plan(load_settings({}), with_changes(fresh_profile, package_tools=[]))


def test_make_plan_refuses_rocky_without_dnf():
    profile = parse_host_profile(recorded_lines("fresh", "host-profile", host="rocky9-x86_64"))
    with pytest.raises(UnsupportedHost, match=r"RHEL / Rocky / AlmaLinux 9 without dnf: found \['yum'\]"):
        make_plan(load_settings({}), with_changes(profile, package_tools=["yum"]))


def _al2023_with_server(major: int, version: str) -> dict:
    profile = parse_host_profile(recorded_lines("fresh", "host-profile", host="amzn2023-aarch64"))
    binary = {"path": "/usr/bin/postgres", "major": major, "version": version}
    line = 'LISTEN 0 244 127.0.0.1:5432 0.0.0.0:* users:(("postgres",pid=901,fd=6))'
    return with_changes(profile, postgres_binaries=[binary], listeners=[listener("/usr/bin/postgres", line)])


def test_amazon_linux_2023_with_postgresql_16_in_usr_bin_is_refused():
    # The port check alone would take that server for ours: it runs from our bindir.
    with pytest.raises(UnsupportedHost) as error:
        make_plan(load_settings({}), _al2023_with_server(16, "postgres (PostgreSQL) 16.8"))
    message = str(error.value)
    assert "/usr/bin/postgres is PostgreSQL 16 (postgres (PostgreSQL) 16.8)" in message
    assert "where Amazon Linux 2023 puts PostgreSQL 15" in message
    assert "Fix: remove PostgreSQL 16's packages" in message


def test_amazon_linux_2023_with_its_own_postgresql_15_running_is_planned():
    plan = make_plan(load_settings({}), _al2023_with_server(15, "postgres (PostgreSQL) 15.12"))
    assert plan.platform.key == "amzn-2023"


def test_rhel_with_the_distribution_s_postgresql_on_the_port_is_refused():
    profile = parse_host_profile(recorded_lines("fresh", "host-profile", host="rhel9-x86_64"))
    line = 'LISTEN 0 244 127.0.0.1:5432 0.0.0.0:* users:(("postgres",pid=77,fd=6))'
    profile = with_changes(
        profile,
        postgres_binaries=[{"path": "/usr/bin/postgres", "major": 13, "version": "postgres (PostgreSQL) 13.16"}],
        listeners=[listener("/usr/bin/postgres", line)],
    )
    with pytest.raises(UnsupportedHost, match=r"another PostgreSQL \(/usr/bin/postgres\), not PostgreSQL 15 from /usr/pgsql-15/bin"):
        make_plan(load_settings({}), profile)


def test_plan_knows_the_os_id_and_arch():
    profile = parse_host_profile(recorded_lines("fresh", "host-profile", host="almalinux9-aarch64"))
    plan = make_plan(load_settings({}), profile)
    assert (plan.os_id, plan.arch) == ("almalinux", "aarch64")


def test_make_plan_refuses_a_busy_port(fresh_profile):
    profile = with_changes(fresh_profile, listeners=[listener("/usr/bin/docker-proxy", DOCKER_LINE)])
    with pytest.raises(UnsupportedHost, match="docker-proxy"):
        make_plan(load_settings({}), profile)


def test_plan_repr_is_short(fresh_profile):
    text = repr(make_plan(load_settings({}), fresh_profile))
    assert text == "Plan(debian-12, pgvector 0.8.6)"
    assert "os_release" not in text


def test_refusal_repr_hides_the_message():
    assert repr(Refusal("long message")) == "Refusal"


# --- look (with a stand-in for pyinfra's host: data + get_fact) --------------------------------


class StubHost:
    def __init__(self, data, profile):
        self.data = data
        self.profile = profile
        self.asked = []

    def get_fact(self, fact, **kwargs):
        self.asked.append((fact, kwargs))
        return self.profile


def test_look_asks_for_the_profile_with_the_versioned_cached_tarball(fresh_profile):
    host = StubHost({"pgvector_version": "0.8.5"}, fresh_profile)
    plan = look(host)
    assert isinstance(plan, Plan)
    assert host.asked == [
        (HostProfile, {"port": 5432, "cached_tarball": "/var/cache/pgvector-deploy/pgvector-0.8.5.tar.gz"})
    ]


def test_look_refuses_bad_data_without_touching_the_host(fresh_profile):
    host = StubHost({"pgvector_version": "latest"}, fresh_profile)
    refusal = look(host)
    assert isinstance(refusal, Refusal)
    assert refusal.message.startswith("bad host data: pgvector_version 'latest'")
    assert host.asked == []


def test_look_turns_an_unsupported_host_into_a_refusal(fresh_profile):
    refusal = look(StubHost({}, with_changes(fresh_profile, arch="i686")))
    assert isinstance(refusal, Refusal)
    assert "architecture 'i686' is not supported" in refusal.message


# --- disk space and sudo -------------------------------------------------------------------------


def test_a_fresh_host_needs_install_space_under_usr(fresh_profile, debian12):
    from pgvector_deploy.preflight import INSTALL_SPACE_MB, check_disk_space

    enough = with_changes(fresh_profile, free_mb={"/var/tmp": 5000, "/usr": INSTALL_SPACE_MB})
    assert check_disk_space(enough, debian12) is None
    tight = with_changes(fresh_profile, free_mb={"/var/tmp": 5000, "/usr": 900})
    with pytest.raises(UnsupportedHost, match=r"only 900 MB free on the file system of /usr; installing PostgreSQL 15.*needs 1500 MB\. Fix:"):
        check_disk_space(tight, debian12)


def test_a_provisioned_host_needs_only_build_space(provisioned_profile, debian12):
    from pgvector_deploy.preflight import check_disk_space

    assert check_disk_space(with_changes(provisioned_profile, free_mb={"/var/tmp": 300, "/usr": 10}), debian12) is None
    with pytest.raises(UnsupportedHost, match=r"only 50 MB free on the file system of /var/tmp; a pgvector build needs 200 MB"):
        check_disk_space(with_changes(provisioned_profile, free_mb={"/var/tmp": 50, "/usr": 10}), debian12)


def test_host_profile_reads_free_space():
    from pgvector_deploy.facts import parse_host_profile

    profile = parse_host_profile(["arch=x86_64", "free_kb=/var/tmp|204800", "free_kb=/usr|", "free_kb=/x|abc"])
    assert profile["free_mb"] == {"/var/tmp": 200}


class _AccessHost:
    def __init__(self, access):
        self.access = access
        self.data = {}

    def get_fact(self, cls, **kwargs):
        return self.access


class _Config:
    SUDO = None


def test_start_refuses_a_login_that_cannot_sudo_and_runs_the_refusal_without_sudo():
    from pgvector_deploy.preflight import start

    config = _Config()
    refusal = start(_AccessHost({"uid": 1000, "sudo": False}), config)
    assert isinstance(refusal, Refusal)
    assert "cannot run sudo without a password. Fix:" in refusal.message
    assert config.SUDO is False


def test_our_online_cluster_owns_the_port_whatever_the_listener_looks_like(provisioned_profile, debian12):
    """pg_lsclusters is authoritative on Debian/Ubuntu (under emulation /proc/PID/exe misleads)."""
    odd = [{"exe": "/usr/libexec/qemu-binfmt/aarch64-binfmt-P", "process": "postgres", "line": "LISTEN ..."}]
    assert check_port(with_changes(provisioned_profile, listeners=odd), debian12, 5432) is None
    down = [dict(cluster, status="down") for cluster in provisioned_profile["clusters"]]
    with pytest.raises(UnsupportedHost, match="port 5432 is taken by another PostgreSQL"):
        check_port(with_changes(provisioned_profile, listeners=odd, clusters=down), debian12, 5432)


# --- a cluster expected where its data is missing (item: never initialise one where one is expected) ---


def profile_of(state: str) -> dict:
    return parse_host_profile(recorded_lines(state, "host-profile"))


def data_refusal(state: str, **data) -> str:
    with pytest.raises(UnsupportedHost) as error:
        make_plan(load_settings(data), profile_of(state))
    return str(error.value)


def test_host_profile_parses_the_traces_of_an_expected_cluster_and_the_mounts():
    profile = profile_of("volume-unmounted")
    assert profile["initialised_data_dirs"] == []
    assert profile["config_dirs"] == ["/etc/postgresql/15/main"]
    assert profile["build_stamp"] is True
    assert profile["fstab"] == [
        {"source": "UUID=3f1c2b9e-8d4a-4c1e-9b7f-2a6d5e4c3b21", "mount_point": "/", "type": "ext4", "options": "rw,discard,errors=remount-ro"},
        {"source": "UUID=c9a8e7d6-5b4a-4f3e-8d2c-1b0a9f8e7d6c", "mount_point": "/var/lib/postgresql", "type": "ext4", "options": "defaults,nofail"},
    ]
    assert "/" in profile["mounts"] and "/var/lib/postgresql" not in profile["mounts"]
    assert profile["clusters"][0]["data_dir"] == "/var/lib/postgresql/15/main"


def test_fstab_and_mountinfo_escapes_swap_and_trailing_slashes_are_read_as_paths():
    from pgvector_deploy.facts import parse_fstab

    profile = parse_host_profile(["data_dirs_checked=yes", r"mounted=/srv/pg\040data", "pg_version_file=/var/lib/pgsql/data"])
    assert profile["mounts"] == ["/srv/pg data"] and profile["initialised_data_dirs"] == ["/var/lib/pgsql/data"]
    assert parse_fstab([r"/dev/sdb1|/srv/pg\040data/|xfs|defaults", "/dev/sdc|none|swap|sw", "/dev/sdd|swap|swap|sw"]) == [
        {"source": "/dev/sdb1", "mount_point": "/srv/pg data", "type": "xfs", "options": "defaults"}
    ]


def test_a_profile_recorded_before_the_data_directory_lines_is_not_judged_on_them(provisioned_profile):
    assert provisioned_profile["initialised_data_dirs"] is None
    assert make_plan(load_settings({}), provisioned_profile).platform.key == "debian-12"


def test_an_fstab_data_volume_that_is_not_mounted_is_refused():
    message = data_refusal("volume-unmounted")
    assert message.startswith(
        "/etc/fstab mounts UUID=c9a8e7d6-5b4a-4f3e-8d2c-1b0a9f8e7d6c at /var/lib/postgresql, which holds the "
        "cluster's data directory /var/lib/postgresql/15/main, but nothing is mounted there"
    )
    assert "Nothing was changed. Fix: mount it (mount /var/lib/postgresql" in message


def test_a_registered_cluster_whose_data_directory_was_emptied_is_refused():
    message = data_refusal("data-emptied")
    assert message.startswith(
        "a PostgreSQL 15 cluster is expected in /var/lib/postgresql/15/main (pg_lsclusters lists cluster 15/main "
        "there; pgvector-deploy's build stamp /var/lib/pgvector-deploy/build.json says it provisioned this host), "
        "but it has no PG_VERSION"
    )
    assert "Nothing was changed. Fix: mount the volume" in message
    assert "first: pg_dropcluster 15 main; rm /var/lib/pgvector-deploy/build.json." in message


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"clusters": [], "build_stamp": False}, "its configuration directory /etc/postgresql/15/main exists"),
        ({"clusters": [], "config_dirs": []}, "pgvector-deploy's build stamp /var/lib/pgvector-deploy/build.json"),
    ],
)
def test_each_trace_of_an_expected_cluster_alone_is_enough_to_refuse(changes, reason):
    profile = with_changes(profile_of("data-emptied"), **changes)
    with pytest.raises(UnsupportedHost) as error:
        make_plan(load_settings({}), profile)
    assert reason in str(error.value)


def test_the_same_host_with_its_data_in_place_is_planned():
    profile = with_changes(profile_of("data-emptied"), initialised_data_dirs=["/var/lib/postgresql/15/main"])
    assert make_plan(load_settings({}), profile).platform.key == "debian-12"
    mounted = with_changes(profile_of("volume-unmounted"), initialised_data_dirs=["/var/lib/postgresql/15/main"])
    mounted["mounts"].append("/var/lib/postgresql")
    assert make_plan(load_settings({"pg_data_mount": "/var/lib/postgresql"}), mounted).platform.key == "debian-12"


def test_a_fresh_host_with_nothing_expected_is_planned_and_makes_its_cluster():
    assert make_plan(load_settings({}), profile_of("fresh-volume-unmounted")).platform.key == "debian-12"


def test_pg_data_mount_not_mounted_on_a_fresh_host_is_refused():
    message = data_refusal("fresh-volume-unmounted", pg_data_mount="/var/lib/postgresql")
    assert message.startswith(
        "pg_data_mount /var/lib/postgresql is not mounted: the volume that holds the cluster "
        "(/var/lib/postgresql/15/main) is missing"
    )
    assert "Nothing was changed. Fix: attach the volume and mount it at /var/lib/postgresql" in message


def test_pg_data_mount_mounted_on_a_fresh_host_is_planned():
    plan = make_plan(load_settings({"pg_data_mount": "/var/lib/postgresql/"}), profile_of("fresh-volume-mounted"))
    assert plan.settings.data_mount == "/var/lib/postgresql"


def test_pg_data_mount_that_does_not_hold_the_data_directory_is_refused():
    profile = profile_of("fresh-volume-mounted")
    profile["mounts"].append("/var/lib/postgres")
    with pytest.raises(UnsupportedHost) as error:
        make_plan(load_settings({"pg_data_mount": "/var/lib/postgres"}), profile)  # a typo, mounted or not
    assert str(error.value).startswith(
        "pg_data_mount is /var/lib/postgres, but Debian 12 (bookworm) keeps the cluster in /var/lib/postgresql/15/main, "
        "which is not under it. Nothing was changed. Fix: set pg_data_mount to the mount point of the volume that "
        "holds /var/lib/postgresql/15/main (such as /var/lib/postgresql), or unset it."
    )


@pytest.mark.parametrize("value", ["var/lib/postgresql", "/", "/var/lib/../tmp", "/var/lib/post gresql", "//x"])
def test_pg_data_mount_must_be_a_plain_absolute_path(value):
    from pgvector_deploy.settings import SettingsError

    with pytest.raises(SettingsError, match="pg_data_mount: .* is not the absolute path of a mount point. Fix:"):
        load_settings({"pg_data_mount": value})


def test_the_refusal_comes_from_the_host_profile_alone_before_any_other_fact():
    """One round trip: look() asks the host profile and nothing else, so on Debian the refusal
    comes before postgresql-15 (whose postinst makes a cluster) could be installed."""

    class Host:
        data = {"pg_data_mount": "/var/lib/postgresql"}
        asked = []

        def get_fact(self, cls, **kwargs):
            self.asked.append(cls)
            return profile_of("fresh-volume-unmounted")

    host = Host()
    result = look(host)
    assert isinstance(result, Refusal) and "pg_data_mount /var/lib/postgresql is not mounted" in result.message
    assert host.asked == [HostProfile]


# --- Amazon Linux 2023: the bindir is /usr/bin, shared with everything else -------------------


def _al2023_provisioned_with_listener(exe: str, line: str) -> list[str]:
    recorded = recorded_lines("provisioned", "host-profile", host="amzn2023-x86_64")
    return [entry for entry in recorded if not entry.startswith("listener=")] + [f"listener={exe}|{line}"]


@pytest.mark.parametrize(
    ("exe", "line", "named"),
    [
        ("/usr/bin/docker-proxy", DOCKER_LINE, "/usr/bin/docker-proxy"),
        ("/usr/bin/pgbouncer", 'LISTEN 0 128 0.0.0.0:5432 0.0.0.0:* users:(("pgbouncer",pid=700,fd=7))', "/usr/bin/pgbouncer"),
    ],
)
def test_amazon_linux_2023_refuses_another_usr_bin_program_on_the_port(exe, line, named):
    # PostgreSQL 15 installed in /usr/bin but stopped; something else from /usr/bin holds 5432.
    host = StubHost({}, parse_host_profile(_al2023_provisioned_with_listener(exe, line)))
    refusal = look(host)
    assert isinstance(refusal, Refusal)
    assert refusal.message.startswith(f"port 5432 is taken by {named} (") and "Fix:" in refusal.message


def test_amazon_linux_2023_with_its_own_server_on_the_port_is_planned():
    host = StubHost({}, parse_host_profile(recorded_lines("provisioned", "host-profile", host="amzn2023-x86_64")))
    assert isinstance(look(host), Plan)


def test_amazon_linux_2023_under_qemu_sees_the_server_through_its_argv():
    # /proc/PID/exe is the emulator; the program is argv's first word that is not qemu's.
    line = 'LISTEN 0 244 127.0.0.1:5432 0.0.0.0:* users:(("postgres",pid=2051,fd=6))|argv=/usr/bin/qemu-x86_64-static /usr/bin/postgres -D /var/lib/pgsql/data'
    ok = parse_host_profile(_al2023_provisioned_with_listener("/usr/bin/qemu-x86_64-static", line))
    assert isinstance(look(StubHost({}, ok)), Plan)
    proxy = line.replace("/usr/bin/postgres -D /var/lib/pgsql/data", "/usr/bin/docker-proxy -proto tcp")
    refused = look(StubHost({}, parse_host_profile(_al2023_provisioned_with_listener("/usr/bin/qemu-x86_64-static", proxy))))
    assert isinstance(refused, Refusal) and "/usr/bin/docker-proxy" in refused.message


# --- any error while looking is a refusal of that host ------------------------------------------


class _ErringHost:
    """A login that works, then a fact whose parser meets output it does not expect."""

    def __init__(self, error: Exception, data: dict | None = None):
        self.error = error
        self.data = data or {}

    def get_fact(self, cls, **kwargs):
        if cls is LoginAccess:
            return {"uid": 0, "sudo": True}
        raise self.error


def test_an_error_while_looking_is_a_one_line_refusal_naming_it():
    from pgvector_deploy.preflight import start

    error = UnicodeDecodeError("utf-8", b"caf\xe9", 3, 4, "invalid continuation byte")
    refusal = start(_ErringHost(error), _Config())
    assert isinstance(refusal, Refusal)
    assert "\n" not in refusal.message
    assert refusal.message.startswith("unexpected UnicodeDecodeError while looking at the host: ")
    assert "can't decode byte 0xe9" in refusal.message and "Fix:" in refusal.message


def test_a_fact_parser_error_in_the_prefetch_is_a_refusal_naming_the_fact(fresh_profile, monkeypatch):
    from pyinfra.context import ctx_host

    from pgvector_deploy.facts import FactBundle, InstalledPackages
    from pgvector_deploy.preflight import start

    class Host(StubHost):
        def get_fact(self, fact, **kwargs):
            if fact is LoginAccess:
                return {"uid": 0, "sudo": True}
            if fact is FactBundle:  # every prefetched fact answered
                return [(0, ["x=1"]) for _ in kwargs["commands"]]
            return super().get_fact(fact, **kwargs)

    def odd(self, output):
        raise ValueError(f"unexpected line {output[0]!r}")

    monkeypatch.setattr(InstalledPackages, "process", odd)
    host = Host({}, fresh_profile)
    previous = ctx_host.get()  # Plan.prefetch asks pyinfra's current host
    ctx_host.set(host)
    try:
        refusal = start(host, _Config(), prefetch=True)
    finally:
        ctx_host.set(previous)
    assert isinstance(refusal, Refusal)
    assert "the output of InstalledPackages could not be read (ValueError: unexpected line 'x=1')" in refusal.message


def test_pyinfra_sudo_on_the_command_line_stays_on():
    from pgvector_deploy.preflight import start

    config = _Config()
    config.SUDO = True  # pyinfra --sudo: the login's id -u already ran under sudo, so it says 0
    start(_AccessHost({"uid": 0, "sudo": True}), config)
    assert config.SUDO is True
    config = _Config()
    start(_AccessHost({"uid": 0, "sudo": True}), config)  # a root login: no sudo
    assert not config.SUDO
    config = _Config()
    start(_AccessHost({"uid": 1000, "sudo": True}), config)
    assert config.SUDO is True


def test_sudo_that_fails_under_pyinfra_sudo_is_refused_clearly():
    from pgvector_deploy.preflight import start

    config = _Config()
    config.SUDO = True
    refusal = start(_AccessHost(None), config)  # the fact's command failed: pyinfra gives None
    assert isinstance(refusal, Refusal)
    assert refusal.message.startswith("could not run a command on the host with sudo (pyinfra --sudo). Fix:")
    assert config.SUDO is False  # so that the refusal itself runs


# --- pgvector already installed from a package ---------------------------------------------------

DEBIAN_PACKAGED_REFUSAL = (
    "pgvector for PostgreSQL 15 is installed from the package postgresql-15-pgvector "
    "(/usr/lib/postgresql/15/lib/vector.so belongs to postgresql-15-pgvector; "
    "/usr/share/postgresql/15/extension/vector.control belongs to postgresql-15-pgvector): building it here "
    "would overwrite files that package owns and leave its LLVM bitcode behind. Nothing was changed. Fix: "
    "remove the package (apt-get remove postgresql-15-pgvector), then run again; the run then builds pgvector "
    "and updates the vector extension in every database. Removing the package does not drop the extension "
    "from any database, but until the run has built pgvector, queries that use vector fail."
)


def test_a_debian_host_with_postgresql_15_pgvector_is_refused_with_the_fix():
    # Captured on a lab host (recorded/README.md).
    profile = parse_host_profile(recorded_lines("pgvector-package", "host-profile"))
    with pytest.raises(UnsupportedHost) as error:
        make_plan(load_settings({}), profile)
    assert str(error.value) == DEBIAN_PACKAGED_REFUSAL


def test_look_refuses_a_packaged_pgvector_from_the_host_profile_alone():
    class Host:
        data = {}
        asked = []

        def get_fact(self, cls, **kwargs):
            self.asked.append(cls)
            return parse_host_profile(recorded_lines("pgvector-package", "host-profile"))

    host = Host()
    result = look(host)
    assert isinstance(result, Refusal) and result.message == DEBIAN_PACKAGED_REFUSAL
    assert host.asked == [HostProfile]


def test_a_package_by_the_platform_s_name_alone_is_refused(fresh_profile):
    # No pg_config yet to find the files by (the headers are not installed): the name is enough.
    profile = with_changes(fresh_profile, pgvector_packages=[{"manager": "apt", "name": "postgresql-15-pgvector"}])
    with pytest.raises(UnsupportedHost, match=r"installed from the package postgresql-15-pgvector: building"):
        make_plan(load_settings({}), profile)


def test_pgvector_packages_of_another_major_or_package_manager_are_not_ours(provisioned_profile):
    # postgresql-16-pgvector belongs to PostgreSQL 16 (found through /usr/bin/pg_config, which
    # picks the newest major); an rpm database on a Debian host is not the one apt installs into.
    profile = with_changes(
        provisioned_profile,
        pgvector_packages=[{"manager": "apt", "name": "postgresql-16-pgvector"}, {"manager": "dnf", "name": "pgvector_15"}],
        pgvector_owners=[
            {"manager": "apt", "pg_config": "/usr/bin/pg_config", "file": "/usr/lib/postgresql/16/lib/vector.so",
             "packages": ["postgresql-16-pgvector"]},
            {"manager": "dnf", "pg_config": "/usr/lib/postgresql/15/bin/pg_config",
             "file": "/usr/lib/postgresql/15/lib/vector.so", "packages": ["pgvector_15"]},
        ],
    )  # fmt: skip
    assert isinstance(make_plan(load_settings({}), profile), Plan)



# --- the data directory on its own volume: a symlinked data directory, a noauto fstab entry ------


def _symlinked_to_data(profile: dict) -> dict:
    """/var/lib/postgresql is a symlink to /data/postgresql, /data the volume in /etc/fstab."""
    profile["fstab"].append({"source": "UUID=5e1d", "mount_point": "/data", "type": "xfs", "options": "defaults,nofail"})
    profile["resolved_data_dirs"] = {"/var/lib/postgresql/15/main": "/data/postgresql/15/main"}
    return profile


def test_host_profile_reads_where_each_data_directory_really_is():
    profile = parse_host_profile(["data_dir_real=/var/lib/postgresql/15/main|/data/postgresql/15/main",
                                  "data_dir_real=/var/lib/pgsql/data|/var/lib/pgsql/data"])  # fmt: skip
    assert profile["resolved_data_dirs"] == {"/var/lib/postgresql/15/main": "/data/postgresql/15/main"}
    assert HostProfile().command(port=5432, cached_tarball="/x").count('realpath -m "$dir"') == 1


def test_a_symlinked_data_directory_whose_fstab_volume_is_not_mounted_is_refused():
    profile = _symlinked_to_data(profile_of("fresh-volume-unmounted"))
    with pytest.raises(UnsupportedHost) as error:
        make_plan(load_settings({}), profile)
    assert str(error.value).startswith(
        "/etc/fstab mounts UUID=5e1d at /data, which holds the cluster's data directory /var/lib/postgresql/15/main "
        "(really /data/postgresql/15/main: a symlink leads there), but nothing is mounted there"
    )


def test_a_symlinked_data_directory_on_its_mounted_pg_data_mount_is_planned():
    profile = _symlinked_to_data(profile_of("fresh-volume-unmounted"))
    profile["mounts"].append("/data")
    plan = make_plan(load_settings({"pg_data_mount": "/data"}), profile)
    assert plan.settings.data_mount == "/data"


def test_a_noauto_fstab_entry_is_named_as_the_likely_cause():
    profile = profile_of("volume-unmounted")
    profile["fstab"][1]["options"] = "defaults,noauto,nofail"
    with pytest.raises(UnsupportedHost) as error:
        make_plan(load_settings({}), profile)
    assert (
        "Its /etc/fstab options say noauto (defaults,noauto,nofail): nothing mounts it at boot, which is likely why it "
        "is not mounted; drop noauto from that line so the next boot mounts it."
    ) in str(error.value)
    profile["fstab"][1]["options"] = "defaults,nofail"
    with pytest.raises(UnsupportedHost) as error:
        make_plan(load_settings({}), profile)
    assert "noauto" not in str(error.value)
