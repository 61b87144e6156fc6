"""docs/settings.md: every setting of config.Settings, with its default as the code has it (generated)."""

from pathlib import Path

import pytest

from window_gate import settings_doc
from window_gate.config import Settings

COMMITTED = Path(__file__).resolve().parents[1] / "docs" / "settings.md"


def test_committed_settings_doc_matches_the_settings_model() -> None:
    assert COMMITTED.read_text() == settings_doc.document(), (
        "docs/settings.md drifted: run `./dev run python -m window_gate.settings_doc`"
    )


def test_every_setting_is_a_row() -> None:
    text = COMMITTED.read_text()
    assert all(f"| `{name.upper()}` |" in text for name in Settings.model_fields)


def test_a_setting_without_a_meaning_stops_the_generator() -> None:
    readme = "# x\n\n## Settings\n\n| name | meaning | default |\n|---|---|---|\n\n## Next\n"
    with pytest.raises(SystemExit, match="settings without a meaning"):
        settings_doc.document(readme)
