"""Progress: a training bar in notebooks and terminals (not in CI, not when switched off), and phase lines."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fcrkit import progress

ROOT = Path(__file__).resolve().parents[1]

# One interpreter, standard error a pipe (not a terminal), trains a tiny model once per scenario. A
# stand-in for IPython's kernel shell, as a Jupyter kernel has it (what tqdm.auto and fcrkit.progress look
# at), is installed before anything is imported, and taken away for the scenarios outside a notebook.
SCRIPT = textwrap.dedent("""
    import os, sys, types
    shell = types.SimpleNamespace(config={"IPKernelApp": {}})
    kernel = types.SimpleNamespace(get_ipython=lambda: shell, __version__="8")
    sys.modules["IPython"] = kernel
    import torch
    torch.set_num_threads(1)
    import fcrkit
    from fcrkit.testing import tiny_adata

    adata = tiny_adata(60, 10)
    env = {"ci": {"CI": "true"}, "off": {"FCRKIT_PROGRESS": "0"}, "on": {"FCRKIT_PROGRESS": "1"}}
    for scenario in sys.argv[1].split(","):
        where, _, how = scenario.partition("-")
        if where == "notebook":
            sys.modules["IPython"] = kernel
        else:
            sys.modules.pop("IPython", None)
        os.environ.update(env.get(how, {}))
        print(f"=== {scenario}", file=sys.stderr, flush=True)
        model = fcrkit.models.SCVI(adata, n_latent=2, n_hidden=8, seed=0)
        setting = {"asked": True, "asked_off": False}.get(how)
        model.train(3, batch_size=32, seed=0, accelerator="cpu", progress_bar=setting)
        for key in ("CI", "FCRKIT_PROGRESS"):
            os.environ.pop(key, None)
""")
SCENARIOS = ("script", "script-on", "script-asked", "script-ci", "script-off",
             "notebook", "notebook-ci", "notebook-off", "notebook-asked_off")


def stderr_by_scenario(scenarios: tuple[str, ...]) -> dict[str, str]:
    """Standard error of each scenario's training (run in one fresh interpreter, without CI or FCRKIT_PROGRESS)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", progress.ENV)}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    run = subprocess.run([sys.executable, "-c", SCRIPT, ",".join(scenarios)], env=env, capture_output=True,
                         text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr
    parts = run.stderr.split("=== ")[1:]
    return {part.split("\n", 1)[0]: part.split("\n", 1)[1] for part in parts}


def test_the_training_bar_shows_where_asked_and_in_notebooks_not_in_ci_or_when_off():
    """Standard error is not a terminal here: the bar shows in the notebook, or when asked for."""
    seen = stderr_by_scenario(SCENARIOS)
    assert set(seen) == set(SCENARIOS), seen
    shown = {name for name, text in seen.items() if "training:" in text and "epoch" in text}
    assert shown == {"script-on", "script-asked", "notebook"}, seen


def test_phase_lines_follow_the_same_switches(monkeypatch, capsys):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv(progress.ENV, "1")
    progress.phase("scoring")
    assert capsys.readouterr().err == "fcrkit: scoring\n"
    monkeypatch.setenv(progress.ENV, "0")
    progress.phase("scoring")
    progress.phase("scoring", False)
    assert capsys.readouterr().err == ""
    progress.phase("training", True)  # an explicit setting wins over the environment
    assert capsys.readouterr().err == "fcrkit: training\n"
    monkeypatch.delenv(progress.ENV)
    monkeypatch.setenv("CI", "1")
    assert not progress.enabled()
    progress.phase("scoring")
    assert capsys.readouterr().err == ""


def test_phase_lines_reach_a_pipe_or_a_log_where_the_bar_does_not(monkeypatch, capsys):
    """``fcrkit demo > log 2>&1`` says what it is doing; the bar waits for a terminal (capsys is no terminal)."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv(progress.ENV, raising=False)
    assert not progress.enabled()
    progress.phase("scoring")
    assert capsys.readouterr().err == "fcrkit: scoring\n"


@pytest.mark.parametrize("value, shown", [("1", True), ("yes", True), ("0", False), ("off", False)])
def test_the_environment_switch_beats_ci(monkeypatch, value, shown):
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv(progress.ENV, value)
    assert progress.enabled() is shown
