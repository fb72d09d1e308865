"""Finding the app from MODULE:ATTR, and one-line errors when it cannot be found."""

from __future__ import annotations

import sys
import textwrap

import pytest

from wsgipool.loader import AppImportError, find_import_name, load_app


@pytest.fixture
def modules(tmp_path, monkeypatch):
    """Write modules into a temporary directory on sys.path."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def write(name: str, source: str) -> None:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        written.append(name)

    yield write
    for name in written:
        sys.modules.pop(name, None)


def test_module_and_attribute(modules):
    modules("loader_a", "def app(environ, start_response): return []\napplication = app\n")
    assert load_app("loader_a:app").__name__ == "app"
    assert load_app("loader_a").__name__ == "app"  # ATTR defaults to 'application'


def test_factory_call_with_literal_arguments(modules):
    modules(
        "loader_b",
        """
        def create_app(name="x", debug=False):
            def app(environ, start_response):
                return [name.encode()]
            app.settings = (name, debug)
            return app
        """,
    )
    assert load_app("loader_b:create_app()").settings == ("x", False)
    assert load_app("loader_b:create_app('prod', debug=True)").settings == ("prod", True)
    with pytest.raises(AppImportError, match="only literal arguments"):
        load_app("loader_b:create_app(os.environ)")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("loader_missing:app", "no module named 'loader_missing'"),
        ("loader_c:nope", "has no attribute 'nope'"),
        ("loader_c:VALUE", "is an int, not a WSGI callable"),
        (":app", "is not MODULE:ATTR"),
        ("loader_c:1+1", "is not an attribute name or call"),
    ],
)
def test_errors_are_one_line(modules, spec, message):
    modules("loader_c", "VALUE = 3\n")
    with pytest.raises(AppImportError) as info:
        load_app(spec)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_import_error_inside_the_app_names_the_place(modules):
    modules("loader_d", "import not_installed_anywhere\n")
    with pytest.raises(AppImportError) as info:
        load_app("loader_d:app")
    assert "ModuleNotFoundError" in str(info.value) or "not_installed_anywhere" in str(info.value)


def test_syntax_error_names_file_and_line(modules):
    modules("loader_e", "def app(:\n")
    with pytest.raises(AppImportError, match=r"SyntaxError: .*loader_e\.py, line 1"):
        load_app("loader_e:app")


def test_exception_at_import_is_reported(modules):
    modules("loader_f", "raise RuntimeError('no database')\n")
    with pytest.raises(AppImportError, match=r"RuntimeError: no database \(at .*loader_f\.py:1\)"):
        load_app("loader_f:app")


def test_find_import_name(modules):
    modules(
        "loader_g",
        "class App:\n    def __call__(self, e, s): return []\n"
        "app = App()\ndef fn(e, s): return []\n",
    )
    module = __import__("loader_g")
    assert find_import_name(module.fn) == "loader_g:fn"
    assert find_import_name(module.app) == "loader_g:app"

    def local(environ, start_response):
        return []

    assert find_import_name(local) is None
