"""The routing experiment of ``bench/bench_rag.py routing`` in three steps, so generation can run on a
GPU machine that has neither Java nor the index:

- ``set`` (CPU, Java): the mixed question set (``rag/qa_sets.py``), each question's BM25 top-k passages
  over the union of the corpus-needing sources, and its corpus features (``subject_logdf``,
  ``relation_logdf``, ``subject_in_corpus``) -> one self-contained JSON file: questions, sources,
  dev/test splits, gold answers, features, and the retrieved passages' ids, titles and texts;
- ``generate`` (any device, no Java): every question answered closed-book and from its passages into
  the generation cache (JSONL, appended batch by batch, so a killed run keeps what it did);
- ``report`` (CPU): routers fitted on the dev half and scored on the test half, from the set file and
  the cache alone (``lm_logprob``, the reader's confidence, comes from the cached closed-book answer).

A cache entry's key hashes the model key (by default the resolved model folder, as the first
SmolLM2 cache was keyed), the reader settings that change a generation (budgets, ``max_new_tokens``,
attention, device, dtype), the route's prompt, the question and the passage ids: entries of
different readers or settings never mix, even in one file.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sparsa.types import Document

SET_FORMAT = "sparsa-routing-set/1"
ROUTERS = {"popularity": ("subject_logdf", "relation_logdf"), "confidence": ("lm_logprob",),
           "popularity+confidence": ("subject_logdf", "relation_logdf", "lm_logprob"),
           "popularity+coverage": ("subject_logdf", "relation_logdf", "subject_in_corpus")}


# -- step 1: the question set (CPU, Java)
def prepare_index(work: Path, docs: list[Document]) -> tuple[Path, Path]:
    """The mixed corpus as a JSONL file and its BM25 index, rebuilt when the passages change."""
    import shutil

    from sparsa.indexes import build_index
    from sparsa.types import Corpus

    corpus_file, index = work / "mixed" / "corpus.jsonl", work / "mixed-bm25"
    stamp = work / "mixed" / "fingerprint"
    fingerprint = hashlib.sha1("\n".join(d.id for d in docs).encode()).hexdigest()
    if not stamp.exists() or stamp.read_text() != fingerprint:
        shutil.rmtree(index, ignore_errors=True)
        corpus_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = corpus_file.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n" for d in docs))
        tmp.rename(corpus_file)
        stamp.write_text(fingerprint)
    if not (index / "sparsa.json").exists():
        build_index("bm25", Corpus(docs), index, threads=1)
    return corpus_file, index


def build_set(data: Path, work: Path, per_source: int, seed: int, k: int) -> dict:
    """Questions with their top-``k`` BM25 passages and corpus features, as one JSON-ready dict."""
    from sparsa.rag.qa_sets import NEEDS_CORPUS, mixed_question_set
    from sparsa.rag.routing import TermStats, question_features
    from sparsa.search import open_retriever
    from sparsa.types import Corpus, Query

    examples, docs = mixed_question_set(data, per_source, seed)
    _, index_path = prepare_index(work, docs)
    corpus = Corpus(docs)
    stats = TermStats.from_corpus(corpus)
    hits = open_retriever(index_path).search([Query(e.id, e.question) for e in examples], k=k)
    questions, passages = [], {}
    for e in _interleaved(examples):
        ids = [h.doc_id for h in hits[e.id]]
        features = question_features(e.question, stats)
        features.pop("lm_logprob")  # the reader's, added by the report from the cache
        questions.append({"id": e.id, "source": e.source, "split": e.split, "question": e.question,
                          "answers": list(e.answers), "passages": ids, "features": features})
        passages.update({i: {"title": corpus[i].title, "text": corpus[i].text} for i in ids})
    setup = {"per_source": per_source, "seed": seed, "k": k, "corpus_passages": len(docs),
             "index": f"Lucene BM25 (k1 0.9, b 0.4) over the union of the corpus-needing sources {list(NEEDS_CORPUS)}"}
    return {"format": SET_FORMAT, "setup": setup, "questions": questions, "passages": passages}


def read_set(path: Path) -> dict:
    qset = json.loads(Path(path).read_text())
    if qset.get("format") != SET_FORMAT:
        raise SystemExit(f"{path}: not a routing set ({SET_FORMAT}); write one with 'routing --step set'")
    return qset


def set_passages(qset: dict, question: dict) -> list[Document]:
    return [Document(i, qset["passages"][i]["text"], qset["passages"][i]["title"]) for i in question["passages"]]


def _interleaved(examples: list) -> list:
    """Round-robin over sources, so a partial run covers every source evenly."""
    rank: dict[str, int] = {}
    keyed = []
    for e in examples:
        rank[e.source] = rank.get(e.source, 0) + 1
        keyed.append((rank[e.source], e.source, e))
    return [e for *_, e in sorted(keyed, key=lambda t: t[:2])]


# -- step 2: generation (any device)
class GenerationCache:
    """Reader outputs on disk, one JSON line each, keyed by model key, settings, prompt, question, passages."""

    def __init__(self, path: Path, model_key: str, config):
        from sparsa.rag import reader as prompts  # the prompt of each route is part of its key

        self.path, self.model_key, self.config = Path(path), model_key, config
        c = config  # the fields that change a generation
        self.settings = [model_key, c.max_context_tokens, c.max_passage_tokens, c.max_new_tokens, c.attention,
                         c.device, c.dtype, sorted(c.sparse_settings.items())]
        self.tags = {"recall": json.dumps([self.settings, prompts.RECALL_SYSTEM, prompts.RECALL_EXAMPLE]),
                     "retrieve": json.dumps([self.settings, prompts.READ_SYSTEM, prompts.READ_EXAMPLE])}
        self.entries = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    entry = json.loads(line)
                    self.entries[entry["key"]] = entry

    def key(self, question: str, passage_ids: Sequence[str]) -> str:
        tag = self.tags["retrieve" if passage_ids else "recall"]
        return hashlib.sha1(json.dumps([tag, question, list(passage_ids)]).encode()).hexdigest()

    def get(self, question: str, passage_ids: Sequence[str]) -> dict | None:
        return self.entries.get(self.key(question, passage_ids))

    def fill(self, reader, items: Sequence[tuple[str, Sequence[Document]]], batch_size: int = 1,
             log=print) -> int:
        """Generate the missing ``(question, passages)`` answers ``batch_size`` at a time; returns how many."""
        missing = list({self.key(q, [d.id for d in p]): (q, p) for q, p in items
                        if self.get(q, [d.id for d in p]) is None}.items())
        started, chunk = time.perf_counter(), max(batch_size, 1) * 8  # appended to disk chunk by chunk
        for begin in range(0, len(missing), chunk):
            part = missing[begin: begin + chunk]
            outputs = reader.answer_batch([item for _, item in part], batch_size=batch_size)
            with self.path.open("a") as f:
                for (key, (question, passages)), out in zip(part, outputs, strict=True):
                    entry = {"key": key, "settings": self.settings, "question": question, "text": out.text,
                             "raw": out.raw, "citations": out.citations, "passages": out.passages,
                             "retrieved": [d.id for d in passages], "mean_logprob": out.mean_logprob,
                             "timings": out.timings, "prompt_tokens": out.prompt_tokens, "new_tokens": out.new_tokens}
                    f.write(json.dumps(entry) + "\n")
                    self.entries[key] = entry
            log(f"generated {begin + len(part)}/{len(missing)} in {time.perf_counter() - started:.1f} s")
        return len(missing)

    def settings_present(self) -> list[str]:
        """The settings of the cached entries (older entries carry none), for error messages."""
        return sorted({json.dumps(e.get("settings", "?")) for e in self.entries.values()})


def generation_items(qset: dict) -> list[tuple[str, list[Document]]]:
    """Each question closed-book and with its passages."""
    return [item for q in qset["questions"] for item in ((q["question"], []), (q["question"], set_passages(qset, q)))]


# -- step 3: the report (CPU)
def score(rows: list[dict], routes: Sequence[bool]) -> dict:
    if not rows:
        return {"em": None, "f1": None, "retrievals": 0, "questions": 0}
    em = [r["em_retrieve"] if go else r["em_recall"] for r, go in zip(rows, routes, strict=True)]
    f1 = [r["f1_retrieve"] if go else r["f1_recall"] for r, go in zip(rows, routes, strict=True)]
    return {"em": round(float(np.mean(em)), 4), "f1": round(float(np.mean(f1)), 4),
            "retrievals": int(sum(routes)), "questions": len(rows)}


def routed_values(rows: list[dict], routes: Sequence[bool], metric: str) -> np.ndarray:
    return np.array([r[f"{metric}_retrieve"] if go else r[f"{metric}_recall"] for r, go in zip(rows, routes, strict=True)])


def paired_bootstrap(a: np.ndarray, b: np.ndarray, resamples: int = 10_000, seed: int = 0) -> dict:
    """Mean of ``a - b`` over paired questions and its bootstrap 95% interval."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    means = diff[np.random.default_rng(seed).integers(0, len(diff), size=(resamples, len(diff)))].mean(1)
    return {"diff": round(float(diff.mean()), 4), "ci95": [round(float(np.quantile(means, q)), 4) for q in (0.025, 0.975)]}


