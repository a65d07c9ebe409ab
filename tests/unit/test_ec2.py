"""The EC2 inventory (pgvector_deploy.ec2, inventories/prod.py) against moto, and the
architecture check it feeds (preflight.check_ec2_architecture).

moto's RegisterImage ignores ``Architecture`` and an instance takes its AMI's, so
``register_ami`` sets it on moto's own AMI record; everything else goes through boto3.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from unittest import mock

import boto3
import botocore.loaders
import botocore.session
import pytest
from botocore.awsrequest import AWSResponse
from pyinfra.api.exceptions import InventoryError

from pgvector_deploy import ec2
from pgvector_deploy.facts import parse_host_profile
from pgvector_deploy.loading import load_settings
from pgvector_deploy.plan import Plan
from pgvector_deploy.platforms import UnsupportedHost
from pgvector_deploy.preflight import Refusal, check_ec2_architecture, look, make_plan

from .conftest import recorded_lines

REPO = Path(__file__).resolve().parents[2]
REGION = "eu-west-1"
SHARED_LOADER = botocore.loaders.create_loader()

DEBIAN = "debian-12-amd64-20240717-1811"
UBUNTU = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20240801"
AL2023 = "al2023-ami-2023.5.20240805.0-kernel-6.1-arm64"
RHEL = "RHEL-9.4.0_HVM-20240605-x86_64-82-Hourly2-GP3"
ROCKY = "Rocky-9-EC2-Base-9.4-20240523.0.x86_64"
ALMA = "AlmaLinux OS 9.4.20240805 x86_64"
UNKNOWN = "golden-image-2024-08-01"


# --- fixtures: an AWS with nothing real in reach ------------------------------------------------


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Fake credentials and region; no AWS configuration, profile, endpoint or option of ours."""
    for key in list(os.environ):
        if key.startswith("PGVECTOR_EC2_") or key in (
            "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE",
            "AWS_REGION",
            "AWS_SESSION_TOKEN",
            "AWS_SECURITY_TOKEN",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_EC2",
            "AWS_MAX_ATTEMPTS",
            "AWS_RETRY_MODE",
        ):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    # moto's catalogue of public AMIs: slow to load per region, and we register our own.
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    # Every boto3 session parses EC2's API model (megabytes of JSON) again; share one parse.
    monkeypatch.setattr(botocore.session, "create_loader", lambda *args, **kwargs: SHARED_LOADER)
    return monkeypatch


@pytest.fixture
def no_credentials(aws_env):
    """No credentials anywhere boto3 looks: environment, files, instance metadata."""
    aws_env.delenv("AWS_ACCESS_KEY_ID")
    aws_env.delenv("AWS_SECRET_ACCESS_KEY")
    return aws_env


@pytest.fixture
def client(aws_env):
    from moto import mock_aws

    with mock_aws():
        yield boto3.client("ec2", region_name=REGION)


def register_ami(client, name: str, arch: str = "x86_64", description: str = "") -> str:
    from moto.backends import get_backend
    from moto.core import DEFAULT_ACCOUNT_ID

    image_id = client.register_image(Name=name, Description=description)["ImageId"]
    get_backend("ec2")[DEFAULT_ACCOUNT_ID][REGION].amis[image_id].architecture = arch
    return image_id


def launch(client, image_id: str, name: str | None = None, state: str = "running", public_ip: bool = True, **tags):
    """One instance in its own reservation (as separate launches are), with tags; returns it."""
    tags = {"Role": "postgres", **tags} if "Role" not in tags else tags
    if name is not None:
        tags["Name"] = name
    kwargs = {}
    if not public_ip:
        subnet = client.describe_subnets()["Subnets"][0]["SubnetId"]
        kwargs["NetworkInterfaces"] = [{"DeviceIndex": 0, "SubnetId": subnet, "AssociatePublicIpAddress": False}]
    instance = client.run_instances(
        ImageId=image_id,
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
        **kwargs,
    )["Instances"][0]
    if state == "stopped":
        client.stop_instances(InstanceIds=[instance["InstanceId"]])
    elif state == "terminated":
        client.terminate_instances(InstanceIds=[instance["InstanceId"]])
    return instance


