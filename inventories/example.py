"""A static inventory: hosts by address, with their data.

    .venv/bin/pyinfra inventories/example.py deploy/postgres.py

Every data key and its default: README.md ("Host data") and pgvector_deploy/settings.py.
A group is a list of hosts, or (hosts, data shared by the group).
"""

db_hosts = (
    [
        # A Debian 12 EC2 instance, reached as its image's default user (sudo is used).
        ("db-1", {"ssh_hostname": "10.0.1.10", "ssh_user": "admin"}),
        # A host without internet egress: the tarball is uploaded from this machine.
        ("db-2", {"ssh_hostname": "10.0.1.11", "ssh_user": "admin", "pgvector_tarball": "files/v0.8.6.tar.gz"}),
    ],
    # Strict host key checking against a known_hosts file you maintain.
    {"ssh_known_hosts_file": "~/.ssh/known_hosts", "ssh_strict_host_key_checking": "yes"},
)
