"""Amar's held-out dev questions and the choice of its inference settings on them, as the record's.

``bench/bench_amar.py`` (the published record), ``sparsa train amar`` and ``sparsa kg tune`` all go
through these functions, so the CLI trains on the record's questions and chooses the way it chose:

- :func:`split_dev`: a fixed random subset of ``train + val`` questions (:func:`sample_questions`, ``seed``),
  then a permutation (``seed + 1``) whose first ``val`` questions are held out ("dev-val") and whose
  rest are trained on ("dev-train"). Training never sees a dev-val question.
- :func:`question_sets`: that draw over a MetaQA folder (one set per hop) or over one question file.
- :data:`GRID`: the inference settings the record tried (gate mode, threshold, paths kept open).
- :func:`tune`: every head under every setting scored on dev-val (Hits@1 per set); the chosen candidate
  has the highest mean over the sets, the first one on ties (bench_amar's ``best()``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sparsa.errors import ConfigError, DataFormatError
from sparsa.kg.kg import KGQuestion, KGRetrieval, load_metaqa, read_kg_questions, sample_questions

if TYPE_CHECKING:
    from sparsa.kg.amar import AmarModel

logger = logging.getLogger(__name__)

SETTING_KEYS = ("gate_mode", "gate_threshold", "min_open_paths")
GRID: tuple[dict[str, Any], ...] = (
    {"gate_mode": "filter", "gate_threshold": 0.5, "min_open_paths": 1},
    {"gate_mode": "filter", "gate_threshold": 0.9, "min_open_paths": 1},
    {"gate_mode": "filter", "gate_threshold": 0.9, "min_open_paths": 2},
    {"gate_mode": "scale", "gate_threshold": 0.5, "min_open_paths": 1},
)
RULE = "dev-val Hits@1, mean over the question sets; the first candidate on ties"


def record_precision(device: str) -> None:
    """TF32 matmuls on CUDA, as bench_amar.py ran the record (float32 weights; faster, and the same
    numerics as the record's)."""
    if str(device).startswith("cuda"):
        import torch

        torch.backends.cuda.matmul.allow_tf32 = True


def split_dev(questions: list[KGQuestion], train: int | None, val: int, seed: int
              ) -> tuple[list[KGQuestion], list[KGQuestion]]:
    """(train, val): ``train + val`` questions drawn with ``seed`` (all when ``train`` is None), then the
    first ``val`` of a ``seed + 1`` permutation held out. With ``val`` 0: every drawn question, in file
    order (what ``sparsa train amar`` trained on before dev-val was held out)."""
    if val < 0 or (train is not None and train < 1):
        raise ConfigError(f"need --questions >= 1 and --val-questions >= 0, got {train} and {val}")
    drawn = sample_questions(questions, None if train is None else train + val, seed)
    if not val:
        return drawn, []
    if val >= len(drawn):
        raise ConfigError(f"--val-questions {val} holds out all {len(drawn)} questions drawn; none is left "
                          "to train on")
    order = np.random.default_rng(seed + 1).permutation(len(drawn))
    return [drawn[i] for i in order[val:]], [drawn[i] for i in order[:val]]


@dataclass(frozen=True, slots=True)
class QuestionSets:
    """The graph file and its dev-train / dev-val questions, by set ("1-hop", ... or "all")."""

    graph: Path
    train: dict[str, list[KGQuestion]]
    val: dict[str, list[KGQuestion]]
    draw: dict[str, Any]  # how they were drawn: recorded with a trained head, checked by tune


def question_sets(data: Path | None, kg: Path | None, qa: Path | None, hops: Sequence[int], split: str,
                  questions: int | None, val: int, seed: int) -> QuestionSets:
    """A MetaQA folder (``data``: its KB and ``{hop}-hop`` questions of ``split``, one set per hop) or a
    triples file with a question file (``kg`` and ``qa``: one set, "all"), split by :func:`split_dev`."""
    if (data is None) == (kg is None) or (kg is None) != (qa is None):
        raise ConfigError("give --data (a MetaQA folder) or --kg FILE with --qa FILE")
    if data is not None:
        if split == "test":
            raise ConfigError("refusing to train or choose settings on the test split")
        pairs = {f"{h}-hop": split_dev(load_metaqa(data, h, split), questions, val, seed) for h in hops}
        graph = Path(data) / "kb_reconstructed.txt.gz"
        draw = {"hops": list(hops), "split": split}
    else:
        pairs = {"all": split_dev(read_kg_questions(qa, "q"), questions, val, seed)}
        graph, draw = Path(kg), {}
    draw |= {"questions": questions, "val_questions": val, "seed": seed}
    return QuestionSets(graph, {k: t for k, (t, _) in pairs.items()}, {k: v for k, (_, v) in pairs.items()},
                        draw)


def check_held_out(head: Path, draw: dict[str, Any]) -> None:
    """Refuse a head whose training questions may include the dev-val ones: it was trained on a draw
    with nothing held out, or on another draw. Heads without a record of their draw pass with a warning."""
    if not (Path(head) / "amar_head.pt").is_file():
        raise ConfigError(f"{head}: no amar_head.pt; train one with 'sparsa train amar'")
    path = Path(head) / "training.json"
    trained = json.loads(path.read_text()).get("draw") if path.is_file() else None
    if trained is None:
        logger.warning("%s records no question draw; make sure it was trained on other questions", head)
        return
    if not trained.get("val_questions"):
        raise ConfigError(f"{head} was trained on every drawn question (no --val-questions): dev-val is "
                          "not held out from it")
    keys = ("hops", "split", "questions", "val_questions", "seed")
    differ = {k: (trained.get(k), draw.get(k)) for k in keys if k in draw and trained.get(k) != draw[k]}
    if differ:
        raise ConfigError(f"{head} was trained on another draw of questions "
                          f"({', '.join(f'{k} {a} there, {b} here' for k, (a, b) in differ.items())}); "
                          "give the --questions, --val-questions, --seed and --hops it was trained with")


def read_settings(path: Path) -> tuple[str | None, dict[str, Any]]:
    """(head or None, settings) from a ``sparsa kg tune`` record (its chosen head and settings) or a
    plain JSON object of settings (``gate_mode``, ``gate_threshold``, ``min_open_paths``)."""
    data = _read_json(path)
    if not isinstance(data, dict):
        raise DataFormatError(path, "expected a JSON object of settings or a 'sparsa kg tune' record")
    settings = data.get("settings", data)
    return data.get("head"), _checked(path, settings)


def read_record(path: Path) -> dict[str, Any]:
    """A ``sparsa kg tune --out`` record: the chosen ``head``, ``settings`` and every ``candidate``."""
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("candidates"), dict):
        raise DataFormatError(path, "not a 'sparsa kg tune --out' record (no candidates)")
    _checked(path, data.get("settings"))
    return data


