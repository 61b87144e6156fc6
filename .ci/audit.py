"""The verdict on pip-audit's JSON report for `./dev audit`: fail on a known vulnerability, never for want of
a vulnerability service (no network, or an index that does not serve PyPI's JSON API), and say which it was.

pip-audit itself answers "No known vulnerabilities found" and exit 0 when PyPI's JSON API answered 404 for
every package (each is then "skipped"): that is not an audit, and this says so.

Usage: python .ci/audit.py REPORT.json PIP_AUDIT_STDERR  (exit 0: nothing known or nothing audited, 1: a
known vulnerability, 2: pip-audit failed for another reason).
"""

import json
import sys
from pathlib import Path

# What pip-audit's stderr says when no vulnerability service could be reached (requests' errors).
UNREACHABLE = (
    "ConnectionError",
    "NameResolutionError",
    "Max retries exceeded",
    "ConnectTimeout",
    "ReadTimeout",
)


def verdict(report: Path, stderr: Path) -> int:
    if not report.exists() or report.stat().st_size == 0:
        said = stderr.read_text() if stderr.exists() else ""
        if any(word in said for word in UNREACHABLE):
            last = said.strip().splitlines()[-1][:300]
            print(
                f"pip-audit: NOT AUDITED, no vulnerability service could be reached ({last}); not a failure"
            )
            return 0
        print(f"pip-audit failed:\n{said}")
        return 2
    dependencies = json.loads(report.read_text())["dependencies"]
    skipped = [d for d in dependencies if d.get("skip_reason")]
    audited = len(dependencies) - len(skipped)
    found = [(d, v) for d in dependencies for v in d.get("vulns", ())]
    for dependency, vuln in found:
        aliases = ", ".join(vuln.get("aliases", ()))
        fixed = ", ".join(vuln["fix_versions"]) or "no fixed release yet"
        print(
            f"VULNERABLE {dependency['name']} {dependency['version']}: {vuln['id']} ({aliases}); fixed in {fixed}"
        )
    if found:
        packages = len({d["name"] for d, _ in found})
        print(f"pip-audit: {len(found)} known vulnerabilities in {packages} of {audited} packages audited")
        return 1
    if skipped and not audited:
        print(
            f"pip-audit: NOT AUDITED, the vulnerability service answered for none of the {len(dependencies)} "
            f"locked packages (first: {skipped[0]['skip_reason']}); not a failure"
        )
        return 0
    names = ", ".join(d["name"] for d in skipped)
    print(
        f"pip-audit: {audited} locked packages audited, no known vulnerabilities"
        + (f"; {len(skipped)} not audited: {names}" if skipped else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(verdict(Path(sys.argv[1]), Path(sys.argv[2])))
