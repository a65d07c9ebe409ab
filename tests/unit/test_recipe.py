"""The packaged deploys (pgvector_deploy.recipe): pyinfra's @deploy with the declared
defaults as its data_defaults, operations under their own names, and what the wheel holds."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.operations import server

from pgvector_deploy import postgres_with_pgvector, recipe, restore_backup
from pgvector_deploy.loading import load_settings
from pgvector_deploy.settings import SETTINGS

REPO = Path(__file__).resolve().parents[2]
APP = {"pg_app_user": "app", "pg_app_password": "app-Password-1"}


@pytest.mark.parametrize("packaged", [postgres_with_pgvector, restore_backup], ids=lambda f: f.__name__)
def test_data_defaults_are_the_declared_default_of_every_key(packaged):
    declared = {setting.key: setting.default for setting in SETTINGS}
    assert packaged._inner.deploy_data == declared
    assert list(packaged._inner.deploy_data) == [setting.key for setting in SETTINGS]


@pytest.mark.parametrize("data", [{}, APP], ids=["no app", "app"])
def test_host_data_that_is_exactly_the_defaults_plans_as_no_host_data(data):
    """Inside the deploy, host.data holds every default (pyinfra's data_defaults); a host
    with no data of its own must get the settings it got from the CLI recipe before."""
    assert load_settings({**recipe.DATA_DEFAULTS, **data}) == load_settings(data)


def test_an_explicit_migrations_folder_still_needs_the_app_and_must_exist(tmp_path):
    from pgvector_deploy.settings import SettingsError

    with pytest.raises(SettingsError, match="pg_migrations_dir is set"):
        load_settings({**recipe.DATA_DEFAULTS, "pg_migrations_dir": str(tmp_path)})
    with pytest.raises(SettingsError, match="is not a folder"):
        load_settings({**recipe.DATA_DEFAULTS, **APP, "pg_migrations_dir": str(tmp_path / "nope")})


def _api_state() -> State:
    inventory = Inventory((["@local"], {}))
    state = State(inventory, Config())
    connect_all(state)
    return state


def test_operations_keep_their_own_names_and_see_the_defaults_under_host_data():
    """A nameless deploy (recipe._nameless): no "deploy | " prefix on the operations, nested
    or not, and the data defaults are host data inside it (inventory data wins)."""
    seen = {}

    @recipe._nameless
    @recipe.deploy()
    def inner():
        server.shell(name="Inner operation", commands=["true"])

    @recipe._nameless
    @recipe.deploy(data_defaults={"pg_restart": "report", "pg_tuning": True})
    def outer():
        from pyinfra import host

        seen["pg_restart"] = host.data.get("pg_restart")
        server.shell(name="Outer operation", commands=["true"])
        inner()

    state = _api_state()
    add_deploy(state, outer)
    names = sorted(name for meta in state.op_meta.values() for name in meta.names)
    assert names == ["Inner operation", "Outer operation"]
    assert seen == {"pg_restart": "report"}


def _as_the_cli_does(state: State, deploy_file) -> Config:
    """Runs ``deploy_file`` as pyinfra's CLI runs a deploy file: with pyinfra.config bound to a
    copy of the state's config for the host (add_deploy alone binds no config)."""
    from pyinfra.context import ctx_config

    config = state.config.copy()
    with ctx_config.use(config):
        add_deploy(state, deploy_file)
    return config


def _record_the_look(monkeypatch, seen: dict):
    """preflight.start replaced by one that records what the look would see, then refuses
    (one operation, nothing asked of the host)."""
    from pyinfra import host

    from pgvector_deploy import preflight

    def start(host_, config, prefetch=False):
        seen["bucket"] = host.data.get("pg_backup_s3_bucket")
        seen["app"] = host.data.get("pg_app_user")
        seen["restart"] = host.data.get("pg_restart")
        config.SUDO = True  # as the look does for a login that is not root
        return preflight.Refusal("recorded")

    monkeypatch.setattr(recipe.preflight, "start", start)


def test_data_of_an_enclosing_deploy_or_include_is_seen_inside_the_packaged_deploy(monkeypatch):
    """local.include(..., data=) and a team's own @deploy(data_defaults=) set deploy data, which
    pyinfra replaces (not merges) with the next deploy's: our defaults must not hide theirs (a
    bucket read as unset would turn a host's backups off)."""
    seen: dict = {}
    _record_the_look(monkeypatch, seen)

    @recipe.deploy(data_defaults={"pg_backup_s3_bucket": "team-bucket", "pg_app_user": "team_app"})
    def team():
        postgres_with_pgvector()

    state = _api_state()
    _as_the_cli_does(state, team)
    assert seen == {"bucket": "team-bucket", "app": "team_app", "restart": recipe.DATA_DEFAULTS["pg_restart"]}
    assert postgres_with_pgvector._inner.deploy_data == recipe.DATA_DEFAULTS  # nothing left behind


def test_the_sudo_our_look_chose_does_not_stay_on_for_the_callers_later_operations(monkeypatch):
    seen: dict = {}
    _record_the_look(monkeypatch, seen)

    def team():
        postgres_with_pgvector()
        server.shell(name="Team operation after ours", commands=["true"])

    state = _api_state()
    config = _as_the_cli_does(state, team)
    [after] = [op_hash for op_hash, meta in state.op_meta.items() if "Team operation after ours" in meta.names]
    [local] = state.inventory
    assert state.get_op_data_for_host(local, after).global_arguments["_sudo"] is False and config.SUDO is False


class _DeployHost:
    """A host inside a @deploy: pyinfra's global arguments of that deploy, fixed when it was
    called, and the login's LoginAccess (the rest of the look is not asked here)."""

    def __init__(self, access: dict, deploy_sudo: bool):
        self.access = access
        self.data = {}
        self.current_deploy_kwargs = {"_sudo": deploy_sudo, "_sudo_user": None}

    def get_fact(self, cls, **kwargs):
        return self.access


class _Config:
    SUDO = False


@pytest.mark.parametrize(
    ("access", "deploy_sudo", "expected"),
    [
        ({"uid": 1000, "sudo": True}, False, True),  # admin on EC2: sudo from the look on
        ({"uid": 0, "sudo": True}, True, True),  # the caller passed _sudo=True: id -u said 0 under it
        ({"uid": 0, "sudo": True}, False, False),  # a root login
        ({"uid": 1000, "sudo": False}, False, False),  # refused: the refusal runs without sudo
    ],
)
def test_the_sudo_the_look_chooses_is_the_packaged_deploys_own(access, deploy_sudo, expected):
    """Inside postgres_with_pgvector, the deploy's global arguments win over pyinfra's config
    (an e2e second run was refused: the look read the data directory without sudo)."""
    from pgvector_deploy.preflight import start

    host, config = _DeployHost(access, deploy_sudo), _Config()
    start(host, config)
    assert host.current_deploy_kwargs == {"_sudo": expected, "_sudo_user": None}
    assert config.SUDO is expected


def _build_wheel(out: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    (wheel,) = out.glob("pgvector_deploy-*.whl")
    return wheel


def test_the_wheel_holds_every_file_the_operations_read_at_run_time(tmp_path):
    """Installed from the wheel, the templates and the backup scripts are found in the
    installed package (networking.TEMPLATES, backups.SCRIPTS_DIR), not in a checkout."""
    from pgvector_deploy import backups, networking

    names = set(zipfile.ZipFile(_build_wheel(tmp_path)).namelist())
    package = Path(networking.__file__).parent
    for folder in (Path(networking.TEMPLATES), Path(backups.SCRIPTS_DIR)):
        inside = folder.relative_to(package)  # ValueError: read from beside the package
        files = [path.name for path in folder.iterdir() if path.is_file() and path.name != "README.md"]
        assert files, folder
        for name in files:
            assert f"pgvector_deploy/{inside}/{name}" in names, f"{inside}/{name} is not in the wheel"
