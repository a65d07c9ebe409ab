"""Apps in Docker containers reach the database, and nobody else does.

The host has a simulated Docker network (tests/hosts/lab.py): bridge docker0 172.17.0.1/16
with an "app container" namespace at 172.17.0.2, a Compose-like bridge br-0a1b2c3d4e5f on
172.18.0.0/16 with a second app, and a bridge that is not Docker's (lab-other,
192.168.77.0/24) with a stranger on it. Clients connect with psycopg from inside those
namespaces, exactly as a containerised app does.
"""

from __future__ import annotations

import pytest

APP = {"pg_app_user": "app", "pg_app_password_env": "PGV_TEST_APP_PASSWORD", "pg_app_createdb": True}
PASSWORD = "c0rrect-Horse:battery$staple"
ENV = {"PGV_TEST_APP_PASSWORD": PASSWORD}
VECTOR_QUERY = "SELECT '[1,2,3]'::vector <-> '[4,6,3]'::vector"
COMPOSE_BRIDGE = "br-0a1b2c3d4e5f"


def dsn(address: str, password: str = PASSWORD, database: str = "app") -> str:
    return f"host={address} port=5432 user=app dbname={database} password='{password}'"


@pytest.fixture(scope="module")
def served(hosts, tarball, tmp_path_factory):
    from tests.e2e.conftest import run_deploy

    host = hosts.boot("apps")
    host.add_bridge("docker0", "172.17.0.1/16")
    host.add_bridge(COMPOSE_BRIDGE, "172.18.0.1/16")
    host.add_bridge("lab-other", "192.168.77.1/24")
    containers = {
        "docker0": host.add_container("app", "docker0", "172.17.0.2/16"),
        "compose": host.add_container("cmp", COMPOSE_BRIDGE, "172.18.0.2/16"),
        "stranger": host.add_container("str", "lab-other", "192.168.77.2/24"),
    }
    run = run_deploy(tmp_path_factory.mktemp("deploy"), [host.inventory_entry(**tarball, **APP)], env=ENV)
    return host, run, containers


def test_deploy_succeeds_and_the_smoke_suite_passes(served):
    host, run, _ = served
    assert run.returncode == 0, run.output
    assert "Vector smoke suite, pgvector 0.8.0: 10 passed, 0 failed, 0 skipped" in run.output


def test_app_on_docker0_connects_with_its_password_and_queries_vectors(served):
    _, _, containers = served
    result = containers["docker0"].query(dsn("172.17.0.1"), VECTOR_QUERY)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "5.0"


def test_app_on_a_compose_bridge_connects(served):
    _, _, containers = served
    result = containers["compose"].query(dsn("172.18.0.1"), VECTOR_QUERY)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "5.0"


def test_wrong_password_is_refused(served):
    _, _, containers = served
    result = containers["docker0"].query(dsn("172.17.0.1", password="not-it"), "SELECT 1")
    assert result.returncode != 0
    assert 'password authentication failed for user "app"' in result.stderr


def test_client_on_a_subnet_nobody_allowed_is_refused(served):
    _, _, containers = served
    result = containers["stranger"].query(dsn("172.17.0.1"), "SELECT 1")
    assert result.returncode != 0
    assert 'no pg_hba.conf entry for host "192.168.77.2"' in result.stderr


def test_server_does_not_listen_on_the_hosts_other_interfaces(served):
    host, _, _ = served
    listening = host.sudo("ss -Hltn 'sport = :5432'").split()
    addresses = sorted({word.rsplit(":", 1)[0] for word in listening if word.endswith(":5432")})
    assert addresses == ["127.0.0.1", "172.17.0.1", "172.18.0.1", "[::1]"]
    import psycopg

    with pytest.raises(psycopg.OperationalError, match="Connection refused"):
        psycopg.connect(dsn(host.address), connect_timeout=5)


def test_every_tcp_rule_uses_scram_and_local_superuser_stays_peer(served):
    host, _, _ = served
    rules = host.psql("SELECT type || ' ' || array_to_string(user_name, ',') || ' ' || auth_method FROM pg_hba_file_rules")
    lines = rules.splitlines()
    assert "local postgres peer" in lines
    tcp = [line for line in lines if line.startswith("host")]
    assert tcp and all(line.endswith("scram-sha-256") for line in tcp), tcp
    assert host.psql("SHOW password_encryption") == "scram-sha-256"


