"""Issue 9, item 7: whose X-Forwarded-For hop becomes REMOTE_ADDR (pure rules, no server).

The end-to-end cases (a real server, TCP and unix-socket peers) are in
tests/e2e/test_environ.py; these pin the rule itself in milliseconds.
"""

from __future__ import annotations

import pytest

from wsgipool.cgi import TrustedPeers, _client_address
from wsgipool.config import Config, ConfigError


@pytest.mark.parametrize(
    ("allowed", "header", "expected"),
    [
        # '*' trusts the peer, not the hops: the rightmost hop is what our proxy saw.
        (("*",), "6.6.6.6, 203.0.113.7", "203.0.113.7"),
        (("*",), "203.0.113.7", "203.0.113.7"),
        # Listed proxies are skipped from the right, recursively.
        (("10.0.0.0/8",), "6.6.6.6, 203.0.113.7, 10.0.0.2, 10.1.1.1", "203.0.113.7"),
        (("127.0.0.1", "10.0.0.2"), "1.2.3.4, 10.0.0.2", "1.2.3.4"),
        # Every hop one of ours: the furthest one.
        (("10.0.0.0/8",), "10.0.0.3, 10.0.0.2", "10.0.0.3"),
        # Ports and brackets are not part of the address; v6 is normalised.
        (("*",), "[2001:DB8::0001]:4711", "2001:db8::1"),
        (("*",), "192.0.2.9:8080", "192.0.2.9"),
        # Not an address at the right end: the header is not used.
        (("*",), "1.2.3.4, <script>", ""),
        (("*",), "1.2.3.4, unknown", ""),
        (("*",), "", ""),
        (("*",), "1.2.3.4,", ""),
        # An unusable hop behind a trusted one stops the walk too.
        (("10.0.0.0/8",), "evil\r\nX: y, 10.0.0.2", ""),
        # 'unix' trusts unix-socket peers; it names no proxy hop.
        (("unix",), "203.0.113.7, unix", ""),
    ],
)
def test_client_is_the_rightmost_hop_not_ours(allowed, header, expected):
    assert _client_address(header, TrustedPeers(allowed)) == expected


def test_unix_trusts_unix_peers_only():
    trusted = TrustedPeers(("unix",))
    assert "unix" in trusted
    assert "127.0.0.1" not in trusted
    assert "unix" not in TrustedPeers(("127.0.0.1",))


def test_config_accepts_unix_and_rejects_names():
    assert Config(forwarded_allow_ips="unix, 10.0.0.0/8").forwarded_allow_ips == (
        "unix",
        "10.0.0.0/8",
    )
    with pytest.raises(ConfigError, match="'unix' or '\\*'"):
        Config(forwarded_allow_ips="proxy.example")
