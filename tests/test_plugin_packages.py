"""Plugins the way a third party ships them: pip-installed packages found through the entry points.

Each test installs packages into this environment with pip, uses them in fresh processes (where
entry points are loaded, unlike in this test process), and uninstalls them again. A lock keeps
pytest-xdist workers from installing at the same time.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fcrkit.testing import tiny_adata

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"

# distribution -> (plugin module the entry point names, regulariser it registers, its options)
PACKAGES = {
    "fcrkit-template": ("fcrkit_template", "template_l1", {"block": "tx"}),
    "fcrkit-independence": ("fcrkit_independence", "independence_nhsic", {"pairs": [["x", "tx"]]}),
}


def plugin_env() -> dict[str, str]:
    """This environment with entry-point plugins enabled (the test suite disables them) and one thread."""
    env = {k: v for k, v in os.environ.items() if k != "FCRKIT_DISABLE_PLUGINS"}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore::DeprecationWarning")
    return env


def run(args: list[str], cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(args, check=False, cwd=cwd, env=plugin_env(), capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def pip(*args: str) -> None:
    # no build isolation: setuptools comes from the [dev] extra, so building needs no download
    run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args])


@contextmanager
def installed(*sources: Path, names: list[str], deps: bool = False) -> Iterator[None]:
    """pip-install ``sources`` for the duration of a ``with`` block, then uninstall ``names``."""
    lock_path = Path(sys.prefix) / ".fcrkit-plugin-tests.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            pip("install", "--no-build-isolation", *([] if deps else ["--no-deps"]), *map(str, sources))
            yield
        finally:
            pip("uninstall", "-y", *names)


def components(kind: str = "regularizer") -> dict[str, dict[str, str]]:
    """``fcrkit components`` as a fresh user would run it: name -> row, plus the failure rows."""
    out = run([sys.executable, "-m", "fcrkit.cli", "components", "--kind", kind]).stdout
    table, _, failed = out.partition("Plugins that failed to load:")
    rows = {}
    for line in table.splitlines()[2:]:
        parts = line.split()
        if parts:
            rows[parts[1]] = {"plugin": parts[2], "line": line}
    for line in failed.splitlines()[3:]:
        if line.strip():
            rows["failed:" + line.split()[0]] = {"line": line}
    return rows


TRAIN_WITH_PLUGIN = """
import json, sys
import numpy as np
import fcrkit
from fcrkit.testing import tiny_adata

name, options = sys.argv[1], json.loads(sys.argv[2])
record = fcrkit.get_registry().get("regularizer", name)
adata = tiny_adata()
losses = {}
for weight in (0.0, 5.0):
    extra = [{"name": name, "weight": weight, **options}] if weight else []
    model = fcrkit.models.FCR(adata, "nb", 3, regularizers=extra, seed=0)
    history = model.train(max_epochs=3, batch_size=128, seed=0, accelerator="cpu")
    losses[weight] = {"loss": history["loss"], "term": history[name] if name in history else None}
print(json.dumps({"plugin": record.plugin, "origin": record.origin, "losses": losses}))
"""


@pytest.mark.parametrize("distribution", sorted(PACKAGES))
def test_plugin_package_installs_trains_in_fcr_passes_its_tests_and_uninstalls(distribution, tmp_path):
    module, regularizer, options = PACKAGES[distribution]
    source = tmp_path / distribution
    shutil.copytree(PLUGINS / distribution, source)  # build outside the repository: no build/ left there
    with installed(source, names=[distribution], deps=True):
        row = components()[regularizer]
        assert row["plugin"] == module
        assert f"{distribution} 0.1.0" in row["line"]

        out = run([sys.executable, "-c", TRAIN_WITH_PLUGIN, regularizer, json.dumps(options)]).stdout
        report = json.loads(out.strip().splitlines()[-1])
        assert report["plugin"] == module and report["origin"] == f"{distribution} 0.1.0"
        plain, regularised = report["losses"]["0.0"], report["losses"]["5.0"]
        assert plain["term"] is None and len(regularised["term"]) == 3
        assert all(math.isfinite(v) and v > 0 for v in regularised["term"])  # finite, positive penalties
        # the same seed and data: the only difference between the two runs is the plugin's term
        assert regularised["loss"][0] != pytest.approx(plain["loss"][0], rel=1e-4)

        run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=source)
    assert regularizer not in components()


def write_package(root: Path, distribution: str, module: str, body: str) -> Path:
    """A minimal third-party package: one module, registered under the ``fcrkit`` entry points."""
    folder = root / distribution
    folder.mkdir()
    (folder / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{distribution}"
        version = "1.2.3"

        [project.entry-points.fcrkit]
        {module} = "{module}"

        [tool.setuptools]
        py-modules = ["{module}"]
    """))
    (folder / f"{module}.py").write_text(textwrap.dedent(body))
    return folder


