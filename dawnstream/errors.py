"""Exceptions that carry what the user should do next."""

from __future__ import annotations


class DawnstreamError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(DawnstreamError):
    """A topology or CLI setting is wrong.

    Args:
        path: dotted key path of the offending setting, e.g. ``stages.1.params.expr``.
        message: what was expected and what was found.
    """

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class DecodeError(DawnstreamError):
    """A message could not be turned into rows; the text becomes the ``dlq.error`` header."""


class BrokerError(DawnstreamError):
    """The local Kafka broker could not be installed, started or reached."""