@pytest.fixture
def fleet(client):
    """A mixed fleet: every platform, both architectures, odd names, and instances to skip."""
    images = {
        name: register_ami(client, name, arch)
        for name, arch in [(DEBIAN, "x86_64"), (UBUNTU, "x86_64"), (AL2023, "arm64"), (RHEL, "x86_64"),
                           (ROCKY, "x86_64"), (ALMA, "arm64")]
    }
    made = {
        "debian": launch(client, images[DEBIAN], "db-debian"),
        "ubuntu": launch(client, images[UBUNTU], "db-ubuntu"),
        "al2023": launch(client, images[AL2023], "db-al2023"),
        "rhel": launch(client, images[RHEL], "db-rhel"),
        "rocky": launch(client, images[ROCKY], "db-rocky"),
        "alma": launch(client, images[ALMA], "db-alma"),
        "unnamed": launch(client, images[DEBIAN]),
        "twin-a": launch(client, images[UBUNTU], "db-twin"),
        "twin-b": launch(client, images[AL2023], "db-twin"),
        "custom-user": launch(client, images[DEBIAN], "db-custom", SSHUser="deploy"),
        "stopped": launch(client, images[DEBIAN], "db-stopped", state="stopped"),
        "terminated": launch(client, images[DEBIAN], "db-terminated", state="terminated"),
        "web": launch(client, images[DEBIAN], "web-1", Role="web"),
    }
    return {key: instance["InstanceId"] for key, instance in made.items()} | {
        "private_ip": {instance["InstanceId"]: instance["PrivateIpAddress"] for instance in made.values()},
        "public_ip": {instance["InstanceId"]: instance.get("PublicIpAddress") for instance in made.values()},
    }


def hosts_of(groups: dict) -> dict[str, dict]:
    return dict(groups["postgres_hosts"])


# --- the fleet as hosts ---------------------------------------------------------------------------


def test_only_running_tagged_instances_become_hosts(fleet):
    hosts = hosts_of(ec2.discover({}))
    ids = {data["ec2_instance_id"] for data in hosts.values()}
    assert ids == {fleet[k] for k in ("debian", "ubuntu", "al2023", "rhel", "rocky", "alma", "unnamed",
                                      "twin-a", "twin-b", "custom-user")}
    assert not ids & {fleet["stopped"], fleet["terminated"], fleet["web"]}


def test_hosts_are_named_by_the_name_tag_else_the_id_and_twins_get_their_id(fleet):
    names = set(hosts_of(ec2.discover({})))
    assert names == {
        "db-debian", "db-ubuntu", "db-al2023", "db-rhel", "db-rocky", "db-alma", "db-custom",
        fleet["unnamed"], f"db-twin-{fleet['twin-a']}", f"db-twin-{fleet['twin-b']}",
    }


def test_a_name_tag_equal_to_a_made_name_still_gives_every_instance_its_own_host(client):
    # Two instances called db and one called db-<first id>: the first would become db-<id> too,
    # and pyinfra would keep one of the two hosts of that name: an instance never provisioned.
    image = register_ami(client, DEBIAN)
    first = launch(client, image, "db")["InstanceId"]
    second = launch(client, image, "db")["InstanceId"]
    third = launch(client, image, f"db-{first}")["InstanceId"]
    hosts = hosts_of(ec2.discover({}))
    assert len(hosts) == 3
    assert {data["ec2_instance_id"] for data in hosts.values()} == {first, second, third}
    assert set(hosts) == {f"db-{first}-{first}", f"db-{second}", f"db-{first}-{third}"}


def test_host_names_are_unique_for_any_pile_up_of_clashing_tags():
    # Each round of suffixes makes a name that another tag already holds; the last one has no Name.
    ids = [f"i-{n}" for n in range(6)]
    tags = ["db", "db", "db-i-0", "db-i-0-i-2", "i-5", None]
    instances = [
        {"InstanceId": iid, "Tags": [{"Key": "Name", "Value": name}] if name else []} for iid, name in zip(ids, tags)
    ]
    names = ec2.host_names(instances)
    assert sorted(names) == ids
    assert len(set(names.values())) == len(ids)


