"""The EC2 fleet: every running instance tagged Role=postgres, found through boto3.

    .venv/bin/pyinfra inventories/prod.py deploy/postgres.py
    .venv/bin/pyinfra inventories/prod.py debug-inventory     # what was found, nothing runs

Environment variables (all optional):

    PGVECTOR_EC2_FILTERS   tag filters, comma-separated Key=value (default Role=postgres);
                           different keys must all match, a key given twice matches either
                           value, * and ? are EC2 wildcards: Role=postgres,Env=prod
    PGVECTOR_EC2_ADDRESS   private (default) or public: the IP pyinfra connects to
    PGVECTOR_EC2_BASTION   user@host[:port]: reach the instances through this SSH jump host
                           (pyinfra's ssh_config_file with a generated ProxyJump)
    AWS_PROFILE, AWS_REGION / AWS_DEFAULT_REGION, AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...
                           boto3's own configuration, read by boto3 as usual

Each host is named after its Name tag (else its instance id; clashing names get the id
appended until every name is unique; two instances sharing an address are refused) and logs in as its image's default user (Debian admin, Ubuntu ubuntu, Rocky rocky,
Amazon Linux, RHEL and AlmaLinux ec2-user); an SSHUser tag on the instance overrides it.
Groups: postgres_hosts (all), ec2_x86_64 and ec2_arm64. Host data from EC2: ssh_hostname,
ssh_user, ec2_instance_id, ec2_image_id, ec2_architecture (checked against `uname -m` before
anything changes). The logic is in pgvector_deploy/ec2.py.
"""

from pgvector_deploy import ec2

_fleet = ec2.discover()

postgres_hosts = _fleet["postgres_hosts"]
ec2_x86_64 = _fleet["ec2_x86_64"]
ec2_arm64 = _fleet["ec2_arm64"]
