"""PostgreSQL 15 + pgvector, compiled on each host: the packaged deploy, called as any pyinfra
project of yours can call it (README, "Use it from your own pyinfra project").

    pyinfra @local deploy/postgres.py -y
    pyinfra inventories/prod.py deploy/postgres.py

Host data keys and their defaults: pgvector_deploy/settings.py (and the README). The stages
themselves are in pgvector_deploy/recipe.py, shared with deploy/restore.py.
"""

from pgvector_deploy import postgres_with_pgvector

postgres_with_pgvector()