def test_two_instances_with_one_private_ip_in_two_vpcs_are_refused_naming_both(client):
    image = register_ami(client, DEBIAN)
    made = []
    for name in ("db-a", "db-b"):
        vpc = client.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
        subnet = client.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24")["Subnet"]["SubnetId"]
        instance = client.run_instances(
            ImageId=image, MinCount=1, MaxCount=1, SubnetId=subnet, PrivateIpAddress="10.9.1.10",
            TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Role", "Value": "postgres"},
                                                                     {"Key": "Name", "Value": name}]}],
        )["Instances"][0]
        made.append((instance["InstanceId"], vpc))
    with pytest.raises(ec2.Ec2InventoryError) as raised:
        ec2.discover({})
    message = str(raised.value)
    assert "10.9.1.10" in message and "provisioned twice" in message
    for iid, vpc in made:
        assert iid in message and vpc in message
    assert "Fix: narrow PGVECTOR_EC2_FILTERS" in message


def test_the_inventory_says_how_many_instances_it_found_and_kept(fleet, caplog):
    with caplog.at_level("INFO", logger="pyinfra"):
        hosts = hosts_of(ec2.discover({}))
    assert f"EC2 inventory: {len(hosts)} running instance(s) found, {len(hosts)} kept as hosts" in caplog.text


def test_ssh_user_comes_from_the_image_and_the_sshuser_tag_wins(fleet):
    users = {name: data["ssh_user"] for name, data in hosts_of(ec2.discover({})).items()}
    assert users == {
        "db-debian": "admin",
        "db-ubuntu": "ubuntu",
        "db-al2023": "ec2-user",
        "db-rhel": "ec2-user",
        "db-rocky": "rocky",
        "db-alma": "ec2-user",
        "db-custom": "deploy",
        fleet["unnamed"]: "admin",
        f"db-twin-{fleet['twin-a']}": "ubuntu",
        f"db-twin-{fleet['twin-b']}": "ec2-user",
    }


def test_hosts_are_reached_at_their_private_ip_by_default(fleet):
    for name, data in hosts_of(ec2.discover({})).items():
        assert data["ssh_hostname"] == fleet["private_ip"][data["ec2_instance_id"]], name
        assert data["ssh_hostname"] != fleet["public_ip"][data["ec2_instance_id"]], name
        assert "ssh_config_file" not in data  # no jump host asked for


def test_architecture_is_host_data_and_groups_split_by_it(fleet):
    groups = ec2.discover({})
    hosts = hosts_of(groups)
    assert {name: data["ec2_architecture"] for name, data in hosts.items() if name.startswith("db-a")} == {
        "db-al2023": "arm64",
        "db-alma": "arm64",
    }
    assert hosts["db-debian"]["ec2_architecture"] == "x86_64"
    assert sorted(groups["ec2_arm64"]) == sorted(["db-al2023", "db-alma", f"db-twin-{fleet['twin-b']}"])
    assert set(groups["ec2_x86_64"]) == set(hosts) - set(groups["ec2_arm64"])
    assert set(groups) == {"postgres_hosts", "ec2_x86_64", "ec2_arm64"}


def test_public_address_on_request(fleet):
    hosts = hosts_of(ec2.discover({"PGVECTOR_EC2_ADDRESS": "public"}))
    for data in hosts.values():
        assert data["ssh_hostname"] == fleet["public_ip"][data["ec2_instance_id"]]
        assert data["ssh_hostname"]


def test_tag_filters_from_the_environment_must_all_match(client):
    image = register_ami(client, DEBIAN)
    launch(client, image, "prod-db", Env="prod")
    launch(client, image, "staging-db", Env="staging")
    launch(client, image, "untagged-db")
    launch(client, image, "prod-web", Role="web", Env="prod")
    assert set(hosts_of(ec2.discover({"PGVECTOR_EC2_FILTERS": "Role=postgres,Env=prod"}))) == {"prod-db"}
    # A key given twice matches either value.
    both = ec2.discover({"PGVECTOR_EC2_FILTERS": "Role=postgres,Env=prod,Env=staging"})
    assert set(hosts_of(both)) == {"prod-db", "staging-db"}
    # Unset: Role=postgres.
    assert set(hosts_of(ec2.discover({}))) == {"prod-db", "staging-db", "untagged-db"}


