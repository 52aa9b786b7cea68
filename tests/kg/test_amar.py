"""Amar head on the real SmolLM2-135M-Instruct: gates, masking == removing, save/load, training resume."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from sparsa.errors import ConfigError
from sparsa.kg.amar import AmarConfig, AmarModel, aspect_items, first_answer, hits_at_1
from sparsa.kg.kg import KGQuestion, KGRetrieval, PathItem

torch = pytest.importorskip("torch")


def _retrieval(paths: list[tuple[str, tuple[str, ...], int]]) -> KGRetrieval:
    rng = np.random.default_rng(0)
    items = tuple(PathItem(((0, False),) * hops, tails, 0.5 - 0.1 * i, text,
                           rng.normal(size=384).astype(np.float32))
                  for i, (text, tails, hops) in enumerate(paths))
    return KGRetrieval("what movies did [Tom Hanks] act in", "Tom Hanks", ("Tom Hanks",),
                       (("acted in", 0.6), ("directed", 0.3)), items, rng.normal(size=384).astype(np.float32))


PATHS = [("Tom Hanks acted in: Big; Splash", ("Big", "Splash"), 1),
         ("Tom Hanks acted in movies directed by: Ron Howard", ("Ron Howard",), 2),
         ("Tom Hanks acted in movies released in year: 1988", ("1988",), 2)]


@pytest.fixture(scope="module")
def model() -> AmarModel:
    torch.manual_seed(0)
    return AmarModel(AmarConfig())


def test_gates_lie_in_unit_interval(model):
    retrieval = _retrieval(PATHS)
    items = aspect_items(retrieval)
    assert [i.kind for i in items] == ["entities", "relations", "path", "path", "path"]
    with torch.no_grad():
        for p in model.head.gate.parameters():
            p.add_(torch.randn_like(p) * 5)  # extreme weights still give gates in [0, 1]
        gates = model.item_gates(retrieval, items)
    assert gates.shape == (5,) and bool(((gates >= 0) & (gates <= 1)).all())


def test_closed_gate_equals_removing_the_item(model):
    full, without = _retrieval(PATHS), _retrieval([PATHS[0], PATHS[2]])
    with torch.no_grad():
        model.head.align_scale.fill_(1.0)  # alignment active: the closed item must not leak through it
        gates = torch.tensor([0.9, 0.8, 0.7, 0.0, 0.6])
        masked, info = model.prompt_embeds(full, aspect_items(full), "amar", gates=gates)
        removed, _ = model.prompt_embeds(without, aspect_items(without), "amar", gates=gates[[0, 1, 2, 4]])
        assert info["open"] == [0, 1, 2, 4]
        torch.testing.assert_close(masked, removed)
        logits_masked = model.lm(inputs_embeds=masked[None]).logits
        logits_removed = model.lm(inputs_embeds=removed[None]).logits
        torch.testing.assert_close(logits_masked, logits_removed)
        scaled = model.config
        model.config = replace(scaled, gate_mode="filter")  # gates only select: same equivalence
        masked, _ = model.prompt_embeds(full, aspect_items(full), "amar", gates=gates)
        removed, _ = model.prompt_embeds(without, aspect_items(without), "amar", gates=gates[[0, 1, 2, 4]])
        model.config = scaled
        torch.testing.assert_close(masked, removed)
        model.head.align_scale.fill_(0.0)


def test_untrained_head_with_open_gates_is_the_plain_text_prompt(model):
    retrieval = _retrieval(PATHS)
    items = aspect_items(retrieval)
    with torch.no_grad():
        text, _ = model.prompt_embeds(retrieval, items, "text")
        amar, _ = model.prompt_embeds(retrieval, items, "amar", gates=torch.ones(len(items)))
        lm_only, _ = model.prompt_embeds(retrieval, items, "lm")
    torch.testing.assert_close(text, amar)
    assert lm_only.shape[0] < text.shape[0]


def test_save_load_round_trip(model, tmp_path):
    with torch.no_grad():
        model.head.align_scale.fill_(0.3)
        model.head.proj.weight.add_(0.01)
    model.save(tmp_path / "head")
    loaded = AmarModel.load(tmp_path / "head")
    for (name, a), (_, b) in zip(model.head.state_dict().items(), loaded.head.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    retrieval = _retrieval(PATHS)
    with torch.no_grad():
        torch.testing.assert_close(model.item_gates(retrieval, aspect_items(retrieval)),
                                   loaded.item_gates(retrieval, aspect_items(retrieval)))


def test_training_checkpoints_and_resumes(model, tmp_path):
    from sparsa.kg.amar_train import AmarTrainConfig, item_labels, train_amar

    retrieval = _retrieval(PATHS)
    question = KGQuestion("q1", retrieval.question, ("Splash", "Big"), 1)
    assert item_labels(aspect_items(retrieval), question.answers) == [None, None, 1.0, 0.0, 0.0]
    config = AmarTrainConfig(gate_epochs=1, gate_batch=2, lm_steps=1, lm_batch=1)
    record = train_amar(model, [retrieval, retrieval], [question, question], tmp_path / "run", config)
    assert record["gate_epochs"] == 1 and record["lm_steps"] == 1
    assert (tmp_path / "run" / "checkpoint.pt").is_file() and (tmp_path / "run" / "amar_head.pt").is_file()
    again = train_amar(model, [retrieval, retrieval], [question, question], tmp_path / "run", config)
    assert again["lm_steps"] == 1 and again["seconds_this_run"] < record["seconds_this_run"] + 5


def test_stage1_alignment_loss_leaves_the_prompt_alone(tmp_path):
    """Stage 1 trains the alignment at full strength; how much reaches the LM stays 0 until stage 2."""
    from sparsa.kg.amar_train import AmarTrainConfig, train_amar

    torch.manual_seed(0)
    fresh = AmarModel(AmarConfig())
    retrievals = [_retrieval(PATHS), _retrieval(PATHS[::-1])]
    questions = [KGQuestion(f"q{i}", r.question, ("Big",), 1) for i, r in enumerate(retrievals)]
    before = fresh.head.align.out_proj.weight.detach().clone()
    train_amar(fresh, retrievals, questions, tmp_path / "gates",
               AmarTrainConfig(gate_epochs=2, gate_batch=2, lm_steps=0))
    assert float(fresh.head.align_scale.detach()) == 0.0
    assert not torch.equal(before, fresh.head.align.out_proj.weight)  # the alignment itself did learn
    retrieval = retrievals[0]
    with torch.no_grad():
        text, _ = fresh.prompt_embeds(retrieval, aspect_items(retrieval), "text")
        amar, _ = fresh.prompt_embeds(retrieval, aspect_items(retrieval), "amar", gates=torch.ones(5))
    torch.testing.assert_close(text, amar)  # all gates open: still the plain-text prompt


def test_lora_adapters_start_as_identity_and_round_trip(model, tmp_path):
    torch.manual_seed(0)
    adapted = AmarModel(AmarConfig(lora_rank=4))
    assert len(adapted.head.lora) == 7 * adapted.lm.config.num_hidden_layers
    retrieval = _retrieval(PATHS)
    with torch.no_grad():
        embeds, _ = model.prompt_embeds(retrieval, aspect_items(retrieval), "text")
        frozen = model.lm(inputs_embeds=embeds[None]).logits
        torch.testing.assert_close(adapted.lm(inputs_embeds=embeds[None]).logits, frozen)  # B starts at 0
        for adapter in adapted.head.lora.values():
            adapter.b.normal_(0, 0.01)
        changed = adapted.lm(inputs_embeds=embeds[None]).logits
    assert not torch.allclose(changed, frozen)
    adapted.save(tmp_path / "lora")
    loaded = AmarModel.load(tmp_path / "lora")
    with torch.no_grad():
        torch.testing.assert_close(loaded.lm(inputs_embeds=embeds[None]).logits, changed)
    model.save(tmp_path / "plain")  # a head saved without adapters gains fresh (identity) ones
    grown = AmarModel.load(tmp_path / "plain", lora_rank=4)
    with torch.no_grad():
        torch.testing.assert_close(grown.lm(inputs_embeds=embeds[None]).logits, frozen)


def test_lora_heads_keep_their_saved_layout(tmp_path):
    """Adapters live in the LM (peft) and on the head under the names heads were always saved with, so a
    head saved by the earlier hand-written adapters (``lora.<layer path>.a`` / ``.b``) loads unchanged."""
    torch.manual_seed(0)
    adapted = AmarModel(AmarConfig(lora_rank=4))
    hidden = adapted.lm.config.hidden_size
    state = adapted.head.state_dict()
    assert state["lora.model__layers__0__self_attn__q_proj.a"].shape == (4, hidden)
    assert state["lora.model__layers__0__self_attn__q_proj.b"].shape[1] == 4
    old = {k: torch.randn_like(v) * 0.01 if k.startswith("lora.") else v for k, v in state.items()}
    adapted.save(tmp_path / "head")
    torch.save(old, tmp_path / "head" / "amar_head.pt")
    loaded = AmarModel.load(tmp_path / "head")
    layer = loaded.lm.model.layers[0].self_attn.q_proj
    torch.testing.assert_close(layer.lora_A["default"].weight,
                               old["lora.model__layers__0__self_attn__q_proj.a"])
    torch.testing.assert_close(layer.lora_B["default"].weight,
                               old["lora.model__layers__0__self_attn__q_proj.b"])


def test_generation_returns_one_answer_per_question(model):
    retrieval = _retrieval(PATHS)
    out = model.generate([retrieval, retrieval], "amar", batch_size=2)
    assert len(out) == 2 and all(isinstance(o["answer"], str) for o in out)


# The prompt Amar hard-coded before it read the LM's chat template (heads were trained on these tokens).
CHATML_PREFIX = "<|im_start|>user\nKnowledge:\n"
CHATML_PREFIX_NO_KNOWLEDGE = "<|im_start|>user\n"
CHATML_SUFFIX = ("Question: {question}\nAnswer with one name only.<|im_end|>\n"
                 "<|im_start|>assistant\nThe answer is")


def test_smollm2_prompt_tokens_are_the_chatml_ones_amar_always_used(model):
    tokenizer = model.tokenizer

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    retrieval = _retrieval(PATHS)
    items, question = aspect_items(retrieval), retrieval.question
    assert model.tokens(model.chat.prefix(True)) == ids(CHATML_PREFIX) == [1, 4093, 198, 35761, 42, 198]
    assert model.tokens(model.chat.prefix(False)) == ids(CHATML_PREFIX_NO_KNOWLEDGE)
    assert model.tokens(model.chat.suffix(question)) == ids(CHATML_SUFFIX.format(question=question))
    assert model.stop_ids == [2] and model.chat.end_of_turn == tokenizer.convert_tokens_to_ids("<|im_end|>")
    # the answer-loss target: the name, then the end of the turn, as " Big<|im_end|>" tokenised
    assert [*model.tokens(" Big"), model.chat.end_of_turn] == ids(" Big<|im_end|>")
    old_text = ids(CHATML_PREFIX) + [t for i in items for t in ids(i.text + "\n")] + \
        ids(CHATML_SUFFIX.format(question=question))
    old_lm = ids(CHATML_PREFIX_NO_KNOWLEDGE) + ids(CHATML_SUFFIX.format(question=question))
    with torch.no_grad():
        text, _ = model.prompt_embeds(retrieval, items, "text")
        lm_only, _ = model.prompt_embeds(retrieval, items, "lm")
        torch.testing.assert_close(text, model._embed_ids(old_text), rtol=0, atol=0)
        torch.testing.assert_close(lm_only, model._embed_ids(old_lm), rtol=0, atol=0)
    assert ids(model.prompt_text(question, items)) == old_text


LLAMA3 = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
          "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
          "{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
GEMMA = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}"
         "{{ raise_exception('System role not supported') }}{% endif %}"
         "{% if message['role'] == 'assistant' %}"
         "{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
         "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
         "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")


@pytest.mark.parametrize(("template", "bos", "specials", "expected"), [
    (LLAMA3, "<|begin_of_text|>", ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
     ("<|begin_of_text|>", "<|start_header_id|>user<|end_header_id|>\n\n",
      "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>")),
    (GEMMA, "<bos>", ["<start_of_turn>", "<end_of_turn>"],
     ("<bos>", "<start_of_turn>user\n", "<end_of_turn>\n<start_of_turn>model\n", "<end_of_turn>")),
])
def test_chat_pieces_follow_other_templates(model, template, bos, specials, expected):
    """Llama 3's and Gemma's layouts (their templates on a tokenizer given their special tokens): the turn
    markers, the BOS that opens the conversation and the end-of-turn token all come from the template."""
    import copy

    from sparsa.kg.amar_prompt import chat_pieces

    tokenizer = copy.deepcopy(model.tokenizer)
    tokenizer.add_special_tokens({"bos_token": bos, "additional_special_tokens": specials})
    tokenizer.chat_template = template
    end = tokenizer.convert_tokens_to_ids(expected[3])
    pieces = chat_pieces(tokenizer, stop_ids=[tokenizer.eos_token_id, end])
    assert (pieces.start, pieces.user_open, pieces.user_close, pieces.end_of_turn) == (*expected[:3], end)
    assert "<|im_start|>" not in pieces.prefix(True) + pieces.suffix("who directed [Big]")
    tokenizer.chat_template = None
    with pytest.raises(ConfigError, match="no chat template"):
        chat_pieces(tokenizer)


@pytest.mark.parametrize(("generated", "first", "hit"), [
    (' "Big".', "Big", 1.0),
    (" Big, Splash and Cast Away", "Big", 1.0),
    ("The movies he acted in are: Splash; Big", "Splash", 1.0),
    (" Paris, Texas", "Paris", 1.0),  # whole short answer matches a gold name with a comma
    (" Titanic", "Titanic", 0.0),
])
def test_hits_at_1(generated, first, hit):
    assert first_answer(generated) == first
    assert hits_at_1(generated, ["Big", "Splash", "Paris, Texas"]) == hit
