"""Secrets out of everything tidelog records: manifests, MLflow, errors, logs.

Applied where a value is recorded (the manifest writer, MLflow tags, error messages that
name a URL or DSN, log lines), and again where old records are read back, since a
manifest or run written by an earlier tidelog may still hold a secret.

Forms handled (docs/security.md):

- libpq key/value DSNs: `password` and `sslpassword`, plain or single-quoted (with `\\'`
  and `\\\\` escapes), with or without spaces around `=`;
- URLs of any scheme (postgresql://, http(s)://, s3://, ...): the password of the
  userinfo (`user:PW@`); for non-database schemes a userinfo without a colon is a token
  (`https://TOKEN@host`) and is replaced whole; query parameters whose name says secret
  (password, sslpassword, token, access_token, api_key, secret, signature, sig,
  credential, auth, ...);
- free text (an exception's message, a traceback): every URL, every
  `password=...` / `sslpassword=...` pair and every JSON member named like a password,
  secret or token in it.

The replacement is `***`, so what was hidden stays visible as hidden.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus, urlsplit

__all__ = ["MASK", "redact_dsn", "redact_url", "redact_text", "redact_mapping",
           "install_log_redaction"]

MASK = "***"

# Schemes whose userinfo user name is an account name, not a credential.
_ACCOUNT_SCHEMES = frozenset({"postgresql", "postgres", "mysql", "mongodb", "redis",
                              "amqp", "kafka", "sqlite"})
_SECRET_KEYS = frozenset({"password", "sslpassword"})
# A query parameter is secret when its name contains one of these words.
_SECRET_PARAM = re.compile(
    r"pass|pwd|secret|token|api[-_]?key|apikey|access[-_]?key|private|credential|"
    r"signature|^sig$|auth|session|^key$|^code$", re.IGNORECASE)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
# libpq key/value pair: key = value, value plain or '...' with \' and \\ escapes.
_KV = re.compile(r"""(?P<key>\b[A-Za-z_]+)\s*=\s*(?P<value>'(?:[^'\\]|\\.)*'?|[^\s'"]*)""")


def _redact_kv(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        if match["key"].lower() not in _SECRET_KEYS:
            return match[0]
        return f"{match['key']}={MASK}"

    return _KV.sub(one, text)


_PAIR = re.compile(r"(?P<lead>^|[&;])(?P<key>[^=&;#]+)=(?P<value>[^&;#]*)")


def _redact_query(query: str) -> str:
    """Mask the values of secret-named parameters, leaving the rest byte for byte."""
    def one(match: re.Match[str]) -> str:
        if not _SECRET_PARAM.search(unquote_plus(match["key"])):
            return match[0]
        return f"{match['lead']}{match['key']}={MASK}"

    return _PAIR.sub(one, query)


def redact_url(url: str) -> str:
    """`url` with the userinfo password (or token) and secret query parameters masked."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _redact_kv(url)
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or ("@" not in parts.netloc and "@" in rest
                         and ":" in parts.netloc
                         and not parts.netloc.rsplit(":", 1)[1].isdigit()):
        # An unencoded '/', '?' or '#' in the password ended the authority early (or it
        # does not parse): everything up to the last '@' is userinfo.
        before, at, after = rest.rpartition("@")
        if not at:
            return _redact_kv(url)
        return f"{scheme}://{before.split(':', 1)[0]}:{MASK}@" + \
            redact_url(f"{scheme}://{after}")[len(scheme) + 3:]
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        if colon:
            userinfo = f"{user}:{MASK}"
        elif parts.scheme.lower() not in _ACCOUNT_SCHEMES:
            userinfo = MASK  # https://TOKEN@host: a user name alone is a credential here
        netloc = f"{userinfo}@{host}"
    text = f"{scheme}://{netloc}{parts.path}"  # urlunsplit would drop an empty netloc
    if parts.query or "?" in rest:
        text += f"?{_redact_query(parts.query)}"
    if parts.fragment or "#" in rest:
        text += f"#{_redact_query(parts.fragment)}"
    return text


def redact_dsn(dsn: str) -> str:
    """A Postgres connection string (URL or libpq key/value) with its secrets masked."""
    if "://" in dsn.split("=", 1)[0]:
        return redact_url(dsn.strip())
    return _redact_kv(dsn)


# A JSON member whose name says password, as Kafka Connect echoes connector configs
# (`"database.password": "..."`).
_JSON_SECRET = re.compile(r'(?P<key>"[^"]*(?:password|secret|token)[^"]*"\s*:\s*)"(?:[^"\\]|\\.)*"',
                          re.IGNORECASE)


def redact_text(text: str) -> str:
    """Free text (a message, a traceback) with every URL and secret pair in it masked."""
    if not text:
        return text
    text = _JSON_SECRET.sub(lambda m: f'{m["key"]}"{MASK}"', text)
    return _redact_kv(_URL.sub(lambda m: redact_url(m[0]), text))


def redact_mapping(values: Mapping[str, Any]) -> dict[str, Any]:
    """A shallow copy with every string value passed through `redact_text`."""
    return {k: redact_text(v) if isinstance(v, str) else v for k, v in values.items()}


_installed = False


def install_log_redaction() -> None:
    """Redact every log record of this process as it is created: the formatted message
    and the traceback text (a third-party exception may quote a URL with credentials)."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        # Arguments are redacted one by one, so formatters that unpack them (uvicorn's
        # access log) keep working.
        if isinstance(record.msg, str):
            record.msg = redact_text(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact_text(a) if isinstance(a, str) else
                                redact_text(str(a)) if isinstance(a, BaseException) else a
                                for a in record.args)
        elif isinstance(record.args, Mapping):
            record.args = redact_mapping(record.args)
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact_text(
                "".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