def recording_session(operation: str) -> tuple[boto3.Session, list[dict]]:
    """A boto3 session, and the parameters of every EC2 ``operation`` call it makes."""
    session = boto3.Session()
    calls: list[dict] = []
    session.events.register(f"before-parameter-build.ec2.{operation}", lambda params, **kwargs: calls.append(params))
    return session, calls


def test_every_page_of_describe_instances_is_read(client, aws_env):
    image = register_ami(client, DEBIAN)
    for number in range(25):
        launch(client, image, f"db-{number:02d}")
    session, calls = recording_session("DescribeInstances")
    hosts = hosts_of(ec2.discover({}, session=session, page_size=10))
    assert sorted(hosts) == [f"db-{number:02d}" for number in range(25)]
    assert [call.get("MaxResults") for call in calls] == [10, 10, 10]
    assert "NextToken" not in calls[0] and calls[1]["NextToken"] and calls[2]["NextToken"]


def test_images_are_described_once_for_all_instances(client):
    image = register_ami(client, DEBIAN)
    for number in range(3):
        launch(client, image, f"db-{number}")
    session, calls = recording_session("DescribeImages")
    ec2.discover({}, session=session)
    assert len(calls) == 1
    assert calls[0]["Filters"] == [{"Name": "image-id", "Values": [image]}]
    assert calls[0]["IncludeDeprecated"] is True


def test_an_unknown_image_logs_in_as_ec2_user_with_a_warning(client, caplog):
    launch(client, register_ami(client, UNKNOWN), "db-odd")
    with caplog.at_level("WARNING", logger="pyinfra"):
        hosts = hosts_of(ec2.discover({}))
    assert hosts["db-odd"]["ssh_user"] == "ec2-user"
    assert f"db-odd ({hosts['db-odd']['ec2_instance_id']}): cannot tell the login user" in caplog.text
    assert UNKNOWN in caplog.text
    assert "Fix: tag the instance SSHUser=<user>" in caplog.text


def test_an_unknown_image_with_the_sshuser_tag_gives_no_warning(client, caplog):
    launch(client, register_ami(client, UNKNOWN), "db-odd", SSHUser="centos")
    with caplog.at_level("WARNING", logger="pyinfra"):
        assert hosts_of(ec2.discover({}))["db-odd"]["ssh_user"] == "centos"
    assert "cannot tell the login user" not in caplog.text


@pytest.mark.parametrize(
    "image, platform_details, user",
    [
        ({"Name": DEBIAN}, "", "admin"),
        ({"Name": UBUNTU}, "", "ubuntu"),
        ({"Name": AL2023}, "", "ec2-user"),
        ({"Name": RHEL}, "", "ec2-user"),
        ({"Name": ROCKY}, "", "rocky"),
        ({"Name": ALMA}, "", "ec2-user"),
        # A renamed copy: the publisher's Description still says what it is.
        ({"Name": "copy-of-base", "Description": "Canonical, Ubuntu, 22.04 LTS, amd64 jammy image"}, "", "ubuntu"),
        ({"Name": "copy-of-base", "Description": "Debian 12 (20240717-1811)"}, "", "admin"),
        # The AMI is gone (deregistered, unshared): PlatformDetails still names RHEL and Ubuntu Pro.
        (None, "Red Hat Enterprise Linux", "ec2-user"),
        (None, "Ubuntu Pro", "ubuntu"),
        (None, "Linux/UNIX", None),
        ({"Name": UNKNOWN, "PlatformDetails": "Linux/UNIX"}, "Linux/UNIX", None),
    ],
)
def test_login_user_by_image(image, platform_details, user):
    assert ec2.login_user(image, platform_details) == user


