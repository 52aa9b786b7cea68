"""Long-context RAG through the configured pipeline (issue 24): does a sparse reader let more passages pay?

RealTime QA 2022-2023 (multiple choice, accuracy) over the dated news pool, each question reading only
articles dated on or before it (``as_of``), and TimeQA's human-annotated test (EM / F1) over the
Wikipedia pages' passages. One chain (``examples/realtimeqa.toml``): splade-tiny retrieval (exact
search), query-likelihood reranking of the top ``depth`` with the reader's own LM, then the reader at
k in {5, 20, 50, 100} passages with each attention: ``full`` (the model's own SDPA attention), ``sparse``
(block-sparse prefill + Quest decode) and ``sparse-kv`` (that + DuoAttention-style KV compression).

Stages (``--stages``):
  prepare  (CPU, reads shared/data) passages and questions of ``--dataset`` -> ``--stage-dir``; questions
           are shuffled once (seed 0) and split into dev and test; the prompt format was checked on dev
  index    a splade-tiny index of the passages, named as the example config says (``realtimeqa-splade``)
  run      per ``--dataset``: route (``--router FILE``: recall reads closed-book; else the example's mode),
           retrieve + rerank once per question, then every (attention, k); the attention
           share of prefill (prefill with attention replaced by a no-op, subtracted) and the KV bytes at
           each k -> ``--out``

The attention settings are the reader's defaults (chosen on dev needles, longcontext_accuracy.json); no
setting here was chosen on test questions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import logging
import random
import statistics
import time
from pathlib import Path

from common import write_results

log = logging.getLogger("bench_rag_longcontext")
# full: the model's own attention (transformers' sdpa, eager decode), what attention="full" gives;
# full-kernels: dense prefill (dense_kernel: ours by default, "@dksdpa" for SDPA's choice) and our
# flash-decoding through the attention interface, so decode runs as CUDA graphs like the sparse variants:
# the strongest full-attention path a user can pick.
ATTENTION = {"full": "full", "full-kernels": "full", "sparse": "sparse", "sparse-kv": "sparse-kv"}
VARIANTS = tuple(ATTENTION)
STAGES = ("route", "retrieve", "rerank")  # per question, before the readers
PASSAGE_WORDS = 200  # ~270 Qwen tokens: k=100 passages fill ~27k of the 32k context


def chunk(words: list[str]) -> list[str]:
    return [" ".join(words[i:i + PASSAGE_WORDS]) for i in range(0, len(words), PASSAGE_WORDS)]


def write_jsonl_gz(path: Path, rows) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
            n += 1
    return n


def split(questions: list[dict], n_dev: int, n_test: int) -> list[dict]:
    random.Random(0).shuffle(questions)
    return ([{**q, "split": "dev"} for q in questions[:n_dev]]
            + [{**q, "split": "test"} for q in questions[n_dev:n_dev + n_test]])


def prepare_realtimeqa(data: Path, out: Path, n_dev: int, n_test: int) -> None:
    from sparsa.data.realtimeqa import load_realtimeqa

    rtqa = load_realtimeqa(data / "realtimeqa")
    questions = [{"id": q.id, "text": q.text, "date": q.date.isoformat(), "choices": list(q.choices),
                  "answers": list(q.answers)}
                 for q in rtqa.questions if 2022 <= q.date.year <= 2023 and len(q.choices) >= 2 and q.answers]
    rows = ({"_id": f"rtqa-{i}-{j}", "title": a.title.strip(), "text": text,
             "metadata": {"date": a.date.isoformat()}}
            for i, a in enumerate(rtqa.articles.values()) if a.date and a.date.year <= 2023
            for j, text in enumerate(chunk(a.text.split())))
    log.info("realtimeqa: %d passages, %d questions", write_jsonl_gz(out / "rtqa_corpus.jsonl.gz", rows),
             len(questions))
    (out / "rtqa_questions.json").write_text(json.dumps(split(questions, n_dev, n_test), indent=1))


def prepare_timeqa(data: Path, out: Path, n_dev: int, n_test: int) -> None:
    import ast

    with gzip.open(data / "timeqa" / "human_annotated_test.json.gz", "rt", encoding="utf-8") as f:
        pages = json.load(f)
    rows, questions = [], []
    for p, page in enumerate(pages):
        paras = ast.literal_eval(page["paras"]) if isinstance(page["paras"], str) else page["paras"]
        words = " ".join(paras[1:]).split()  # paragraph 0 is the title; ~42 words a paragraph, so merged
        rows += [{"_id": f"tqa-{p}-{j}", "title": paras[0], "text": text}
                 for j, text in enumerate(chunk(words))]
        listed = (ast.literal_eval(page["questions"])
                  if isinstance(page["questions"], str) else page["questions"])
        for j, (question, spans) in enumerate(listed):
            answers = list(dict.fromkeys(s["answer"].strip() for s in spans if s.get("answer", "").strip()))
            if answers:
                questions.append({"id": f"tqa-{p}-{j}", "text": question.strip(), "answers": answers})
    log.info("timeqa: %d passages, %d questions", write_jsonl_gz(out / "tqa_corpus.jsonl.gz", rows),
             len(questions))
    (out / "tqa_questions.json").write_text(json.dumps(split(questions, n_dev, n_test), indent=1))


def stage_prepare(args) -> None:
    from sparsa.config import load_settings

    data = load_settings().data_dir
    prepare = prepare_realtimeqa if args.dataset == "realtimeqa" else prepare_timeqa
    prepare(data, args.stage_dir, args.dev, args.test)


def stage_index(args) -> None:
    """``<dataset>-splade`` under ``$SPARSA_HOME/indexes``, the name the example config reads."""
    from sparsa.config import index_path
    from sparsa.data import load_corpus
    from sparsa.indexes import build_index_job

    started = time.perf_counter()
    corpus = load_corpus(corpus_file(args))
    build_index_job("splade", corpus, index_path(f"{args.dataset}-splade"), model="splade-tiny",
                    device=args.device, replace=True)
    log.info("indexed %s: %d passages in %.1f s", args.dataset, len(corpus), time.perf_counter() - started)


def question_text(q: dict) -> str:
    """RealTime QA is multiple choice: the options follow the question and the answer is matched to one."""
    return f"{q['text']}\nOptions: {'; '.join(q['choices'])}" if q.get("choices") else q["text"]


def score(q: dict, answer: str) -> dict:
    from sparsa.rag.answer_text import exact_match, token_f1

    if q.get("choices"):
        overlaps = [token_f1(answer, [c]) for c in q["choices"]]
        best = max(range(len(overlaps)), key=overlaps.__getitem__)
        picked = q["choices"][best] if overlaps[best] > 0 else None
        return {"picked": picked, "correct": float(picked in q["answers"])}
    return {"em": exact_match(answer, q["answers"]), "f1": token_f1(answer, q["answers"])}


# Variant suffixes for dev sweeps of the sparse settings: "sparse@c0.8" = gate coverage 0.8, "@m8192" = dense
# prefill below 8,192 prompt tokens, "@rh0" = retrieval heads not exempt, "@dktriton" = dense prefill with our
# kernel instead of SDPA; combinable ("sparse@c0.8@m8192").
SUFFIXES = {"c": ("gate_coverage", float), "m": ("min_sparse_tokens", int),
            "rh": ("full_retrieval_heads", bool), "dk": ("dense_kernel", str)}


def attention_setting(variant: str):
    """A preset name, or the attention table of a preset with a sweep's suffixes applied."""
    import dataclasses

    from sparsa.rag.config import AttentionConfig

    base, *options = variant.split("@")
    if not options:
        return ATTENTION[base]
    table = dataclasses.asdict(AttentionConfig.preset(ATTENTION[base]))
    for option in options:
        key = next(k for k in sorted(SUFFIXES, key=len, reverse=True) if option.startswith(k))
        name, kind = SUFFIXES[key]
        table[name] = kind(int(option[len(key):])) if kind is bool else kind(option[len(key):])
    return table


