"""The pipeline configuration: files, overrides, errors, and ``sparsa ask --print-config``."""

from __future__ import annotations

import tomllib

import pytest

from sparsa.cli.main import main
from sparsa.errors import ConfigError
from sparsa.rag.config import AttentionConfig, PipelineConfig, ReaderConfig

CHAIN = """
[retrieval]
indexes = ["news-bm25", "news-splade"]
dataset = "scifact"
k = 20
weights = [0.3, 0.7]
[rerank]
name = "query-likelihood"
depth = 50
[router]
mode = "retrieve"
[reader]
model = "qwen2.5-coder-1.5b-instruct"
max_context_tokens = 8000
[reader.attention]
prefill = "block-sparse"
decode = "sparse"
kv = "duo"
budget_tokens = 2048
"""


def test_a_file_names_every_stage_and_round_trips(tmp_path):
    path = tmp_path / "chain.toml"
    path.write_text(CHAIN)
    config = PipelineConfig.from_file(path)
    assert config.retrieval.indexes == ("news-bm25", "news-splade") and config.retrieval.weights == (0.3, 0.7)
    assert config.rerank.name == "query-likelihood" and config.rerank.depth == 50
    assert config.reader.attention == AttentionConfig(prefill="block-sparse", decode="sparse", kv="duo",
                                                      budget_tokens=2048)
    assert config.reader.attention.name == "block-sparse/sparse/duo"
    assert PipelineConfig.from_dict(tomllib.loads(config.to_toml())) == config
    yaml = pytest.importorskip("yaml")
    (tmp_path / "chain.yaml").write_text(yaml.safe_dump(config.to_dict()))
    assert PipelineConfig.from_file(tmp_path / "chain.yaml") == config


def test_overrides_replace_only_what_is_given():
    base = PipelineConfig.from_dict(tomllib.loads(CHAIN))
    changed = base.override({"retrieval.k": 5, "reader.attention": "full", "reader.model": None})
    assert changed.retrieval.k == 5 and changed.reader.attention.is_full
    assert changed.reader.model == base.reader.model and changed.rerank == base.rerank


def test_auto_resolves_to_this_machine():
    import torch

    resolved = ReaderConfig().resolved()
    if torch.cuda.is_available():
        assert (resolved.device, resolved.dtype, resolved.attention.name) == ("cuda", "bfloat16", "full")
    else:
        assert (resolved.device, resolved.dtype, resolved.attention.name) == ("cpu", "float32", "full")
    assert ReaderConfig(device="cpu", attention="sparse-kv").resolved().attention.kv == "duo"


@pytest.mark.parametrize(("text", "message"), [
    ("[reader]\natention = 'full'\n", "unknown key 'reader.atention' (did you mean 'attention'?)"),
    ("[retrieval]\nindexes = ['x']\n", "retrieval.dataset is needed"),
    ("[rerank]\nname = 'tildev2'\n", "a reranker needs retrieval.indexes"),
    ("[reader.attention]\nprefill = 'magic'\n", "prefill='magic'"),
    ("[reader]\nattention = 'flash'\n", "attention 'flash'"),
    ("[retrieval]\nk = 'five'\n", "retrieval"),
    ("[reader\nmodel = 1\n", "not TOML"),
    ("[router]\nmode = 'sometimes'\n", "router.mode 'sometimes'"),
])
def test_bad_files_name_the_file_and_the_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        PipelineConfig.from_file(path)
    assert str(path) in str(error.value) and message in str(error.value)


def test_ask_prints_the_resolved_chain_with_flags_applied(capsys, tmp_path):
    path = tmp_path / "chain.toml"
    path.write_text(CHAIN)
    assert main(["ask", "--config", str(path), "--k", "7", "--attention", "full", "--device", "cpu",
                 "--print-config"]) == 0
    printed = tomllib.loads(capsys.readouterr().out)
    assert printed["retrieval"]["k"] == 7 and printed["reader"]["device"] == "cpu"
    assert printed["reader"]["dtype"] == "float32" and printed["reader"]["attention"]["prefill"] == "dense"
    assert printed["rerank"]["name"] == "query-likelihood"
    assert main(["ask", "q?", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read the pipeline config" in capsys.readouterr().err