def test_a_deregistered_image_does_not_fail_the_inventory(client, caplog):
    image = register_ami(client, DEBIAN)
    launch(client, image, "db-old")
    client.deregister_image(ImageId=image)
    with caplog.at_level("WARNING", logger="pyinfra"):
        hosts = hosts_of(ec2.discover({}))
    assert hosts["db-old"]["ssh_user"] == "ec2-user"
    assert "not visible to this account" in caplog.text


def test_a_name_tag_that_pyinfra_would_read_as_a_connector_is_not_used():
    instances = [{"InstanceId": "i-1", "Tags": [{"Key": "Name", "Value": "@local"}]}]
    assert ec2.host_names(instances) == {"i-1": "i-1"}


# --- options ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["Role", "Role=", "=postgres", "Role=postgres,,Env=prod"])
def test_malformed_filters_are_refused_with_an_example(text):
    with pytest.raises(ec2.Ec2InventoryError) as error:
        ec2.parse_filters(text)
    assert f"PGVECTOR_EC2_FILTERS={text!r}" in str(error.value)
    assert "e.g. PGVECTOR_EC2_FILTERS=Role=postgres,Env=prod" in str(error.value)


def test_address_must_be_private_or_public():
    with pytest.raises(ec2.Ec2InventoryError, match="PGVECTOR_EC2_ADDRESS='elastic' is neither private nor public"):
        ec2.Options.from_environ({"PGVECTOR_EC2_ADDRESS": "elastic"})


@pytest.mark.parametrize(
    "text, bastion",
    [
        ("ec2-user@bastion.example.com", ec2.Bastion("ec2-user", "bastion.example.com", None)),
        ("admin@203.0.113.10:2222", ec2.Bastion("admin", "203.0.113.10", 2222)),
        ("bastion.example.com", ec2.Bastion(None, "bastion.example.com", None)),
        ("", None),
    ],
)
def test_bastion_is_user_at_host_and_port(text, bastion):
    assert ec2.parse_bastion(text) == bastion


@pytest.mark.parametrize("text", ["admin@", "@host", "admin@host:ssh", "admin@host:0", "a@b,c@d", "admin@host name"])
def test_malformed_bastion_is_refused(text):
    with pytest.raises(ec2.Ec2InventoryError, match="is not user@host\\[:port\\]"):
        ec2.parse_bastion(text)


# --- the jump host: through pyinfra's own ssh_config support --------------------------------------


def test_bastion_puts_a_proxyjump_ssh_config_in_every_host(client, tmp_path):
    image = register_ami(client, DEBIAN)
    launch(client, image, "db-1")
    launch(client, image, "db-2")
    hosts = hosts_of(ec2.discover({"PGVECTOR_EC2_BASTION": "ec2-user@bastion.example.com:2222"}, cache_dir=tmp_path))
    paths = {data["ssh_config_file"] for data in hosts.values()}
    assert len(paths) == 1
    text = Path(paths.pop()).read_text()
    addresses = sorted(data["ssh_hostname"] for data in hosts.values())
    assert f"Host {' '.join(addresses)}\n    ProxyJump ec2-user@bastion.example.com:2222\n" in text


def test_pyinfra_s_ssh_client_jumps_through_the_bastion_with_that_config(tmp_path, monkeypatch):
    from pyinfra.connectors.sshuserclient import client as sshuserclient

    text = ec2.bastion_ssh_config(ec2.Bastion("ec2-user", "bastion.example.com", 2222), ["10.0.1.10", "10.0.1.11"])
    path = ec2.write_ssh_config(text, tmp_path)
    hops, gateways = [], []
    # The hop's connection and its channel are the network; pyinfra's config parsing is real.
    monkeypatch.setattr(sshuserclient.SSHClient, "connect", lambda self, host, **kwargs: hops.append((host, kwargs)))
    monkeypatch.setattr(sshuserclient.SSHClient, "gateway", lambda self, *args, **kwargs: gateways.append(args) or "channel")

    hostname, config, *_ = sshuserclient.SSHClient().parse_config("10.0.1.11", {}, ssh_config_file=path)
    assert hostname == "10.0.1.11"
    assert config["sock"] == "channel"
    assert [(host, kwargs["username"], kwargs["port"]) for host, kwargs in hops] == [("bastion.example.com", "ec2-user", 2222)]
    assert gateways == [("10.0.1.11", 22, "10.0.1.11", 22)]

    # The jump host itself is reached directly, accepting its key when new (never prompting).
    _, bastion_config, _, policy, *_ = sshuserclient.SSHClient().parse_config("bastion.example.com", {}, ssh_config_file=path)
    assert "sock" not in bastion_config
    assert isinstance(policy, sshuserclient.AcceptNewPolicy)