def pipeline_config(args, variant: str):
    """The example chain (``examples/<dataset>.toml``) with this run's k and attention."""
    from sparsa.rag.config import PipelineConfig

    example = PipelineConfig.from_file(Path(__file__).parent.parent / "examples" / f"{args.dataset}.toml")
    if args.router:  # the router decides per question (auto) instead of the example's mode
        example = example.override({"router.path": str(args.router), "router.mode": "auto"})
    return example.override({"retrieval.k": max(args.ks), "reader.attention": attention_setting(variant),
                             "reader.model": args.model, "reader.max_context_tokens": args.max_context_tokens,
                             "rerank.depth": args.rerank_depth, "rerank.model": args.model,
                             "retrieval.dataset": str(corpus_file(args))})


def corpus_file(args) -> Path:
    return args.stage_dir / ("rtqa_corpus.jsonl.gz" if args.dataset == "realtimeqa"
                             else "tqa_corpus.jsonl.gz")


def timed_prefill(model, ids, repeats: int = 3) -> tuple[float, object]:
    import torch

    from sparsa.rag.generate import prefill

    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    times, cache = [], None
    for _ in range(repeats):
        cache = None
        sync()
        started = time.perf_counter()
        with torch.inference_mode():
            _, cache = prefill(model, torch.tensor([ids], device=model.device))
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times), cache


