"""`./dev audit`'s verdict (.ci/audit.py) on pip-audit's reports: a known vulnerability fails the build; no
vulnerability service (this machine: PyPI's JSON API answers 404, OSV does not resolve) does not, and says so."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

VERDICT = Path(__file__).parent.parent / ".ci" / "audit.py"
JINJA = {
    "name": "jinja2",
    "version": "3.1.2",
    "vulns": [{"id": "GHSA-h5c8-rqwp-cp95", "fix_versions": ["3.1.3"], "aliases": ["CVE-2024-22195"]}],
}
CLEAN = {"name": "httpx", "version": "0.28.1", "vulns": []}
NOT_FOUND = {
    "name": "anyio",
    "skip_reason": "Dependency not found on PyPI and could not be audited: anyio (4.16.0)",
}


def verdict(tmp_path: Path, report: dict[str, Any] | None, stderr: str = "") -> tuple[int, str]:
    (tmp_path / "stderr").write_text(stderr)
    if report is not None:
        (tmp_path / "report.json").write_text(json.dumps(report))
    done = subprocess.run(
        [sys.executable, VERDICT, tmp_path / "report.json", tmp_path / "stderr"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode, done.stdout


def test_a_known_vulnerability_fails_and_is_named(tmp_path: Path) -> None:
    status, said = verdict(tmp_path, {"dependencies": [CLEAN, JINJA, NOT_FOUND], "fixes": []})
    assert status == 1
    assert "VULNERABLE jinja2 3.1.2: GHSA-h5c8-rqwp-cp95 (CVE-2024-22195); fixed in 3.1.3" in said
    assert "1 known vulnerabilities in 1 of 2 packages audited" in said


def test_no_known_vulnerability_passes(tmp_path: Path) -> None:
    status, said = verdict(tmp_path, {"dependencies": [CLEAN], "fixes": []})
    assert (status, said.strip()) == (0, "pip-audit: 1 locked packages audited, no known vulnerabilities")


@pytest.mark.parametrize(
    ("report", "stderr"),
    [
        ({"dependencies": [NOT_FOUND, NOT_FOUND], "fixes": []}, ""),  # pip-audit itself says "No known …"
        (None, "requests.exceptions.ConnectionError: … Failed to resolve 'api.osv.dev'"),
    ],
    ids=["PyPI answered 404 for every package", "no service resolves"],
)
def test_no_vulnerability_service_passes_saying_nothing_was_audited(
    tmp_path: Path, report: dict[str, Any] | None, stderr: str
) -> None:
    status, said = verdict(tmp_path, report, stderr)
    assert status == 0 and said.startswith("pip-audit: NOT AUDITED"), said


def test_pip_audit_failing_otherwise_fails(tmp_path: Path) -> None:
    status, said = verdict(tmp_path, None, "usage: pip-audit … error: unrecognized arguments: --bogus")
    assert status == 2 and "unrecognized arguments" in said
