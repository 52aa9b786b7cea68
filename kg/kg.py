"""Knowledge-graph retrieval for KGQA (Amar's three aspects): entities, relations and subgraph paths.

A :class:`KnowledgeGraph` holds triples (a ``head<TAB>relation<TAB>tail`` file, or MetaQA's WikiMovies KB
as ``head|relation|tail``) as an adjacency list over both directions. For a question,
:class:`KGRetriever` returns

- **entities**: the topic entity, read from MetaQA's ``[brackets]``, else the longest span of the
  question that names an entity, else the closest entity name (fuzzy, ``difflib``);
- **relations**: the KB's relations in both directions, ranked by cosine similarity between the
  question (topic entity masked) and a short phrase per directed relation, with a dense encoder
  (``minilm-l6`` through :class:`sparsa.retrieval.dense.DenseEncoder`);
- **paths**: 1- and 2-hop relation paths that leave the topic entity, ranked by the similarity of
  their phrase to the question, each with the entities it reaches (grouped per path, so one item
  reads ``Tom Hanks acted in movies directed by: Ron Howard; Penny Marshall``).

Questions come from :func:`read_kg_questions` / :func:`load_metaqa`
(``question with [topic]\\tanswer1|answer2``).
"""

from __future__ import annotations

import difflib
import gzip
import logging
import pickle
import re
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparsa.errors import DataFormatError

logger = logging.getLogger(__name__)

_BRACKET = re.compile(r"\[([^\[\]]+)\]")
# (forward phrase: head -> tail, reverse phrase: tail -> head) for MetaQA's movie-centred relations.
RELATION_PHRASES: dict[str, tuple[str, str]] = {
    "directed_by": ("directed by", "directed"),
    "written_by": ("written by", "wrote"),
    "starred_actors": ("starring", "acted in"),
    "release_year": ("released in year", "release year of"),
    "in_language": ("in language", "language of"),
    "has_genre": ("has genre", "genre of"),
    "has_tags": ("tagged with", "tag of"),
    "has_imdb_rating": ("imdb rating", "imdb rating of"),
    "has_imdb_votes": ("imdb votes", "imdb votes of"),
}

# Question-like descriptions (forward, reverse) the dense encoder compares with the question: short
# phrases ("imdb votes") match questions poorly, what a question about the relation asks matches well.
RELATION_QUESTIONS: dict[str, tuple[str, str]] = {
    "directed_by": ("who directed this movie, its director", "which movies did this director direct"),
    "written_by": ("who wrote this movie, its screenwriter", "which movies did this writer write"),
    "starred_actors": ("who acted in this movie, its actors and cast",
                       "which movies did this actor star in or appear in"),
    "release_year": ("when was this movie released, its release year",
                     "which movies were released that year"),
    "in_language": ("what language is this movie in", "which movies are in this language"),
    "has_genre": ("what genre or type of film is this movie", "which movies are of this genre"),
    "has_tags": ("what is this movie about, its topics and tags", "which movies are about this topic"),
    "has_imdb_rating": ("how is this movie rated, its imdb rating", "which movies have this rating"),
    "has_imdb_votes": ("how popular is this movie, its imdb votes", "which movies have this many votes"),
}

Step = tuple[int, bool]  # (relation id, forward?)


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def normalize_name(name: str) -> str:
    return " ".join(name.lower().split())