def test_a_changed_fleet_gets_a_new_ssh_config_file(tmp_path):
    # pyinfra caches a parsed ssh_config by file name, so new content needs a new name.
    bastion = ec2.Bastion("admin", "bastion", None)
    first = ec2.write_ssh_config(ec2.bastion_ssh_config(bastion, ["10.0.0.1"]), tmp_path)
    second = ec2.write_ssh_config(ec2.bastion_ssh_config(bastion, ["10.0.0.1", "10.0.0.2"]), tmp_path)
    assert first != second
    assert "10.0.0.2" not in Path(first).read_text() and "10.0.0.2" in Path(second).read_text()


# --- errors: one paragraph with the fix -----------------------------------------------------------


def error_of(environ=None, **kwargs) -> str:
    with pytest.raises(ec2.Ec2InventoryError) as error:
        ec2.discover(environ or {}, **kwargs)
    # What pyinfra's CLI prints cleanly: its own exceptions, not a traceback.
    assert isinstance(error.value, InventoryError)
    message = str(error.value)
    assert "\n" not in message and "Fix:" in message
    return message


def test_no_credentials(no_credentials):
    message = error_of()
    assert message.startswith("no AWS credentials found (region eu-west-1, profile default)")
    assert "AWS_PROFILE" in message and "AWS_ACCESS_KEY_ID" in message
    assert "no region is configured either" not in message


def test_no_credentials_and_no_region(no_credentials):
    no_credentials.delenv("AWS_DEFAULT_REGION")
    assert "Set AWS_REGION too" in error_of()


def test_no_region(aws_env):
    aws_env.delenv("AWS_DEFAULT_REGION")
    assert error_of().startswith("no AWS region is configured")


def test_aws_region_is_honoured_over_aws_default_region(client, aws_env):
    # boto3 reads only AWS_DEFAULT_REGION; the AWS CLI and other SDKs let AWS_REGION win.
    launch(client, register_ami(client, DEBIAN), "db-ireland")
    aws_env.setenv("AWS_REGION", "us-east-1")
    assert "region us-east-1" in error_of()
    aws_env.setenv("AWS_REGION", REGION)
    aws_env.setenv("AWS_DEFAULT_REGION", "us-east-1")
    assert set(hosts_of(ec2.discover({}))) == {"db-ireland"}


def test_unknown_profile(aws_env):
    aws_env.setenv("AWS_PROFILE", "nope")
    message = error_of()
    assert message.startswith("AWS profile not found: The config profile (nope) could not be found")
    assert "aws configure list-profiles" in message


def test_no_matching_instances_names_the_filters_and_region(client):
    launch(client, register_ami(client, DEBIAN), "web-1", Role="web")
    message = error_of({"PGVECTOR_EC2_FILTERS": "Role=postgres,Env=prod"})
    assert message.startswith("no running EC2 instance has the tags Role=postgres, Env=prod (region eu-west-1")
    assert "an empty fleet is almost always" in message


def test_only_stopped_instances_is_no_matching_instances(client):
    launch(client, register_ami(client, DEBIAN), "db-1", state="stopped")
    assert "no running EC2 instance has the tags Role=postgres" in error_of()


def test_public_address_asked_for_but_missing_names_the_instance(client):
    image = register_ami(client, DEBIAN)
    launch(client, image, "db-public")
    private = launch(client, image, "db-private", public_ip=False)
    message = error_of({"PGVECTOR_EC2_ADDRESS": "public"})
    assert f"these instances have no public IPv4 address: db-private ({private['InstanceId']})." in message
    assert "db-public" not in message
    assert "PGVECTOR_EC2_BASTION" in message