def read_grid(path: Path) -> list[dict[str, Any]]:
    """A JSON list of settings objects (as :data:`GRID`)."""
    data = _read_json(path)
    if not isinstance(data, list) or not data:
        raise DataFormatError(path, "expected a non-empty JSON list of settings objects")
    return [_checked(path, settings) for settings in data]


def _read_json(path: Path) -> Any:
    if not Path(path).is_file():
        raise DataFormatError(path, "no such file")
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise DataFormatError(path, f"not JSON: {e.msg}", e.lineno) from None


def _checked(path: Path, settings: Any) -> dict[str, Any]:
    from sparsa.kg.amar import AmarConfig

    if not isinstance(settings, dict) or not settings or set(settings) - set(SETTING_KEYS):
        raise DataFormatError(path, f"settings must be an object with keys among {', '.join(SETTING_KEYS)}, "
                                    f"got {settings!r}")
    AmarConfig(**settings)  # ConfigError for a value out of range
    return dict(settings)


def candidate_name(label: str, settings: dict[str, Any]) -> str:
    return f"{label} " + ",".join(f"{k}={v}" for k, v in settings.items())


def score_settings(model: AmarModel, sets: dict[str, tuple[list[KGQuestion], list[KGRetrieval]]],
                   settings: dict[str, Any], batch_size: int) -> dict[str, float]:
    """Hits@1 of ``model`` in amar mode under ``settings`` on each set (``model.config`` keeps them)."""
    from sparsa.kg.amar import hits_at_1

    model.config = replace(model.config, **settings)
    scores = {}
    for name, (questions, retrievals) in sets.items():
        outputs = model.generate(retrievals, "amar", batch_size=batch_size)
        hits = [hits_at_1(o["answer"], q.answers) for o, q in zip(outputs, questions, strict=True)]
        scores[name] = round(float(np.mean(hits)), 4)
    return scores


def best_candidate(candidates: dict[str, dict]) -> str:
    """The candidate with the highest mean dev-val Hits@1 over the sets; the first one on ties."""
    if not candidates:
        raise ConfigError("no candidate scored")
    return max(candidates, key=lambda k: np.mean(list(candidates[k]["val"].values())))


def tune(heads: Sequence[Path], sets: dict[str, tuple[list[KGQuestion], list[KGRetrieval]]],
         grid: Sequence[dict[str, Any]] = GRID, device: str = "cpu", batch_size: int = 8,
         earlier: dict | None = None, show_progress: bool | None = None) -> dict:
    """Score every head under every setting of ``grid`` on ``sets``; ``earlier``, a previous tune record,
    lends its candidates to the choice. Returns the record ``sparsa kg tune`` writes: the chosen
    candidate's ``head``, ``settings`` and ``val`` at the top, every candidate under ``candidates``."""
    from sparsa.kg.amar import AmarModel
    from sparsa.progress import progress_bar

    candidates = dict(earlier["candidates"]) if earlier else {}
    with progress_bar(len(heads) * len(grid), "amar settings on dev-val", "setting", show_progress) as bar:
        for head in heads:
            model = AmarModel.load(head, device)
            for settings in grid:
                name = candidate_name(str(head), settings)
                candidates[name] = {"head": str(head), "settings": dict(settings),
                                    "val": score_settings(model, sets, settings, batch_size)}
                logger.info("dev-val %s: %s", name, candidates[name]["val"])
                bar.update(1)
            del model
    chosen = best_candidate(candidates)
    return {"chosen": chosen, **candidates[chosen], "rule": RULE,
            "questions": {name: len(questions) for name, (questions, _) in sets.items()},
            "candidates": candidates}