class KnowledgeGraph:
    """Triples over named entities with adjacency in both directions (ids are list positions)."""

    def __init__(self, triples: Sequence[tuple[str, str, str]]):
        self.entities: list[str] = []
        self.relations: list[str] = []
        self._entity_id: dict[str, int] = {}
        self._relation_id: dict[str, int] = {}
        # entity id -> [(relation id, forward?, other entity id)], in file order
        self.edges: dict[int, list[tuple[int, bool, int]]] = defaultdict(list)
        for head, relation, tail in triples:
            h, t, r = self._entity(head), self._entity(tail), self._relation(relation)
            self.edges[h].append((r, True, t))
            self.edges[t].append((r, False, h))
        self._by_name = {normalize_name(name): i for i, name in enumerate(self.entities)}
        self.num_triples = len(triples)

    def _entity(self, name: str) -> int:
        if name not in self._entity_id:
            self._entity_id[name] = len(self.entities)
            self.entities.append(name)
        return self._entity_id[name]

    def _relation(self, name: str) -> int:
        if name not in self._relation_id:
            self._relation_id[name] = len(self.relations)
            self.relations.append(name)
        return self._relation_id[name]

    @classmethod
    def load(cls, path: str | Path) -> KnowledgeGraph:
        """Read a triples file (``.gz`` or plain): ``head<TAB>relation<TAB>tail`` lines, or MetaQA's
        ``head|relation|tail`` (a file whose first line has no tab); a malformed line raises
        DataFormatError naming the file and line."""
        path = Path(path)
        if not path.is_file():
            raise DataFormatError(path, "no such knowledge-base file")
        triples = []
        separator = None
        with _open_text(path) as lines:
            for number, line in enumerate(lines, 1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                separator = separator or ("\t" if "\t" in line else "|")
                parts = [p.strip() for p in line.split(separator)]
                if len(parts) != 3 or not all(parts):
                    shape = "head<TAB>relation<TAB>tail" if separator == "\t" else "head|relation|tail"
                    raise DataFormatError(path, f"expected {shape}, got {line[:80]!r}", number)
                triples.append((parts[0], parts[1], parts[2]))
        graph = cls(triples)
        logger.info("loaded %d triples, %d entities, %d relations from %s", len(triples),
                    len(graph.entities), len(graph.relations), path)
        return graph

    def entity_id(self, name: str) -> int | None:
        return self._by_name.get(normalize_name(name))

    def step_phrase(self, step: Step) -> str:
        relation, forward = step
        name = self.relations[relation]
        default = (name.replace("_", " "), "inverse " + name.replace("_", " "))
        return RELATION_PHRASES.get(name, default)[0 if forward else 1]

    def path_phrase(self, steps: Sequence[Step]) -> str:
        """``acted in`` / ``acted in movies directed by``: how a path reads after its start entity."""
        words = self.step_phrase(steps[0])
        for step in steps[1:]:
            # A reverse step ends on a movie (MetaQA heads are movies); a forward one on an attribute.
            # (the " movies " reading holds for MetaQA's movie-centred relations only)
            movie = not steps[0][1] and self.relations[steps[0][0]] in RELATION_PHRASES
            words += (" movies " if movie else ", which ") + self.step_phrase(step)
        return words

    def path_question(self, steps: Sequence[Step]) -> str:
        """What a question about this path asks, for relevance scoring against the question."""
        parts = []
        for relation, forward in steps:
            name = self.relations[relation]
            default = (f"the {name.replace('_', ' ')} of this", f"which have this {name.replace('_', ' ')}")
            parts.append(RELATION_QUESTIONS.get(name, default)[0 if forward else 1])
        return ", and then ".join(parts)

    def all_steps(self) -> list[Step]:
        return [(r, forward) for r in range(len(self.relations)) for forward in (True, False)]


@dataclass(frozen=True, slots=True)
class KGQuestion:
    id: str
    text: str
    answers: tuple[str, ...]
    hops: int = 0

    @property
    def bracketed(self) -> list[str]:
        return _BRACKET.findall(self.text)


def read_kg_questions(path: str | Path, id_prefix: str = "", hops: int = 0) -> list[KGQuestion]:
    """Questions with gold answers, ``question<TAB>answer1|answer2`` a line (MetaQA's format; ``.gz`` or
    plain); ids are ``{id_prefix}{line number}``."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "no such question file")
    questions = []
    with _open_text(path) as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            text, sep, answers = line.rstrip("\r\n").partition("\t")
            if not sep or not answers.strip():
                raise DataFormatError(path, "expected 'question\\tanswer1|answer2'", number)
            questions.append(KGQuestion(f"{id_prefix}{number}", text.strip(),
                                        tuple(a for a in answers.split("|") if a), hops))
    return questions


def load_metaqa(folder: str | Path, hops: int, split: str, limit: int | None = None,
                seed: int | None = None) -> list[KGQuestion]:
    """MetaQA ``{hops}-hop/vanilla/qa_{split}.txt[.gz]``; ``seed`` draws a fixed random ``limit`` subset."""
    base = Path(folder) / f"{hops}-hop" / "vanilla"
    path = next((p for p in (base / f"qa_{split}.txt.gz", base / f"qa_{split}.txt") if p.is_file()), None)
    if path is None:
        raise DataFormatError(base / f"qa_{split}.txt.gz", "no such MetaQA question file")
    return sample_questions(read_kg_questions(path, f"{hops}hop-{split}-", hops), limit, seed)


def sample_questions(questions: list[KGQuestion], limit: int | None, seed: int | None) -> list[KGQuestion]:
    """The first ``limit`` questions, or with ``seed`` a fixed random subset of ``limit`` (in file order)."""
    if limit is not None and limit < len(questions):
        if seed is None:
            return questions[:limit]
        picked = np.random.default_rng(seed).choice(len(questions), size=limit, replace=False)
        return [questions[i] for i in sorted(picked)]
    return questions


@dataclass(frozen=True, slots=True)
class PathItem:
    """Entities reached from the topic along one relation path, with the path's relevance score."""

    steps: tuple[Step, ...]
    tails: tuple[str, ...]
    score: float
    text: str
    vector: np.ndarray | None = None  # float32[e]: the encoder's vector of what the path asks


@dataclass(frozen=True, slots=True)
class KGRetrieval:
    question: str
    topic: str | None
    entities: tuple[str, ...]
    relations: tuple[tuple[str, float], ...]  # (phrase, score), best first
    paths: tuple[PathItem, ...] = field(default=())
    question_vector: np.ndarray | None = None  # float32[e]: the question, topic masked

    def triples_text(self) -> str:
        """All retrieved knowledge as plain text, one path per line (the plain-text baseline)."""
        return "\n".join(p.text for p in self.paths)


class KGRetriever:
    """Question -> :class:`KGRetrieval` over a :class:`KnowledgeGraph`.

    ``encoder`` is anything with ``encode(texts) -> float32[n, d]`` and L2-normalised rows
    (default: ``DenseEncoder`` over ``minilm-l6``).
    """

    def __init__(self, graph: KnowledgeGraph, encoder=None, max_paths: int = 6, max_tails: int = 3,
                 max_hops: int = 2, max_relations: int = 3, fan_out: int = 64):
        if encoder is None:
            from sparsa.retrieval.dense import DenseConfig, DenseEncoder

            encoder = DenseEncoder(DenseConfig(model="minilm-l6"))
        self.graph, self.encoder = graph, encoder
        self.max_paths, self.max_tails, self.max_hops = max_paths, max_tails, max_hops
        self.max_relations, self.fan_out = max_relations, fan_out
        steps = graph.all_steps()
        self.patterns: list[tuple[Step, ...]] = [(s,) for s in steps]
        if max_hops >= 2:
            self.patterns += [(a, b) for a in steps for b in steps]
        self._pattern_index = {p: i for i, p in enumerate(self.patterns)}
        texts = [graph.path_question(p) for p in self.patterns]
        self._pattern_vectors = np.asarray(encoder.encode(texts), dtype=np.float32)
        # One row object per pattern, shared by every path that follows it: a pickled cache of
        # retrievals then stores each pattern vector once (pickle memoises by object).
        self._pattern_rows = list(self._pattern_vectors)

    # -- entities
    def link_entities(self, question: str) -> list[str]:
        """Topic entity names: bracketed spans that name an entity, else the longest n-gram, else fuzzy."""
        graph = self.graph
        found = [graph.entities[i] for s in _BRACKET.findall(question)
                 if (i := graph.entity_id(s)) is not None]
        if found:
            return list(dict.fromkeys(found))
        words = _BRACKET.sub(lambda m: m.group(1), question).split()
        for size in range(min(len(words), 8), 0, -1):
            for start in range(len(words) - size + 1):
                span = " ".join(words[start:start + size]).strip("?.,!'\"")
                if size == 1 and len(span) < 4:
                    continue  # single short words ("in", "the") name entities too often
                if (i := graph.entity_id(span)) is not None:
                    return [graph.entities[i]]
        wanted = _BRACKET.findall(question) or [question]
        close = difflib.get_close_matches(normalize_name(wanted[0]), list(graph._by_name), n=1, cutoff=0.75)
        return [graph.entities[graph._by_name[close[0]]]] if close else []

    # -- relations and paths
    @staticmethod
    def _masked(question: str, topic: str | None) -> str:
        masked = _BRACKET.sub("X", question)
        if topic and topic.lower() in masked.lower():
            masked = re.sub(re.escape(topic), "X", masked, flags=re.IGNORECASE)
        return masked

    def _reachable(self, start: int) -> dict[tuple[Step, ...], Counter]:
        """Path pattern -> Counter of end entity ids, for 1..max_hops hops from ``start``."""
        found: dict[tuple[Step, ...], Counter] = defaultdict(Counter)
        by_step: dict[Step, list[int]] = defaultdict(list)
        for relation, forward, other in self.graph.edges.get(start, ()):
            by_step[(relation, forward)].append(other)
            found[((relation, forward),)][other] += 1
        if self.max_hops >= 2:
            for first, middles in by_step.items():
                for middle in middles[: self.fan_out]:  # hubs (a genre, a year) would explode 2-hop paths
                    for relation, forward, end in self.graph.edges.get(middle, ()):
                        if end != start:
                            found[(first, (relation, forward))][end] += 1
        return found

    def retrieve(self, question: str) -> KGRetrieval:
        return next(self.retrieve_many([question]))

    def retrieve_many(self, questions: Sequence[str], batch_size: int = 256) -> Iterator[KGRetrieval]:
        """Retrievals in input order; questions are encoded in batches."""
        for start in range(0, len(questions), batch_size):
            chunk = questions[start:start + batch_size]
            linked = [self.link_entities(q) for q in chunk]
            masked = [self._masked(q, e[0] if e else None) for q, e in zip(chunk, linked)]
            vectors = np.asarray(self.encoder.encode(masked), dtype=np.float32)
            for question, entities, q in zip(chunk, linked, vectors):
                yield self._retrieve_one(question, entities, q)

    def _retrieve_one(self, question: str, entities: list[str], q: np.ndarray) -> KGRetrieval:
        topic = entities[0] if entities else None
        step_scores = self._pattern_vectors[: len(self.graph.all_steps())] @ q
        order = np.argsort(-step_scores, kind="stable")[: self.max_relations]
        relations = tuple((self.graph.path_phrase(self.patterns[i]), float(step_scores[i])) for i in order)
        paths: list[PathItem] = []
        if topic is not None:
            reachable = self._reachable(self.graph.entity_id(topic))
            scored = sorted(((float(self._pattern_vectors[self._pattern_index[p]] @ q), p)
                             for p in reachable),
                            key=lambda x: -x[0])
            # Longer paths add words that match any question, so each path length gets its share of slots.
            share = -(-self.max_paths // self.max_hops)
            kept = [x for hops in range(1, self.max_hops + 1)
                    for x in [y for y in scored if len(y[1]) == hops][:share]]
            for score, pattern in sorted(kept, key=lambda x: -x[0])[: self.max_paths]:
                ends = [self.graph.entities[e] for e, _ in reachable[pattern].most_common(self.max_tails)]
                text = f"{topic} {self.graph.path_phrase(pattern)}: {'; '.join(ends)}"
                vector = self._pattern_rows[self._pattern_index[pattern]]
                paths.append(PathItem(pattern, tuple(ends), score, text, vector))
        return KGRetrieval(question, topic, tuple(entities), relations, tuple(paths), q)


class _CacheUnpickler(pickle.Unpickler):
    """Reads caches written before this module moved out of ``sparsa.rag`` (their classes
    name the old module)."""

    def find_class(self, module: str, name: str):
        return super().find_class(__name__ if module == "sparsa.rag.kg" else module, name)


def retrieve_cached(retriever: KGRetriever, questions: Sequence[KGQuestion], cache: str | Path | None
                    ) -> list[KGRetrieval]:
    """Retrievals for ``questions``, read from / written to a pickle ``cache`` keyed by question text."""
    stored: dict[str, KGRetrieval] = {}
    path = Path(cache) if cache is not None else None
    if path is not None and path.is_file():
        with path.open("rb") as f:
            stored = _CacheUnpickler(f).load()
    missing = [q.text for q in questions if q.text not in stored]
    if missing:
        from sparsa.progress import progress_bar

        with progress_bar(len(missing), "kg retrieval", "q") as bar:
            for text, retrieval in zip(missing, retriever.retrieve_many(missing)):
                stored[text] = retrieval
                bar.update(1)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            with tmp.open("wb") as f:
                pickle.dump(stored, f)
            tmp.replace(path)
    return [stored[q.text] for q in questions]
