"""Answering a question from a knowledge graph: KG retrieval, then a reader over what it found.

One code path for ``sparsa kg ask``, ``sparsa ask --kg FILE`` and ``/qa`` over a pipeline config with a
``[kg]`` table (``rag/config.py:KGConfig``):

- :class:`KGReader`: a triples file (``head<TAB>relation<TAB>tail`` lines, ``.gz`` or plain; MetaQA's
  ``head|relation|tail`` reads too) -> :class:`~sparsa.kg.kg.KGRetriever` (topic entity, relations,
  1-2 hop paths) -> :class:`~sparsa.kg.amar.AmarModel` in one of three modes: ``amar`` (a trained head's
  gated, aligned soft prompts), ``text`` (every retrieved item as a prompt line) or ``lm`` (no knowledge).
- :class:`KGPipeline`: the QA pipeline's interface (``answer``, ``stream``) over a reader, so ``sparsa
  ask`` and the service run a KG chain as they run a passage chain: mode ``recall`` reads without the
  graph (``lm``), ``auto`` and ``retrieve`` read from it; the route is ``kg``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sparsa.errors import ConfigError

MODES = ("amar", "text", "lm")


@dataclass(frozen=True, slots=True)
class KGAnswer:
    question: str
    answer: str  # the first name the reader gave
    generated: str  # the reader's whole answer
    mode: str
    topic: str | None
    knowledge: list[dict]  # {"kind", "text", "score", "gate"?} per retrieved item, in prompt order
    shown: list[int]  # the items the prompt holds
    prompt: str
    reader: str
    timings: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


class KGReader:
    """A knowledge graph, its retriever and a reader LM. ``head``: a folder from ``sparsa train amar``
    (its own LM reads; ``model`` must then be None); ``mode``: amar (needs ``head``), text or lm
    (default: amar with a head, else text)."""

    def __init__(self, graph: str | Path, head: str | Path | None = None, model: str | None = None,
                 mode: str | None = None, max_paths: int = 6, max_hops: int = 2,
                 max_new_tokens: int | None = None, device: str = "cpu", **head_settings: Any):
        from sparsa.kg.amar import AmarConfig, AmarModel
        from sparsa.kg.kg import KGRetriever, KnowledgeGraph

        self.mode = mode or ("amar" if head is not None else "text")
        if self.mode not in MODES:
            raise ConfigError(f"--mode {self.mode!r}: expected amar, text or lm")
        if self.mode == "amar" and head is None:
            raise ConfigError("--mode amar needs --head (a head trained with 'sparsa train amar')")
        if head is not None and model is not None:
            raise ConfigError("--model and --head: a head reads with the LM it was trained with; give one")
        if head_settings and head is None:
            raise ConfigError(f"{', '.join(head_settings)}: settings of a trained head; give --head")
        settings = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}
        self.graph = KnowledgeGraph.load(graph)
        self.retriever = KGRetriever(self.graph, max_paths=max_paths, max_hops=max_hops)
        if head is not None:
            self.reader = AmarModel.load(head, device, **settings, **head_settings)
        else:
            self.reader = AmarModel(AmarConfig(**({"model": model} if model else {}), **settings), device)

    @classmethod
    def from_config(cls, config: Any) -> KGReader:
        """From a :class:`~sparsa.rag.config.PipelineConfig` with a ``[kg]`` table: the graph settings
        from ``kg``, the reader LM, device and answer length from ``reader`` (a head brings its own LM)."""
        from sparsa.config import resolve_device

        kg, reader = config.kg, config.reader
        return cls(kg.path, head=kg.head, model=None if kg.head else reader.model, mode=kg.mode,
                   max_paths=kg.max_paths, max_hops=kg.max_hops, max_new_tokens=reader.max_new_tokens,
                   device=resolve_device(reader.device))

    def answer(self, question: str, mode: str | None = None) -> KGAnswer:
        """Retrieve from the graph and read; ``mode`` overrides the reader's (``lm``: no knowledge)."""
        from sparsa.kg.amar import aspect_items, first_answer

        question, mode = question.strip(), mode or self.mode
        if not question:
            raise ConfigError("the question is empty")
        if mode not in MODES or (mode == "amar" and self.mode != "amar"):
            raise ConfigError(f"mode {mode!r}: this reader answers in {self.mode} or lm mode")
        started = time.perf_counter()
        retrieval = self.retriever.retrieve(question)
        retrieved = time.perf_counter()
        generated = self.reader.generate([retrieval], mode, batch_size=1)[0]
        items = aspect_items(retrieval, self.reader.config.key_dim)
        shown = list(range(len(items))) if mode == "text" else list(generated["open"] or [])
        gates = generated["gates"]
        knowledge = [{"kind": item.kind, "text": item.text, "score": round(item.score, 4),
                      **({"gate": round(gates[i], 4)} if gates else {})} for i, item in enumerate(items)]
        finished = time.perf_counter()
        timings = {"retrieve": retrieved - started, "read": finished - retrieved, "total": finished - started}
        return KGAnswer(question, first_answer(generated["answer"]), generated["answer"], mode,
                        retrieval.topic, knowledge, shown,
                        self.reader.prompt_text(retrieval.question, items, shown, mode),
                        self.reader.config.model, timings)


    def evaluate(self, questions: list, mode: str | None = None, batch_size: int = 8,
                 cache: str | Path | None = None) -> dict:
        """Hits@1 (``sparsa.kg.amar.hits_at_1``: the first answer given, or the whole short answer,
        matches a gold answer) over ``KGQuestion`` s, with the mean per hop count; ``cache``: a pickle of
        retrievals to reuse (``retrieve_cached``)."""
        from sparsa.kg.amar import hits_at_1
        from sparsa.kg.kg import retrieve_cached

        mode = mode or self.mode
        if mode not in MODES or (mode == "amar" and self.mode != "amar"):
            raise ConfigError(f"mode {mode!r}: this reader answers in {self.mode} or lm mode")
        retrievals = retrieve_cached(self.retriever, questions, cache)
        outputs = self.reader.generate(retrievals, mode, batch_size=batch_size)
        hits = [hits_at_1(o["answer"], q.answers) for o, q in zip(outputs, questions, strict=True)]
        by_hops: dict[str, list[float]] = {}
        for question, hit in zip(questions, hits):
            by_hops.setdefault(f"{question.hops}-hop" if question.hops else "all", []).append(hit)
        return {"mode": mode, "questions": len(questions), "hits@1": round(sum(hits) / max(len(hits), 1), 4),
                "by_hops": {k: round(sum(v) / len(v), 4) for k, v in sorted(by_hops.items())},
                "reader": self.reader.config.model}


