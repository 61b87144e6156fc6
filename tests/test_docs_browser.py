"""/docs and /redoc as ops open them: a real headless Chromium against `serve` on a real socket, with every
host name but 127.0.0.1 unresolvable, so a page that needed a CDN would render nothing."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import cli_env
from tests.served import serve

pytestmark = pytest.mark.slow  # `serve` as a process, and a browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":  # CI installs it (.ci/run): its absence there is a failure
            pytest.fail("chromium is not installed (.ci/run installs it: apt-get install chromium)")
        pytest.skip("chromium is not installed: apt-get install -y chromium (CI installs it)")
    return CHROMIUM


def rendered(chromium: str, url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran, with no name resolving but the gate's address."""
    done = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",  # tests run as root in CI; the sandbox refuses root
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--virtual-time-budget=20000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_docs_render_the_operations_without_any_cdn(
    chromium: str, emptied_afterwards: str, tmp_path: Path
) -> None:
    env = cli_env(DATABASE_URL=emptied_afterwards)
    with serve(env, tmp_path / "serve.log", "--no-migrate") as gate:
        base = str(gate.http.base_url).rstrip("/")
        page = gate.http.get("/docs").text
        assets = re.findall(r'(?:src|href)="([^"]+)"', page)
        assert assets, page
        assert all(a.startswith("/") for a in assets), assets  # served by the gate itself
        for asset in assets:
            assert gate.http.get(asset).status_code == 200, asset

        dom = rendered(chromium, f"{base}/docs", tmp_path / "chromium")
        assert 'class="swagger-ui' in dom, dom[:2000]
        operations = re.findall(r'opblock-summary-method">(\w+)</span>.*?data-path="([^"]+)"', dom)
        assert ("POST", "/v1/messages") in operations, operations
        assert ("GET", "/v1/windows/{phone_number_id}/{customer}") in operations, operations
        assert "btn authorize" in dom, "no Authorize button: the bearer scheme is missing"

        redoc = rendered(chromium, f"{base}/redoc", tmp_path / "chromium")
        assert 'data-section-id="operation/send_message_v1_messages_post"' in redoc, redoc[:2000]
