"""Long-context accuracy of SmolLM2 with full vs sparse attention, and the KV cache each variant keeps.

    SPARSA_HOME=/tmp/sparsa_home python bench/bench_longcontext.py            # CPU, PyTorch reference path
    python bench/bench_longcontext.py --lengths 2048 4096 --depths 0.5 --ruler 2 --work /tmp/lc
    bash bench/gpu_kernels.sh longcontext  # the published run: H200, bf16, Triton kernels, --choose-on-dev

Tasks (``$SPARSA_DATA_DIR/longcontext``): RULER 4K NIAH multikey-3 (UUID needle among UUID
distractors; correct when the answer UUID is in the output) and needle-in-a-haystack over the Paul
Graham essays (a 7-digit "special magic number" inserted at a depth of the haystack, context cut to
2k/4k/8k tokens including the prompt; correct when the number is in the output). Greedy decoding.

Variants (``kernels/hf_attention.py``), all on the same model and prompts, as chosen on dev (SETTINGS):
  * ``full``: the model's own SDPA attention and ``DynamicCache`` (the reference);
  * ``block-sparse-prefill``: SeerAttention training-free gate over blocks of 64, per query block the
    best blocks holding 95% of the gate's probability (+ sink and diagonal), then full decode;
  * ``sparse-decode-quest`` / ``sparse-decode-tidal``: exact prefill, then decode over 1,024 selected
    tokens (Quest pages of 16, layers 0-1 dense; TidalDecode: layers 0-1 dense, selection at layers 2 and
    12 of 30, the other layers reuse the selection);
  * in those three, the retrieval heads of the duo-kv head profile attend to everything
    (``full_retrieval_heads``);
  * ``duo-kv``: exact prefill, then a head-compressed cache: 25% retrieval KV heads (RazorAttention
    echo/induction profile) keep everything, the others 64 sink + 256 recent tokens.
The decode variants share the full variant's prefill (the same exact prefill, computed once); the
block-sparse variant runs its own. Each example is one JSON line in ``--work`` (resumable).
``--choose-on-dev`` first runs every setting in ``CANDIDATES`` on dev needles (another seed, other depths)
and keeps, per variant, the one with the least measured attention work among those within 95% of full
attention's dev accuracy (SETTINGS holds what it picked in the published run). Candidates ending in
``-rh`` exempt the retrieval heads of the duo-kv head profile from the sparse rule (``full_retrieval_heads``).
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import random
import sys
import time
from pathlib import Path

from common import write_results

VARIANTS = ("full", "block-sparse-prefill", "sparse-decode-quest", "sparse-decode-tidal", "duo-kv")
SETTINGS = {  # what --choose-on-dev picked on the H200 (longcontext_accuracy.json["chosen_on_dev"])
    "block-sparse-prefill": {"prefill": "block-sparse", "gate_coverage": 0.95, "gate_keys": "pooled",
                             "block_size": 64, "min_sparse_tokens": 1024, "full_retrieval_heads": True},
    "sparse-decode-quest": {"prefill": "dense", "decode": "sparse", "selector": "quest",
                            "budget_tokens": 1024, "page_size": 64, "dense_layers": 2,
                            "full_retrieval_heads": True},  # pages: ["quest_page_size_choice"]
    "sparse-decode-tidal": {"prefill": "dense", "decode": "sparse", "selector": "tidal",
                            "budget_tokens": 1024, "full_retrieval_heads": True},
    "duo-kv": {"prefill": "dense", "kv": "duo", "retrieval_fraction": 0.25, "sink": 64, "window": 256},
}
_RULES = {  # the rules without the retrieval-head exemption, as first published
    "sparse-decode-quest": {"prefill": "dense", "decode": "sparse", "selector": "quest", "page_size": 16},
    "sparse-decode-tidal": {"prefill": "dense", "decode": "sparse", "selector": "tidal"},
}
_BS = {"prefill": "block-sparse", "block_size": 64, "min_sparse_tokens": 1024}
# --choose-on-dev: per variant, candidates from the sparsest to the densest; the first whose accuracy on the
# dev examples (other needles and depths than the test examples) is >= 95% of full attention's is
# used on the test set.
CANDIDATES = {
    "block-sparse-prefill": {
        "bs-pooled-top16": _BS | {"gate_keys": "pooled", "gate_topk": 16},
        "bs-tokens-top16": _BS | {"gate_keys": "tokens", "gate_topk": 16},
        "bs-pooled-c0.90": _BS | {"gate_keys": "pooled", "gate_topk": None, "gate_coverage": 0.9},
        "bs-tokens-c0.95": _BS | {"gate_keys": "tokens", "gate_topk": None, "gate_coverage": 0.95},
        "bs-pooled-c0.95": _BS | {"gate_keys": "pooled", "gate_topk": None, "gate_coverage": 0.95},
        "bs-pooled-top32": _BS | {"gate_keys": "pooled", "gate_topk": 32},
        "bs-tokens-top32": _BS | {"gate_keys": "tokens", "gate_topk": 32},
    },
    "sparse-decode-quest": {
        f"quest-{b}-dense{d}": _RULES["sparse-decode-quest"] | {"budget_tokens": b, "dense_layers": d}
        for b, d in ((1024, 0), (1024, 2), (2048, 2))},
    "sparse-decode-tidal": {
        f"tidal-{b}": _RULES["sparse-decode-tidal"] | {"budget_tokens": b} for b in (1024, 2048)},
    "duo-kv": {"duo-0.25": SETTINGS["duo-kv"]},
}
# The same rules with the retrieval heads (the duo-kv head profile) exempt: they attend to everything.
for _variant, _names in (("block-sparse-prefill", ("bs-pooled-c0.90", "bs-pooled-c0.95")),
                         ("sparse-decode-quest", ("quest-1024-dense2", "quest-2048-dense2")),
                         ("sparse-decode-tidal", ("tidal-1024", "tidal-2048"))):
    for _name in _names:
        CANDIDATES[_variant][_name + "-rh"] = CANDIDATES[_variant][_name] | {"full_retrieval_heads": True}
# Coarser Quest pages: fewer bounds to score and pages to rank per step (the selection dominates Quest's step
# at 128k, in an earlier kernels record), looser bounds.
for _budget in (1024, 2048):
    for _page in (32, 64):
        CANDIDATES["sparse-decode-quest"][f"quest-{_budget}-page{_page}-dense2-rh"] = (
            CANDIDATES["sparse-decode-quest"][f"quest-{_budget}-dense2-rh"] | {"page_size": _page})
NEEDLE = "The special magic number is: {value}."
QUESTION = "What is the special magic number mentioned in the text above?"
ANSWER_PREFIX = "The special magic number is:"


def _chat_prompt(tok, user: str, answer_prefix: str) -> list[int]:
    text = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                   add_generation_prompt=True)
    return tok(text + answer_prefix, add_special_tokens=False)["input_ids"]


def niah_examples(tok, data_dir: Path, lengths, depths, seed: int) -> list[dict]:
    """Needle in a Paul Graham haystack, context cut so the whole prompt has ``length`` tokens."""
    essays = sorted((data_dir / "paul-graham-essays").glob("*.txt"))
    hay_ids = tok("\n\n".join(p.read_text() for p in essays), add_special_tokens=False)["input_ids"]
    rng = random.Random(seed)
    overhead = len(_chat_prompt(tok, "\n\n" + QUESTION, ANSWER_PREFIX))
    examples = []
    for length in lengths:
        for depth in depths:
            value = str(rng.randrange(1_000_000, 10_000_000))
            needle = tok(" " + NEEDLE.format(value=value) + " ", add_special_tokens=False)["input_ids"]
            room = length - overhead - len(needle) - 8
            cut = int(room * depth)
            context = tok.decode(hay_ids[:cut]) + tok.decode(needle) + tok.decode(hay_ids[cut:room])
            ids = _chat_prompt(tok, context + "\n\n" + QUESTION, ANSWER_PREFIX)
            examples.append({"id": f"niah-{length}-{depth}", "task": "niah-pg", "length": length,
                             "depth": depth,
                                 "answers": [value], "ids": ids, "max_new": 12})
    return examples


def ruler_examples(tok, data_dir: Path, n: int) -> list[dict]:
    path = data_dir / "ruler-4096" / "niah_multikey_3.jsonl.gz"
    examples = []
    with gzip.open(path, "rt") as f:
        for line_no, line in enumerate(f, 1):
            if len(examples) >= n:
                break
            rec = json.loads(line)
            cut = rec["input"].rfind("What is the special magic uuid")
            question = rec["input"][cut:]
            ask, _, prefix = question.partition("? ")
            if cut < 0 or not prefix:
                from sparsa.errors import DataFormatError
                raise DataFormatError(path, "no question/answer prefix found", line=line_no)
            ids = _chat_prompt(tok, rec["input"][:cut] + ask + "?", prefix)
            examples.append({"id": f"ruler-{rec['index']}", "task": "ruler-niah-multikey-3",
                             "length": len(ids),
                                 "depth": None, "answers": rec["outputs"], "ids": ids, "max_new": 32})
    return examples


def _greedy(model, logits, cache, max_new: int, stop: set[int]):
    import torch

    from sparsa.rag.generate import decode_step

    out = []
    for _ in range(max_new):
        token = int(logits[0].argmax())
        if token in stop:
            break
        out.append(token)
        logits, cache = decode_step(model, torch.tensor([[token]], device=logits.device), cache)
    return out, cache


def _profile_arg(settings: dict, profile) -> dict:
    return {"profile": profile} if settings.get("full_retrieval_heads") else {}


def run_example(model, tok, ex: dict, profile, variants: dict[str, dict]) -> dict:
    """Greedy answers of ``full`` and of each variant (name -> ``use_sparse_attention`` settings)."""
    import torch

    from sparsa.kernels.hf_attention import remove_sparse_attention, use_sparse_attention
    from sparsa.kernels.kv_compression import compressed_cache, kv_cache_bytes
    from sparsa.rag.generate import prefill

    stop = {tok.eos_token_id, *tok.convert_tokens_to_ids(["<|im_end|>"])} - {None}
    ids = torch.tensor([ex["ids"]], device=model.device)
    rec = {k: ex[k] for k in ("id", "task", "length", "depth", "answers")} | {"prompt_tokens": len(ex["ids"])}
    rec["variants"] = {}

    def finish(name, tokens, cache, seconds):
        text = tok.decode(tokens, skip_special_tokens=True)
        correct = all(a.lower() in text.lower() for a in ex["answers"])
        stats = dict(getattr(model, "sparse_attention_stats", {}) or {})
        rec["variants"][name] = {"output": text, "correct": correct, "kv_bytes": kv_cache_bytes(cache),
                                     "seconds": round(seconds, 3), "stats": stats}

    with torch.inference_mode():
        # Variants with an exact prefill share it (computed once); block-sparse ones run their own.
        remove_sparse_attention(model)
        t0 = time.time()
        logits, full_cache = prefill(model, ids)
        t_prefill = time.time() - t0
        for name, settings in {"full": None, **variants}.items():
            t0 = time.time()
            if settings is None:
                remove_sparse_attention(model)
                model.sparse_attention_stats = None
                start_logits, cache = logits, copy.deepcopy(full_cache)
            elif settings.get("prefill") == "block-sparse":
                use_sparse_attention(model, **settings, **_profile_arg(settings, profile))
                start_logits, cache = prefill(model, ids)
                t0 -= t_prefill  # reported seconds include a prefill for every variant
            elif settings.get("kv") == "duo":
                use_sparse_attention(model, **settings, profile=profile)
                cfg = model.model.layers[0].self_attn._sparsa_state.config
                start_logits, cache = logits, compressed_cache(cfg.profile, sink=cfg.sink, window=cfg.window)
                for i, layer in enumerate(full_cache.layers):  # the compressed cache stores the exact prefill
                    cache.update(layer.keys, layer.values, i)
            else:
                use_sparse_attention(model, **settings, **_profile_arg(settings, profile))
                start_logits, cache = logits, copy.deepcopy(full_cache)
            tokens, cache = _greedy(model, start_logits, cache, ex["max_new"], stop)
            finish(name, tokens, cache, time.time() - t0 + t_prefill)
            del cache
        remove_sparse_attention(model)
    return rec


def summarise(records: list[dict], names=VARIANTS) -> dict:
    summary = {}
    for name in names:
        rows = [r["variants"][name] for r in records if name in r["variants"]]
        full_rows = [r["variants"]["full"] for r in records if name in r["variants"]]
        if not rows:
            continue
        acc = sum(r["correct"] for r in rows) / len(rows)
        full_acc = sum(r["correct"] for r in full_rows) / len(full_rows)
        kv = sum(r["kv_bytes"] for r in rows) / len(rows)
        kv_full = sum(r["kv_bytes"] for r in full_rows) / len(full_rows)
        stats = {}
        for key in ("prefill_blocks_kept", "prefill_blocks_visible", "decode_keys_read", "decode_keys_total",
                    "decode_selection_reads"):
            stats[key] = sum(r["stats"].get(key, 0) for r in rows)
        summary[name] = {
            "n": len(rows), "accuracy": acc, "accuracy_vs_full": (acc / full_acc) if full_acc else None,
            "mean_kv_bytes": kv, "kv_reduction_vs_full": kv_full / kv if kv else None,
            "prefill_block_density": (stats["prefill_blocks_kept"] / stats["prefill_blocks_visible"]
                                   if stats["prefill_blocks_visible"] else None),
            "decode_key_fraction_read": (stats["decode_keys_read"] / stats["decode_keys_total"]
                                      if stats["decode_keys_total"] else None),
            # keys attended + vectors read to select them (Quest's page bounds), per key of the full cache
            "decode_read_fraction": ((stats["decode_keys_read"] + stats["decode_selection_reads"])
                                     / stats["decode_keys_total"] if stats["decode_keys_total"] else None)}
    return summary


def _run_all(model, tok, examples, profile, variants, work: Path, summarise_only: bool) -> list[dict]:
    """Run (or resume from ``work/records.jsonl``) every example; returns the records in example order."""
    from sparsa.progress import progress_bar

    work.mkdir(parents=True, exist_ok=True)
    records_path = work / "records.jsonl"
    done = {}
    if records_path.exists():
        done = {r["id"]: r for r in map(json.loads, records_path.read_text().splitlines())}
    bar = progress_bar(len(examples), "examples")
    for ex in examples:
        if ex["id"] not in done and not summarise_only:
            rec = run_example(model, tok, ex, profile, variants)
            with records_path.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            done[ex["id"]] = rec
            print(json.dumps({k: rec[k] for k in ("id", "prompt_tokens")} |
                             {n: v["correct"] for n, v in rec["variants"].items()}), flush=True)
        bar.update(1)
    bar.close()
    return [done[e["id"]] for e in examples if e["id"] in done]


def _density(row: dict) -> float:
    """The share of attention work a candidate kept on dev (prefill blocks x decode reads x KV bytes)."""
    decode = row.get("decode_read_fraction") or row["decode_key_fraction_read"] or 1.0
    return (row["prefill_block_density"] or 1.0) * decode / (row["kv_reduction_vs_full"] or 1.0)


def choose_on_dev(records: list[dict], variants=tuple(CANDIDATES)) -> tuple[dict, dict]:
    """Per variant, the candidate with the lowest measured density on the dev records among those keeping >=
    95% of full accuracy there, else the most accurate one. Returns (variant -> settings, dev
    summary per candidate)."""
    names = [n for v in variants for n in CANDIDATES[v]]
    dev = summarise(records, ["full", *names])
    chosen = {}
    for variant in variants:
        cands = CANDIDATES[variant]
        ok = [n for n in cands if (dev[n]["accuracy_vs_full"] or 0) >= 0.95]
        best = min(ok, key=lambda n: _density(dev[n])) if ok else max(cands, key=lambda n: dev[n]["accuracy"])
        chosen[variant] = {"candidate": best, "settings": cands[best]}
    return chosen, dev


def _interleave(niah, ruler, depths) -> list[dict]:
    """Interleave lengths and tasks so a stopped run still covers each of them."""
    examples = []
    for i in range(max(len(depths), len(ruler))):
        examples += [e for e in niah if e["depth"] == (depths[i] if i < len(depths) else None)]
        examples += ruler[i:i + 1]
    return examples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8000])
    parser.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.5, 0.9])
    parser.add_argument("--ruler", type=int, default=4, help="RULER examples (the first N)")
    parser.add_argument("--choose-on-dev", action="store_true",
                        help="pick each variant's settings among CANDIDATES on dev needles first")
    parser.add_argument("--dev-depths", type=float, nargs="+", default=[0.2, 0.4, 0.6, 0.8])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS[1:], default=list(VARIANTS[1:]),
                        help="run only these variants (and full attention), on dev and test")
    parser.add_argument("--work", type=Path, default=Path("/tmp/kernels/longcontext"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--out", type=Path, default=None, help="results file (default bench/results/...)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--summarise-only", action="store_true",
                        help="write the JSON from the examples done so far")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sparsa.config import load_settings
    from sparsa.kernels.kv_compression import HeadProfile, profile_retrieval_heads
    from sparsa.models import resolve_model

    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = load_settings().data_dir / "longcontext"
    path = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    model = (AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype))
             .to(args.device).eval())
    args.work.mkdir(parents=True, exist_ok=True)
    profile_path = args.work / "head_profile.json"
    if profile_path.exists():
        profile = HeadProfile.load(profile_path)
    else:
        profile = profile_retrieval_heads(model, retrieval_fraction=0.25, period=256, n_sequences=2,
                                          model_name=args.model)
        profile.save(profile_path)
    settings, chosen, dev_summary = {v: SETTINGS[v] for v in args.variants}, None, None
    if args.choose_on_dev:
        dev_examples = niah_examples(tok, data_dir, args.lengths, args.dev_depths, args.seed + 1)
        candidates = {n: c for v in args.variants for n, c in CANDIDATES[v].items()}
        dev_records = _run_all(model, tok, dev_examples, profile, candidates, args.work / "dev",
                               args.summarise_only)
        chosen, dev_summary = choose_on_dev(dev_records, args.variants)
        settings = {v: c["settings"] for v, c in chosen.items()}
        print(json.dumps({v: c["candidate"] for v, c in chosen.items()}), flush=True)
    niah = niah_examples(tok, data_dir, args.lengths, args.depths, args.seed)
    examples = _interleave(niah, ruler_examples(tok, data_dir, args.ruler), args.depths)
    records = _run_all(model, tok, examples, profile, settings, args.work / "test", args.summarise_only)
    summary = summarise(records)
    by_task = {task: summarise([r for r in records if r["task"] == task])
               for task in sorted({r["task"] for r in records})}
    print(f"{'variant':<24}{'n':>4}{'acc':>7}{'vs full':>9}{'KV MB':>9}{'KV x':>7}")
    for name, s in summary.items():
        ratio = "" if s["accuracy_vs_full"] is None else f"{s['accuracy_vs_full']:.2f}"
        print(f"{name:<24}{s['n']:>4}{s['accuracy']:>7.2f}{ratio:>9}{s['mean_kv_bytes'] / 2**20:>9.1f}"
              f"{s['kv_reduction_vs_full']:>7.2f}")
    write_results("longcontext_accuracy", {
        "model": f"{args.model} ({args.dtype}, {args.device}; "
                 + ("Triton kernels)" if args.device.startswith("cuda")
                    else "PyTorch reference path of sparsa.kernels)"),
        "settings": settings, "chosen_on_dev": chosen, "dev_summary": dev_summary,
        "head_profile": {"retrieval_fraction": profile.retrieval_fraction, "retrieval": profile.retrieval},
        "examples_planned": len(examples), "examples_done": len(records),
        "notes": "KV bytes are the cache tensors as stored (in the run's dtype). With "
                 "--choose-on-dev each variant's settings were chosen on dev needles (seed + 1, "
                 "dev depths) before the test examples ran.",
        "summary": summary, "summary_by_task": by_task, "records": records},
        packages=("torch", "transformers"), path=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
