"""A saved model directory: ``model.json`` (what the model is) and ``model.pt`` (its weights).

:func:`write` swaps a complete directory in atomically; the readers refuse anything it did not
write (missing files, damaged JSON, a weights file whose checksum differs, an unknown format
version) and a model whose components' plugins are not installed here, each with a
:class:`~fcrkit.errors.ConfigError` or :class:`~fcrkit.errors.UnknownComponentError` that says what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

import fcrkit
from fcrkit.errors import ConfigError, UnknownComponentError, listing, write_error
from fcrkit.registry import DISABLE_ENV, get_registry
from fcrkit.spec import ModelSpec

FORMAT = "fcrkit-model"
FORMAT_VERSION = 1
META_FILE, WEIGHTS_FILE = "model.json", "model.pt"


def write(path: Path, meta: dict[str, Any], state: Mapping[str, torch.Tensor]) -> Path:
    """Write ``meta`` (plus format, versions and the weights' checksum) and ``state`` to directory ``path``.

    Everything is written to a staging directory beside ``path`` and then swapped in, so a crash
    never leaves half a model (an existing ``path`` is replaced).
    """
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "fcrkit_version": fcrkit.__version__, **meta}
    kept = f"the model saved in {str(path)!r} before is intact" if path.exists() else f"{str(path)!r} was not created"
    staging = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        torch.save(dict(state), staging / WEIGHTS_FILE)
        # torch does not check the bytes it reads: a damaged tensor would load silently without this
        meta["weights_sha256"] = sha256(staging / WEIGHTS_FILE)
        (staging / META_FILE).write_text(json.dumps(meta, indent=1))
        _swap_in(staging, path)
    except (OSError, RuntimeError) as err:  # a full disk, a permission ...: say so, and what is intact
        failure = write_error(err, "the model", path, kept)
        if failure is None:
            raise
        raise failure from err
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return path


def _swap_in(staging: Path, path: Path) -> None:
    """Put the complete directory ``staging`` at ``path``: the old one is renamed aside, never half-deleted."""
    if not path.exists():
        staging.rename(path)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
    old.rmdir()  # a free name beside path
    path.rename(old)
    try:
        staging.rename(path)
    except OSError:
        old.rename(path)  # back as it was
        raise
    shutil.rmtree(old, ignore_errors=True)


def read_meta(path: Path) -> dict[str, Any]:
    """The parsed ``model.json`` of a saved model directory, refusing anything :func:`write` did not write."""
    if not path.is_dir():
        raise ConfigError(f"{str(path)!r} is not an fcrkit model directory: it does not exist (or is a file). "
                          "Pass the directory that Model.save wrote.")
    missing = [name for name in (META_FILE, WEIGHTS_FILE) if not (path / name).is_file()]
    if missing:
        raise ConfigError(f"{str(path)!r} is not an fcrkit model directory: it has no {' and no '.join(missing)}. "
                          "Pass the directory that Model.save wrote.")
    meta_path = path / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{str(meta_path)!r} is corrupt ({err}); save the model again.") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{str(meta_path)!r} is corrupt: it holds a JSON {type(meta).__name__}, not a model "
                          "description; save the model again.")
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ConfigError(
            f"{str(path)!r} has format {meta.get('format')!r} version {meta.get('format_version')!r} (written by "
            f"fcrkit {meta.get('fcrkit_version', '?')}); this fcrkit {fcrkit.__version__} reads {FORMAT!r} version "
            f"{FORMAT_VERSION}. Load it with the fcrkit that saved it."
        )
    lacking = [key for key in ("class", "spec", "setup", "var_names") if key not in meta]
    if lacking:
        raise ConfigError(f"{str(meta_path)!r} is corrupt: it lacks {listing(lacking)}; save the model again.")
    if not isinstance(meta["setup"], Mapping) or "control_value" not in meta["setup"]:
        raise ConfigError(f"{str(meta_path)!r} is corrupt: its 'setup' is not an fcrkit data setup; "
                          "save the model again.")
    return meta


def sha256(file: Path) -> str:
    """Hex SHA-256 digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_weights(file: Path, checksum: Any = None) -> Mapping[str, torch.Tensor]:
    """The state dict in ``model.pt``; a damaged file is a ConfigError, not a torch unpickling error.

    ``checksum`` is the SHA-256 that :func:`write` recorded (models saved before it was recorded have none).
    """
    if isinstance(checksum, str) and sha256(file) != checksum:
        raise ConfigError(f"{str(file)!r} is damaged or was replaced: its checksum differs from the one recorded "
                          f"in {META_FILE} when the model was saved. Save the model again.")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as err:
        # torch raises any of these for a damaged file: zip reader, pickle, EOF and OS errors
        reason = (str(err).strip().splitlines() or [""])[0].split(". ")[0][:200]  # torch's can run for lines
        raise ConfigError(f"{str(file)!r} cannot be read as model weights ({type(err).__name__}: {reason}); "
                          "the file is damaged or truncated: save the model again.") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{str(file)!r} does not hold model weights (a dict of tensors); save the model again.")
    return state


def check_components_installed(path: Path, spec: ModelSpec, origins: Any) -> None:
    """Refuse to load a model whose components are not registered here, naming the plugin that provided each.

    ``origins`` is the ``"components"`` entry of model.json: ``"kind:name" -> "plugin (origin)"``.
    """
    registry = get_registry()
    origins = origins if isinstance(origins, Mapping) else {}
    absent = []
    for kind, comp, where in spec.components():
        if comp.name in registry.names(kind):
            continue
        origin = origins.get(f"{kind}:{comp.name}")
        source = f"from plugin {origin}" if origin else "from a plugin that model.json does not name"
        absent.append(f"{kind} {comp.name!r} ({where}) {source}")
    if absent:
        switch = os.environ.get(DISABLE_ENV, "").strip().lower()
        disabled = (f" Third-party plugins are switched off here by {DISABLE_ENV}={switch!r}."
                    if switch in ("1", "true", "yes", "on") else "")
        raise UnknownComponentError(
            f"{str(path)!r} was saved with component(s) that are not installed here: {'; '.join(absent)}. "
            "Install that plugin (the distribution named in parentheses) and load again; `fcrkit components` "
            f"lists what is installed.{disabled}"
        )


def component_origins(spec: ModelSpec) -> dict[str, str]:
    """``"kind:name" -> "plugin (origin)"`` for each component the spec uses (saved with a model)."""
    registry = get_registry()
    out = {}
    for kind, comp, _ in spec.components():
        record = registry.get(kind, comp.name)
        out[f"{kind}:{comp.name}"] = f"{record.plugin} ({record.origin})"
    return out