def kept_block_share(stats: dict | None, before: dict) -> float | None:
    """The share of causally visible key blocks the gate kept since ``before`` (None: no sparse prefill)."""
    visible = stats["prefill_blocks_visible"] - before["prefill_blocks_visible"] if stats else 0
    if not visible:
        return None
    return round((stats["prefill_blocks_kept"] - before["prefill_blocks_kept"]) / visible, 3)


def no_attention(module, query, key, value, attention_mask, **kwargs):
    """Attention replaced by nothing: a prefill's time without its attention (same shapes downstream)."""
    return query.new_zeros(query.shape[0], query.shape[2], query.shape[1], query.shape[3]), None


def attention_share(readers: dict, question: str, passages: list, ks) -> list[dict]:
    """Prefill with each attention, and with none, on one question's prompts; KV bytes after prefill."""
    from transformers import AttentionInterface

    from sparsa.kernels.kv_compression import kv_cache_bytes

    AttentionInterface.register("sparsa_none", no_attention)
    dense_variants = [name for name in readers if name.startswith("full")]  # full attention, any kernel
    full_model = readers[dense_variants[0]].model
    rows = []
    for k in ks:
        ids, _ = readers[dense_variants[0]].build_prompt(question, passages[:k])
        row = {"k": k, "prompt_tokens": len(ids)}
        for variant, reader in readers.items():
            stats = getattr(reader.model, "sparse_attention_stats", None)
            before = dict(stats) if stats else {}
            seconds, cache = timed_prefill(reader.model, ids)
            row[f"prefill_s_{variant}"] = round(seconds, 4)
            row[f"kv_bytes_{variant}"] = kv_cache_bytes(cache)
            share = kept_block_share(stats, before)
            if share is not None:  # why a sparse prefill costs what it does: the share of key blocks kept
                row[f"kept_block_share_{variant}"] = share
        previous = full_model.config._attn_implementation
        full_model.set_attn_implementation("sparsa_none")
        row["prefill_s_no_attention"] = round(timed_prefill(full_model, ids)[0], 4)
        full_model.set_attn_implementation(previous)
        base = row["prefill_s_no_attention"]
        for variant in readers:
            row[f"attention_s_{variant}"] = round(row[f"prefill_s_{variant}"] - base, 4)
        # the strongest dense configuration at this length is the baseline every speed-up is against
        dense = min(dense_variants, key=lambda name: row[f"prefill_s_{name}"])
        row["dense_baseline"] = dense
        row["attention_share_dense"] = round(row[f"attention_s_{dense}"] / row[f"prefill_s_{dense}"], 3)
        for variant in readers:
            if variant != dense:
                row[f"attention_speedup_{variant}"] = round(
                    row[f"attention_s_{dense}"] / max(row[f"attention_s_{variant}"], 1e-6), 2)
                row[f"ttft_speedup_{variant}"] = round(
                    row[f"prefill_s_{dense}"] / row[f"prefill_s_{variant}"], 2)
                row[f"kv_reduction_{variant}"] = round(
                    row[f"kv_bytes_{dense}"] / row[f"kv_bytes_{variant}"], 2)
        log.info("attention share %s", row)
        rows.append(row)
    return rows


