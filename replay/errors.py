"""Errors raised by the replay at its API edge.

Redis exceptions never leave :mod:`fleetloop.replay`: :func:`translate_errors` turns them
into :class:`ReplayTimeoutError` or :class:`ReplayUnavailableError`, carrying the server URL.
A rate limiter that keeps a call waiting past its timeout raises :class:`RateLimitedError`,
a ReplayTimeoutError, as Reverb turns a rate-limiter timeout into DeadlineExceededError.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import redis


class ReplayError(Exception):
    """Base class of every replay error."""


class ReplayUnavailableError(ReplayError):
    """The replay server cannot be reached (refused, reset, unknown host, bad auth)."""


class ReplayTimeoutError(ReplayError, TimeoutError):
    """A replay call did not complete within the socket timeout."""


class RateLimitedError(ReplayTimeoutError):
    """A table's rate limiter kept an insert or sample waiting past its timeout; the
    message names the table, the limiter's ratio and the insert/sample/size counts."""


class ServerStartError(ReplayError):
    """The embedded Valkey server could not be started (port in use, bad dir, crash)."""


class SchemaMismatchError(ReplayError):
    """The server holds data written with another replay ``SCHEMA_VERSION``."""


class EmptyReplayError(ReplayError):
    """Nothing to sample or summarise: every requested table (or selection) is empty."""


class InvalidEpisodeError(ReplayError, ValueError):
    """An episode failed validation; the message names the field and the problem."""


class PortInUseError(ServerStartError):
    """The embedded server's TCP port is already taken."""


def redact_url(url: str) -> str:
    """Return ``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@contextmanager
def translate_errors(url: str, what: str) -> Iterator[None]:
    """Re-raise Redis errors raised inside the block as replay errors naming ``url``.

    Raises:
        ReplayTimeoutError: the server did not answer within the socket timeout.
        ReplayUnavailableError: connection refused/reset, unknown host, bad credentials, or
            not a Redis server.
        ReplayError: any other Redis error.
    """
    try:
        yield
    except redis.TimeoutError as exc:
        raise ReplayTimeoutError(
            f"replay at {url} did not answer ({what}) within the socket timeout: {exc}; "
            "the server may be overloaded or paused, retry or raise socket_timeout"
        ) from exc
    except redis.ConnectionError as exc:
        raise ReplayUnavailableError(
            f"cannot reach the replay at {url} ({what}): {str(exc).rstrip('.')}. Check that "
            "the Redis/Valkey server is running and the URL and password are right, or leave "
            "the replay URL unset to use the embedded server"
        ) from exc
    except redis.InvalidResponse as exc:
        raise ReplayUnavailableError(
            f"the server at {url} ({what}) does not speak the Redis protocol: {exc}. "
            "Check the host and port of the replay URL"
        ) from exc
    except redis.RedisError as exc:
        raise ReplayError(f"replay at {url} failed ({what}): {exc}") from exc
