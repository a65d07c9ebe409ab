"""The plan: what every stage of the recipe receives, once preflight has looked at the host.

A ``Plan`` holds four things and nothing else: the validated (and loaded) ``settings``, the
host's ``platform`` (the distribution's paths, packages and services for the target major),
the host ``profile`` preflight gathered (``facts.HostProfile``), and a cache of the facts
the stages ask (``Plan.fact``, ``Plan.prefetch``), forgotten before every command
(``shell.host_locked``). ``port`` is PostgreSQL's, the same on every host.

Preflight builds it (``preflight.make_plan``); the operations only read it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from pyinfra import host as current_host

from .facts import FactBundle
from .paths import CACHE_DIR
from .platforms import POSTGRES_MAJOR, Platform
from .settings import Settings

POSTGRES_PORT = 5432


@dataclass(frozen=True)
class Plan:
    settings: Settings
    platform: Platform
    profile: dict
    port: int = POSTGRES_PORT
    # Facts already gathered for this plan: (fact class, arguments) -> result. See ``fact``.
    _facts: dict = field(default_factory=dict, init=False, compare=False, repr=False)

    def fact(self, cls, **kwargs):
        """``host.get_fact(cls, **kwargs)``, gathered once while nothing may have changed the host.

        pyinfra 3 caches no facts: two operations asking the same fact ask the host twice.
        Without ``-y`` (and with ``--dry``) it also runs each operation's generator while it
        plans (up to the first command, to tell whether the operation changes anything) and
        again when it executes: four times.

        Why a remembered fact is never stale: only commands change the host, and a command
        reaches the host only when an operation yields it and pyinfra executes it (in
        ``run_host_op``, right after the yield; while planning, nothing is executed at all).
        Every operation of ours that yields a command is ``shell.host_locked``, which calls
        ``forget_facts`` on the plan before each command leaves the generator and again when
        the generator resumes. So from a command's execution on, every fact is gathered
        anew; and a fact remembered before it (while planning, or earlier in the run)
        describes a host no command has changed since. An operation that is not ours (say a
        ``server.shell`` added to the recipe) would not forget: keep every operation that
        runs commands between ours ``host_locked``.

        The key holds the host's name too: a plan is made for one host, but it never answers
        for another.
        """
        key = self._key(cls, kwargs)
        if key not in self._facts:
            self._facts[key] = current_host.get_fact(cls, **kwargs)
        return copy.deepcopy(self._facts[key])  # one operation's edits never reach the next

    def prefetch(self, *requests: tuple[type, dict]) -> None:
        """Gather several facts in one round trip, their commands side by side on the host, and
        remember each as if ``fact`` had asked it alone (same class and arguments). A fact
        whose command failed is not remembered: ``fact`` asks it again, alone. One whose
        output its parser cannot read raises ``UnreadableFact`` (``start``: a refusal).

        Nothing has run on the host yet when the recipe prefetches, so these are as fresh
        as any fact ``fact`` gathers; the first command an operation yields forgets them.
        """
        wanted = [(cls, kwargs) for cls, kwargs in requests if self._key(cls, kwargs) not in self._facts]
        if not wanted:
            return
        commands = tuple(cls().command(**kwargs) for cls, kwargs in wanted)
        parts = current_host.get_fact(FactBundle, commands=commands)
        for (cls, kwargs), (status, lines) in zip(wanted, parts):
            if status == 0:
                fact = cls()
                try:
                    self._facts[self._key(cls, kwargs)] = fact.process(lines) if lines else fact.default()
                except Exception as error:
                    raise UnreadableFact(cls, error) from error

    def _key(self, fact: type, kwargs: dict) -> tuple:
        return (fact, getattr(current_host, "name", None), self._arguments_key(kwargs))

    def forget_facts(self) -> None:
        """Gather every fact anew from now on (a command may have changed the host)."""
        self._facts.clear()

    @staticmethod
    def _arguments_key(kwargs: dict) -> tuple:
        """A fact's arguments as a memo key: hashable values as they are (compared by
        equality), others (a dict, a list) by type and repr."""
        key = []
        for name, value in sorted(kwargs.items()):
            try:
                hash(value)
            except TypeError:
                value = (type(value).__qualname__, repr(value))
            key.append((name, value))
        return tuple(key)

    @property
    def cached_tarball(self) -> str:
        return tarball_path(self.settings.version)

    @property
    def os_id(self) -> str:
        return self.profile["os_release"].get("ID", "").lower()

    @property
    def arch(self) -> str:
        return self.profile["arch"]

    def __repr__(self) -> str:  # shown by pyinfra next to operation names
        major = "" if self.platform.major == POSTGRES_MAJOR else f", PostgreSQL {self.platform.major}"
        return f"Plan({self.platform.key}{major}, pgvector {self.settings.version})"


class UnreadableFact(Exception):
    """A fact's output that its parser could not read (``Plan.prefetch``)."""

    def __init__(self, fact: type, error: Exception):
        super().__init__(f"the output of {fact.__name__} could not be read ({type(error).__name__}: {error})")


def tarball_path(version: str) -> str:
    return f"{CACHE_DIR}/pgvector-{version}.tar.gz"