def summarise(rows: list[dict], ks, variants, multiple_choice: bool) -> list[dict]:
    table = []
    for split_name in ("dev", "test"):
        for variant in variants:
            for k in ks:
                cell = [r for r in rows if r["split"] == split_name and r["variant"] == variant
                        and r["k"] == k]
                if not cell:
                    continue
                entry = {"split": split_name, "variant": variant, "k": k, "questions": len(cell),
                         "prompt_tokens": round(statistics.mean(r["prompt_tokens"] for r in cell)),
                         "ttft_ms": round(1000 * statistics.median(r["prefill_s"] for r in cell), 1),
                         "decode_ms_per_token": round(1000 * statistics.median(
                             r["decode_s"] / max(r["new_tokens"] - 1, 1) for r in cell), 2),
                         "read_ms": round(1000 * statistics.mean(r["read_s"] for r in cell), 1)}
                shares = [r["kept_block_share"] for r in cell if r.get("kept_block_share") is not None]
                if shares:
                    entry["kept_block_share"] = round(statistics.mean(shares), 3)
                metrics = ("correct",) if multiple_choice else ("em", "f1")
                entry.update({m: round(statistics.mean(r[m] for r in cell), 4) for m in metrics})
                table.append(entry)
    return table


def stage_run(args) -> None:
    import torch

    from sparsa.rag.pipeline import load_pipeline

    name = "rtqa" if args.dataset == "realtimeqa" else "tqa"
    questions = json.loads((args.stage_dir / f"{name}_questions.json").read_text())
    if args.limit:  # a smoke run: the first few of each split
        questions = [q for s in ("dev", "test")
                     for q in [q for q in questions if q["split"] == s][:args.limit]]
    config = pipeline_config(args, args.variants[0])
    mode = config.router.mode
    route_note = (f"auto: the router {args.router} decides per question (recall = closed-book, no passages)"
                  if args.router else f"{mode} (mode; no router in this run)")
    first = load_pipeline(config)
    readers = {args.variants[0]: first.reader}
    for variant in args.variants[1:]:  # one retriever, corpus and reranker; a reader per attention
        readers[variant] = load_pipeline(pipeline_config(args, variant), retriever=first.retriever,
                                         corpus=first.corpus, reranker=first.reranker).reader
    if "full" in readers and hasattr(readers["full"].model, "sparse_attention_stats"):
        from sparsa.kernels.hf_attention import remove_sparse_attention

        remove_sparse_attention(readers["full"].model)  # the baseline is the model's own attention
    if "full-kernels" in readers:
        from sparsa.rag.config import AttentionConfig
        from sparsa.rag.reader import install_sparse_attention

        install_sparse_attention(readers["full-kernels"].model, AttentionConfig())
    test = [q for q in questions if q["split"] == "test"]
    # before the loop: every write has it
    _, share_passages = first.retrieve_passages(test[0]["text"], {}, None)
    share = attention_share(readers, question_text(test[0]), share_passages, args.ks)
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    rows, stages = [], []
    started = time.perf_counter()
    for n, q in enumerate(questions):
        if args.stop_after and time.perf_counter() - started > args.stop_after:
            log.info("stopping after %d questions: --stop-after %.0f s", n, args.stop_after)
            break
        as_of = dt.date.fromisoformat(q["date"]) if q.get("date") else None
        timings = dict.fromkeys(STAGES, 0.0)
        route, _ = first.route(q["text"], mode, timings)
        passages = first.retrieve_passages(q["text"], timings, as_of)[1] if route == "retrieve" else []
        stages.append({"id": q["id"], "route": route, **{f"{s}_s": timings[s] for s in STAGES}})
        for variant, reader in readers.items():
            stats = getattr(reader.model, "sparse_attention_stats", None)
            for k in args.ks:
                before = dict(stats) if stats else {}
                out = reader.answer(question_text(q), passages[:k])
                rows.append({"id": q["id"], "split": q["split"], "variant": variant, "k": k, "route": route,
                             "prompt_tokens": out.prompt_tokens, "new_tokens": out.new_tokens,
                             "prefill_s": out.timings["prefill"], "decode_s": out.timings["decode"],
                             "read_s": out.timings["read"], "decode_mode": out.decode_mode,
                             "kept_block_share": kept_block_share(stats, before),
                             "answer": out.text, **score(q, out.text)})
        if n % 5 == 0:
            log.info("%d/%d questions; last: %s", n + 1, len(questions), rows[-1])
        # Written after every question, so a run cut short still leaves its record.
        stage_ms = {s: round(1000 * statistics.median(r[f"{s}_s"] for r in stages), 1) for s in STAGES}
        write_results(args.dataset, {
            "card": card, "dataset": args.dataset, "reader": args.model, "ks": args.ks,
            "variants": args.variants, "questions_done": n + 1, "questions_planned": len(questions),
            "baseline": "full: the model's own attention (transformers sdpa, eager decode without cuDNN); "
                        "full-kernels: dense prefill by dense_kernel (ours unless @dksdpa) + our "
                        "flash-decoding, CUDA-graphed decode; same prompts, same greedy decoding",
            "config": pipeline_config(args, "sparse").to_dict(),
            "route": route_note, "recalled": sum(r["route"] == "recall" for r in stages),
            "stage_ms_median": stage_ms,
            "table": summarise(rows, args.ks, args.variants, bool(test[0].get("choices"))),
            "attention_share": share, "rows": rows}, packages=("torch", "transformers", "triton"),
            path=args.out, gpu=card if card != "cpu" else None)