def answer_rows(qset: dict, cache: GenerationCache) -> list[dict]:
    """One row per question: both answers, their EM/F1 and the routing features."""
    from sparsa.rag.answer_text import exact_match, short_answer, token_f1

    rows, missing = [], 0
    for q in qset["questions"]:
        closed, opened = cache.get(q["question"], []), cache.get(q["question"], q["passages"])
        if closed is None or opened is None:
            missing += 1
            continue
        recall, retrieve = short_answer(closed["raw"]), short_answer(opened["raw"])  # the current rules
        passages, answers = set_passages(qset, q), q["answers"]
        rows.append({"id": q["id"], "source": q["source"], "split": q["split"],
                     "features": {**q["features"], "lm_logprob": closed["mean_logprob"]},
                     "recall": recall, "retrieve": retrieve,
                     "em_recall": exact_match(recall, answers), "f1_recall": token_f1(recall, answers),
                     "em_retrieve": exact_match(retrieve, answers), "f1_retrieve": token_f1(retrieve, answers),
                     "citations_in_retrieved": set(opened["citations"]) <= set(q["passages"]),
                     "answer_in_passages": any(_contains(passages, a) for a in answers[:5])})
    if missing:
        raise SystemExit(f"{cache.path}: {missing} of {len(qset['questions'])} questions have no cached answer "
                         f"for settings {json.dumps(cache.settings)}; the cache holds "
                         f"entries of {cache.settings_present()} (model key first; run the generate step, or pass the --model-key, "
                         "--device, --dtype and token budgets it ran with)")
    return rows


