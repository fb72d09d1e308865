"""Configuration sources: defaults < file < environment < command line; errors name the source."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from wsgipool.config import ConfigError, env_name, option_fields
from wsgipool.sources import collect, find_config_file, read_config_file


def settings(tmp_path: Path, *, file: str | None = None, env=None, cli=None, pyproject=False):
    if file is not None:
        (tmp_path / ("pyproject.toml" if pyproject else "wsgipool.toml")).write_text(file)
    return collect(command_line=cli or {}, environ=env or {}, cwd=tmp_path, cli=True).build()


def error(tmp_path: Path, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        settings(tmp_path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_of_the_command(tmp_path):
    s = settings(tmp_path)
    assert (s.config.host, s.config.port) == ("127.0.0.1", 8000)
    assert s.sources["port"] == "default (CLI)"
    assert s.sources["workers"].startswith("default: ")


def test_precedence_file_env_cli(tmp_path):
    file = "workers = 3\nthreads = 5\nmax-rss = '300M'\ntimeout = 9\n"
    env = {"WSGIPOOL_THREADS": "6", "WSGIPOOL_TIMEOUT": "8s"}
    s = settings(tmp_path, file=file, env=env, cli={"timeout": "7"})
    assert (s.pool.workers, s.pool.threads, s.pool.max_rss, s.pool.timeout) == (
        3,
        6,
        300 << 20,
        7.0,
    )
    assert s.sources["workers"] == "wsgipool.toml:1" or s.sources["workers"].endswith(
        "wsgipool.toml:1"
    )
    assert s.sources["max_rss"].endswith("wsgipool.toml:3")
    assert s.sources["threads"] == "WSGIPOOL_THREADS"
    assert s.sources["timeout"] == "--timeout"


def test_pyproject_table(tmp_path):
    file = '[project]\nname = "x"\n\n[tool.wsgipool]\nworkers = 2\nbind = "unix:/tmp/x.sock"\n'
    s = settings(tmp_path, file=file, pyproject=True)
    assert s.pool.workers == 2
    assert s.config.bind == ("unix:/tmp/x.sock",)
    assert s.sources["workers"].endswith("pyproject.toml:5")


def test_pyproject_without_our_table_is_ignored(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert find_config_file(tmp_path, {}) is None


def test_wsgipool_toml_is_preferred_and_config_env_names_a_file(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.wsgipool]\nworkers = 2\n")
    (tmp_path / "wsgipool.toml").write_text("workers = 3\n")
    assert settings(tmp_path).pool.workers == 3
    other = tmp_path / "other.toml"
    other.write_text("workers = 4\n")
    assert settings(tmp_path, env={"WSGIPOOL_CONFIG": str(other)}).pool.workers == 4


def test_unknown_file_key_names_file_and_line(tmp_path):
    message = error(tmp_path, file="workers = 2\n\nwrokers = 3\n")
    assert message.endswith("wsgipool.toml:3: wrokers: unknown option; did you mean workers?")


@pytest.mark.parametrize(
    ("key", "said"),
    [
        ("accesslog", "gunicorn's accesslog is access_logfile here"),
        ("preload_app", "gunicorn's preload_app is preload here"),
        ("worker_class", "it is gunicorn's: wsgipool has one kind of worker"),
        ("nothing_like_it", ""),
    ],
)
def test_gunicorn_setting_names_in_the_file_say_ours(tmp_path, key, said):
    message = error(tmp_path, file=f"{key} = '1'\n")
    head = f"wsgipool.toml:1: {key}: unknown option"
    if said:
        assert f"{head}; {said}" in message, message
    else:
        assert message.endswith(head), message


def test_gunicorn_settings_name_real_options():
    from wsgipool.sources import GUNICORN_SETTINGS, _specs

    assert set(GUNICORN_SETTINGS.values()) <= set(_specs())
    assert not set(GUNICORN_SETTINGS) & set(_specs())


def test_bad_file_value_names_file_and_line(tmp_path):
    message = error(tmp_path, file="# comment\nworkers = 'many'\n")
    assert message.endswith("wsgipool.toml:2: workers: expected a whole number, got 'many'")


def test_toml_syntax_error(tmp_path):
    message = error(tmp_path, file="workers = = 2\n")
    assert "wsgipool.toml" in message and "line 1" in message


def test_key_with_dashes_and_underscores_twice(tmp_path):
    assert "set twice" in error(tmp_path, file="max_rss = '1G'\nmax-rss = '1G'\n")


def test_bad_env_value_names_the_variable(tmp_path):
    assert error(tmp_path, env={"WSGIPOOL_WORKERS": "x"}) == (
        "WSGIPOOL_WORKERS: expected a whole number, got 'x'"
    )
    assert error(tmp_path, env={"WEB_CONCURRENCY": "-"}).startswith("WEB_CONCURRENCY: ")


def test_unknown_wsgipool_variable(tmp_path):
    assert error(tmp_path, env={"WSGIPOOL_WROKERS": "2"}) == (
        "WSGIPOOL_WROKERS: unknown wsgipool option; did you mean WSGIPOOL_WORKERS?"
    )
    assert error(tmp_path, env={"WSGIPOOL_LOGLEVEL": "debug"}) == (
        "WSGIPOOL_LOGLEVEL: unknown wsgipool option; gunicorn's loglevel is WSGIPOOL_LOG_LEVEL here"
    )
    assert error(tmp_path, env={"WSGIPOOL_ZZZ": "1"}) == "WSGIPOOL_ZZZ: unknown wsgipool option"


def test_bad_cli_value_names_the_flag(tmp_path):
    assert error(tmp_path, cli={"workers": "x"}) == "--workers: expected a whole number, got 'x'"


def test_check_across_values_names_the_source(tmp_path):
    message = error(tmp_path, file="max_rss = '1G'\nmax_rss_hard = '512M'\n")
    assert message.endswith(
        f"wsgipool.toml:2: max_rss_hard: must not be below max_rss ({512 << 20} < {1 << 30})"
    )
    (tmp_path / "wsgipool.toml").unlink()
    message = error(tmp_path, env={"WSGIPOOL_WORKERS": "0", "WSGIPOOL_RELOAD": "1"})
    assert message.startswith("WSGIPOOL_RELOAD: needs worker processes")


def test_process_only_options_with_threads_are_a_config_error(tmp_path):
    """--check-config says it, not only the start: one line naming the first source."""
    message = error(tmp_path, cli={"workers": "0", "max_rss": "512M", "timeout": "5"})
    assert message == (
        "--max-rss: needs worker processes, as --timeout does; use --workers 1 or more"
    )


@pytest.mark.parametrize("key", ["umask", "unix_socket_perms"])
def test_permissions_as_a_bare_toml_number_are_refused(tmp_path, key):
    """TOML reads 660 as decimal: taken as is, the socket got mode 0o1224."""
    message = error(tmp_path, file=f"{key} = 660\n")
    assert message.endswith(
        f'wsgipool.toml:1: {key}: write permissions in octal, as 0o660 or "660" '
        "(a TOML number is decimal: 660 is 0o1224)"
    )
    (tmp_path / "wsgipool.toml").unlink()
    for written in ("0o660", '"660"', "'0660'"):
        config = settings(tmp_path, file=f"{key} = {written}\n").config
        assert getattr(config, key) == 0o660, written
        (tmp_path / "wsgipool.toml").unlink()


def test_conventional_variables(tmp_path):
    s = settings(tmp_path, env={"PORT": "5000", "WEB_CONCURRENCY": "3", "FORWARDED_ALLOW_IPS": "*"})
    assert (s.config.host, s.config.port, s.pool.workers) == (None, 5000, 3)
    assert s.config.forwarded_allow_ips == ("*",)
    assert s.sources["workers"] == "WEB_CONCURRENCY"
    assert s.sources["host"] == "PORT (all interfaces)"
    # WSGIPOOL_ variables win over the conventions; an explicit host stays.
    s = settings(tmp_path, env={"PORT": "5000", "WSGIPOOL_PORT": "5001", "WSGIPOOL_HOST": "::1"})
    assert (s.config.host, s.config.port) == ("::1", 5001)


def test_repeatable_options_from_env_and_file(tmp_path):
    (tmp_path / "s1").mkdir()
    (tmp_path / "s2").mkdir()
    env = {"WSGIPOOL_BIND": "127.0.0.1:9000, unix:/tmp/a.sock"}
    s = settings(tmp_path, env=env)
    assert s.config.bind == ("127.0.0.1:9000", "unix:/tmp/a.sock")
    file = f'static = ["/a={tmp_path / "s1"}", "/b={tmp_path / "s2"}"]\n'
    s = settings(tmp_path, file=file)
    assert [url for url, _ in s.config.static] == ["/a", "/b"]


def test_switches_from_env_and_file(tmp_path):
    assert settings(tmp_path, env={"WSGIPOOL_ACCESS_LOG": "yes"}).config.access_log is True
    assert settings(tmp_path, file="access_log = true\n").config.access_log is True
    assert "WSGIPOOL_ACCESS_LOG: " in error(tmp_path, env={"WSGIPOOL_ACCESS_LOG": "maybe"})


def test_print_config_round_trips_through_a_file(tmp_path):
    env = {"WSGIPOOL_MAX_RSS": "512M", "WEB_CONCURRENCY": "3", "WSGIPOOL_BIND": "127.0.0.1:1"}
    first = settings(tmp_path, env=env, cli={"timeout": "30s"})
    text = first.render()
    assert "workers = 3  # WEB_CONCURRENCY" in text
    assert "timeout = 30.0  # --timeout" in text
    again = tmp_path / "again"
    again.mkdir()
    (again / "wsgipool.toml").write_text(text)
    second = collect(environ={}, cwd=again, cli=True).build()
    assert second.keywords() == first.keywords()


def test_every_declared_option_from_every_source(tmp_path):
    """No per-option code: each option takes its default back from the file, env and CLI."""
    base = settings(tmp_path)
    for _cls, spec in option_fields():
        name = spec.name
        value = base.value(name)
        if value is None:
            continue
        rendered = base.render()
        line = next(line for line in rendered.splitlines() if line.startswith(f"{name} = "))
        toml_line = line.split("  #")[0]
        (tmp_path / "wsgipool.toml").write_text(toml_line + "\n")
        from_file = collect(environ={}, cwd=tmp_path, cli=True).build()
        assert from_file.value(name) == value, name
        assert from_file.sources[name].endswith("wsgipool.toml:1"), name
        (tmp_path / "wsgipool.toml").unlink()
        shown = tomllib.loads(toml_line)[name]
        if isinstance(shown, bool):
            text = "1" if shown else "0"
        elif isinstance(shown, list):
            text = ",".join(shown)
        else:
            text = str(shown)
        if text or not isinstance(shown, list):
            from_env = collect(environ={env_name(name): text}, cwd=tmp_path, cli=True).build()
            assert from_env.value(name) == value, name
            assert from_env.sources[name] == env_name(name)


def test_read_config_file_missing(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the config file"):
        read_config_file(tmp_path / "nope.toml")


def test_user_checks_name_its_source(tmp_path):
    assert error(tmp_path, env={"WSGIPOOL_USER": "no-such-user-wp"}) == (
        "WSGIPOOL_USER: no such user: 'no-such-user-wp'"
    )
    # A bare uid without a passwd entry would keep root's group: the group must be given.
    message = error(tmp_path, file="user = 3999999\n")
    assert message.endswith(
        "wsgipool.toml:1: user: uid 3999999 has no entry in the user database; give --group too"
    )
    s = settings(tmp_path, env={"WSGIPOOL_GROUP": "0"})
    assert s.pool.group == "0"
