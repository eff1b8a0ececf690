"""``import fcrkit`` stays light, and ``fcrkit demo`` says its defaults (issue 17, item 10).

scikit-learn and matplotlib cost about a second and a half to import; only the metrics and plots that
use them import them, on first use.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fcrkit.cli
import fcrkit.metrics

ROOT = Path(__file__).resolve().parents[1]


def test_import_fcrkit_leaves_sklearn_and_matplotlib_unimported():
    """Nor does building a model (whose registry loads every built-in part) import them, or scipy.stats."""
    code = ("import json, sys; import fcrkit; "
            "heavy = lambda: sorted(m for m in ('sklearn', 'matplotlib', 'scipy.stats') if m in sys.modules); "
            "after_import = heavy(); "
            "a = fcrkit.simulate.interaction(n_cells=60, n_genes=10, seed=0); "
            "fcrkit.setup_anndata(a, treatment_key='treatment', covariate_keys=['covariate']); "
            "fcrkit.models.FCR(a, n_latent=2, seed=0); "
            "print(json.dumps([after_import, heavy()]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                         check=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [[], []]


def test_every_metric_name_resolves_to_its_module():
    homes = fcrkit.metrics._HOME
    assert sorted(homes) == sorted(fcrkit.metrics.__all__)
    for name, module in homes.items():
        assert getattr(fcrkit.metrics, name) is getattr(importlib.import_module(f"fcrkit.metrics.{module}"), name)
    with pytest.raises(AttributeError, match="has no attribute 'not_a_metric'"):
        fcrkit.metrics.not_a_metric  # noqa: B018


def test_demo_help_shows_defaults_and_a_quick_setting(capsys):
    with pytest.raises(SystemExit):
        fcrkit.cli.main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, (full, quick, _) in fcrkit.cli.DEMO_SIZES.items():
        assert f"--{flag} N" in text and f"(default: {full}; with --quick: {quick})" in text
    assert "--quick" in text and "(default: 0)" in text and "(default: auto)" in text


def test_demo_quick_sizes_and_explicit_sizes_win(monkeypatch):
    calls = []

    def fake_run_demo(cells, genes, epochs, **kwargs):
        calls.append((cells, genes, epochs))
        raise fcrkit.errors.ConfigError("stop here")  # the sizes are what is tested, not the run

    monkeypatch.setattr("fcrkit.demo.run_demo", fake_run_demo)
    assert fcrkit.cli.main(["demo", "--quick"]) == 2
    assert fcrkit.cli.main(["demo", "--quick", "--epochs", "3"]) == 2
    assert fcrkit.cli.main(["demo"]) == 2
    sizes = fcrkit.cli.DEMO_SIZES
    quick = tuple(q for _, q, _ in sizes.values())
    full = tuple(f for f, _, _ in sizes.values())
    assert calls == [quick, (*quick[:2], 3), full]
