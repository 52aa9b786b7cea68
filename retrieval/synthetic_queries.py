"""Synthetic training queries (InPars / Promptagator): a causal LM writes a query for each document of a
corpus, few-shot from a handful of (document, query) examples; a consistency filter keeps a pair only if a
first-stage retriever ranks its document in the top ``keep_top`` for the query; the kept pairs, with hard
negatives from the same ranking, are written in the training-examples format of ``sparsa train splade``.

Generation appends one JSON line per document to a log beside the output (``<name>.generated.jsonl``,
first line: the settings), so a killed job resumes where it stopped and a rerun with another filter setting
regenerates nothing. The filter runs over the whole log at the end and the pairs file is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sparsa.config import resolve_device
from sparsa.errors import ConfigError, DataFormatError
from sparsa.models import resolve_model
from sparsa.progress import progress_bar
from sparsa.sdpa_backends import without_cudnn
from sparsa.transformers_compat import cache_argument, returned_cache
from sparsa.types import Corpus, Document, Query

logger = logging.getLogger(__name__)

# Four SciFact *train* claims with their abstracts (cut to ~80 words); no test query of any collection.
DEFAULT_EXAMPLES = Path(__file__).with_name("fewshot_scifact_train.jsonl")
SYSTEM = ("You write search queries. Given a document, reply with one query, in the style of the earlier "
          "queries, for which the document is a relevant result. Reply with the query only.")
# The prompt's version: a change here makes an old generation log refuse to resume.
PROMPT_VERSION = 1
UNFINISHED = " [unfinished]"  # appended to an output that max_new_tokens cut off
KEPT_AT = (1, 3, 5, 10, 20)  # the report counts queries whose document ranks within each of these
_SENTENCE_END = re.compile(r"(?<=[.?!])[\"'”’]?\s+(?=[\"“]?[A-Z0-9])")
_PREFIX = re.compile(r"^\s*(?:(?:relevant|search|generated)\s+)*(?:query|question|claim)\s*\d*\s*:\s*",
                     re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class FewShotExample:
    document: str
    query: str


def read_examples(path: str | Path = DEFAULT_EXAMPLES) -> list[FewShotExample]:
    """JSONL, one object a line with ``document`` (or ``text``) and ``query``; other keys are ignored."""
    from sparsa.data.beir import json_records

    examples = []
    for number, record in json_records(path):
        document, query = record.get("document", record.get("text")), record.get("query")
        if not isinstance(document, str) or not isinstance(query, str) or not document.strip() \
                or not query.strip():
            raise DataFormatError(path, "expected non-empty string fields 'document' and 'query'", number)
        examples.append(FewShotExample(document.strip(), query.strip()))
    if not 1 <= len(examples) <= 16:
        raise DataFormatError(path, f"expected 1 to 16 few-shot examples, found {len(examples)}")
    return examples


@dataclass(frozen=True, slots=True)
class GenerationConfig:
    model: str = "smollm2-135m-instruct"
    per_doc: int = 1  # queries per document (more than one needs sampling)
    batch_size: int = 16  # documents per generate() call
    max_doc_tokens: int = 256  # documents and examples are cut to this many tokens in the prompt
    max_new_tokens: int = 40
    max_query_words: int = 32  # longer outputs are rejected
    copy_min_words: int = 8  # an output this long found verbatim in its document is a copy
    min_doc_words: int = 10  # shorter documents get no query
    sample: bool = False  # greedy unless set
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 13
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if min(self.per_doc, self.batch_size, self.max_doc_tokens, self.max_new_tokens,
               self.max_query_words, self.copy_min_words) < 1:
            raise ConfigError("per_doc, batch_size and the token and word limits must be >= 1")
        if self.per_doc > 1 and not self.sample:
            raise ConfigError("several queries per document need sampling (greedy decoding repeats one)")
        if self.sample and not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ConfigError("sampling needs temperature > 0 and 0 < top_p <= 1")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype {self.dtype!r}: expected auto, float32, bfloat16 or float16")

    def fingerprint(self, examples: Sequence[FewShotExample]) -> dict[str, Any]:
        """What a generation log must have been written with to be resumed (not batch size or device)."""
        settings = {k: v for k, v in asdict(self).items() if k not in ("batch_size", "device")}
        shots = json.dumps([asdict(e) for e in examples], ensure_ascii=False).encode()
        return {**settings, "prompt_version": PROMPT_VERSION,
                "examples_sha256": hashlib.sha256(shots).hexdigest()}


def _normal(text: str) -> str:
    return " ".join(re.sub(r"[^\w]+", " ", text.lower()).split())


def clean_query(raw: str, document: str, examples: Sequence[FewShotExample], config: GenerationConfig
                ) -> tuple[str, str | None]:
    """``(query, None)`` for a usable output, else ``(text, reason)``: its first sentence without a
    "Query:" label or quotes (small LMs run on into a summary); rejected when empty, over
    ``max_query_words``, an example's query repeated, or a span of ``copy_min_words`` or more words copied
    from the document."""
    lines = [line for line in raw.removesuffix(UNFINISHED).strip().splitlines() if line.strip()]
    sentences = _SENTENCE_END.split(_PREFIX.sub("", lines[0]).strip(), maxsplit=1) if lines else [""]
    text = sentences[0].strip().strip("\"'`“”*").strip()
    norm = _normal(text)
    if not norm:
        return text, "empty"
    if len(text.split()) > config.max_query_words or (raw.endswith(UNFINISHED) and len(sentences) == 1
                                                       and len(lines) == 1):
        return text, "too long"  # over the word limit, or cut off by max_new_tokens mid-sentence
    if norm in {_normal(e.query) for e in examples}:
        return text, "copies an example"
    if len(norm.split()) >= config.copy_min_words and norm in _normal(document):
        return text, "copies the document"
    return text, None


class QueryWriter:
    """The LM and its prompt: ``write(documents)`` -> ``per_doc`` raw outputs per document."""

    def __init__(self, config: GenerationConfig, examples: Sequence[FewShotExample]):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config, self.examples = config, list(examples)
        self.path = resolve_model(config.model)
        archs = _architectures(self.path)
        if archs and not any(a.endswith("ForCausalLM") for a in archs):
            raise ConfigError(f"{config.model} is not a causal LM ({archs[0]}): writing queries needs one")
        self.device = resolve_device(config.device)
        dtype = config.dtype if config.dtype != "auto" else (
            "bfloat16" if self.device.startswith("cuda") else "float32")
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=getattr(torch, dtype))
        self.model.to(self.device).eval()
        self.chat = bool(getattr(self.tokenizer, "chat_template", None))
        vocab = self.tokenizer.get_vocab()
        eos = self.model.generation_config.eos_token_id
        turn_ends = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>")
        stops = {*(eos if isinstance(eos, list) else [eos]), self.tokenizer.eos_token_id,
                 *(vocab[t] for t in turn_ends if t in vocab)}
        self.stop_ids = sorted(s for s in stops if s is not None)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.stop_ids[0]
        self._shots = [(self._cut(e.document), e.query) for e in self.examples]
        self._shared, self._template = self._split_prompt()
        self._cache = None
        logger.info("query writer %s on %s/%s (%s prompt, %d examples)", self.path, self.device, dtype,
                    "chat" if self.chat else "plain", len(self.examples))

    def _cut(self, text: str) -> str:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: self.config.max_doc_tokens]
        return self.tokenizer.decode(ids).strip()

    def prompt(self, document: Document) -> str:
        text = self._cut(document.full_text)
        if not self.chat:  # InPars' "vanilla" prompt for plain LMs
            shots = "".join(f"Example {i}:\nDocument: {d}\nRelevant Query: {q}\n\n"
                            for i, (d, q) in enumerate(self._shots, 1))
            return f"{shots}Example {len(self._shots) + 1}:\nDocument: {text}\nRelevant Query:"
        messages = [{"role": "system", "content": SYSTEM}]
        for d, q in self._shots:
            messages += [{"role": "user", "content": f"Document: {d}"}, {"role": "assistant", "content": q}]
        messages.append({"role": "user", "content": f"Document: {text}"})
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _split_prompt(self) -> tuple[list[int], str]:
        """The prompt's part shared by every document (system text and examples, up to the last turn's
        "Document: ") as token ids, and the rest as a template for the document's text."""
        marker = "@@DOCUMENT@@"
        whole = self.prompt(Document("-", marker))
        cut = whole.rindex("Document: ", 0, whole.index(marker))
        shared = self.tokenizer(whole[:cut], add_special_tokens=False)["input_ids"]
        return shared, whole[cut:].replace(marker, "{document}", 1)

    def _shared_cache(self, rows: int) -> Any:
        """The shared prompt's KV cache, computed once and repeated for ``rows`` rows: the examples are
        most of every prompt, so each batch prefills only its documents."""
        import copy

        import torch

        if self._cache is None:
            with torch.inference_mode():
                ids = torch.tensor([self._shared], device=self.device)
                self._cache = returned_cache(self.model(input_ids=ids, use_cache=True))
        cache = copy.deepcopy(self._cache)
        cache.batch_repeat_interleave(rows)
        return cache

    def write(self, documents: Sequence[Document]) -> list[list[str]]:
        import numpy as np
        import torch

        from sparsa.batching import pad_left

        n = self.config.per_doc
        rest = [self.tokenizer(self._template.replace("{document}", self._cut(d.full_text)),
                               add_special_tokens=False)["input_ids"] for d in documents for _ in range(n)]
        # [shared prompt][left padding][document part]: padding inside, masked out; positions follow the mask
        ids, mask, _ = pad_left(rest, self.pad_id)
        ids = np.concatenate([np.tile(np.array(self._shared, dtype=np.int64), (len(rest), 1)), ids], axis=1)
        mask = np.concatenate([np.ones((len(rest), len(self._shared)), dtype=np.int64), mask], axis=1)
        # A seed per batch, from its first document: a resumed run samples what the first run would have.
        first = int(hashlib.sha256(documents[0].id.encode()).hexdigest()[:8], 16)
        torch.manual_seed(self.config.seed + first)
        sampling = {"do_sample": True, "temperature": self.config.temperature, "top_p": self.config.top_p} \
            if self.config.sample else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        # a new key length every step: cuDNN would plan each one (sparsa/sdpa_backends.py)
        with torch.inference_mode(), without_cudnn(self.device):
            out = self.model.generate(
                input_ids=torch.from_numpy(ids).to(self.device),
                attention_mask=torch.from_numpy(mask).to(self.device),
                **{cache_argument(self.model): self._shared_cache(len(rest))},
                max_new_tokens=self.config.max_new_tokens,
                eos_token_id=self.stop_ids, pad_token_id=self.pad_id, stop_strings=["\n"],
                tokenizer=self.tokenizer, **sampling)
        new = out[:, ids.shape[1]:]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        # An output cut by max_new_tokens (no stop token, no line end) is marked: unfinished
        stopped = torch.isin(new, torch.tensor(self.stop_ids, device=new.device)).any(-1).tolist()
        texts = [t if done or "\n" in t else t + UNFINISHED for t, done in zip(texts, stopped, strict=True)]
        return [texts[i * n:(i + 1) * n] for i in range(len(documents))]


