"""LLM relevance judgements (LLMJudge / TREC DL 0-3 scale) from a local causal LM.

Three scorers share one LM (default SmolLM2-135M-Instruct):

- **UMBRELA-like prompt** (Upadhyay et al., 2024, the prompt style of the LLMJudge challenge): the
  DL grading scale plus the multi-aspect steps (intent, match M, trustworthiness T, final score O).
  Instead of sampling, the assistant turn is pre-filled with ``##final score: `` and the next-token
  distribution is read over the four labels "0".."3" (each one token): the label probabilities
  (renormalised over the four) and the expected grade ``sum_g g * p(g)``. On TREC DL 2019
  (bench/results/judge.json, calibrated, held-out queries) these carry no signal with SmolLM2-135M
  (4-grade kappa -0.02) and little with Qwen2.5-Coder-1.5B (0.08; the most probable label alone 0.02);
  query and passage likelihood do better (held-out kappa 0.20 / 0.24 for the settings chosen on the
  fit queries). Fine-tuning that read-out on the fit queries' grades (:mod:`sparsa.judge.train`,
  ``label_logits``) fitted them but did not carry over to unseen queries in cross-validation over the fit
  queries (judge.json "finetuned").
- **Query likelihood** log P(query | passage) (UPR), reusing
  :class:`sparsa.rerank.query_likelihood.QueryLikelihoodReranker` (same model object), plus the
  query's likelihood with an empty passage, ``ql_prior_logprob`` (one per query), so that the
  calibration can use the pointwise mutual information log P(q | p) - log P(q | no passage): raw
  QL favours queries made of frequent words and passages that repeat them. ``ql_prompts`` scores
  the query under several prompts (``QL_PROMPTS``), each with its own prior.
- **Passage likelihood** ("pl") log P(passage | query) and log P(passage | no query): the same PMI
  estimated in the other direction (by Bayes' rule the two are equal; the LM's estimates are not).

Speed: the instructions are the same for every pair, so they go in the system turn, are run through
the LM once, and their key/value cache is copied for each batch; only the per-pair part (query,
passage, the step list, the assistant prefix) is computed per pair. Rows are right-padded and
only each row's last hidden state goes through the LM head.

Raw scores become grades in :mod:`sparsa.judge.calibration`; checkpointed batch jobs live in
:mod:`sparsa.judge.job`.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from sparsa.errors import ConfigError
from sparsa.sdpa_backends import without_cudnn
from sparsa.transformers_compat import cache_argument, returned_cache
from sparsa.types import Document, Query

logger = logging.getLogger(__name__)

LABELS = ("0", "1", "2", "3")
SCORERS = ("umbrela", "ql", "pl")

UMBRELA_INSTRUCTIONS = (
    "Given a query and a passage, you must provide a score on an integer scale of 0 to 3 with the "
    "following meanings:\n"
    "3 = Perfectly relevant: The passage is dedicated to the query and contains the exact answer.\n"
    "2 = Highly relevant: The passage has some answer for the query, but the answer may be a bit unclear, "
    "or hidden amongst extraneous information.\n"
    "1 = Related: The passage seems related to the query but does not answer it.\n"
    "0 = Irrelevant: The passage has nothing to do with the query.\n"
    "Assume that you are writing an answer to the query. If the passage seems to be related to the query "
    "but does not include any answer to the query, mark it 1. If you would use any of the information "
    "contained in the passage in such an answer, mark it 2. If the passage is primarily about the query, "
    "or contains vital information about the topic, mark it 3. Otherwise, mark it 0."
)
UMBRELA_PAIR = (
    "Query: {query}\nPassage: {passage}\n"
    "Split this problem into steps:\n"
    "Consider the underlying intent of the search.\n"
    "Measure how well the content matches a likely intent of the query (M).\n"
    "Measure how trustworthy the passage is (T).\n"
    "Consider the aspects above and the relative importance of each, and decide on a final score (O). "
    "Final score must be an integer value only.\n"
    "Provide the score in the format of: ##final score: score, without providing any reasoning."
)
ANSWER_PREFIX = "##final score: "
PL_PROMPT = "Question: {query}\nPassage:"  # the passage follows after a space
# Query-likelihood prompts ({passage} is replaced, the query follows after a space); "question" is the
# query-likelihood reranker's; "chat" puts the request in the model's chat template (the query is the
# assistant's answer). Several prompts average out each one's quirks (see calibration's ql_pmi).
QL_PROMPTS = {
    "question": "Passage: {passage}\nPlease write a question based on this passage.\nQuestion:",
    "query": "Passage: {passage}\nWrite a web search query that this passage answers.\nQuery:",
    "plain": "{passage}\n\nThe passage above answers the search query:",
    "chat": "Read the passage and write the search query that it answers.\n\nPassage: {passage}",
}


@dataclass(frozen=True, slots=True)
class JudgeConfig:
    """``scorers``: any of "umbrela", "ql", "pl"; ``ql_prompts``: names in ``QL_PROMPTS`` (the first one
    gives ``ql_logprob``, all of them ``ql_logprobs``). Passages are cut to ``max_passage_tokens``."""

    model: str = "smollm2-135m-instruct"
    scorers: tuple[str, ...] = SCORERS
    max_passage_tokens: int = 256
    max_tokens_per_batch: int = 4096
    device: str = "cpu"
    dtype: str = "float32"
    ql_prompts: tuple[str, ...] = ("question",)

    def __post_init__(self) -> None:
        unknown = [s for s in self.scorers if s not in SCORERS]
        if unknown or not self.scorers:
            raise ConfigError(f"scorers {list(self.scorers)}: choose from {', '.join(SCORERS)}")
        if not self.ql_prompts or any(p not in QL_PROMPTS for p in self.ql_prompts):
            raise ConfigError(f"ql_prompts {list(self.ql_prompts)}: choose from {', '.join(QL_PROMPTS)}")
        if min(self.max_passage_tokens, self.max_tokens_per_batch) < 1:
            raise ConfigError("token limits must be >= 1")

    def fingerprint(self) -> dict:
        """What decides the scores (not the batch size or device): a checkpoint records it."""
        return {"model": self.model, "scorers": list(self.scorers),
                "max_passage_tokens": self.max_passage_tokens,
                "dtype": self.dtype, "instructions": UMBRELA_INSTRUCTIONS, "pair_template": UMBRELA_PAIR,
                "answer_prefix": ANSWER_PREFIX, "pl_prompt": PL_PROMPT,
                "ql_prompts": [QL_PROMPTS[p] for p in self.ql_prompts]}


class RelevanceJudge:
    """Scores (query, passage) pairs; ``score_pairs`` returns one record of raw scores per pair."""

    def __init__(self, config: JudgeConfig = JudgeConfig()):
        from sparsa.rerank.query_likelihood import QueryLikelihoodConfig, QueryLikelihoodReranker

        started = time.perf_counter()
        self.config = config
        self.ql = QueryLikelihoodReranker(QueryLikelihoodConfig(
            model=config.model, max_passage_tokens=config.max_passage_tokens,
            max_tokens_per_batch=config.max_tokens_per_batch, device=config.device, dtype=config.dtype))
        self.tokenizer, self.model = self.ql.tokenizer, self.ql.model
        self._ql_templates = [self._ql_template(name) for name in config.ql_prompts]
        self.label_ids = [self._single_token(label) for label in LABELS]
        self._prefix_ids, self._suffix_template = self._split_chat_prompt()
        self._prefix_cache = None
        # ("ql<prompt>", qid) / ("pl", docid) -> log-likelihood
        self._priors: dict[tuple[str, str], float] = {}
        logger.info("relevance judge ready (%s, scorers %s) in %.1f s", config.model,
                    ",".join(config.scorers), time.perf_counter() - started)

    def for_scorers(self, scorers: Sequence[str]) -> RelevanceJudge:
        """The same loaded LM (and prior cache) judging with other ``scorers``: a checkpoint holds one
        scorer set, and a 1.5B model is not worth loading once per scorer."""
        judge = copy.copy(self)
        judge.config = replace(self.config, scorers=tuple(scorers))
        return judge

    def _ql_template(self, name: str) -> tuple[list[int], list[int], str]:
        """(ids before the passage, ids after it, what precedes the query) of a query-likelihood prompt."""
        text, lead = QL_PROMPTS[name], " "
        if name == "chat" and getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True)
            lead = ""  # the assistant's turn starts on a fresh line
        before, _, after = text.partition("{passage}")
        return self.ql._ids(before), self.ql._ids(after), lead

    def _single_token(self, text: str) -> int:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ConfigError(f"label {text!r} is {len(ids)} tokens in this tokenizer; the judge needs one")
        return ids[0]

    def _split_chat_prompt(self) -> tuple[list[int], str]:
        """The chat-formatted prompt split into a shared prefix (token ids) and a per-pair text template."""
        marker = "\x00PAIR\x00"
        messages = [{"role": "system", "content": UMBRELA_INSTRUCTIONS}, {"role": "user", "content": marker}]
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:  # a base LM without a chat template: plain text turns
            text = f"{UMBRELA_INSTRUCTIONS}\n\n{marker}\n\n"
        before, _, after = text.partition(marker)
        # Cut the shared prefix at a newline so its tokens are the same as in the full prompt.
        cut = before.rstrip("\n").rfind("\n") + 1
        return self.tokenizer(before[:cut], add_special_tokens=False)["input_ids"], \
            before[cut:] + "{pair}" + after + ANSWER_PREFIX

    def prompt(self, query: Query, passage: Document) -> str:
        """The full UMBRELA prompt text of one pair."""
        return self.tokenizer.decode(self._prefix_ids) + self._pair_text(query, passage)

    def prompts(self, query: Query, passage: Document) -> dict[str, str]:
        """What each configured scorer fed the LM for this pair (the audit file records it)."""
        texts = {}
        if "umbrela" in self.config.scorers:
            texts["umbrela"] = self.prompt(query, passage)
        if "ql" in self.config.scorers:
            context, target = self._ql_sequence(query, passage)
            texts["ql"] = self.tokenizer.decode(context + target)  # the query is what gets scored
        if "pl" in self.config.scorers:
            context, target = self._pl_sequence(query, passage)
            texts["pl"] = self.tokenizer.decode(context + target)  # the passage is what gets scored
        return texts

    def _ql_sequence(self, query: Query, doc: Document, prompt: int = 0) -> tuple[list[int], list[int]]:
        """(context ids, query ids) for log P(query | passage) under ``config.ql_prompts[prompt]``."""
        before, after, lead = self._ql_templates[prompt]
        query_ids = self.ql._ids(lead + query.text)[: self.ql.config.max_query_tokens]
        if not query_ids:
            raise ConfigError(f"query {query.id!r} is empty after tokenisation")
        passage = self.tokenizer(doc.full_text, add_special_tokens=False, truncation=True,
                                 max_length=self.config.max_passage_tokens)["input_ids"]
        return before + passage + after, query_ids

    def _pl_sequence(self, query: Query | None, doc: Document) -> tuple[list[int], list[int]]:
        """(context ids, passage ids) for log P(passage | query); ``query`` None: no query (the prior)."""
        context = self.ql._ids(PL_PROMPT.format(query=query.text if query is not None else ""))
        passage = self.tokenizer(" " + doc.full_text, add_special_tokens=False, truncation=True,
                                 max_length=self.config.max_passage_tokens)["input_ids"]
        if not passage:
            raise ConfigError(f"document {doc.id!r} is empty after tokenisation")
        return context, passage

    def _prior_scores(self, kind: str, keys: Sequence[str],
                      sequence: Callable[[str], tuple[list[int], list[int]]]) -> list[float]:
        """Cached log-likelihoods without the other side (``kind`` "ql<prompt>": per query, "pl": per
        passage); ``sequence(key)`` builds the ids of a key not scored yet."""
        todo = [k for k in dict.fromkeys(keys) if (kind, k) not in self._priors]
        if todo:
            scores = self.ql.score_ids([sequence(k) for k in todo], show_progress=False)
            self._priors.update({(kind, k): float(v) for k, v in zip(todo, scores, strict=True)})
        return [self._priors[(kind, k)] for k in keys]

    def umbrela_suffix_ids(self, query: Query, passage: Document) -> list[int]:
        """The per-pair token ids of the UMBRELA prompt (after the shared prefix, up to the answer prefix)."""
        return self.tokenizer(self._pair_text(query, passage), add_special_tokens=False)["input_ids"]

    def _pair_text(self, query: Query, passage: Document) -> str:
        ids = self.tokenizer(passage.full_text, add_special_tokens=False, truncation=True,
                             max_length=self.config.max_passage_tokens)["input_ids"]
        text = self.tokenizer.decode(ids)
        return self._suffix_template.format(pair=UMBRELA_PAIR.format(query=query.text, passage=text))

    def score_pairs(self, pairs: Sequence[tuple[Query, Document]]) -> list[dict]:
        """One dict per pair: ``label_probs`` (float[4], sum 1), ``expected_grade``, ``label_mass``
        (the four labels' share of the full next-token distribution), ``ql_logprob`` (sum over query
        tokens), ``ql_prior_logprob`` (the query after an empty passage) and ``ql_tokens`` (the first QL
        prompt; with several, ``ql_logprobs`` / ``ql_prior_logprobs`` hold one per prompt); ``pl_logprob``,
        ``pl_prior_logprob`` (the passage without a query) and ``pl_tokens``; for the configured scorers."""
        records: list[dict] = [{} for _ in pairs]
        if "umbrela" in self.config.scorers and pairs:
            probs, mass = self._umbrela(pairs)
            for record, p, m in zip(records, probs, mass, strict=True):
                record.update(label_probs=[round(float(x), 6) for x in p],
                              expected_grade=round(float(p @ np.arange(4)), 6), label_mass=round(float(m), 6))
        if "ql" in self.config.scorers and pairs:
            self._score_ql(pairs, records)
        if "pl" in self.config.scorers and pairs:
            sequences = [self._pl_sequence(query, doc) for query, doc in pairs]
            scores = self.ql.score_ids(sequences, show_progress=False)
            docs = {d.id: d for _, d in pairs}
            priors = self._prior_scores("pl", [d.id for _, d in pairs],
                                        lambda i: self._pl_sequence(None, docs[i]))
            for record, score, prior, (_, target) in zip(records, scores, priors, sequences, strict=True):
                record.update(pl_logprob=round(float(score), 5), pl_prior_logprob=round(prior, 5),
                              pl_tokens=len(target))
        return records

    def _score_ql(self, pairs: Sequence[tuple[Query, Document]], records: list[dict]) -> None:
        """Query likelihood and its empty-passage prior under each of ``config.ql_prompts``."""
        empty = Document(id="", text="")
        queries = {q.id: q for q, _ in pairs}
        scores, priors = [], []
        for prompt in range(len(self._ql_templates)):
            sequences = [self._ql_sequence(query, doc, prompt) for query, doc in pairs]
            scores.append(self.ql.score_ids(sequences, show_progress=False))
            if prompt == 0:  # ql_tokens belongs to ql_logprob: the first prompt's query ids
                tokens = [len(target) for _, target in sequences]
            priors.append(self._prior_scores(f"ql{prompt}", [q.id for q, _ in pairs],
                                             lambda i, p=prompt: self._ql_sequence(queries[i], empty, p)))
        for row, record in enumerate(records):
            record.update(ql_logprob=round(float(scores[0][row]), 5),
                          ql_prior_logprob=round(priors[0][row], 5), ql_tokens=tokens[row])
            if len(scores) > 1:
                record.update(ql_logprobs=[round(float(s[row]), 5) for s in scores],
                              ql_prior_logprobs=[round(p[row], 5) for p in priors])

    def _umbrela(self, pairs: Sequence[tuple[Query, Document]]) -> tuple[np.ndarray, np.ndarray]:
        """``float32[n, 4]`` label probabilities and ``float32[n]`` label mass."""
        import torch

        from sparsa.batching import length_sorted_batches

        suffixes = [self.umbrela_suffix_ids(q, d) for q, d in pairs]
        probs = np.zeros((len(pairs), 4), dtype=np.float32)
        mass = np.zeros(len(pairs), dtype=np.float32)
        width = len(self._prefix_ids)
        batches = length_sorted_batches([len(s) + width for s in suffixes],
                                        max_tokens=self.config.max_tokens_per_batch)
        with torch.inference_mode():
            for batch in batches:
                logits = self._last_logits([suffixes[i] for i in batch]).float()  # [B, V]
                full = logits.log_softmax(-1)[:, self.label_ids]  # [B, 4]
                probs[batch] = full.softmax(-1).cpu().numpy()
                mass[batch] = full.exp().sum(-1).cpu().numpy()
        return probs, mass

    def prefix_states(self) -> list:
        """The shared prefix's per-layer (key, value) tensors ``[1, kv_heads, P, head_dim]``, computed now;
        with autograd on, gradients flow through them (fine-tuning, :mod:`sparsa.judge.train`)."""
        import torch

        ids = torch.tensor([self._prefix_ids], device=self.ql.device)
        cache = returned_cache(self.model(input_ids=ids, use_cache=True))
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _cached_prefix(self):
        """``prefix_states`` computed once; ``forget_prefix`` drops it after the weights change."""
        if self._prefix_cache is None:
            self._prefix_cache = self.prefix_states()
        return self._prefix_cache

    def forget_prefix(self) -> None:
        """Drop the cached prefix states (their weights were fine-tuned since)."""
        self._prefix_cache = None

    def label_logits(self, suffixes: Sequence[list[int]], prefix: list | None = None):
        """``[B, 4]`` logits of the label tokens "0".."3" after the prefix + each suffix
        (``umbrela_suffix_ids``): what the UMBRELA scorer reads, and what fine-tuning trains.
        ``prefix``: per-layer states from ``prefix_states`` (None: the cached ones)."""
        return self._last_logits(suffixes, prefix)[:, self.label_ids]

    def _last_logits(self, suffixes: Sequence[list[int]], prefix: list | None = None):
        """``[B, vocab]`` next-token logits after each prefix + suffix (suffixes right-padded)."""
        import torch
        from transformers import DynamicCache

        batch, width = len(suffixes), len(self._prefix_ids)
        longest = max(len(s) for s in suffixes)
        ids = torch.full((batch, longest), self.ql.pad_id, dtype=torch.long)
        mask = torch.zeros((batch, width + longest), dtype=torch.long)
        mask[:, :width] = 1
        for row, seq in enumerate(suffixes):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, width : width + len(seq)] = 1
        cache = DynamicCache()
        for layer, (keys, values) in enumerate(prefix if prefix is not None else self._cached_prefix()):
            cache.update(keys.expand(batch, -1, -1, -1).contiguous(),
                         values.expand(batch, -1, -1, -1).contiguous(), layer)
        positions = torch.arange(width, width + longest)[None].expand(batch, -1)
        device = self.ql.device
        backbone = self.model.model
        with without_cudnn(device):  # a new batch shape each time: cuDNN would plan each one
            hidden = backbone(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=True,
                              position_ids=positions.to(device),
                              **{cache_argument(backbone): cache}).last_hidden_state  # [B, longest, d]
        last = torch.tensor([len(s) - 1 for s in suffixes], device=device)
        return self.model.lm_head(hidden[torch.arange(batch, device=device), last])

    def describe(self) -> dict:
        return {"config": asdict(self.config), "prefix_tokens": len(self._prefix_ids)}
