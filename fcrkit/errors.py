"""Exceptions raised by fcrkit.

Every error a user can trigger with bad input is one of these, raised from fcrkit's own code with a
message that names the offending value and says what to do. They subclass the built-in exception a
caller would naturally catch (``ValueError``, ``LookupError`` ...), so ``except ValueError`` keeps
working.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class FcrkitError(Exception):
    """Base class of every error raised by fcrkit."""


class ConfigError(FcrkitError, ValueError):
    """A model spec, component option or argument is invalid."""


class DataError(FcrkitError, ValueError):
    """The AnnData (keys, layers, values, genes) does not fit what was asked of it."""


class PluginError(FcrkitError):
    """A plugin broke the plugin contract (duplicate name, bad factory, unknown hook ...)."""


class UnknownComponentError(FcrkitError, LookupError):
    """A component name that no plugin registered."""

    def __str__(self) -> str:  # LookupError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class OptionalDependencyError(FcrkitError, ImportError):
    """An optional package (for example scanpy) is needed for what was asked but is not installed."""


class NonFiniteLossError(FcrkitError, FloatingPointError):
    """Training produced a NaN or infinite loss term.

    Attributes:
        term: the loss term that went non-finite first.
        epoch: the epoch it happened in, counting from 1.
        value: its value.
        history: the training history of the epochs that finished (a ``History``; the model
            holds their weights, and ``model.history`` is set to it), or None.
    """

    def __init__(self, term: str, epoch: int, value: float, history: object = None):
        self.term, self.epoch, self.value, self.history = term, epoch, value, history
        finished = len(history) if history is not None else epoch - 1
        super().__init__(
            f"loss term {term!r} became {value} at epoch {epoch}; training stopped and the "
            f"parameters after the last finite epoch ({finished} finished) were restored. Try a smaller "
            "learning rate, a KL warm-up, or check the input for extreme values."
        )


class WriteError(FcrkitError, OSError):
    """Writing a model or a checkpoint failed (a full disk, a permission ...); what was there before is intact."""


def write_error(err: BaseException, what: str, path: object, kept: str) -> WriteError | None:
    """A :class:`WriteError` saying why writing ``what`` to ``path`` failed and that ``kept`` is intact.

    ``err`` is what the write raised: an ``OSError`` (its errno says why; ENOSPC and EDQUOT are a full
    disk or quota) or the ``RuntimeError`` torch's file writer raises instead
    (``[enforce fail at inline_container.cc:...] . PytorchStreamWriter failed writing file ...``), which
    hides the OS's reason; in practice that is a full disk. None for any other error (a bug to let through).
    """
    import errno

    text = (str(err).strip().splitlines() or [""])[0]
    if isinstance(err, OSError):
        if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            reason = "for lack of space: the disk (or your quota) is full"
        else:
            reason = f"({err.strerror or text})"
    elif isinstance(err, RuntimeError) and ("PytorchStreamWriter" in text or "inline_container" in text):
        reason = f"for lack of space, most likely: torch's file writer failed ({text[:160]})"
    else:
        return None
    return WriteError(f"writing {what} to {str(path)!r} failed {reason}. Nothing was half-written: {kept}. "
                      "Free some space (or choose another directory) and save again.")


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choice, or an empty string."""
    import difflib

    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def listing(choices: Iterable[str]) -> str:
    """Format choices as ``'a', 'b', 'c'`` (or ``(none)``) for messages."""
    items = sorted(str(c) for c in choices)
    return ", ".join(repr(c) for c in items) if items else "(none)"


def check_choice(option: str, value: object, allowed: Sequence[str], *, owner: str = "") -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``allowed``, naming the option and value."""
    if not (isinstance(value, str) and value in allowed):
        prefix = f"{owner}: " if owner else ""
        raise ConfigError(f"{prefix}option {option}={value!r} is not one of {listing(allowed)}."
                          f"{did_you_mean(str(value), allowed)}")
