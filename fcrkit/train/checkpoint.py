"""Training checkpoints: one file, ``<checkpoint_dir>/checkpoint.pt``, replaced atomically.

A checkpoint holds the trainer's state at the end of an epoch (weights, every optimiser, the
history, early stopping and every random stream) together with an *identity*: what must be equal
for the state to continue the same run (the spec, parameter shapes, data size and the plan's
essentials). :func:`check_identity` refuses a checkpoint of another run, naming the difference.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fcrkit
from fcrkit.errors import ConfigError, write_error

FORMAT = "fcrkit-checkpoint"
FORMAT_VERSION = 1
FILE_NAME = "checkpoint.pt"


def checkpoint_path(directory: str | os.PathLike) -> Path:
    """Where the checkpoint of ``directory`` lives."""
    return Path(directory) / FILE_NAME


def save(directory: str | os.PathLike, identity: dict[str, Any], state: dict[str, Any]) -> Path:
    """Write ``state`` to ``directory/checkpoint.pt`` atomically; returns the path.

    The payload goes to a temporary file in the same directory (so the rename cannot cross file
    systems), is flushed and fsynced, then ``os.replace``-d onto the checkpoint: a crash at any
    moment leaves either the previous or the new checkpoint, complete.
    """
    directory = Path(directory)
    target = directory / FILE_NAME
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "fcrkit_version": fcrkit.__version__,
               "identity": identity, "state": state}
    tmp = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{FILE_NAME}.", suffix=".tmp", dir=directory)
        with os.fdopen(fd, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, target)
    except BaseException as err:  # KeyboardInterrupt included: never leave a temp file behind
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if not isinstance(err, (OSError, RuntimeError)):
            raise
        kept = (f"the previous checkpoint (after epoch {_epoch_of(target)}) is intact, and resume=True continues "
                "from it" if target.is_file() else "no checkpoint was written")
        failure = write_error(err, f"the checkpoint after epoch {state.get('epoch', '?')}", target, kept)
        if failure is None:
            raise
        raise failure from err
    _fsync_directory(directory)
    return target


def _epoch_of(path: Path) -> object:
    """The number of finished epochs the checkpoint at ``path`` holds ("unknown" if it cannot be read)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["state"]["epoch"]
    except Exception:  # only for a message: a damaged checkpoint is reported when it is resumed from
        return "unknown"


def load(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The payload of ``directory/checkpoint.pt`` (tensors on the CPU), or None if there is none."""
    path = checkpoint_path(directory)
    if not path.is_file():
        return None
    try:  # weights_only: a checkpoint is data, never code
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:  # a damaged file
        raise ConfigError(f"checkpoint {str(path)!r} cannot be read ({type(err).__name__}: {err}); delete it, "
                          "use another checkpoint_dir, or train with resume=False.") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT \
            or payload.get("format_version") != FORMAT_VERSION:
        found = payload.get("format_version") if isinstance(payload, dict) else None
        raise ConfigError(f"{str(path)!r} is not an fcrkit checkpoint of format version {FORMAT_VERSION} "
                          f"(found version {found!r}); use another checkpoint_dir or resume=False.")
    return payload


def identity(module: torch.nn.Module, n_obs: int, plan: Any, seed: int) -> dict[str, Any]:
    """What a checkpoint must share with a run to continue it (see :func:`check_identity`)."""
    elbo = plan.elbo if isinstance(plan.elbo, str) else type(plan.elbo).__name__
    return {
        "spec": module.spec.to_dict(),
        "parameters": {name: list(t.shape) for name, t in module.state_dict().items()},
        "n_obs": int(n_obs),
        "seed": int(seed),
        "batch_size": plan.batch_size,
        "drop_last": plan.drop_last,
        "validation_fraction": plan.validation_fraction,
        "lr": plan.lr,  # the optimiser's saved state would silently override another lr
        "weight_decay": plan.weight_decay,
        "elbo": elbo,
        # features change what the weights mean, not their shapes: another table may not resume this run
        **({"treatment_features": hashlib.sha256(features.numpy().tobytes()).hexdigest()}
           if (features := getattr(module, "treatment_features", None)) is not None else {}),
    }


def check_identity(saved: dict[str, Any], current: dict[str, Any], directory: str | os.PathLike) -> None:
    """Raise :class:`ConfigError` naming what differs unless ``saved`` matches ``current``."""
    diffs = []
    for key, new in current.items():
        old = saved.get(key)
        if old == new:
            continue
        if key == "parameters":
            changed = sorted(set(old or {}) ^ set(new)) or [k for k in new if old[k] != new[k]]
            name = changed[0]
            diffs.append(f"parameter {name!r} has shape {(old or {}).get(name)} in the checkpoint, "
                         f"{new.get(name)} here")
        elif key == "spec":
            parts = sorted(k for k in set(old or {}) | set(new) if (old or {}).get(k) != new.get(k))
            diffs.append(f"the model spec differs in {', '.join(parts)}")
        else:
            diffs.append(f"{key}={old!r} in the checkpoint, {new!r} here")
    if diffs:
        raise ConfigError(f"checkpoint {str(checkpoint_path(directory))!r} belongs to another training run: "
                          + "; ".join(diffs) + ". Use another checkpoint_dir, or resume=False to start afresh "
                          "(which overwrites it).")


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random stream training draws from, as tensors and plain values.

    torch's CPU (and, once initialised, CUDA) stream for Monte Carlo samples and dropout, numpy's
    and ``random``'s (seeded by ``pyro.set_rng_seed``), and ``generator``: minibatch order and
    control partners.
    """
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),  # a tensor: weights_only
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "random": random.getstate(),
        "generator": generator.get_state(),
    }


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    """Restore the streams saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    numpy = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": numpy["key"].numpy().astype(np.uint32), "pos": numpy["pos"]},
                         "has_gauss": numpy["has_gauss"], "gauss": numpy["gauss"]})
    random.setstate(_as_tuples(state["random"]))
    generator.set_state(state["generator"].cpu())


def _as_tuples(value: Any) -> Any:
    """``random.setstate`` wants tuples; a serialiser may hand back lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable too (POSIX); a no-op where directories cannot be opened (Windows)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
