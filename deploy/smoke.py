"""The vector smoke suite on its own, against the same inventory as the recipe.

    pyinfra @local deploy/smoke.py -y
    pyinfra inventories/prod.py deploy/smoke.py

Ten checks per host, each reported by name as pass, fail or skip (pgvector_deploy/smoke.py);
a JSON report per host goes to reports/smoke-<host>.json on this machine. The checks run in
one round trip as a fact, so a host that passes reports zero changed operations; one that
fails is failed, naming its failed checks. Nothing is checked with --dry.
"""

from pyinfra import config, host

from pgvector_deploy import preflight, smoke

# Same host data and validation as the recipe: the requested pgvector version, the platform.
plan = preflight.start(host, config)

if isinstance(plan, preflight.Refusal):
    preflight.refuse(plan, name=preflight.REFUSAL)
else:
    # app_over_tcp logs in as the app role (host data) at the Docker bridge gateway, from
    # this machine through pyinfra's SSH connection: the password never reaches the host.
    smoke.verify(
        plan,
        app=smoke.app_login(plan),
        report_dir=str(plan.settings.smoke_report_dir),
        name="Vector smoke suite",
    )