def _contains(passages: list[Document], answer: str) -> bool:
    from sparsa.rag.answer_text import normalize_answer

    needle = f" {normalize_answer(answer)} "
    return needle.strip() != "" and any(needle in f" {normalize_answer(d.full_text)} " for d in passages)


def report(qset: dict, rows: list[dict], router_file: Path | None) -> dict:
    """Fixed policies, each router fitted on dev, the oracle; on test, overall and by source."""
    from sparsa.rag.qa_sets import SOURCES
    from sparsa.rag.routing import Router, fit_router

    dev = [r for r in rows if r["split"] == "dev"]
    test = [r for r in rows if r["split"] == "test"]
    fixed = {"always-retrieve": [True] * len(test), "never-retrieve": [False] * len(test)}
    table = {name: score(test, routes) for name, routes in fixed.items()}
    best_fixed = max(fixed, key=lambda name: (table[name]["f1"], -table[name]["retrievals"]))
    routers, choice, fitted = {}, {}, {}
    policies = dict(fixed)
    for name, features in ROUTERS.items():
        model = fit_router([r["features"] for r in dev], [r["f1_retrieve"] for r in dev],
                           [r["f1_recall"] for r in dev], names=features, info={"dev_questions": len(dev)})
        routes = [model.route(r["features"]) == "retrieve" for r in test]
        policies[f"routed ({name})"] = routes
        table[f"routed ({name})"] = score(test, routes)
        dev_score = score(dev, [model.route(r["features"]) == "retrieve" for r in dev])
        choice[name] = (dev_score["f1"], -dev_score["retrievals"])
        routers[name] = {"weights": dict(zip(features, model.weights, strict=True)), "bias": model.bias,
                         "threshold": model.threshold, "dev": dev_score,
                         "retrieve_rate_by_source": {s: round(float(np.mean([go for r, go in zip(test, routes, strict=True)
                                                                              if r["source"] == s] or [0])), 3)
                                                     for s in SOURCES}}
        fitted[name] = model
    dev_choice = max(choice, key=choice.get)
    if router_file is not None:
        Router(fitted[dev_choice], stats=None).save(router_file)  # sparsa ask --router FILE (the model only)
    policies["oracle"] = [r["f1_retrieve"] > r["f1_recall"] for r in test]
    table["oracle"] = score(test, policies["oracle"])
    versus = {name: {metric: paired_bootstrap(routed_values(test, routes, metric),
                                              routed_values(test, policies[best_fixed], metric))
                     for metric in ("f1", "em")}
              for name, routes in policies.items() if name not in fixed}
    by_source = {s: {name: score([r for r in test if r["source"] == s], [go for r, go in zip(test, routes, strict=True)
                                                                       if r["source"] == s])
                     for name, routes in policies.items() if name in fixed or name == "oracle"}
                 for s in SOURCES}
    print_table(table)
    return {
        "setup": {**qset["setup"], "dev_questions": len(dev), "test_questions": len(test),
                  "metric": "SQuAD EM/F1, best over gold aliases"},
        "test": table, "by_source_test": by_source, "routers": routers,
        "dev_choice": dev_choice,
        "versus_best_fixed": {"best_fixed": best_fixed, "paired_bootstrap_test": versus},
        "citations_within_retrieved": float(np.mean([r["citations_in_retrieved"] for r in rows])),
        "gold_answer_in_top_k": {s: round(float(np.mean([r["answer_in_passages"] for r in rows if r["source"] == s]
                                                        or [0])), 3) for s in SOURCES},
    }


def print_table(table: dict) -> None:
    print(f"{'policy':32} {'EM':>7} {'F1':>7} {'retrievals':>11}")
    for name, row in table.items():
        print(f"{name:32} {row['em']:7.3f} {row['f1']:7.3f} {row['retrievals']:>5}/{row['questions']}")
