"""TLS for the listeners: one server `ssl.SSLContext` built from the options.

The context is built once, in the main process, before any socket is bound, so
a missing or unreadable certificate is a one-line configuration error at start
rather than a failed handshake later.  Workers never see TLS: the main process
terminates it, which is also why the worker's direct write to the client socket
is declined on TLS connections and why ``wsgi.file_wrapper`` falls back from
sendfile(2) to chunked reads there (see response.py).
"""

from __future__ import annotations

import logging
import ssl

from wsgipool.config import Config, ConfigError, describe

__all__ = ["Certificates", "server_context"]

logger = logging.getLogger("wsgipool.tls")

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def server_context(config: Config) -> ssl.SSLContext | None:
    """The context for --certfile & co., or None when the server speaks plain HTTP."""
    if config.certfile is None:
        return None
    for name in ("certfile", "keyfile", "ca_certs"):
        path = getattr(config, name)
        if path is not None:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise ConfigError(f"{describe(name)}: cannot read {path}: {exc.strerror}") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[config.ssl_min_version]
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(config.certfile, config.keyfile, password=_no_password)
    except _EncryptedKey:
        raise ConfigError(
            f"{describe('keyfile')}: the private key is encrypted; give an unencrypted key"
        ) from None
    except ssl.SSLError as exc:
        files = " and ".join(p for p in (config.certfile, config.keyfile) if p)
        raise ConfigError(
            f"{describe('certfile')}: {files}: not a PEM certificate with its private key "
            f"({exc.reason or 'unreadable'})"
        ) from None
    if config.ca_certs is not None:
        try:
            context.load_verify_locations(cafile=config.ca_certs)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"{describe('ca_certs')}: {config.ca_certs}: no PEM certificate in it "
                f"({exc.reason or 'unreadable'})"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    if config.ssl_ciphers is not None:
        try:
            context.set_ciphers(config.ssl_ciphers)
        except ssl.SSLError:
            raise ConfigError(
                f"{describe('ssl_ciphers')}: no cipher matches {config.ssl_ciphers!r}"
            ) from None
    logger.debug("TLS from %s (minimum %s)", config.certfile, config.ssl_min_version)
    return context


class Certificates:
    """The listeners' TLS context, whose certificate SIGHUP can renew without a restart.

    aiohttp's sites keep the context they were started with, so a renewed
    certificate (certbot, cert-manager) goes into a new context built from the same
    options, and the first context's SNI callback, which OpenSSL calls for every
    ClientHello, with or without a server name, moves each new handshake to it.
    Connections already open keep the certificate they were made with.
    """

    def __init__(self, config: Config, context: ssl.SSLContext) -> None:
        self._config = config
        self.context = context
        self._current = context
        context.sni_callback = self._choose

    def _choose(self, connection: ssl.SSLObject, _name: str | None, first: ssl.SSLContext) -> None:
        current = self._current
        if current is not first:
            connection.context = current

    def reload(self) -> str | None:
        """Build a context from the files again; the error, or None once it serves."""
        try:
            context = server_context(self._config)
        except ConfigError as exc:
            return str(exc)
        if context is not None:
            self._current = context
        return None


class _EncryptedKey(Exception):
    pass


def _no_password() -> bytes:
    """Called only for an encrypted key: a server must not stop to ask for a passphrase."""
    raise _EncryptedKey