class KGPipeline:
    """``answer`` / ``stream`` as :class:`sparsa.rag.pipeline.QAPipeline` has them, over a
    :class:`KGReader`."""

    def __init__(self, reader: KGReader):
        self.reader = reader

    def answer(self, question: str, mode: str = "auto", as_of: Any = None) -> Any:
        *_, answer = self.stream(question, mode, as_of)
        return answer

    def stream(self, question: str, mode: str = "auto", as_of: Any = None) -> Iterator[Any]:
        """The answer text, then the pipeline's ``Answer`` (route ``kg``, or ``recall`` without the graph;
        ``knowledge``: the retrieved items, each marked ``shown`` when the prompt holds it)."""
        from sparsa.rag.config import MODES as ROUTES
        from sparsa.rag.pipeline import Answer

        if mode not in ROUTES:
            raise ConfigError(f"mode {mode!r}: expected one of {', '.join(ROUTES)}")
        if as_of is not None:
            raise ConfigError("as_of filters dated passages; a knowledge graph has no dates")
        found = self.reader.answer(question, "lm" if mode == "recall" else None)
        yield found.answer
        knowledge = [{**item, "shown": i in found.shown} for i, item in enumerate(found.knowledge)]
        yield Answer(question=question, text=found.answer, citations=[],
                     route="recall" if mode == "recall" else "kg", passages=[],
                     timings={"route": 0.0, "retrieve": found.timings["retrieve"], "rerank": 0.0,
                              "read": found.timings["read"], "total": found.timings["total"]},
                     knowledge=knowledge)