def test_outside_package_is_listed_with_its_origin_and_a_broken_one_is_named(tmp_path):
    good = write_package(tmp_path, "acme-fcrkit-extras", "acme_extras", """
        import fcrkit

        class CenteredBlock:
            '''Penalise the squared batch mean of a block's posterior means.'''

            def __init__(self, info, *, block="x"):
                self.block = block

            def loss(self, ctx):
                return ctx.loc[self.block].mean(0).pow(2).sum()

        @fcrkit.hookimpl
        def fcrkit_register_components(registry):
            registry.regularizer("acme_centered", CenteredBlock)
    """)
    broken = write_package(tmp_path, "acme-broken", "acme_broken", """
        raise RuntimeError("acme_broken needs a licence server")
    """)
    with installed(good, broken, names=["acme-fcrkit-extras", "acme-broken"]):
        rows = components()
        assert rows["acme_centered"]["plugin"] == "acme_extras"
        assert "acme-fcrkit-extras 1.2.3" in rows["acme_centered"]["line"]
        assert "Penalise the squared batch mean" in rows["acme_centered"]["line"]
        failure = rows["failed:acme_broken"]["line"]
        assert "acme-broken 1.2.3" in failure and "needs a licence server" in failure
        assert {"kl", "label_classifier", "permutation_discriminator"} <= set(rows)  # the built-ins still load
        likelihoods = components("likelihood")
        assert {"nb", "zinb", "poisson", "gaussian"} <= set(likelihoods)
    rows = components()
    assert "acme_centered" not in rows and "failed:acme_broken" not in rows


def test_outside_package_ships_a_whole_model_that_a_run_config_names(tmp_path):
    """A recipe registered through ``fcrkit_register_recipes`` by an installed package: listed with its
    origin, named by ``[model] recipe = ...`` in a run config, and trained by ``fcrkit fit``."""
    package = write_package(tmp_path, "acme-fcrkit-models", "acme_models", """
        import fcrkit
        from fcrkit.models import Recipe
        from fcrkit.spec import BlockSpec, ComponentSpec, ModelSpec, RegularizerSpec

        def acme_vae_spec(n_latent: int = 4, n_hidden: int = 16) -> ModelSpec:
            mlp = ComponentSpec("mlp", (), {"n_hidden": n_hidden, "n_layers": 1})
            return ModelSpec(name="acme_vae", blocks=(BlockSpec("z", n_latent, encoder=mlp),), decoder=mlp,
                             regularizers=(RegularizerSpec("kl"),))

        class AcmeVAE(Recipe):
            '''A small VAE shipped by Acme.'''

            build_spec = staticmethod(acme_vae_spec)

        @fcrkit.hookimpl
        def fcrkit_register_recipes(registry):
            registry.recipe("AcmeVAE", AcmeVAE)
    """)
    data = tmp_path / "cells.h5ad"
    tiny_adata(n_cells=120).write_h5ad(data)
    config = tmp_path / "run.toml"
    config.write_text(textwrap.dedent(f"""
        [data]
        path = {str(data)!r}
        treatment_key = "treatment"

        [model]
        recipe = "AcmeVAE"
        n_latent = 3
        seed = 0

        [train]
        max_epochs = 2
        batch_size = 64
        accelerator = "cpu"

        [output]
        dir = {str(tmp_path / "run")!r}
    """))
    with installed(package, names=["acme-fcrkit-models"]):
        rows = components("recipe")
        row = rows["AcmeVAE"]
        assert row["plugin"] == "acme_models" and "acme-fcrkit-models 1.2.3" in row["line"]
        assert "A small VAE shipped by Acme" in row["line"]
        assert {"FCR", "SCVI", "ContrastiveVI"} <= set(rows)  # the built-ins, registered by the same hook
        out = run([sys.executable, "-m", "fcrkit.cli", "fit", str(config)]).stdout
        assert "recipe AcmeVAE" in out and "trained 2 epochs" in out
    assert "AcmeVAE" not in components("recipe")
