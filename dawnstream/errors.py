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


class DataError(DawnstreamError, ValueError):
    """The rows of a batch do not fit an operator (a value it cannot use, a type it cannot handle).

    Operators raise it for bad input; the runner dead-letters the batch's messages with the stage
    name and this text, and keeps running.
    """


DATA_ERRORS: tuple[type[BaseException], ...] = (DataError, ValueError, TypeError, ArithmeticError)
"""Exceptions an operator raises because of the values it was given: the batch is dead-lettered.

Arrow's compute errors are among them (``ArrowInvalid`` is a ``ValueError``, ``ArrowTypeError`` a
``TypeError``) and so are numpy's (``LinAlgError`` is a ``ValueError``), plus ``pyarrow``'s
``ArrowNotImplementedError`` (a kernel missing for the data's types), added by the processor.
Anything else (``AttributeError``, ``KeyError``, ``AssertionError``, ``MemoryError``, ``OSError``...)
is a bug or a broken environment: it stops the worker, the batch stays uncommitted, and the job
reports the error (see :mod:`dawnstream.streams.workers`).
"""
