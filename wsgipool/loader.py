"""Find a WSGI application from "module:attr", the way gunicorn users write it.

Used in the main process (``--workers 0``), in the template process with
--preload, and in each worker (after a check in a child of the template)
without.  Failures become `AppImportError` with a one-line message, because
the CLI prints exactly that and exits 2.
"""

from __future__ import annotations

import ast
import importlib
import sys
import traceback
from collections.abc import Callable
from typing import Any

__all__ = ["AppImportError", "find_import_name", "load_app"]


class AppImportError(Exception):
    """The app could not be imported or is not a WSGI callable."""


def load_app(spec: str) -> Callable[..., Any]:
    """Import ``module:attr`` (``attr`` defaults to ``application``).

    ``attr`` may be a dotted path and may end in a call with literal arguments,
    ``module:create_app()`` or ``module:create_app("prod")``, for app factories.
    """
    module_name, _, target = spec.partition(":")
    module_name = module_name.strip()
    target = target.strip() or "application"
    if not module_name:
        raise AppImportError(f"{spec!r} is not MODULE:ATTR, like myproject.wsgi:application")
    try:
        expr = ast.parse(target, mode="eval").body
    except SyntaxError:
        raise AppImportError(f"{target!r} in {spec!r} is not an attribute name or call") from None
    call_args: tuple[Any, ...] | None = None
    call_kwargs: dict[str, Any] = {}
    if isinstance(expr, ast.Call):
        try:
            call_args = tuple(ast.literal_eval(arg) for arg in expr.args)
            call_kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in expr.keywords if kw.arg}
        except ValueError:
            raise AppImportError(f"only literal arguments are allowed in {target!r}") from None
        expr = expr.func
    path = _dotted(expr)
    if path is None:
        raise AppImportError(f"{target!r} in {spec!r} is not an attribute name or call")

    module = _import(module_name, spec)
    obj: Any = module
    for part in path:
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppImportError(
                f"module {module_name!r} has no attribute {'.'.join(path)!r}"
            ) from None
    if call_args is not None:
        try:
            obj = obj(*call_args, **call_kwargs)
        except Exception as exc:
            raise AppImportError(f"calling {target} failed: {one_line(exc)}") from None
    if not callable(obj):
        kind = type(obj).__name__
        article = "an" if kind[:1].lower() in "aeiou" else "a"
        raise AppImportError(f"{spec!r} is {article} {kind}, not a WSGI callable")
    return obj  # type: ignore[no-any-return]


def find_import_name(app: object) -> str | None:
    """The "module:qualname" under which `app` can be imported again, if there is one."""
    module_name = getattr(app, "__module__", None)
    qualname = getattr(app, "__qualname__", None) or getattr(app, "__name__", None)
    candidates: list[tuple[str, str]] = []
    if module_name and qualname and "<" not in qualname:
        candidates.append((module_name, qualname))
    # An instance (a Flask or Django app object) is found by scanning its module.
    if module_name is None or qualname is None or not _is_function_like(app):
        owner = getattr(type(app), "__module__", None)
        if owner:
            candidates.extend(_scan_modules(app))
    for mod, name in candidates:
        if mod in ("__main__", "__mp_main__", "builtins"):
            continue
        module = sys.modules.get(mod)
        if module is None:
            continue
        obj: Any = module
        try:
            for part in name.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if obj is app:
            return f"{mod}:{name}"
    return None


def _scan_modules(app: object) -> list[tuple[str, str]]:
    found = []
    for mod_name, module in list(sys.modules.items()):
        if module is None or mod_name in ("__main__", "__mp_main__"):
            continue
        try:
            namespace = vars(module)
        except TypeError:
            continue
        for key, value in list(namespace.items()):
            if value is app and not key.startswith("_"):
                found.append((mod_name, key))
    return found


def _is_function_like(obj: object) -> bool:
    return hasattr(obj, "__code__") or isinstance(obj, type) or hasattr(obj, "__func__")


def _dotted(node: ast.expr) -> list[str] | None:
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return None if head is None else [*head, node.attr]
    return None


def _import(module_name: str, spec: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise AppImportError(
                f"cannot import {spec!r}: no module named {exc.name!r} "
                f"(searched the current directory and sys.path)"
            ) from None
        raise AppImportError(f"cannot import {spec!r}: {one_line(exc)}") from None
    except SyntaxError as exc:
        where = f"{exc.filename}, line {exc.lineno}" if exc.filename else "unknown place"
        raise AppImportError(f"cannot import {spec!r}: SyntaxError: {exc.msg} ({where})") from None
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise AppImportError(f"cannot import {spec!r}: {one_line(exc)}") from None


def one_line(exc: BaseException) -> str:
    """The exception and where it was raised, on one line."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    if frames:
        last = frames[-1]
        where = f" (at {last.filename}:{last.lineno})"
    text = str(exc).strip().replace("\n", " ")
    name = type(exc).__name__
    return f"{name}: {text}{where}" if text else f"{name}{where}"
