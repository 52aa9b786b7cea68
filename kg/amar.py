"""Amar (Xu et al., AAAI 2025): multi-aspect KG knowledge as gated, self-aligned soft prompts.

Each retrieval (:mod:`sparsa.kg.kg`) becomes a list of **aspect items**: the entity aspect
("Entities: Tom Hanks"), the relation aspect ("Relations: acted in; directed; wrote") and one item
per retrieved path of the subgraph aspect ("Tom Hanks acted in movies directed by: Ron Howard").
:class:`AmarHead` turns them into soft prompts for a frozen causal LM:

1. **Encoding**: an item's text -> token embeddings from the LM's own (frozen) embedding table.
2. **Relevance gating**: one soft gate per item, ``g = sigmoid(MLP(question, item))`` in [0, 1], from
   the question and item vectors of the retriever's encoder, their product, the pooled (projected)
   LM embeddings, the retrieval score and the item's kind and length. A gate below
   ``gate_threshold`` closes: the item is left out of the prompt (except the ``min_open_paths``
   best-gated paths, so the subgraph aspect never vanishes); an open gate scales the item's
   embeddings by ``g`` (``gate_mode="scale"``) or lets them through unchanged (``"filter"``). Gates
   come before alignment, so a closed item influences nothing downstream: the prompt is exactly the
   one built without that item (a test checks this).
3. **Self-alignment**: each open item's token embeddings attend (multi-head cross-attention) to the
   pooled embeddings of all open items and the question; the result is added back through a learned
   scale that starts at 0, so an untrained head reproduces the plain-text prompt. The alignment loss
   (InfoNCE over a batch) pulls the aligned summaries of the aspects of one question together
   (entity with subgraph, relation with subgraph) and apart from other questions'; it sees the update
   at full strength and leaves the scale alone: only the answer loss decides how much of the update
   reaches the LM (an InfoNCE-grown scale shifted every prompt token and cost answers).
4. The gated, aligned embeddings go into the LM through ``inputs_embeds`` between a fixed prefix and
   the question; the answer-generation loss trains the head through the frozen LM.

Modes: ``"lm"`` (question only), ``"text"`` (every item as plain text: the same tokens with gates
at 1 and no alignment) and ``"amar"``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from sparsa.errors import ConfigError
from sparsa.kg.amar_prompt import ChatPieces, chat_pieces  # noqa: F401 - ChatPieces: re-exported
from sparsa.kg.kg import KGRetrieval
from sparsa.sdpa_backends import without_cudnn

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

KINDS = ("entities", "relations", "path")
Mode = Literal["lm", "text", "amar"]
@dataclass(frozen=True, slots=True)
class AmarConfig:
    model: str = "smollm2-135m-instruct"
    key_dim: int = 384  # the retriever encoder's vector size (minilm-l6)
    proj_dim: int = 128
    gate_hidden: int = 256
    align_heads: int = 4
    gate_threshold: float = 0.5
    min_open_paths: int = 1  # the best-gated paths stay open even below the threshold
    # "scale": open items enter multiplied by their gate; "filter": gates only decide which items enter.
    gate_mode: Literal["scale", "filter"] = "scale"
    max_new_tokens: int = 12
    # Low-rank adapters on the LM's linear layers (0: the LM stays frozen); trained with the head.
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                     "up_proj", "down_proj")

    def __post_init__(self) -> None:
        if not 0.0 <= self.gate_threshold <= 1.0:
            raise ConfigError(f"gate_threshold must lie in [0, 1], got {self.gate_threshold}")
        if self.gate_mode not in ("scale", "filter"):
            raise ConfigError(f"gate_mode {self.gate_mode!r}: expected scale or filter")
        if self.max_new_tokens < 1:
            raise ConfigError("max_new_tokens must be >= 1")
        if self.min_open_paths < 0:
            raise ConfigError(f"min_open_paths must be >= 0, got {self.min_open_paths}")
        if self.lora_rank < 0:
            raise ConfigError(f"lora_rank must be >= 0, got {self.lora_rank}")
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))  # JSON gives a list


@dataclass(frozen=True, slots=True)
class AspectItem:
    kind: str  # one of KINDS
    text: str
    key_vector: np.ndarray  # float32[key_dim]: what the item is about (zeros when unknown)
    score: float  # retrieval score (0 for entities)
    hops: int  # path length; 0 for entity and relation items
    tails: tuple[str, ...] = ()


def aspect_items(retrieval: KGRetrieval, key_dim: int = 384) -> list[AspectItem]:
    """Entity item, relation item, then one item per path (best first)."""
    zeros = np.zeros(key_dim, dtype=np.float32)
    items = []
    if retrieval.entities:
        items.append(AspectItem("entities", "Entities: " + "; ".join(retrieval.entities), zeros, 0.0, 0))
    if retrieval.relations:
        top = retrieval.relations[0][1]
        items.append(AspectItem("relations", "Relations: " + "; ".join(r for r, _ in retrieval.relations),
                                zeros, top, 0))
    for path in retrieval.paths:
        vector = zeros if path.vector is None else np.asarray(path.vector, dtype=np.float32)
        items.append(AspectItem("path", path.text, vector, path.score, len(path.steps), path.tails))
    return items


def _head_module(hidden: int, config: AmarConfig):
    import torch
    from torch import nn

    class AmarHead(nn.Module):
        """Relevance gates and self-alignment over aspect items (see the module docstring)."""

        def __init__(self):
            super().__init__()
            k, p = config.key_dim, config.proj_dim
            self.proj = nn.Linear(hidden, p)
            features = 3 * k + 2 * p + 3 + 3 + len(KINDS)
            self.gate = nn.Sequential(nn.Linear(features, config.gate_hidden), nn.GELU(),
                                      nn.Linear(config.gate_hidden, 1))
            # Bilinear question-item term: which relation path fits which question is an interaction
            # the concatenation MLP learns slowly.
            self.gate_q = nn.Linear(k, p, bias=False)
            self.gate_k = nn.Linear(k, p, bias=False)
            with torch.no_grad():
                self.gate[-1].bias.fill_(2.0)  # start open: an untrained head keeps every item
            self.align = nn.MultiheadAttention(hidden, config.align_heads, batch_first=True)
            self.align_scale = nn.Parameter(torch.zeros(()))
            self.align_proj = nn.Linear(hidden, p)

        def gates(self, q_key, q_pool, keys, pools, scores, hops, kinds):
            """Gate logits ``[n]`` for n items of one question. q_key [k], q_pool [h], keys [n, k],
            pools [n, h], scores [n], hops [n] (0..2), kinds [n] (index into KINDS)."""
            n = keys.shape[0]
            qp, ip = self.proj(q_pool).expand(n, -1), self.proj(pools)
            qk = q_key.expand(n, -1)
            onehot_hops = nn.functional.one_hot(hops.clamp(max=2), 3).float()
            onehot_kind = nn.functional.one_hot(kinds, len(KINDS)).float()
            # The score, its gap to the best item and its rank: the retriever's view of the item.
            gap = scores - scores.max()
            rank = torch.argsort(torch.argsort(-scores)).float() / max(n - 1, 1)
            x = torch.cat([qk, keys, qk * keys, ip, qp * ip, scores[:, None], gap[:, None], rank[:, None],
                           onehot_hops, onehot_kind], -1)
            bilinear = (self.gate_q(qk) * self.gate_k(keys)).sum(-1)
            return self.gate(x).squeeze(-1) + bilinear

        def aligned(self, token_embeds, pools, q_pool, strength=None):
            """Self-aligned token embeddings of open items: tokens [L, h] of each item attend to the
            pooled open items and the question. token_embeds: list of [L_i, h]; pools [n, h].
            The update enters with ``tanh(align_scale)`` (what reaches the LM, learned from the answer
            loss) unless ``strength`` is given (the alignment loss sees the update at full strength)."""
            memory = torch.cat([pools, q_pool[None]], 0)[None]  # [1, n + 1, h]
            tokens = torch.cat(list(token_embeds))  # every token attends on its own: one call for all items
            update, _ = self.align(tokens[None], memory, memory, need_weights=False)
            out = tokens + (torch.tanh(self.align_scale) if strength is None else strength) * update[0]
            return list(out.split([t.shape[0] for t in token_embeds]))

    return AmarHead()


def _lora_adapters(lm, config: AmarConfig):
    """LoRA adapters ``x -> B(A(x)) * alpha / rank`` (peft, :func:`sparsa.training.add_lora`) on the LM's
    linear layers named in ``config.lora_targets``. ``A`` starts from N(0, 1/in_features), ``B`` at 0,
    so untrained adapters leave the LM as it was. Returns a ``ModuleDict`` that holds the same ``A`` and
    ``B`` parameters as ``<layer path, '.' as '__'>.a`` / ``.b``: registered on the head, they are
    trained, saved and loaded with it, in the layout heads have always had."""
    import torch
    from torch import nn

    from sparsa.training import add_lora, lora_layers

    try:
        add_lora(lm, config.lora_rank, config.lora_alpha, config.lora_targets)
    except ConfigError:
        raise ConfigError(f"no linear layer of {config.model} is named one of "
                          f"{config.lora_targets}") from None
    adapters = nn.ModuleDict()
    for name, layer in lora_layers(lm).items():
        adapter = adapters[name.replace(".", "__")] = nn.Module()
        adapter.a, adapter.b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        with torch.no_grad():
            adapter.a.normal_(0.0, adapter.a.shape[1] ** -0.5)
    return adapters


class AmarModel:
    """A frozen causal LM plus an :class:`AmarHead`; builds prompts for the three modes."""

    def __init__(self, config: AmarConfig | None = None, device: str = "cpu"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from sparsa.models import resolve_model
        from sparsa.rag.reader import stop_token_ids

        self.config = config = config or AmarConfig()
        path = resolve_model(config.model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
        for p in self.lm.parameters():
            p.requires_grad_(False)
        self.device = torch.device(device)
        self.embedding = self.lm.get_input_embeddings()
        self.head = _head_module(self.lm.config.hidden_size, config).to(device)
        if config.lora_rank:  # registered on the head: trained, saved and loaded with it
            self.head.lora = _lora_adapters(self.lm, config)
        self._token_cache: dict[str, list[int]] = {}
        # The prompt's turn markers and the answer's end come from the LM's own chat template and
        # generation config (no ChatML written here).
        self.stop_ids = stop_token_ids(self.lm, self.tokenizer)
        self.chat = chat_pieces(self.tokenizer, self.stop_ids)
        self.pad_id = (self.tokenizer.pad_token_id
                       if self.tokenizer.pad_token_id is not None else self.stop_ids[0])

    # -- pieces
    def tokens(self, text: str) -> list[int]:
        if text not in self._token_cache:
            if len(self._token_cache) > 200_000:
                self._token_cache.clear()
            self._token_cache[text] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._token_cache[text]

    def _embed(self, text: str) -> torch.Tensor:
        return self._embed_ids(self.tokens(text))

    def _embed_ids(self, ids: Sequence[int]) -> torch.Tensor:
        import torch

        return self.embedding(torch.tensor(list(ids), dtype=torch.long, device=self.device))  # [L, h]

    def _embed_items(self, items: Sequence[AspectItem]) -> list[torch.Tensor]:
        """Token embeddings ``[L_i, h]`` of each item's line, from one lookup."""
        ids = [self.tokens(item.text + "\n") for item in items]
        return list(self._embed_ids([t for i in ids for t in i]).split([len(i) for i in ids]))

    def item_gates(self, retrieval: KGRetrieval, items: Sequence[AspectItem]) -> torch.Tensor:
        """Gate probabilities ``float32[n]`` in [0, 1] for the items of one question."""
        import torch

        return torch.sigmoid(self._gate_logits(retrieval, items)[0])

    def _gate_logits(self, retrieval: KGRetrieval, items: Sequence[AspectItem]):
        import torch

        dev = self.device
        k = self.config.key_dim
        q_key = torch.as_tensor(retrieval.question_vector if retrieval.question_vector is not None
                                else np.zeros(k, np.float32), device=dev)
        q_pool = self._embed(retrieval.question).mean(0)
        if not items:
            return torch.zeros(0, device=dev), q_pool, []
        token_embeds = self._embed_items(items)
        pools = torch.stack([t.mean(0) for t in token_embeds])
        keys = torch.as_tensor(np.stack([i.key_vector for i in items]), device=dev)
        scores = torch.tensor([i.score for i in items], dtype=torch.float32, device=dev)
        hops = torch.tensor([i.hops for i in items], dtype=torch.long, device=dev)
        kinds = torch.tensor([KINDS.index(i.kind) for i in items], dtype=torch.long, device=dev)
        logits = self.head.gates(q_key, q_pool, keys, pools, scores, hops, kinds)
        return logits, q_pool, token_embeds

    def prompt_embeds(self, retrieval: KGRetrieval, items: Sequence[AspectItem], mode: Mode,
                      gates: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """``float32[L, h]`` prompt embeddings and ``{"gates", "open"}``; ``gates`` overrides the head's."""
        import torch

        if mode not in ("lm", "text", "amar"):
            raise ConfigError(f"mode {mode!r}: expected lm, text or amar")
        suffix = self._embed(self.chat.suffix(retrieval.question))
        if mode == "lm" or not items:
            return torch.cat([self._embed(self.chat.prefix(False)), suffix]), {"gates": [], "open": []}
        if mode == "text":
            return torch.cat([self._embed(self.chat.prefix(True)), *self._embed_items(items), suffix]), \
                {"gates": [], "open": []}
        logits, q_pool, token_embeds = self._gate_logits(retrieval, items)
        probs = torch.sigmoid(logits) if gates is None else gates.to(self.device)
        levels = probs.detach().cpu().tolist()
        paths = sorted((i for i in range(len(items)) if items[i].kind == "path"), key=lambda i: -levels[i])
        must = set(paths[: self.config.min_open_paths])
        # Open items in prompt order: entity and relation aspects, then paths from the highest gate down
        # (a small LM copies the first fitting name it reads).
        open_ = [i for i in range(len(items))
                 if items[i].kind != "path" and levels[i] >= self.config.gate_threshold]
        open_ += [i for i in paths if i in must or levels[i] >= self.config.gate_threshold]
        parts = [self._embed(self.chat.prefix(True))]
        if open_:
            kept = [token_embeds[i] for i in open_]
            pools = torch.stack([t.mean(0) for t in kept])
            aligned = self.head.aligned(kept, pools, q_pool)
            if self.config.gate_mode == "scale":
                aligned = [probs[i] * a for i, a in zip(open_, aligned)]
            parts += aligned
        return torch.cat([*parts, suffix]), {"gates": levels, "open": open_,
                                             "logits": logits}

    def prompt_text(self, question: str, items: Sequence[AspectItem], shown: Sequence[int] | None = None,
                    mode: Mode = "text") -> str:
        """The prompt as text: the items ``shown`` (default all) as plain lines; in ``amar`` mode they
        enter as gated, aligned embeddings of these same tokens. ``lm`` mode shows no items."""
        shown = [] if mode == "lm" else range(len(items)) if shown is None else shown
        lines = "".join(items[i].text + "\n" for i in shown)
        return self.chat.prefix(mode != "lm" and bool(items)) + lines + self.chat.suffix(question)

    # -- generation
    def generate(self, retrievals: Sequence[KGRetrieval], mode: Mode, batch_size: int = 8) -> list[dict]:
        """Greedy answers: ``[{"answer", "gates", "open"}]`` in input order."""
        import torch

        results: list[dict] = [{} for _ in retrievals]
        order = sorted(range(len(retrievals)), key=lambda i: len(aspect_items(retrievals[i])))
        pad = self.embedding.weight.new_zeros(self.lm.config.hidden_size)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                built = [self.prompt_embeds(retrievals[i], aspect_items(retrievals[i], self.config.key_dim),
                                            mode) for i in batch]
                longest = max(e.shape[0] for e, _ in built)
                embeds = torch.stack([torch.cat([pad.expand(longest - e.shape[0], -1), e]) for e, _ in built])
                mask = torch.tensor([[0] * (longest - e.shape[0]) + [1] * e.shape[0] for e, _ in built],
                                    device=self.device)
                with without_cudnn(self.device):  # a new key length every step: cuDNN would plan each one
                    out = self.lm.generate(inputs_embeds=embeds, attention_mask=mask, do_sample=False,
                                           max_new_tokens=self.config.max_new_tokens,
                                           pad_token_id=self.pad_id, eos_token_id=self.stop_ids)
                for row, (i, (_, info)) in enumerate(zip(batch, built)):
                    text = self.tokenizer.decode(out[row], skip_special_tokens=True).strip()
                    results[i] = {"answer": text, "gates": info["gates"], "open": info["open"]}
        return results

    # -- persistence
    def save(self, folder: str | Path) -> None:
        import torch

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.head.state_dict(), folder / "amar_head.pt")
        (folder / "amar_config.json").write_text(json.dumps(asdict(self.config), indent=2))

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu", **overrides) -> AmarModel:
        """Load a saved head; ``overrides`` replace settings (``gate_mode``, ``gate_threshold``, ``lora_rank``
        to add untrained adapters to a head saved without them)."""
        import torch

        folder = Path(folder)
        if not (folder / "amar_head.pt").is_file():
            raise ConfigError(f"{folder}: no amar_head.pt; train one with 'sparsa train amar'")
        config = AmarConfig(**{**json.loads((folder / "amar_config.json").read_text()), **overrides})
        model = cls(config, device)
        missing, unexpected = model.head.load_state_dict(
            torch.load(folder / "amar_head.pt", map_location=device), strict=False)
        # A head saved without adapters may get fresh ones (lora_rank override): they start as identity.
        if unexpected or any(not name.startswith("lora.") for name in missing):
            raise ConfigError(f"{folder}: head does not fit the config (missing {missing}, "
                              f"unexpected {unexpected})")
        return model


def first_answer(generated: str) -> str:
    """The first name a generation gives ("Big, Splash and Cast Away" -> "Big")."""
    from sparsa.rag.answer_text import short_answer

    # After "The answer is" a small LM often writes ":" and a line break before the name.
    text = short_answer(generated.strip().lstrip(":").strip())
    if ":" in text:  # "The movies X acted in are: A; B" -> "A; B"
        text = text.rsplit(":", 1)[1]
    for sep in ("; ", " | ", "\n", ", ", " and ", ". "):
        text = text.split(sep)[0]
    return text.strip().strip("[]\"'*").strip()


def hits_at_1(generated: str, golds: Sequence[str]) -> float:
    """1.0 when the first answer given (or the whole short answer) matches a gold answer after
    SQuAD normalisation; whole-answer matching keeps names with commas ("Paris, Texas") correct."""
    from sparsa.rag.answer_text import exact_match, short_answer

    whole = short_answer(generated.strip().lstrip(":").strip()).strip("[]\"'*")
    return max(exact_match(first_answer(generated), golds), exact_match(whole, golds))
