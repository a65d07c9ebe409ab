"""An EC2 fleet as a pyinfra inventory: the running instances with some tags, found through boto3.

``discover`` asks EC2 (``DescribeInstances``, paginated, then one ``DescribeImages`` for the
distinct AMIs) and returns pyinfra inventory groups: ``postgres_hosts`` with every host and
its data, and ``ec2_x86_64`` / ``ec2_arm64`` with the host names per architecture. Each host
is named after its ``Name`` tag (else its instance id), is reached at its private IP (or
public IP), and logs in as its image's default user (Debian ``admin``, Ubuntu ``ubuntu``,
Rocky ``rocky``, Amazon Linux / RHEL / AlmaLinux ``ec2-user``; an ``SSHUser`` tag wins).

Our options come from environment variables (``PGVECTOR_EC2_*``, see ``Options``); AWS's
own (``AWS_PROFILE``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``, ...) are left to boto3. Every
failure (no credentials, no region, an API error, throttling that outlasted the retries, no
matching instance) raises ``Ec2InventoryError``: a pyinfra ``InventoryError``, which the
pyinfra CLI prints as one line (``--> pyinfra error ...: <message>``) instead of a traceback.

Example::

    >>> parse_filters("Role=postgres,Env=prod")
    {'Role': ['postgres'], 'Env': ['prod']}
    >>> login_user({"Name": "debian-12-amd64-20240717-1811"})
    'admin'
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pyinfra import logger
from pyinfra.api.exceptions import InventoryError

ALL_HOSTS_GROUP = "postgres_hosts"
DEFAULT_FILTERS = "Role=postgres"
SSH_USER_TAG = "SSHUser"
FALLBACK_SSH_USER = "ec2-user"
# EC2's largest page; the paginator follows NextToken for larger fleets.
DEFAULT_PAGE_SIZE = 1000
# botocore's standard retry mode backs off on throttling and transient errors, riding out a
# burst from other tools sharing the account's EC2 API quota. In a client Config,
# max_attempts counts the *retries* (botocore adds the first request): 9 requests in all.
MAX_ATTEMPTS = 8

# Error codes EC2 (and AWS in general) uses for "slow down".
THROTTLING_CODES = {
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "TooManyRequestsException",
}
REJECTED_CREDENTIAL_CODES = {
    "AuthFailure",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "RequestExpired",
    "InvalidToken",
}
PERMISSION_CODES = {"UnauthorizedOperation", "AccessDenied", "AccessDeniedException"}
BAD_REQUEST_CODES = {"InvalidParameterValue", "InvalidFilter", "InvalidParameterCombination", "InvalidParameter"}


class Ec2InventoryError(InventoryError):
    """The fleet could not be listed; the message names the problem and the fix.

    A pyinfra ``InventoryError`` (a ``PyinfraError``) on purpose: pyinfra's CLI lets those
    through its inventory loader and prints their message, where any other exception
    becomes a traceback.
    """


# --- options (environment variables) ---------------------------------------------------------


@dataclass(frozen=True)
class Bastion:
    user: str | None
    host: str
    port: int | None

    @property
    def proxy_jump(self) -> str:
        """The ``ProxyJump`` value, ``[user@]host[:port]``."""
        return f"{self.user + '@' if self.user else ''}{self.host}{':' + str(self.port) if self.port else ''}"


@dataclass(frozen=True)
class Options:
    """What to look for and how to reach it (``PGVECTOR_EC2_*``; AWS's own variables are boto3's).

    >>> Options.from_environ({"PGVECTOR_EC2_ADDRESS": "public"}).address
    'public'
    """

    filters: dict[str, list[str]]
    address: str = "private"
    bastion: Bastion | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Options:
        return cls(
            filters=parse_filters(environ.get("PGVECTOR_EC2_FILTERS") or DEFAULT_FILTERS),
            address=parse_address(environ.get("PGVECTOR_EC2_ADDRESS") or "private"),
            bastion=parse_bastion(environ.get("PGVECTOR_EC2_BASTION") or ""),
        )


def parse_filters(text: str) -> dict[str, list[str]]:
    """Tag filters from ``Key=value,Key=value``; a key given twice matches either value.

    EC2 ANDs different keys and ORs the values of one key; ``*`` and ``?`` are EC2 wildcards.

    >>> parse_filters("Role=postgres,Env=prod,Env=staging")
    {'Role': ['postgres'], 'Env': ['prod', 'staging']}
    """
    filters: dict[str, list[str]] = {}
    for item in text.split(","):
        key, equals, value = item.strip().partition("=")
        if not equals or not key.strip() or not value.strip():
            raise Ec2InventoryError(
                f"PGVECTOR_EC2_FILTERS={text!r}: {item.strip()!r} is not a tag filter Key=value. "
                f"Fix: give comma-separated tag filters, e.g. PGVECTOR_EC2_FILTERS=Role=postgres,Env=prod "
                f"(unset: {DEFAULT_FILTERS})."
            )
        filters.setdefault(key.strip(), []).append(value.strip())
    return filters


def parse_address(text: str) -> str:
    """``private`` (the default) or ``public``: which IP pyinfra connects to."""
    address = text.strip().lower()
    if address not in ("private", "public"):
        raise Ec2InventoryError(
            f"PGVECTOR_EC2_ADDRESS={text!r} is neither private nor public. Fix: PGVECTOR_EC2_ADDRESS=private "
            "(the default: the instances' private IPs, from inside the VPC or through PGVECTOR_EC2_BASTION) "
            "or PGVECTOR_EC2_ADDRESS=public."
        )
    return address


def parse_bastion(text: str) -> Bastion | None:
    """``[user@]host[:port]`` of an SSH jump host, or None when unset.

    >>> parse_bastion("ec2-user@bastion.example.com:2222")
    Bastion(user='ec2-user', host='bastion.example.com', port=2222)
    """
    text = text.strip()
    if not text:
        return None
    user, at, hostport = text.rpartition("@")
    host, port = hostport, None
    # host:port, except an IPv6 address (several colons), as pyinfra's ProxyJump parser does.
    if hostport.count(":") == 1:
        host, _, port_text = hostport.partition(":")
        port = int(port_text) if port_text.isdigit() and 0 < int(port_text) < 65536 else -1
    if not host or (at and not user) or port == -1 or re.search(r"[\s,@]", text.replace("@", "", 1)):
        raise Ec2InventoryError(
            f"PGVECTOR_EC2_BASTION={text!r} is not user@host[:port]. Fix: e.g. "
            "PGVECTOR_EC2_BASTION=ec2-user@bastion.example.com or ec2-user@203.0.113.10:2222."
        )
    return Bastion(user=user or None, host=host, port=port)


# --- EC2 ---------------------------------------------------------------------------------------


def aws_region_override() -> str | None:
    """``AWS_REGION``, which boto3 ignores (it reads only AWS_DEFAULT_REGION; boto/boto3#3620).

    The AWS CLI and the other SDKs read it, and there it wins over AWS_DEFAULT_REGION and the
    profile's region: passed as the session's region, it does the same here. Unset: None, and
    boto3's own chain (AWS_DEFAULT_REGION, then the profile) decides.
    """
    return os.environ.get("AWS_REGION", "").strip() or None


def ec2_client(session=None):
    """An EC2 client from boto3's standard configuration, with standard-mode retries.

    Region, profile, credentials and ``AWS_ENDPOINT_URL`` all come from boto3's usual chain:
    we pass none of them, so whatever works for the AWS CLI works here.
    """
    import boto3
    from botocore.config import Config

    session = session or boto3.Session()
    return session.client("ec2", config=Config(retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS}))


def ec2_filters(tags: Mapping[str, list[str]]) -> list[dict]:
    """DescribeInstances filters: running instances with every tag.

    >>> ec2_filters({"Role": ["postgres"]})
    [{'Name': 'instance-state-name', 'Values': ['running']}, {'Name': 'tag:Role', 'Values': ['postgres']}]
    """
    return [{"Name": "instance-state-name", "Values": ["running"]}] + [
        {"Name": f"tag:{key}", "Values": list(values)} for key, values in tags.items()
    ]


def running_instances(client, tags: Mapping[str, list[str]], page_size: int = DEFAULT_PAGE_SIZE) -> list[dict]:
    """Every running instance with the tags, across all pages of DescribeInstances."""
    pages = client.get_paginator("describe_instances").paginate(
        Filters=ec2_filters(tags), PaginationConfig={"PageSize": page_size}
    )
    return [instance for page in pages for reservation in page["Reservations"] for instance in reservation["Instances"]]


def images_by_id(client, image_ids: set[str]) -> dict[str, dict]:
    """The AMIs the instances were launched from, in one DescribeImages call.

    A filter rather than ``ImageIds``: an AMI that was deregistered, or is no longer shared
    with us, is then just missing (its instances fall back to hints) instead of failing the
    whole call. Deprecated AMIs (old Debian and Ubuntu releases) are hidden unless asked for.
    """
    if not image_ids:
        return {}
    pages = client.get_paginator("describe_images").paginate(
        Filters=[{"Name": "image-id", "Values": sorted(image_ids)}], IncludeDeprecated=True
    )
    return {image["ImageId"]: image for page in pages for image in page["Images"]}


# --- from an instance to a pyinfra host ----------------------------------------------------------


@dataclass(frozen=True)
class ImageFamily:
    label: str
    pattern: str  # searched in the AMI's Name and Description, and in PlatformDetails
    user: str


# Each family's AMI naming (official publishers) and its default login user. Order matters
# only where a text could name two families; the derivatives come before RHEL.
IMAGE_FAMILIES: tuple[ImageFamily, ...] = (
    ImageFamily("Debian", r"^debian-\d|^Debian \d", "admin"),
    ImageFamily("Ubuntu", r"ubuntu/images/|^ubuntu-|Canonical, Ubuntu|^Ubuntu Pro", "ubuntu"),
    ImageFamily("Amazon Linux", r"^al20\d\d-ami|^amzn2?-ami|^Amazon Linux", "ec2-user"),
    ImageFamily("Rocky Linux", r"^Rocky-\d|Rocky Linux", "rocky"),
    ImageFamily("AlmaLinux", r"^AlmaLinux OS|AlmaLinux", "ec2-user"),
    ImageFamily("RHEL", r"^RHEL-\d|Red Hat", "ec2-user"),
)


def image_family(image: Mapping | None, platform_details: str = "") -> ImageFamily | None:
    """The family of an AMI by its Name, then Description, then PlatformDetails (a hint).

    PlatformDetails alone is weak ("Linux/UNIX" for most), but it names RHEL and Ubuntu Pro
    even when the AMI itself is no longer visible to us.

    >>> image_family({"Name": "Rocky-9-EC2-Base-9.4-20240523.0.x86_64"}).label
    'Rocky Linux'
    >>> image_family(None, "Red Hat Enterprise Linux").label
    'RHEL'
    """
    image = image or {}
    texts = (image.get("Name"), image.get("Description"), image.get("PlatformDetails"), platform_details)
    for text in texts:
        for family in IMAGE_FAMILIES:
            if text and re.search(family.pattern, text, re.IGNORECASE):
                return family
    return None


def login_user(image: Mapping | None, platform_details: str = "") -> str | None:
    """The default SSH user of the image, or None when the image is not one we know."""
    family = image_family(image, platform_details)
    return family.user if family else None


def tag(instance: Mapping, key: str) -> str:
    """An instance's tag value, stripped ("" when absent)."""
    return next((t["Value"].strip() for t in instance.get("Tags", []) if t["Key"] == key), "")


def host_names(instances: list[Mapping]) -> dict[str, str]:
    """Instance id -> pyinfra host name, unique by construction: the Name tag, else the id;
    every instance whose name is shared (with another's tag or with a name made here) gets
    ``<name>-<id>``, until no two names are the same.

    Every instance sharing a name gets the suffix, not just the second one, so a name never
    depends on the order EC2 listed them in. Instance ids are unique, so each round makes the
    clashing names longer and distinct; a tag that happens to equal a made name
    (``db-i-1`` beside two ``db``) clashes in the next round and gets its own id too.

    >>> host_names([{"InstanceId": "i-1", "Tags": [{"Key": "Name", "Value": "db"}]},
    ...             {"InstanceId": "i-2", "Tags": [{"Key": "Name", "Value": "db"}]},
    ...             {"InstanceId": "i-3"}])
    {'i-1': 'db-i-1', 'i-2': 'db-i-2', 'i-3': 'i-3'}
    """
    # pyinfra reads a name starting with "@" as a connector (@local, @docker/...): not a name.
    names = {}
    for instance in instances:
        name = tag(instance, "Name")
        names[instance["InstanceId"]] = name if name and not name.startswith("@") else instance["InstanceId"]
    for _ in range(len(names) + 1):  # each round settles at least one clash for good
        counts = Counter(names.values())
        if all(count == 1 for count in counts.values()):
            return names
        names = {iid: (f"{name}-{iid}" if counts[name] > 1 else name) for iid, name in names.items()}
    raise AssertionError(f"host names did not become unique: {names}")  # unreachable: ids are unique


def address_of(instance: Mapping, address: str) -> str | None:
    """The instance's private or public IPv4 address (None when it has none)."""
    return instance.get("PublicIpAddress" if address == "public" else "PrivateIpAddress")


def check_addresses(instances: list[Mapping], names: Mapping[str, str], options: Options) -> None:
    """Fail naming every instance without the requested kind of address."""
    missing = [f"{names[i['InstanceId']]} ({i['InstanceId']})" for i in instances if not address_of(i, options.address)]
    if not missing:
        return
    if options.address == "public":
        fix = (
            "Fix: give them a public or Elastic IP, or use their private IPs (PGVECTOR_EC2_ADDRESS=private, "
            "the default) from inside the VPC or through a jump host (PGVECTOR_EC2_BASTION=user@host)."
        )
    else:
        fix = "Fix: give them an IPv4 address in their subnet, or narrow PGVECTOR_EC2_FILTERS to exclude them."
    raise Ec2InventoryError(
        f"PGVECTOR_EC2_ADDRESS={options.address}, but these instances have no {options.address} IPv4 address: "
        f"{', '.join(missing)}. {fix}"
    )


def check_unique_addresses(instances: list[Mapping], names: Mapping[str, str], options: Options) -> None:
    """Fail naming the instances that share the address pyinfra would connect to.

    Overlapping VPC CIDRs give two instances the same private IP: pyinfra would reach one of
    them twice and the other never. No address can tell them apart from here, so refuse.
    """
    by_address: dict[str, list[Mapping]] = {}
    for instance in instances:
        by_address.setdefault(address_of(instance, options.address), []).append(instance)
    shared = {address: group for address, group in by_address.items() if len(group) > 1}
    if not shared:
        return
    details = "; ".join(
        f"{address}: " + ", ".join(f"{names[i['InstanceId']]} ({i['InstanceId']}, {i.get('VpcId') or 'no VPC'})" for i in group)
        for address, group in sorted(shared.items())
    )
    raise Ec2InventoryError(
        f"PGVECTOR_EC2_ADDRESS={options.address}: several instances share one address, so one of them "
        f"would be provisioned twice and the others never: {details}. Fix: narrow PGVECTOR_EC2_FILTERS to "
        "the instances of one VPC (e.g. a tag per VPC: Role=postgres,Env=prod), or use "
        "PGVECTOR_EC2_ADDRESS=public, and run once per VPC."
    )


def ssh_user(instance: Mapping, image: Mapping | None, name: str) -> str:
    """The ``SSHUser`` tag, else the image's default user, else ec2-user with a warning."""
    user = tag(instance, SSH_USER_TAG) or login_user(image, instance.get("PlatformDetails", ""))
    if user:
        return user
    what = f"{image.get('Name')!r}" if image else "not visible to this account (deregistered or unshared)"
    logger.warning(
        f"EC2 inventory: {name} ({instance['InstanceId']}): cannot tell the login user from its image "
        f"{instance.get('ImageId')} ({what}); using {FALLBACK_SSH_USER}. Fix: tag the instance "
        f"{SSH_USER_TAG}=<user>."
    )
    return FALLBACK_SSH_USER


def host_data(instance: Mapping, image: Mapping | None, name: str, options: Options) -> dict:
    """pyinfra host data for one instance: how to reach it, and what EC2 says it is."""
    return {
        "ssh_hostname": address_of(instance, options.address),
        "ssh_user": ssh_user(instance, image, name),
        "ec2_instance_id": instance["InstanceId"],
        "ec2_image_id": instance.get("ImageId"),
        # Compared with `uname -m` before anything runs (preflight.check_ec2_architecture).
        "ec2_architecture": instance.get("Architecture"),
    }


def make_hosts(instances: list[Mapping], images: Mapping[str, Mapping], options: Options) -> list[tuple[str, dict]]:
    """(name, data) for every instance, sorted by name."""
    names = host_names(instances)
    check_addresses(instances, names, options)
    check_unique_addresses(instances, names, options)
    hosts = [
        (names[i["InstanceId"]], host_data(i, images.get(i.get("ImageId", "")), names[i["InstanceId"]], options))
        for i in instances
    ]
    return sorted(hosts, key=lambda host: host[0])


def inventory_groups(hosts: list[tuple[str, dict]]) -> dict[str, list]:
    """``postgres_hosts`` (every host, with its data) and one group of names per architecture.

    >>> inventory_groups([("db-1", {"ec2_architecture": "arm64"})])
    {'postgres_hosts': [('db-1', {'ec2_architecture': 'arm64'})], 'ec2_x86_64': [], 'ec2_arm64': ['db-1']}
    """
    return {
        ALL_HOSTS_GROUP: hosts,
        "ec2_x86_64": [name for name, data in hosts if data["ec2_architecture"] == "x86_64"],
        "ec2_arm64": [name for name, data in hosts if data["ec2_architecture"] == "arm64"],
    }


# --- the jump host --------------------------------------------------------------------------------


def default_cache_dir(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "pgvector-deploy"


def bastion_ssh_config(bastion: Bastion, addresses: list[str]) -> str:
    """An ssh_config that sends the fleet's addresses through the jump host.

    pyinfra's SSH connector has no jump-host data key; it honours ``ProxyJump`` from the file
    named by ``ssh_config_file``. Only the fleet's addresses match, so the connection to the
    jump host itself is direct. The jump host's key is accepted when new and refused when
    changed (accept-new, pyinfra's default for hosts); without it pyinfra would ask on stdin.
    """
    return (
        "# Written by pgvector_deploy.ec2 for PGVECTOR_EC2_BASTION; regenerated on every run.\n"
        f"Host {' '.join(sorted(addresses))}\n"
        f"    ProxyJump {bastion.proxy_jump}\n"
        f"Host {bastion.host}\n"
        "    StrictHostKeyChecking accept-new\n"
    )


def write_ssh_config(text: str, cache_dir: Path) -> str:
    """Write the ssh_config under a name derived from its content; returns its path.

    A new name for new content matters: pyinfra caches a parsed ssh_config by file name.
    """
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = cache_dir / f"ec2-ssh-config-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    if not path.exists() or path.read_text() != text:
        partial = path.with_suffix(".new")
        partial.write_text(text)
        partial.replace(path)  # renamed into place: a concurrent run never reads half a file
    return str(path)


# --- errors ---------------------------------------------------------------------------------------


def where(session) -> str:
    """``region eu-west-1, profile prod`` for messages."""
    region = session.region_name if session else None
    profile = session.profile_name if session else None
    return f"region {region or 'unset'}, profile {profile or 'default'}"


def region_too(session) -> str:
    """A second fix when the region is missing as well (it would be the next error)."""
    if session and session.region_name:
        return ""
    return " Set AWS_REGION too (e.g. AWS_REGION=eu-west-1): no region is configured either."


def explain(error: Exception, session=None) -> Ec2InventoryError:
    """One paragraph naming what went wrong and the fix, for a botocore/boto3 exception."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        ProfileNotFound,
    )

    if isinstance(error, ProfileNotFound):
        return Ec2InventoryError(
            f"AWS profile not found: {error}. Fix: set AWS_PROFILE to a profile in ~/.aws/config "
            "(aws configure list-profiles shows them), or unset it."
        )
    if isinstance(error, NoRegionError):
        return Ec2InventoryError(
            "no AWS region is configured, so there is no EC2 endpoint to ask. Fix: set AWS_REGION "
            "(or AWS_DEFAULT_REGION), e.g. AWS_REGION=eu-west-1, or a region in your AWS profile."
        )
    if isinstance(error, NoCredentialsError):
        return Ec2InventoryError(
            f"no AWS credentials found ({where(session)}): boto3 looked in the environment, the shared "
            "credentials and config files, SSO and the instance role. Fix: set AWS_PROFILE to a configured "
            "profile (for SSO, run aws sso login --profile <name> first), or export AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or run from an instance with an IAM role allowing ec2:DescribeInstances "
            f"and ec2:DescribeImages.{region_too(session)}"
        )
    if isinstance(error, EndpointConnectionError):
        return Ec2InventoryError(
            f"could not reach the EC2 endpoint ({where(session)}): {error}. Fix: check the network, the region, "
            "and AWS_ENDPOINT_URL if you set one."
        )
    if isinstance(error, ClientError):
        return explain_client_error(error, session)
    return Ec2InventoryError(f"listing EC2 instances failed ({where(session)}): {error}.")


def explain_client_error(error, session=None) -> Ec2InventoryError:
    """An error EC2 answered with: throttling, permissions, credentials, a bad request."""
    code = error.response.get("Error", {}).get("Code", "")
    text = error.response.get("Error", {}).get("Message", "")
    attempts = error.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) + 1
    call = f"ec2:{error.operation_name}"
    if code in THROTTLING_CODES:
        return Ec2InventoryError(
            f"EC2 throttled {call} ({code}) and was still refusing after {attempts} attempts with backoff "
            f"({where(session)}): other tools are using this account's EC2 API quota. Fix: run again in a "
            "minute, when the burst is over (the retries already waited with exponential backoff)."
        )
    if code in PERMISSION_CODES:
        return Ec2InventoryError(
            f"the AWS identity may not call {call} ({code}, {where(session)}): {text} Fix: grant it "
            "ec2:DescribeInstances and ec2:DescribeImages (read-only), or use a profile that has them (AWS_PROFILE)."
        )
    if code in REJECTED_CREDENTIAL_CODES:
        return Ec2InventoryError(
            f"AWS rejected the credentials for {call} ({code}, {where(session)}): {text} Fix: refresh them "
            "(aws sso login, or new access keys), and check the system clock."
        )
    if code in BAD_REQUEST_CODES:
        return Ec2InventoryError(
            f"EC2 rejected {call} ({code}, {where(session)}): {text} Fix: check PGVECTOR_EC2_FILTERS "
            "(comma-separated tag filters Key=value)."
        )
    return Ec2InventoryError(
        f"EC2 refused {call} ({code}, {where(session)}): {text} Fix: act on the AWS error above, then run again."
    )


def no_instances(options: Options, session) -> Ec2InventoryError:
    tags = ", ".join(f"{key}={'|'.join(values)}" for key, values in options.filters.items())
    return Ec2InventoryError(
        f"no running EC2 instance has the tags {tags} ({where(session)}), so there is nothing to provision; "
        "an empty fleet is almost always a wrong region, profile or tag. Fix: check the instances' tags and "
        "state, AWS_REGION / AWS_PROFILE, or set PGVECTOR_EC2_FILTERS (e.g. Role=postgres,Env=prod)."
    )


# --- the whole inventory --------------------------------------------------------------------------


def discover(
    environ: Mapping[str, str] | None = None,
    *,
    session=None,
    page_size: int = DEFAULT_PAGE_SIZE,
    cache_dir: Path | None = None,
) -> dict[str, list]:
    """The fleet as pyinfra inventory groups (see ``inventory_groups``).

    ``environ`` holds our ``PGVECTOR_EC2_*`` options (default: ``os.environ``); boto3 reads
    its own variables from the process environment, or from ``session`` when given.
    """
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    environ = os.environ if environ is None else environ
    options = Options.from_environ(environ)
    try:
        session = session or boto3.Session(region_name=aws_region_override())
        # Before the client: without a region it could not be made, and no credentials is
        # the more basic problem (the message names the region too).
        if session.get_credentials() is None:
            raise NoCredentialsError()
        client = ec2_client(session)
        instances = running_instances(client, options.filters, page_size)
        if not instances:
            raise no_instances(options, session)
        images = images_by_id(client, {i["ImageId"] for i in instances if i.get("ImageId")})
    except (BotoCoreError, ClientError) as error:
        raise explain(error, session) from None

    hosts = make_hosts(instances, images, options)
    if options.bastion:
        text = bastion_ssh_config(options.bastion, [data["ssh_hostname"] for _, data in hosts])
        path = write_ssh_config(text, cache_dir or default_cache_dir(environ))
        for _, data in hosts:
            data["ssh_config_file"] = path
    # Every instance found becomes a host (names are unique, addresses checked): say both.
    logger.info(
        f"EC2 inventory: {len(instances)} running instance(s) found, {len(hosts)} kept as hosts ({where(session)})"
    )
    return inventory_groups(hosts)
