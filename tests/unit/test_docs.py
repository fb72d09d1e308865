"""The docs follow the code: the option tables are generated from the declarations."""

from __future__ import annotations

from pathlib import Path

from wsgipool.cli import build_parser
from wsgipool.config import option_fields, reference_markdown

ROOT = Path(__file__).parents[2]


def test_configuration_md_matches_the_declarations():
    text = (ROOT / "docs" / "configuration.md").read_text()
    begin = text.index("-->\n", text.index("<!-- BEGIN GENERATED")) + 4
    end = text.index("<!-- END GENERATED -->")
    assert text[begin:end] == reference_markdown(), (
        "docs/configuration.md is stale: regenerate the section between the markers with "
        "python -c 'from wsgipool.config import reference_markdown; print(reference_markdown())'"
    )


def test_every_option_has_a_cli_flag():
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    flags = {flag for action in serve._actions for flag in action.option_strings}
    for _cls, spec in option_fields():
        assert "--" + spec.name.replace("_", "-") in flags


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = ci.strip().splitlines()[-1]
    assert command in readme