class Raw:
    """An HTTP body for botocore's AWSResponse."""

    def __init__(self, body: bytes):
        self.body = body

    def stream(self, **kwargs):
        yield self.body


def answering(status: int, code: str, message: str, operation: str = "DescribeInstances"):
    """A boto3 session whose EC2 ``operation`` gets this error response from "the network".

    Hooked at before-send, so botocore's retry handler sees every answer, as it would AWS's.
    """
    session = boto3.Session()
    sends = []

    def answer(request, **kwargs):
        sends.append(request.url)
        body = (
            f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors>"
            "<RequestID>test</RequestID></Response>"
        ).encode()
        return AWSResponse(request.url, status, {}, Raw(body))

    session.events.register_first(f"before-send.ec2.{operation}", answer)
    return session, sends


def test_unauthorized_operation_names_the_permission(client):
    session, sends = answering(403, "UnauthorizedOperation", "You are not authorized to perform this operation.")
    message = error_of(session=session)
    assert message.startswith("the AWS identity may not call ec2:DescribeInstances (UnauthorizedOperation")
    assert "grant it ec2:DescribeInstances and ec2:DescribeImages" in message
    assert len(sends) == 1  # not retried: waiting does not grant a permission


def test_describe_images_denied_is_named_too(client):
    launch(client, register_ami(client, DEBIAN), "db-1")
    session, _ = answering(403, "UnauthorizedOperation", "You are not authorized to perform this operation.",
                           operation="DescribeImages")
    assert "may not call ec2:DescribeImages" in error_of(session=session)


def test_throttling_is_retried_by_botocore_then_reported(client):
    session, sends = answering(503, "RequestLimitExceeded", "Request limit exceeded.")
    with mock.patch("botocore.endpoint.time.sleep") as sleep:  # the backoff, without the wait
        message = error_of(session=session)
    # Standard mode, max_attempts=8 retries: nine requests, with a backoff before each retry.
    assert len(sends) == 9
    assert sleep.call_count == 8
    assert message.startswith("EC2 throttled ec2:DescribeInstances (RequestLimitExceeded) and was still refusing after 9 attempts")
    assert "run again in a minute" in message


def test_throttling_that_clears_up_is_not_an_error(client):
    launch(client, register_ami(client, DEBIAN), "db-1")
    session = boto3.Session()
    throttled = []

    def throttle_twice(request, **kwargs):
        if len(throttled) < 2:
            throttled.append(request.url)
            body = b"<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>slow</Message></Error></Errors></Response>"
            return AWSResponse(request.url, 503, {}, Raw(body))
        return None  # then moto answers

    session.events.register_first("before-send.ec2.DescribeInstances", throttle_twice)
    with mock.patch("botocore.endpoint.time.sleep"):
        assert set(hosts_of(ec2.discover({}, session=session))) == {"db-1"}
    assert len(throttled) == 2


def test_an_invalid_filter_points_at_pgvector_ec2_filters(client):
    session, _ = answering(400, "InvalidParameterValue", "The filter 'tag:' is invalid")
    message = error_of(session=session)
    assert "EC2 rejected ec2:DescribeInstances (InvalidParameterValue" in message
    assert "The filter 'tag:' is invalid" in message
    assert "Fix: check PGVECTOR_EC2_FILTERS" in message


def test_rejected_credentials(client):
    session, _ = answering(401, "AuthFailure", "AWS was not able to validate the provided access credentials")
    message = error_of(session=session)
    assert message.startswith("AWS rejected the credentials for ec2:DescribeInstances (AuthFailure")
    assert "aws sso login" in message


def test_an_unreachable_endpoint(aws_env):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    aws_env.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    aws_env.setenv("AWS_MAX_ATTEMPTS", "1")
    with mock.patch("botocore.endpoint.time.sleep"):
        message = error_of()
    assert message.startswith("could not reach the EC2 endpoint (region eu-west-1")
    assert f"127.0.0.1:{port}" in message and "AWS_ENDPOINT_URL" in message


# --- through pyinfra itself -------------------------------------------------------------------------


