"""Tests of the ``fcrkit components`` command (``fcrkit demo`` is tested elsewhere)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import fcrkit.cli

BUILTIN_ROWS = {
    ("encoder", "mlp", "fcrkit.components.encoders"),
    ("prior", "standard_normal", "fcrkit.components.priors"),
    ("prior", "conditional_gaussian", "fcrkit.components.priors"),
    ("decoder", "mlp", "fcrkit.components.decoders"),
    ("likelihood", "nb", "fcrkit.components.likelihoods"),
    ("likelihood", "zinb", "fcrkit.components.likelihoods"),
    ("likelihood", "gaussian", "fcrkit.components.likelihoods"),
    ("likelihood", "poisson", "fcrkit.components.likelihoods"),
    ("regularizer", "kl", "fcrkit.components.regularizers"),
}


def parse_table(out: str) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of the components table, cut at the header's column starts."""
    lines = out.rstrip("\n").split("\n")
    header, rule = lines[0], lines[1]
    assert set(rule.replace(" ", "")) == {"-"}, rule
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    names = header.split()
    rows = []
    for line in lines[2:]:
        if not line.strip():
            break
        cells = [line[a:b].strip() for a, b in zip(starts, starts[1:] + [None])]
        rows.append(dict(zip(names, cells)))
    return names, rows


def test_components_table(capsys):
    assert fcrkit.cli.main(["components"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    names, rows = parse_table(captured.out)
    assert names == ["kind", "name", "plugin", "from", "summary"]
    assert captured.out.startswith("kind ")
    found = {(r["kind"], r["name"], r["plugin"]) for r in rows}
    assert BUILTIN_ROWS <= found
    for row in rows:
        if (row["kind"], row["name"], row["plugin"]) in BUILTIN_ROWS:
            assert row["from"] == f"fcrkit {fcrkit.__version__} (built-in)"
            assert row["summary"]
    nb = next(r for r in rows if (r["kind"], r["name"]) == ("likelihood", "nb"))
    assert nb["summary"].startswith("Negative binomial counts")
    assert "Plugins that failed to load" not in captured.out


def test_components_kind_filter(capsys):
    assert fcrkit.cli.main(["components", "--kind", "likelihood"]) == 0
    names, rows = parse_table(capsys.readouterr().out)
    assert names[:3] == ["kind", "name", "plugin"]
    assert {r["kind"] for r in rows} == {"likelihood"}
    assert [r["name"] for r in rows] == ["gaussian", "lognorm_gaussian", "nb", "poisson", "zinb"]


def test_components_unknown_kind_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        fcrkit.cli.main(["components", "--kind", "likelyhood"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'likelyhood'" in err and "'likelihood'" in err


def test_console_module_runs():
    env = {**os.environ, "FCRKIT_DISABLE_PLUGINS": "1"}
    result = subprocess.run([sys.executable, "-m", "fcrkit.cli", "components"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    names, rows = parse_table(result.stdout)
    assert names[:3] == ["kind", "name", "plugin"]
    assert ("likelihood", "nb", "fcrkit.components.likelihoods") in {(r["kind"], r["name"], r["plugin"])
                                                                       for r in rows}


def test_installed_console_script():
    script = os.path.join(os.path.dirname(sys.executable), "fcrkit")
    if not os.path.isfile(script):
        pytest.skip(f"no console script at {script} (package not installed in this environment)")
    env = {**os.environ, "FCRKIT_DISABLE_PLUGINS": "1"}
    result = subprocess.run([script, "components", "--kind", "regularizer"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    names, rows = parse_table(result.stdout)
    assert names[:3] == ["kind", "name", "plugin"]
    assert {r["kind"] for r in rows} == {"regularizer"}
    assert "kl" in {r["name"] for r in rows}
