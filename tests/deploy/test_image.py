"""The Dockerfile and its .dockerignore."""

import re
from fnmatch import fnmatch

from tests.deploy import GATE_PORT, ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions(name: str) -> list[str]:
    """The arguments of every `name` instruction, continuation lines joined."""
    joined = DOCKERFILE.replace("\\\n", " ")
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.split(None, 1)[:1] == [name]]


def test_every_stage_starts_from_python_3_11_slim_pinned_by_digest() -> None:
    [image] = [arg.split("=", 1)[1] for arg in instructions("ARG") if arg.startswith("PYTHON_IMAGE=")]
    assert re.fullmatch(r"python:3\.11-slim@sha256:[0-9a-f]{64}", image), image
    assert "docker buildx imagetools inspect python:3.11-slim" in DOCKERFILE  # how to refresh it
    stages = instructions("FROM")
    assert len(stages) == 2 and all(stage.startswith("${PYTHON_IMAGE}") for stage in stages), stages


def test_the_healthcheck_asks_readyz_with_explicit_timings() -> None:
    [check] = instructions("HEALTHCHECK")
    for option in ("--interval=", "--timeout=", "--start-period=", "--retries="):
        assert option in check, check
    assert f"http://127.0.0.1:{GATE_PORT}/readyz" in check
    assert instructions("EXPOSE") == [str(GATE_PORT)]


def test_it_runs_as_the_numeric_non_root_user_the_manifests_name() -> None:
    assert instructions("USER") == ["10001"]  # runAsNonRoot can check a number, not a name


def test_the_context_holds_what_the_build_copies_and_nothing_local() -> None:
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def sent(path: str) -> bool:  # Docker's rule: the last pattern that matches a path or a parent wins
        parts = path.split("/")
        verdict = True
        for rule in rules:
            pattern, keep = rule.removeprefix("!").removeprefix("**/"), rule.startswith("!")
            if any(fnmatch(p, pattern) for p in ("/".join(parts[:n]) for n in range(1, len(parts) + 1))) or (
                rule.startswith(("**/", "!**/")) and any(fnmatch(part, pattern) for part in parts)
            ):
                verdict = keep
        return verdict

    copied = [
        source
        for arguments in instructions("COPY")
        if not arguments.startswith("--from")
        for source in arguments.split()[:-1]
    ]
    assert copied and all(sent(source) for source in copied), copied
    assert sent("src/window_gate/cli.py") and sent("migrations/env.py")
    for local in (
        ".venv/bin/python",
        ".tools/bin/uv",
        ".window-gate/pg/PG_VERSION",
        ".git/HEAD",
        "bench/results/run.json",
        "deploy/.env",
        "src/window_gate/__pycache__/cli.cpython-311.pyc",
    ):
        assert not sent(local), local