def test_shadow_databases_made_by_the_app_have_vector(served):
    """What Prisma migrate dev does: create a shadow database as the app role, use it, drop it."""
    _, _, containers = served
    app = containers["docker0"]
    code = (
        "import sys, psycopg\n"
        "with psycopg.connect(sys.argv[1], autocommit=True) as c:\n"
        "    c.execute('CREATE DATABASE prisma_shadow_check')\n"
        "with psycopg.connect(sys.argv[1].replace('dbname=app', 'dbname=prisma_shadow_check')) as c:\n"
        "    print(c.execute(\"SELECT extversion FROM pg_extension WHERE extname = 'vector'\").fetchone()[0])\n"
        "with psycopg.connect(sys.argv[1], autocommit=True) as c:\n"
        "    c.execute('DROP DATABASE prisma_shadow_check')\n"
    )
    import sys

    result = app.run(sys.executable, "-c", code, dsn("172.17.0.1"), check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0.8.0"


def test_rerun_changes_nothing(served, tarball, provision):
    host, _, _ = served
    run = provision(host, env=ENV, **tarball, **APP)
    assert run.returncode == 0, run.output
    assert run.changed(host.name) == []


def test_the_password_appears_nowhere(served, tarball, provision):
    """Not in pyinfra's most verbose output, not in any command line on the host during a run
    that changes the password, not in any file on the host."""
    host, _, _ = served
    new_password = "Rotated-9f2c$pw"
    host.sudo("nohup sh -c 'while :; do ps -eo args; done' > /run/ps-sampler.log 2>&1 & echo $! > /run/ps-sampler.pid")
    try:
        run = provision(host, "-vvv", env={"PGV_TEST_APP_PASSWORD": new_password}, **tarball, **APP)
    finally:
        host.sudo("kill $(cat /run/ps-sampler.pid)")
    assert run.returncode == 0, run.output
    assert run.changed(host.name) == ["App role exists with its password"]
    # The password goes to grep on stdin: on a command line, sudo would log it to the journal.
    sampled = host.sudo("wc -l < /run/ps-sampler.log; grep -c -F -f - /run/ps-sampler.log || true", input=new_password)
    assert int(sampled.split()[0]) > 1000, "the ps sampler did not run"
    assert sampled.split()[1] == "0"
    assert new_password not in run.output
    found = host.sudo("grep -rlsF -f - /etc /var /home /root /tmp /opt /usr/local || true", input=new_password)
    assert found.split() == []
    # and the rotated password is the one that works now
    run = provision(host, env={"PGV_TEST_APP_PASSWORD": new_password}, **tarball, **APP)
    assert run.changed(host.name) == []


def test_password_from_ssm_parameter_store(served, tarball, provision, aws):
    """pg_app_password_ssm: a SecureString read with boto3 (AWS_ENDPOINT_URL -> moto)."""
    import boto3

    host, _, containers = served
    ssm = boto3.client("ssm", endpoint_url=aws["AWS_ENDPOINT_URL"], region_name=aws["AWS_DEFAULT_REGION"],
                       aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    ssm.put_parameter(Name="/apps/app/db-password", Value="from-SSM-7d1e", Type="SecureString", Overwrite=True)
    data = {**tarball, **APP, "pg_app_password_env": None, "pg_app_password_ssm": "/apps/app/db-password"}

    run = provision(host, env=aws, **data)

    assert run.returncode == 0, run.output
    assert run.changed(host.name) == ["App role exists with its password"]
    assert containers["docker0"].query(dsn("172.17.0.1", "from-SSM-7d1e"), VECTOR_QUERY).stdout.strip() == "5.0"
    assert provision(host, env=aws, **data).changed(host.name) == []
    assert provision(host, env=ENV, **tarball, **APP).changed(host.name) == ["App role exists with its password"]


def test_a_broken_user_rule_is_rejected_and_the_server_keeps_running(served, tarball, provision):
    host, _, containers = served
    hba = "/etc/postgresql/15/main/pg_hba.conf"
    good_rule = "hostssl    all    all    10.9.0.0/16    scram-sha-256"  # beyond the host: TLS only
    host.sudo(f"sed -i '/^# END USER RULES/i {good_rule}' {hba}")
    run = provision(host, env=ENV, **tarball, **APP)
    assert run.returncode == 0, run.output
    assert good_rule in host.sudo(f"cat {hba}"), "a user rule was lost"

    host.sudo(f"sed -i '/^# END USER RULES/i host all all 10.8.0.0/33 scram-sha-256' {hba}")
    run = provision(host, env=ENV, **tarball, **APP)
    assert run.returncode != 0
    assert "10.8.0.0/33" in run.output or "invalid IP mask" in run.output, run.output
    assert host.sudo("pg_isready -q -p 5432 && echo up").strip() == "up"
    assert containers["docker0"].query(dsn("172.17.0.1"), VECTOR_QUERY).stdout.strip() == "5.0"

    host.sudo(f"sed -i '/10.8.0.0\\/33/d' {hba}")
    run = provision(host, env=ENV, **tarball, **APP)
    assert run.returncode == 0, run.output
    assert run.changed(host.name) == []


def test_the_bridge_rules_admit_the_app_role_only(served):
    """A role that is not pg_app_user, with a valid password, is refused from a bridge."""
    host, _, containers = served
    host.psql("CREATE ROLE intruder LOGIN PASSWORD 'intruder-Pw-1'")
    try:
        result = containers["docker0"].query("host=172.17.0.1 port=5432 user=intruder dbname=postgres password=intruder-Pw-1", "SELECT 1")
    finally:
        host.psql("DROP ROLE intruder")
    assert result.returncode != 0
    assert 'no pg_hba.conf entry for host "172.17.0.2", user "intruder"' in result.stderr, result.stderr
    assert containers["docker0"].query(dsn("172.17.0.1"), VECTOR_QUERY).stdout.strip() == "5.0"


HBA = "/etc/postgresql/15/main/pg_hba.conf"
SELF_SIGNED_KEY = "/etc/postgresql/15/main/pgvector-deploy-server.key"


def vpc_data(host, tarball) -> dict:
    return {**tarball, **APP, "pg_listen_addresses": [host.address]}


def test_a_client_beyond_the_host_gets_in_only_over_tls(served, tarball, provision):
    """pg_listen_addresses opens the host's lab address, its "VPC" address; the control
    machine (10.231.0.1 on the lab bridge) is the VPC client, admitted by a hostssl USER
    RULE. ssl is turned off in postgresql.conf first, as the RHEL family and Amazon Linux
    ship it (Debian ships ssl = on with the snakeoil certificate)."""
    import psycopg

    host, _, _ = served
    host.sudo("sed -i -e 's/^ssl = on/ssl = off/' /etc/postgresql/15/main/postgresql.conf")
    host.sudo(f"sed -i '/^# END USER RULES/i hostssl app app 10.231.0.0/16 scram-sha-256' {HBA}")

    run = provision(host, env=ENV, **vpc_data(host, tarball))

    assert run.returncode == 0, run.output
    assert f"Clients beyond this host connect with postgresql://app:<password>@{host.address}:5432/app?sslmode=require" in run.output
    with pytest.raises(psycopg.OperationalError, match='no pg_hba.conf entry for host "10.231.0.1".*no encryption'):
        psycopg.connect(dsn(host.address) + " sslmode=disable", connect_timeout=5)
    with psycopg.connect(dsn(host.address) + " sslmode=require", connect_timeout=5) as conn:
        assert conn.execute(VECTOR_QUERY).fetchone()[0] == 5.0
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0] is True
    assert host.psql("SHOW ssl") == "on"
    assert host.psql("SHOW ssl_key_file") == SELF_SIGNED_KEY
    assert host.sudo(f"stat -c '%U:%G %a' {SELF_SIGNED_KEY}").strip() == "postgres:postgres 600"
    cert = host.psql("SHOW ssl_cert_file")
    assert f"IP Address:{host.address}" in host.sudo(f"openssl x509 -in {cert} -noout -ext subjectAltName")
    made = host.sudo(f"sha256sum {cert} {SELF_SIGNED_KEY}")

    again = provision(host, env=ENV, **vpc_data(host, tarball))

    assert again.returncode == 0, again.output
    assert again.changed(host.name) == []
    assert host.sudo(f"sha256sum {cert} {SELF_SIGNED_KEY}") == made  # made once, kept


def test_a_plain_host_rule_for_clients_beyond_the_host_is_refused(served, tarball, provision):
    import psycopg

    host, _, _ = served
    rule = "host app app 10.231.0.0/16 scram-sha-256"
    host.sudo(f"sed -i '/^# END USER RULES/i {rule}' {HBA}")
    written = host.sudo(f"cat {HBA}")
    try:
        run = provision(host, env=ENV, **vpc_data(host, tarball))
        assert run.returncode != 0
        assert f"without TLS: {rule}. Nothing was changed. Fix: write them as hostssl" in run.output, run.output
        assert host.sudo(f"cat {HBA}") == written  # not applied
        with pytest.raises(psycopg.OperationalError, match="no encryption"):
            psycopg.connect(dsn(host.address) + " sslmode=disable", connect_timeout=5)
    finally:
        host.sudo(f"sed -i '/^host app app 10.231.0.0\\/16 /d' {HBA}")
    assert provision(host, env=ENV, **vpc_data(host, tarball)).changed(host.name) == []


def test_after_a_reboot_with_docker0_up_late_the_app_gets_in(served):
    """docker0 is gone when PostgreSQL starts at boot, and appears afterwards (as when dockerd
    starts later): the gateway address was bound anyway (net.ipv4.ip_nonlocal_bind)."""
    host, _, _ = served
    host.shutdown()
    host.remove_bridge("docker0")
    host.boot()
    host.wait_until("systemctl is-active --quiet postgresql@15-main")
    assert "172.17.0.1:5432" in host.sudo("ss -Hltn 'sport = :5432'")
    host.add_bridge("docker0", "172.17.0.1/16")
    late = host.add_container("late", "docker0", "172.17.0.3/16")
    result = late.query(dsn("172.17.0.1"), VECTOR_QUERY)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "5.0"
