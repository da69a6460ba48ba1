"""Errors raised by the replay at its API edge.

Redis exceptions never leave :mod:`fleetloop.replay`: the client translates them into
:class:`ReplayTimeoutError` or :class:`ReplayUnavailableError`, carrying the server URL.
"""


class ReplayError(Exception):
    """Base class of every replay error."""


class ReplayUnavailableError(ReplayError):
    """The replay server cannot be reached (refused, reset, unknown host, bad auth)."""


class ReplayTimeoutError(ReplayError, TimeoutError):
    """A replay call did not complete within the socket timeout."""


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