def _architectures(folder: str) -> list[str]:
    config = Path(folder) / "config.json"
    return json.loads(config.read_text()).get("architectures") or [] if config.is_file() else []


def select_documents(corpus: Corpus, max_docs: int | None = None, seed: int = 13) -> list[Document]:
    """Every document in file order, or the first ``max_docs`` of a seeded shuffle: the same on every run,
    and a smaller ``max_docs`` picks a prefix of a larger one's, so a stopped job can be closed early."""
    docs = list(corpus.documents)
    if max_docs is not None and max_docs < len(docs):
        random.Random(seed).shuffle(docs)
        docs = docs[:max_docs]
    return docs


def log_path(out: str | Path) -> Path:
    """The generation log beside the pairs file: ``pairs.jsonl.gz`` -> ``pairs.generated.jsonl``."""
    out = Path(out)
    return out.with_name(f"{out.name.removesuffix('.gz').removesuffix('.jsonl')}.generated.jsonl")


def read_log(path: Path, fingerprint: dict[str, Any]) -> dict[str, dict]:
    """Doc id -> its record, from a log written with the same settings. A half-written last line (a killed
    job) is cut off; any other bad line is an error naming the file and line."""
    if not path.is_file():
        return {}
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    if lines and lines[-1]:  # no newline at the end: the job died mid-line
        logger.warning("%s: dropping an unfinished last line", path)
        with open(path, "r+b") as f:
            f.truncate(len(raw) - len(lines[-1]))
    records: dict[str, dict] = {}
    for number, line in enumerate(lines[:-1], start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise DataFormatError(path, "not a JSON line of a generation log", number) from None
        if number == 1:
            _check_settings(path, record.get("settings") if isinstance(record, dict) else None, fingerprint)
        elif not isinstance(record, dict) or "doc_id" not in record or "queries" not in record:
            raise DataFormatError(path, "expected 'doc_id' and 'queries'", number)
        else:
            records[record["doc_id"]] = record
    return records


def _check_settings(path: Path, old: Any, new: dict[str, Any]) -> None:
    if not isinstance(old, dict):
        raise DataFormatError(path, "the first line must hold the generation settings", 1)
    changed = sorted(k for k in new.keys() | old.keys() if old.get(k) != new.get(k))
    if changed:
        raise ConfigError(f"{path} was generated with other settings ({', '.join(changed)}); keep the same "
                          "settings to resume, or delete it or choose another --out to start over")


def generate(config: GenerationConfig, examples: Sequence[FewShotExample], documents: Sequence[Document],
             log: Path, show_progress: bool | None = None, writer: QueryWriter | None = None) -> list[dict]:
    """Write queries for the documents the log lacks, appending a line per document after each batch;
    returns the records of every document asked for, in order. The LM loads only if a document is left
    (``writer``: one already loaded with the same config and examples)."""
    fingerprint = config.fingerprint(examples)
    done = read_log(log, fingerprint)
    todo = [d for d in documents if d.id not in done]
    if todo and writer is None:
        writer = QueryWriter(config, examples)
    if done:
        logger.info("resuming %s: %d of %d documents done", log, len(documents) - len(todo), len(documents))
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f, \
            progress_bar(len(documents), "writing queries", "doc", show_progress) as bar:
        if f.tell() == 0:
            f.write(json.dumps({"settings": fingerprint}) + "\n")
        bar.update(len(documents) - len(todo))
        for start in range(0, len(todo), config.batch_size):
            batch = todo[start:start + config.batch_size]
            short = {d.id for d in batch if len(d.full_text.split()) < config.min_doc_words}
            usable = [d for d in batch if d.id not in short]
            outputs = writer.write(usable) if usable else []
            for doc, raws in zip(usable, outputs, strict=True):
                done[doc.id] = {"doc_id": doc.id, "queries": _cleaned(raws, doc, examples, config)}
            for doc_id in short:
                done[doc_id] = {"doc_id": doc_id, "queries": [], "skipped": "short document"}
            f.write("".join(json.dumps(done[d.id], ensure_ascii=False) + "\n" for d in batch))
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(batch))
    return [done[d.id] for d in documents]