def main() -> None:
    from common import run_stages

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", default=["run"], choices=["prepare", "index", "run"])
    parser.add_argument("--stage-dir", type=Path, default=Path("runs/longcontext"))
    parser.add_argument("--dataset", choices=["realtimeqa", "timeqa"], default="realtimeqa")
    parser.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    parser.add_argument("--ks", type=lambda s: [int(x) for x in s.split(",")], default=[5, 20, 50, 100])
    parser.add_argument("--variants", type=lambda s: s.split(","), default=list(VARIANTS))
    parser.add_argument("--rerank-depth", type=int, default=100)
    parser.add_argument("--max-context-tokens", type=int, default=31_000)
    parser.add_argument("--dev", type=int, default=15)
    parser.add_argument("--test", type=int, default=45)
    parser.add_argument("--limit", type=int, default=0, help="questions per split (smoke runs)")
    parser.add_argument("--stop-after", type=float, default=0,
                        help="start no question after this many seconds (the record says how many ran)")
    parser.add_argument("--router", type=Path, default=None,
                        help="a router file (sparsa train router): it routes each question before retrieval")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.out = args.out or Path(__file__).parent / "results" / f"rag_longcontext_{args.dataset}.json"
    run_stages(args, globals(), log)


if __name__ == "__main__":
    main()
