"""Sessions: ``nox`` runs tests, lint and typecheck; ``nox -s bench`` and ``serve`` on demand.

Dependencies come from pyproject.toml's dependency groups, so the noxfile
never repeats a version. Every session passes ``session.posargs`` through:
``nox -s tests -- -k disconnect -x``.
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.needs_version = ">=2024.10.9"
nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = ["3.11"]
# Every Python the package claims (requires-python >= 3.11): the suite runs on each.
SUPPORTED_PYTHONS = ["3.11", "3.12", "3.13"]
PROJECT = nox.project.load_toml("pyproject.toml")


def _install_group(session: nox.Session, name: str) -> None:
    session.install(*nox.project.dependency_groups(PROJECT, name))


@nox.session(python=SUPPORTED_PYTHONS)
def tests(session: nox.Session) -> None:
    """The whole test suite against real sockets (includes the >60 s stream test).

    Tests that need Redis start their own ``redis-server`` and skip without one,
    unless ``CI`` or ``SLUICE_REQUIRE_REDIS=1`` is set (`.ci/run` sets it): then they fail.
    """
    session.install("-e", ".")
    _install_group(session, "test")
    # The browser tests have their own session (they need Chromium); here they
    # would run only when it happens to be installed.
    session.run("pytest", "--ignore=tests/browser", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff (incl. the ASYNC rules) and flake8-async for the Trio checks ruff lacks."""
    _install_group(session, "lint")
    session.run("ruff", "check", "server", "tests", "examples", "noxfile.py", *session.posargs)
    # ASYNC1xx/2xx: the default Trio checks, several of which ruff lacks (ASYNC119
    # yield inside a nursery in an async generator, ASYNC114/113 startables...).
    # Not ASYNC124 (Quart views are async by contract) nor ASYNC127 (the design
    # card names httpx).
    session.run("flake8", "--select=ASYNC1,ASYNC2", "--extend-ignore=ASYNC124,ASYNC127",
                "--startable-in-context-manager="
                "serve",
                "server", "tests", "examples")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over server/, tests/, examples/ and this file."""
    session.install("-e", ".")
    _install_group(session, "typecheck")
    session.install("nox")
    session.run("mypy", *session.posargs)
    # Every lesson has its own broken.py and fixed.py, and one mypy run cannot hold two
    # modules of one name (pyproject excludes them from the run above): one run per lesson.
    for lesson in sorted(Path("examples/lessons").glob("[0-9][0-9]_*")):
        session.run("mypy", *sorted(str(path) for path in lesson.glob("*.py")), silent=True)


@nox.session(python=PYTHON)
def browser(session: nox.Session) -> None:
    """The page in headless Chromium against a live Sluice (needs Debian's chromium +
    chromium-driver; `.ci/run` installs them). Fails, rather than skips, without them."""
    session.install("-e", ".")
    _install_group(session, "test")
    session.run("pytest", "tests/browser", *session.posargs,
                env={"SLUICE_REQUIRE_BROWSER": "1"})


@nox.session(python=PYTHON)
def lessons(session: nox.Session) -> None:
    """Each lesson's test against its broken and its fixed gateway (examples/lessons/), and a
    table: every broken one must fail for its lesson's reason, every fixed one pass (~2 min)."""
    session.install("-e", ".")
    _install_group(session, "test")
    _install_group(session, "lint")  # two lessons show flake8-async catching their bug
    # -rfE: the table says why each broken gateway failed; pytest need not repeat it.
    session.run("pytest", "examples/lessons", "-rfE", *session.posargs)


@nox.session(python=PYTHON)
def examples(session: nox.Session) -> None:
    """Smoke-run every example against a live Sluice (simulated model)."""
    session.install("-e", ".")
    _install_group(session, "test")
    session.run("python", "examples/run_all.py", *session.posargs)


def _run_bench_tool(session: nox.Session, module: str, *args: str) -> None:
    """Install the project and the bench group, then run one `tests.bench` tool."""
    session.install("-e", ".")
    _install_group(session, "bench")
    session.run("python", "-m", f"tests.bench.{module}", *args, *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Direct vs nginx vs Sluice, side by side (not in CI). `-- --quick` for ~2 min;
    `-- --scenario stream-1000`; `-- --list`. Installs nginx with apt when root."""
    _run_bench_tool(session, "run", "--out", "bench-results/")


@nox.session(python=PYTHON)
def scaling(session: nox.Session) -> None:
    """How throughput scales with worker processes (~4 min; not in CI): 1 vs 2 workers."""
    _run_bench_tool(session, "scaling", "--out", "bench-results/")


@nox.session(python=PYTHON)
def steps(session: nox.Session) -> None:
    """Task steps per stream open, by where each step ended (a trio instrument; seconds)."""
    _run_bench_tool(session, "steps")


@nox.session(python=PYTHON)
def floor(session: nox.Session) -> None:
    """What relaying a chunk costs in bare Trio shapes, no HTTP (~1 min; not in CI)."""
    _run_bench_tool(session, "floor")


@nox.session(python=PYTHON)
def profile(session: nox.Session) -> None:
    """py-spy on the Sluice worker under load (default: 1,000 streams)."""
    _run_bench_tool(session, "profile")


@nox.session(python=PYTHON)
def serve(session: nox.Session) -> None:
    """Serve the gateway on 127.0.0.1:8000 (pass `-- --config FILE` etc.)."""
    session.install("-e", ".")
    session.run("sluice", "serve", *session.posargs)
