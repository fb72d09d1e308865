"""docs/deployment.md shows the files in deploy/ exactly as the tests run them."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
DOC = ROOT / "docs" / "deployment.md"
INCLUDE = re.compile(r"<!-- file: (\S+) -->\n```[a-z]*\n(.*?)```\n", re.DOTALL)


def test_every_deploy_file_is_shown_as_it_is() -> None:
    shown = dict(INCLUDE.findall(DOC.read_text()))
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "deploy").rglob("*") if p.is_file())
    assert sorted(shown) == files, "docs/deployment.md must show every file of deploy/"
    for name, text in shown.items():
        assert text == (ROOT / name).read_text(), (
            f"docs/deployment.md shows an old {name}: paste the file between the markers"
        )


def test_docs_index_links_deployment() -> None:
    assert "docs/deployment.md" in (ROOT / "README.md").read_text()
