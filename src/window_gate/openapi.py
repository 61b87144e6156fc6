"""Write the app's OpenAPI document to openapi.yaml (`--check`: fail when the file has drifted)."""

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from window_gate.app import create_app
from window_gate.config import load_settings

DEFAULT = Path(__file__).resolve().parents[2] / "openapi.yaml"


def document() -> str:
    spec: dict[str, Any] = create_app(load_settings(sandbox=True)).openapi()
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--path", type=Path, default=DEFAULT)
    args = parser.parse_args()
    text = document()
    if args.check:
        if not args.path.exists() or args.path.read_text() != text:
            sys.exit(f"{args.path} is out of date: run `./dev run python -m window_gate.openapi`")
        return
    args.path.write_text(text)


if __name__ == "__main__":
    main()
