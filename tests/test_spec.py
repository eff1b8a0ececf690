"""Tests of fcrkit.spec: ModelSpec from dicts and TOML, validation messages, helpers, and compose errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import fcrkit
from fcrkit.errors import ConfigError, UnknownComponentError
from fcrkit.spec import BlockSpec, ComponentSpec, ModelSpec, RegularizerSpec

SPEC_TOML = """\
name = "fcr_like"
likelihood = { name = "zinb", dispersion = "gene" }
decoder = { name = "mlp", conditions = ["x"], n_hidden = 32 }
encoder_input = "log1p"

[[blocks]]
name = "zx"
dim = 3
prior = { name = "conditional_gaussian", conditions = ["x"], n_hidden = 16 }
encoder = { name = "mlp", n_hidden = 64, n_layers = 2 }

[[blocks]]
name = "zt"
dim = 2
prior = { name = "conditional_gaussian", conditions = ["x", "t"], combine = "product" }
encoder = "mlp"

[[regularizers]]
name = "kl"
weight = 4.0
warmup_epochs = 10
blocks = ["zx"]
"""

SPEC_DICT = {
    "name": "fcr_like",
    "likelihood": {"name": "zinb", "dispersion": "gene"},
    "decoder": {"name": "mlp", "conditions": ["x"], "n_hidden": 32},
    "encoder_input": "log1p",
    "blocks": [
        {"name": "zx", "dim": 3,
         "prior": {"name": "conditional_gaussian", "conditions": ["x"], "n_hidden": 16},
         "encoder": {"name": "mlp", "n_hidden": 64, "n_layers": 2}},
        {"name": "zt", "dim": 2,
         "prior": {"name": "conditional_gaussian", "conditions": ["x", "t"], "combine": "product"},
         "encoder": "mlp"},
    ],
    "regularizers": [{"name": "kl", "weight": 4.0, "warmup_epochs": 10, "blocks": ["zx"]}],
}


def write(tmp_path: Path, text: str, name: str = "model.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def minimal(**block) -> dict:
    return {"name": "m", "blocks": [{"name": "z", "dim": 3, **block}]}


# -- parsing ------------------------------------------------------------------------------------------
def test_from_dict_and_from_toml_agree(tmp_path):
    from_dict = ModelSpec.from_dict(SPEC_DICT)
    from_toml = ModelSpec.from_toml(write(tmp_path, SPEC_TOML))
    assert from_dict == from_toml
    assert fcrkit.ModelSpec is ModelSpec


def test_parsed_fields(tmp_path):
    spec = ModelSpec.from_toml(str(write(tmp_path, SPEC_TOML)))  # str paths too
    assert spec.name == "fcr_like"
    assert spec.encoder_input == "log1p"
    assert spec.likelihood == ComponentSpec("zinb", (), {"dispersion": "gene"})
    assert spec.decoder == ComponentSpec("mlp", ("x",), {"n_hidden": 32})
    assert [type(b) for b in spec.blocks] == [BlockSpec, BlockSpec]
    zx, zt = spec.blocks
    assert (zx.name, zx.dim, zt.name, zt.dim) == ("zx", 3, "zt", 2)
    assert zx.prior == ComponentSpec("conditional_gaussian", ("x",), {"n_hidden": 16})
    assert zx.encoder == ComponentSpec("mlp", (), {"n_hidden": 64, "n_layers": 2})
    assert zt.prior.conditions == ("x", "t") and zt.prior.options == {"combine": "product"}
    assert zt.encoder == ComponentSpec("mlp")  # a bare name: no conditions, no options
    assert spec.regularizers == (RegularizerSpec("kl", 4.0, 10.0, {"blocks": ["zx"]}),)
    assert isinstance(spec.regularizers[0].weight, float)
    assert spec.block_dims == {"zx": 3, "zt": 2}
    kinds = [(kind, comp.name) for kind, comp, _ in spec.components()]
    assert kinds == [("likelihood", "zinb"), ("decoder", "mlp"), ("prior", "conditional_gaussian"),
                     ("encoder", "mlp"), ("posterior", "normal"), ("prior", "conditional_gaussian"),
                     ("encoder", "mlp"), ("posterior", "normal"), ("regularizer", "kl")]


def test_defaults_of_a_minimal_spec():
    spec = ModelSpec.from_dict(minimal())
    assert spec.likelihood == ComponentSpec("nb")
    assert spec.decoder == ComponentSpec("mlp")
    assert spec.blocks[0].prior == ComponentSpec("standard_normal")
    assert spec.blocks[0].encoder == ComponentSpec("mlp")
    assert spec.regularizers == ()
    assert spec.encoder_input == "auto"
    # a regulariser given as a bare name
    spec = ModelSpec.from_dict({**minimal(), "regularizers": ["kl"]})
    assert spec.regularizers == (RegularizerSpec("kl", 1.0, 0.0, {}),)


@pytest.mark.parametrize("data", [SPEC_DICT, minimal(), {**minimal(), "regularizers": ["kl"]}])
def test_to_dict_round_trips(data):
    spec = ModelSpec.from_dict(data)
    again = ModelSpec.from_dict(spec.to_dict())
    assert again == spec
    assert again.to_dict() == spec.to_dict()


def test_component_conditions_given_as_a_string():
    comp = ComponentSpec.parse({"name": "conditional_gaussian", "conditions": "x"}, "prior")
    assert comp.conditions == ("x",)
    assert comp.to_dict() == {"name": "conditional_gaussian", "conditions": ["x"]}


# -- validation ---------------------------------------------------------------------------------------
def test_unknown_top_level_key_in_dict():
    with pytest.raises(ConfigError) as err:
        ModelSpec.from_dict({**minimal(), "likelyhood": "nb"})
    message = str(err.value)
    assert "unknown key 'likelyhood'" in message
    assert "Did you mean 'likelihood'?" in message
    assert ("'blocks', 'combiner', 'control_pairing', 'decoder', 'encoder_input', 'joint_encoder', 'likelihood', "
            "'name', 'regularizers'") in message


def test_unknown_top_level_key_in_toml_names_file_and_line(tmp_path):
    path = write(tmp_path, 'name = "m"\nlikelihood = "nb"\nlikelyhood = "zinb"\n\n[[blocks]]\nname = "z"\ndim = 3\n',
                 name="typo.toml")
    with pytest.raises(ConfigError) as err:
        ModelSpec.from_toml(path)
    message = str(err.value)
    assert message.startswith(f"{path}:3: ")
    assert "typo.toml:3" in message
    assert "unknown key 'likelyhood'" in message and "Did you mean 'likelihood'?" in message


def test_unknown_block_key(tmp_path):
    with pytest.raises(ConfigError, match=r"block 'z': unknown key 'prior_x'\. Did you mean 'prior'\? Allowed keys: "
                                          r"'dim', 'draws', 'encoder', 'name', 'plate', 'posterior', 'prior'\."):
        ModelSpec.from_dict(minimal(prior_x="standard_normal"))
    path = write(tmp_path, 'name = "m"\n\n[[blocks]]\nname = "z"\ndim = 3\nprior_x = "standard_normal"\n')
    with pytest.raises(ConfigError) as err:
        ModelSpec.from_toml(path)
    assert str(err.value).startswith(f"{path}:6: block 'z': unknown key 'prior_x'")


@pytest.mark.parametrize("dim", [0, -2, 2.0, 2.5, True, "3", None])
def test_bad_dims(dim):
    with pytest.raises(ConfigError) as err:
        ModelSpec.from_dict(minimal(dim=dim))
    assert str(err.value) == f"block 'z': dim must be a positive integer, got {dim!r}."


def test_bad_dim_from_toml_names_the_file(tmp_path):
    path = write(tmp_path, 'name = "m"\n[[blocks]]\nname = "z"\ndim = 0\n', name="zero.toml")
    with pytest.raises(ConfigError) as err:
        ModelSpec.from_toml(path)
    assert str(err.value) == f"{path}: block 'z': dim must be a positive integer, got 0."


def test_missing_required_keys():
    with pytest.raises(ConfigError, match="model spec: missing required key 'blocks'"):
        ModelSpec.from_dict({"name": "m"})
    with pytest.raises(ConfigError, match="model spec: missing required key 'name'"):
        ModelSpec.from_dict({"blocks": [{"name": "z", "dim": 1}]})
    with pytest.raises(ConfigError, match="block 'z': missing required key 'dim'"):
        ModelSpec.from_dict({"name": "m", "blocks": [{"name": "z"}]})
    with pytest.raises(ConfigError) as err:
        ModelSpec.from_dict(minimal(prior={"conditions": ["x"]}))
    assert str(err.value) == "block 'z' prior: missing required key 'name'."  # said once


def test_duplicate_block_names():
    data = {"name": "m", "blocks": [{"name": "z", "dim": 2}, {"name": "w", "dim": 1}, {"name": "z", "dim": 3}]}
    with pytest.raises(ConfigError, match=r"model 'm': block name\(s\) 'z' used more than once"):
        ModelSpec.from_dict(data)


def test_duplicate_regularizers():
    with pytest.raises(ConfigError, match=r"regularizer\(s\) 'kl' listed more than once"):
        ModelSpec.from_dict({**minimal(), "regularizers": ["kl", {"name": "kl", "weight": 2}]})


@pytest.mark.parametrize("name", ["y", "cells"])
def test_reserved_block_names(name):
    with pytest.raises(ConfigError) as err:
        ModelSpec.from_dict({"name": "m", "blocks": [{"name": name, "dim": 2}]})
    message = str(err.value)
    assert message.startswith(f"block {name!r}:")
    assert "'cells', 'y'" in message


def test_block_name_must_be_an_identifier():
    with pytest.raises(ConfigError, match="block 'z-1'"):
        ModelSpec.from_dict({"name": "m", "blocks": [{"name": "z-1", "dim": 2}]})
    with pytest.raises(ConfigError, match="model name 'my model' must be letters, digits and '_'"):
        ModelSpec.from_dict({"name": "my model", "blocks": [{"name": "z", "dim": 2}]})


def test_unknown_condition():
    with pytest.raises(ConfigError) as err:
        ModelSpec.from_dict(minimal(prior={"name": "conditional_gaussian", "conditions": ["x", "z"]}))
    message = str(err.value)
    assert message.startswith("block 'z' prior: component 'conditional_gaussian': unknown condition 'z'.")
    assert "'x' (covariates)" in message and "'t' (treatment)" in message
    with pytest.raises(ConfigError, match="conditions \\['x', 'x'\\] repeat a label"):
        ComponentSpec("conditional_gaussian", ("x", "x"))


def test_empty_blocks():
    with pytest.raises(ConfigError, match="model 'm' has no latent blocks; give at least one in 'blocks'"):
        ModelSpec.from_dict({"name": "m", "blocks": []})
    with pytest.raises(ConfigError, match="'blocks' must be a list of tables"):
        ModelSpec.from_dict({"name": "m", "blocks": "z"})


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"name": "kl", "weight": math.nan}, "regularizer 'kl': weight must be a finite number, got nan."),
        ({"name": "kl", "weight": math.inf}, "regularizer 'kl': weight must be a finite number, got inf."),
        ({"name": "kl", "weight": True}, "regularizer 'kl': weight must be a finite number, got True."),
        ({"name": "kl", "weight": "4"}, "regularizer 'kl': weight must be a finite number, got '4'."),
        ({"name": "kl", "warmup_epochs": -1}, "regularizer 'kl': warmup_epochs must be >= 0, got -1."),
    ],
)
def test_bad_regularizer_values(entry, expected):
    with pytest.raises(ConfigError) as err:
        ModelSpec.from_dict({**minimal(), "regularizers": [entry]})
    assert str(err.value) == expected


def test_regularizers_must_be_a_list():
    with pytest.raises(ConfigError, match="'regularizers' must be a list"):
        ModelSpec.from_dict({**minimal(), "regularizers": {"name": "kl"}})


def test_bad_encoder_input():
    with pytest.raises(ConfigError) as err:
        ModelSpec.from_dict({**minimal(), "encoder_input": "log2"})
    assert str(err.value) == "encoder_input='log2' is not one of 'auto', 'identity', 'log1p', 'lognorm'."


def test_invalid_toml_names_the_file(tmp_path):
    path = write(tmp_path, 'name = "m\n[[blocks]]\n', name="broken.toml")
    with pytest.raises(ConfigError) as err:
        ModelSpec.from_toml(path)
    message = str(err.value)
    assert message.startswith(f"{path}: not valid TOML:")
    assert "line 1" in message


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError) as err:
        ModelSpec.from_toml(path)
    assert str(err.value) == f"cannot read model spec {str(path)!r}: No such file or directory."


def test_config_errors_are_value_errors():
    with pytest.raises(ValueError):
        ModelSpec.from_dict({**minimal(), "encoder_input": "log2"})


# -- helpers ------------------------------------------------------------------------------------------
def test_obsm_key():
    one = ModelSpec.from_dict({"name": "scvi", "blocks": [{"name": "z", "dim": 4}]})
    assert one.obsm_key("z") == "X_scvi"
    several = ModelSpec.from_dict({"name": "fcr", "blocks": [{"name": "x", "dim": 2}, {"name": "t", "dim": 2},
                                                             {"name": "tx", "dim": 2}]})
    assert [several.obsm_key(b.name) for b in several.blocks] == ["X_fcr_x", "X_fcr_t", "X_fcr_tx"]


def test_weight_at_linear_warmup():
    reg = RegularizerSpec("kl", weight=4.0, warmup_epochs=10)
    assert reg.weight_at(0) == 0.0
    assert reg.weight_at(2.5) == pytest.approx(1.0)
    assert reg.weight_at(5) == pytest.approx(2.0)
    assert reg.weight_at(10) == 4.0
    assert reg.weight_at(25) == 4.0
    no_warmup = RegularizerSpec("kl", weight=4.0)
    assert no_warmup.weight_at(0) == 4.0 and no_warmup.weight_at(7.5) == 4.0


# -- compose ------------------------------------------------------------------------------------------
@pytest.fixture
def adata():
    data = fcrkit.simulate.basic(n_cells=100, n_genes=20, seed=0)
    fcrkit.setup_anndata(data, treatment_key="treatment", covariate_keys=["cell_type"])
    return data


def test_compose_unknown_component(adata):
    with pytest.raises(UnknownComponentError) as err:
        fcrkit.compose({**minimal(), "likelihood": "nbb"}, adata)
    message = str(err.value)
    assert "unknown likelihood 'nbb'" in message
    assert "Did you mean 'nb'?" in message
    assert "'gaussian', 'lognorm_gaussian', 'nb', 'poisson', 'zinb'" in message


def test_compose_from_toml_path(adata, tmp_path):
    path = write(tmp_path, 'name = "tiny"\n[[blocks]]\nname = "z"\ndim = 2\nencoder = { name = "mlp", n_hidden = 8 }\n')
    model = fcrkit.compose(path, adata, seed=0)
    assert model.spec == ModelSpec.from_toml(path)
    assert list(model.get_latent_representation(as_dict=True)) == ["X_tiny"]


def test_prior_on_treatment_without_treatment_key():
    data = fcrkit.simulate.basic(n_cells=100, n_genes=20, seed=0)
    fcrkit.setup_anndata(data, covariate_keys=["cell_type"])
    spec = minimal(prior={"name": "conditional_gaussian", "conditions": ["t"]})
    with pytest.raises(ConfigError) as err:
        fcrkit.compose(spec, data)
    message = str(err.value)
    assert "prior 'conditional_gaussian'" in message
    assert "conditions on 't'" in message
    assert "treatment_key" in message and "fcrkit.setup_anndata" in message
    # conditioning on the covariates that were set up is fine
    model = fcrkit.compose(minimal(prior={"name": "conditional_gaussian", "conditions": ["x"]}), data, seed=0)
    assert model.module.priors["z"].conditions == ("x",)