def pyinfra_cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pyinfra", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_prints_a_missing_credentials_error_without_a_traceback(no_credentials):
    result = pyinfra_cli("inventories/prod.py", "debug-inventory", env=dict(os.environ))
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "--> pyinfra error" in output
    assert "no AWS credentials found (region eu-west-1, profile default)" in output
    assert "Traceback" not in output and "NoCredentialsError" not in output


@pytest.fixture
def moto_server(aws_env):
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    # The server keeps moto's process-wide state: leave none behind for other tests.
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/reset", method="POST"))
    server.stop()


def test_cli_finds_the_fleet_through_aws_endpoint_url(moto_server, aws_env):
    # The pyinfra CLI in another process; boto3 there reaches moto only through AWS_ENDPOINT_URL.
    client = boto3.client("ec2", region_name=REGION, endpoint_url=moto_server)
    launch(client, register_ami(client, DEBIAN, "x86_64"), "db-x86")
    launch(client, register_ami(client, AL2023, "arm64"), "db-arm")
    env = {**os.environ, "AWS_ENDPOINT_URL": moto_server, "PGVECTOR_EC2_FILTERS": "Role=postgres"}

    result = pyinfra_cli("--json", "inventories/prod.py", "debug-inventory", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    hosts = {host["name"]: host for host in json.loads(result.stdout)}
    assert set(hosts) == {"db-x86", "db-arm"}
    assert hosts["db-x86"]["data"]["ssh_user"] == "admin"
    assert hosts["db-arm"]["data"]["ssh_user"] == "ec2-user"
    assert hosts["db-arm"]["data"]["ec2_architecture"] == "arm64"
    assert set(hosts["db-arm"]["groups"]) >= {"postgres_hosts", "ec2_arm64", "prod"}
    assert "ec2_arm64" not in hosts["db-x86"]["groups"]


# --- the architecture check at deploy time ------------------------------------------------------------


@pytest.mark.parametrize("ec2_arch, uname", [("x86_64", "x86_64"), ("arm64", "aarch64"), (None, "x86_64"), (None, "aarch64")])
def test_matching_architectures_pass(ec2_arch, uname):
    assert check_ec2_architecture(ec2_arch, uname) is None


@pytest.mark.parametrize(
    "ec2_arch, uname",
    [("arm64", "x86_64"), ("x86_64", "aarch64"), ("i386", "i686"), ("x86_64_mac", "x86_64")],
)
def test_mismatched_architectures_are_refused(ec2_arch, uname):
    with pytest.raises(UnsupportedHost) as error:
        check_ec2_architecture(ec2_arch, uname)
    assert str(error.value).startswith(
        f"EC2 says {ec2_arch} but the host reports {uname}: wrong address or stale inventory. Fix:"
    )


def test_make_plan_refuses_a_host_that_is_not_the_instance(fresh_profile):
    with pytest.raises(UnsupportedHost, match="EC2 says arm64 but the host reports x86_64"):
        make_plan(load_settings({}), fresh_profile, ec2_architecture="arm64")
    assert isinstance(make_plan(load_settings({}), fresh_profile, ec2_architecture="x86_64"), Plan)


class StubHost:
    def __init__(self, data, profile):
        self.data = data
        self.profile = profile

    def get_fact(self, fact, **kwargs):
        return self.profile


def test_look_passes_the_inventory_s_architecture_to_the_plan(fresh_profile):
    refusal = look(StubHost({"ec2_architecture": "arm64"}, fresh_profile))
    assert isinstance(refusal, Refusal)
    assert refusal.message.startswith("EC2 says arm64 but the host reports x86_64: wrong address or stale inventory")


def test_look_plans_an_arm64_instance_that_reports_aarch64():
    profile = parse_host_profile(recorded_lines("fresh", "host-profile", host="amzn2023-aarch64"))
    plan = look(StubHost({"ec2_architecture": "arm64"}, profile))
    assert isinstance(plan, Plan) and plan.arch == "aarch64"


def test_look_without_ec2_data_does_not_check(fresh_profile):
    # Static inventories (inventories/example.py) carry no ec2_architecture.
    assert isinstance(look(StubHost({}, fresh_profile)), Plan)
