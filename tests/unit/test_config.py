"""Option parsing: sizes, durations, permissions, binds; one-line errors naming the option."""

from __future__ import annotations

import pytest

from wsgipool.config import (
    BindAddress,
    Config,
    ConfigError,
    PoolConfig,
    parse_bind,
    parse_duration,
    parse_size,
    split_options,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("524288", 524288),
        ("512K", 512 * 1024),
        ("120M", 120 * 1024**2),
        ("1G", 1024**3),
        ("1.5G", int(1.5 * 1024**3)),
        ("64MiB", 64 * 1024**2),
        (" 10 m ", 10 * 1024**2),
        (4096, 4096),
    ],
)
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "", "-1", "12X", "1.2.3M", True, 1.5, None, "1.5"])
def test_bad_sizes(text):
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2", 2.0),
        ("0.5", 0.5),
        ("500ms", 0.5),
        ("30s", 30.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        (7, 7.0),
    ],
)
def test_durations(text, expected):
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text", ["5parsecs", "", "-2", "s", "1d", False, float("nan"), float("inf"), 1e300, "9000h"]
)
def test_bad_durations(text):
    """nan and inf come from TOML files; a timer that long overflows the event loop's."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_unix_socket_perms_are_octal():
    assert Config(unix_socket_perms="660").unix_socket_perms == 0o660
    assert Config(unix_socket_perms="0660").unix_socket_perms == 0o660
    assert Config(unix_socket_perms="0o600").unix_socket_perms == 0o600
    assert Config(unix_socket_perms=0o644).unix_socket_perms == 0o644
    with pytest.raises(ConfigError, match=r"^unix_socket_perms \(--unix-socket-perms\): .*octal"):
        Config(unix_socket_perms="999")


def test_errors_are_one_line_naming_the_option():
    with pytest.raises(ConfigError) as info:
        PoolConfig(max_rss="lots")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("max_rss (--max-rss): invalid size 'lots'")


def test_relations_between_options():
    with pytest.raises(ConfigError, match="max_rss_hard"):
        PoolConfig(max_rss="200M", max_rss_hard="100M")
    with pytest.raises(ConfigError, match="threads"):
        PoolConfig(threads=0)
    with pytest.raises(ConfigError, match="too small"):
        PoolConfig(max_rss="1M")
    assert PoolConfig(max_lifetime="1h").lifetime_jitter == pytest.approx(360.0)
    assert PoolConfig(max_lifetime="1h", max_lifetime_jitter="5m").lifetime_jitter == 300.0


def test_each_negative_count_names_its_own_option():
    with pytest.raises(ConfigError, match=r"^max_requests_jitter \(--max-requests-jitter\): "):
        PoolConfig(max_requests_jitter=-1)
    with pytest.raises(ConfigError, match=r"^max_requests \(--max-requests\): "):
        PoolConfig(max_requests=-1)
    with pytest.raises(ConfigError, match=r"^backlog \(--backlog\): must be from 1 to 65535"):
        Config(backlog=10**20)
    for name in ("group", "unix_socket_group"):
        owner = PoolConfig if name == "group" else Config
        with pytest.raises(ConfigError, match="out of range"):
            owner(**{name: "99999999999999999999"})


def test_timeout_zero_is_off_as_in_gunicorn():
    """Cloud Run's documented line is `gunicorn ... --threads 8 --timeout 0`."""
    for value in (0, "0", "0s", None, "none"):
        assert PoolConfig(timeout=value).timeout is None, value
    assert PoolConfig(workers=0, timeout="0").process_only_options() == []
    assert PoolConfig(timeout="30").timeout == 30.0


def test_process_only_options_are_reported():
    assert PoolConfig(workers=0).process_only_options() == []
    assert PoolConfig(workers=0, max_rss="64M", timeout="5s").process_only_options() == [
        "max_rss",
        "timeout",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8000", BindAddress("tcp", host="127.0.0.1", port=8000)),
        ("[::1]:8000", BindAddress("tcp", host="::1", port=8000)),
        (":8000", BindAddress("tcp", host=None, port=8000)),
        ("8000", BindAddress("tcp", host=None, port=8000)),
        ("unix:/run/app.sock", BindAddress("unix", path="/run/app.sock")),
        ("fd://3", BindAddress("fd", fd=3)),
    ],
)
def test_binds(text, expected):
    assert parse_bind(text) == expected


@pytest.mark.parametrize("text", ["unix:", "fd://x", "host:port", "127.0.0.1:99999", "::1:80"])
def test_bad_binds(text):
    with pytest.raises(ValueError):
        parse_bind(text)


