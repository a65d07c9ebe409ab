"""Where the toolkit keeps its own state on a host (the directories every layer names).

Data only, importing nothing of ours: ``platforms`` (each major's build stamp), ``facts``
and the operations all read these.
"""

from __future__ import annotations

# Where the toolkit keeps its own state on a host.
CACHE_DIR = "/var/cache/pgvector-deploy"
STATE_DIR = "/var/lib/pgvector-deploy"
BUILD_STAMP = f"{STATE_DIR}/build.json"  # PostgreSQL 15's (Platform.build_stamp: each major its own)
BUILD_LOG = f"{STATE_DIR}/build.log"  # one line per build that ran: when, what, for which server
DRILL_DIR = f"{STATE_DIR}/drill"  # the restore drill's scratch copies and reports (postgres's)
