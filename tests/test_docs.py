"""docs/: the documents a clone carries, kept honest against the code they describe."""

import re
from pathlib import Path

from window_gate import errors
from window_gate.app import create_app
from window_gate.config import load_settings
from window_gate.graph.reactions import REACTIONS, RETRY_AFTER_SECONDS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _subclasses(cls: type[errors.GateError]) -> set[type[errors.GateError]]:
    found = set(cls.__subclasses__())
    return found | {sub for child in found for sub in _subclasses(child)}


def test_errors_md_explains_every_code_with_its_status() -> None:
    create_app(load_settings(sandbox=True))  # imports every feature, so their own GateErrors exist
    text = (DOCS / "errors.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", text, re.MULTILINE))
    classes: set[type[errors.GateError]] = {errors.GateError, *_subclasses(errors.GateError)}
    codes = {cls.code: cls.status for cls in classes}
    codes |= {"not_found": 404, "method_not_allowed": 405}  # rendered from Starlette's HTTP errors
    assert {code: int(rows[code]) for code in codes if code in rows} == codes
    assert not set(codes) - set(rows), f"codes missing from docs/errors.md: {set(codes) - set(rows)}"


def test_errors_md_maps_every_meta_code_the_gate_knows() -> None:
    table = (DOCS / "errors.md").read_text().split("## Meta's error codes", 1)[1]
    named = {int(n) for n in re.findall(r"\b(\d{1,6})\b(?=[^|]*\|[^|]*`)", table)}
    missing = set(REACTIONS) - named
    assert not missing, f"Meta codes of graph/reactions.py missing from docs/errors.md: {sorted(missing)}"
    for code, seconds in RETRY_AFTER_SECONDS.items():
        assert f"{seconds} s" in table, (code, seconds)


def test_docs_links_resolve_inside_the_repository() -> None:
    """A clone has no ../shared: every relative link of the README and docs/ names a file it carries."""
    broken = []
    for doc in [ROOT / "README.md", *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\((?!https?://|#|mailto:)([^)#\s]+)", doc.read_text()):
            if not (doc.parent / target).resolve().is_relative_to(ROOT) or not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} → {target}")
    assert not broken, broken


def test_code_cites_only_documents_the_repository_carries() -> None:
    """Code and docs cite docs/, never the design or platform notes the project was built from (a clone has none)."""
    outside = re.compile(r"whatsapp-platform\.md|DESIGN\.md|STYLE\.md|\.\./shared")
    cited = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in [
            ROOT / "README.md",
            *(p for d in ("src", "tests", "bench", "migrations", "docs") for p in (ROOT / d).rglob("*")),
        ]
        if path.suffix in {".py", ".md", ".csv", ".lua"} and path.is_file()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if outside.search(line) and path != Path(__file__)
    ]
    assert not cited, cited