def test_binds_from_aiohttp_wsgi_options():
    assert Config().binds() == (BindAddress("tcp", host=None, port=8080),)
    assert Config(host="127.0.0.1", port=9000).binds() == (BindAddress("tcp", "127.0.0.1", 9000),)
    assert Config(unix_socket="/tmp/s").binds() == (BindAddress("unix", path="/tmp/s"),)
    assert Config(bind=["127.0.0.1:1", "unix:/tmp/x"], port=5).binds()[1].kind == "unix"


def test_script_name_is_normalised():
    assert Config(script_name="/foo/").script_name == "/foo"
    assert Config(script_name="/").script_name == ""
    with pytest.raises(ConfigError, match="script_name"):
        Config(script_name="foo")


def test_forwarded_allow_ips():
    assert Config(forwarded_allow_ips="10.0.0.1, 192.168.0.0/16").forwarded_allow_ips == (
        "10.0.0.1",
        "192.168.0.0/16",
    )
    assert Config(forwarded_allow_ips="*").forwarded_allow_ips == ("*",)
    with pytest.raises(ConfigError, match="not an IP address"):
        Config(forwarded_allow_ips="example.com")


def test_static_needs_existing_directory(tmp_path):
    assert Config(static=[f"/static={tmp_path}"]).static == (("/static", str(tmp_path)),)
    assert Config(static=[("/s/", str(tmp_path))]).static == (("/s", str(tmp_path)),)
    with pytest.raises(ConfigError, match="does not exist"):
        Config(static=[f"/static={tmp_path / 'missing'}"])


def test_split_options_sorts_keywords():
    server, pool, rest = split_options({"port": 1, "workers": 2, "stderr": None, "max_rss": "64M"})
    assert server == {"port": 1}
    assert pool == {"workers": 2, "max_rss": "64M"}
    assert rest == {"stderr": None}


def test_hooks_are_module_colon_function_and_preload_is_off_by_default():
    pool = PoolConfig(post_fork="myproject.hooks:post_fork", worker_exit=None)
    assert pool.post_fork == "myproject.hooks:post_fork" and pool.preload is False
    for bad in ("myproject.hooks", "hooks:", ":f", "a b:c", "m:f()"):
        with pytest.raises(ConfigError, match=r"^post_fork \(--post-fork\): expected MODULE:"):
            PoolConfig(post_fork=bad)
    assert PoolConfig(workers=0, post_fork="m:f").process_only_options() == ["post_fork"]
    assert PoolConfig(preload="yes").preload is True


def test_switches_have_a_no_form_on_the_command_line():
    from wsgipool.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["serve", "m:a", "--preload"]).preload is True
    assert parser.parse_args(["serve", "m:a", "--no-preload"]).preload is False
    assert "preload" not in vars(parser.parse_args(["serve", "m:a"]))  # the declared default


def test_gunicorns_flags_are_the_same_options():
    from wsgipool.cli import build_parser

    parser = build_parser()
    pairs = [
        ("-w", "--workers", "3"),
        ("-b", "--bind", "127.0.0.1:9"),
        ("-t", "--timeout", "30s"),
        ("-p", "--pid", "run.pid"),
        ("-u", "--user", "nobody"),
        ("-g", "--group", "nogroup"),
        ("--keep-alive", "--keepalive-timeout", "5"),
        ("--access-logformat", "--access-log-format", "%(h)s %(r)s"),
        ("--log-file", "--error-logfile", "-"),
        ("--ciphers", "--ssl-ciphers", "ECDHE+AESGCM"),
        ("--limit-request-field_size", "--limit-request-field-size", "4096"),
    ]
    theirs = parser.parse_args(["serve", "m:a", *[x for g, _, v in pairs for x in (g, v)]])
    ours = parser.parse_args(["serve", "m:a", *[x for _, o, v in pairs for x in (o, v)]])
    assert vars(theirs) == vars(ours)
    assert (theirs.workers, theirs.bind, theirs.keepalive_timeout) == ("3", ["127.0.0.1:9"], "5")


def test_send_and_body_deadlines():
    config = Config()
    assert (config.send_timeout, config.body_timeout) == (60.0, 60.0)
    assert Config(send_timeout="none", body_timeout="2m").send_timeout is None
    assert Config(body_timeout="2m").body_timeout == 120.0
    for name in ("send_timeout", "body_timeout"):
        with pytest.raises(ConfigError) as caught:
            Config(**{name: 0})
        message = str(caught.value)
        assert "\n" not in message and f"--{name.replace('_', '-')}" in message
        assert "none disables" in message
