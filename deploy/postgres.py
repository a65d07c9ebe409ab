"""PostgreSQL 15 + pgvector, compiled on each host. The recipe, stage by stage.

    pyinfra @local deploy/postgres.py -y
    pyinfra inventories/prod.py deploy/postgres.py

Host data keys and their defaults: pgvector_deploy/settings.py (and the README). The stages
themselves are in pgvector_deploy/recipe.py, shared with deploy/restore.py.
"""

from pyinfra import config, host

from pgvector_deploy import preflight, recipe

# Stage 0, look: the login can become root, the host data is valid, the host is one we
# provision (two round trips of facts), then the facts every stage below asks (one more
# round trip, side by side on the host). Nothing changes yet; a refused host (also one
# whose files or facts cannot be read) gets one failing operation and the others carry on.
plan = preflight.start(host, config, prefetch=True)

if isinstance(plan, preflight.Refusal):
    preflight.refuse(plan, name=preflight.REFUSAL)
else:
    recipe.server(plan)  # stages 1-5: tools, tarball, PostgreSQL 15, pgvector, access, sizing
    recipe.app(plan)  # stage 6: the app's role, database, migrations, connection details
    recipe.backups(plan)  # stage 6b: pgBackRest to S3, WAL archiving, timers, first backup
    recipe.proof(plan)  # stage 7: the vector smoke suite