def _cleaned(raws: Sequence[str], doc: Document, examples: Sequence[FewShotExample],
             config: GenerationConfig) -> list[dict]:
    seen, rows = set(), []
    for raw in raws:
        query, reason = clean_query(raw, doc.full_text, examples, config)
        if reason is None and _normal(query) in seen:
            reason = "duplicate"
        seen.add(_normal(query))
        rows.append({"query": query, "raw": raw, "rejected": reason})
    return rows


def filter_pairs(records: Sequence[dict], corpus: Corpus, retriever: Any, keep_top: int = 3,
                 negatives: int = 4, seed: int = 13, show_progress: bool | None = None
                 ) -> tuple[list[dict], dict[str, Any]]:
    """Search every valid query with ``retriever``; keep a pair when its document ranks within ``keep_top``
    (0: keep all). Rows: ``query``, ``positive``, ``negatives`` (the top hits other than the document, as
    ``sparsa train splade --examples`` reads them), ``doc_id``, ``rank`` (None: not in the top ``depth``)."""
    from sparsa.retrieval.training_data import _negatives

    if keep_top < 0 or negatives < 1:
        raise ConfigError("keep_top must be >= 0 and negatives >= 1")
    pairs = [(r["doc_id"], q["query"]) for r in records for q in r["queries"] if q["rejected"] is None]
    depth = max(keep_top, *KEPT_AT, negatives + 20)
    run = retriever.search([Query(str(i), text) for i, (_, text) in enumerate(pairs)], k=depth,
                           show_progress=show_progress) if pairs else {}
    rng, rows, ranks = random.Random(seed), [], []
    for i, (doc_id, text) in enumerate(pairs):
        ranked = [h.doc_id for h in run.get(str(i), [])]
        if any(d not in corpus for d in ranked[:1]):
            raise ConfigError(f"the filter's index returned document {ranked[0]!r}, which the corpus lacks: "
                              "give an index built over this corpus")
        rank = ranked.index(doc_id) + 1 if doc_id in ranked else None
        ranks.append(rank)
        if keep_top == 0 or (rank is not None and rank <= keep_top):
            negs = _negatives(ranked, {doc_id}, negatives, corpus, rng)
            rows.append({"query": text, "positive": corpus[doc_id].full_text, "negatives": negs,
                         "doc_id": doc_id, "rank": rank})
    return rows, _report(records, ranks, len(rows), keep_top, depth)


def _report(records: Sequence[dict], ranks: Sequence[int | None], kept: int, keep_top: int,
            depth: int) -> dict[str, Any]:
    reasons = Counter(q["rejected"] for r in records for q in r["queries"] if q["rejected"])
    return {
        "documents": len(records),
        "skipped_documents": sum(1 for r in records if r.get("skipped")),
        "generated": sum(len(r["queries"]) for r in records),
        "rejected": dict(sorted(reasons.items())),
        "valid": len(ranks),
        "keep_top": keep_top,
        "kept": kept,
        "keep_rate": round(kept / len(ranks), 4) if ranks else 0.0,
        # how many valid queries find their document within each depth: the keep rate of other keep_top
        "found_within": {str(k): sum(1 for r in ranks if r is not None and r <= k) for k in KEPT_AT},
        "search_depth": depth,
    }
