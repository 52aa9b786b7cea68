"""Probe (not a choice): needle accuracy of Quest decode with coarser pages, retrieval heads exempt.

    python bench/probe_quest_pages.py --profile HEAD_PROFILE.json --out lc_pages.json   # on the H200 (bf16)

Runs ``bench_longcontext.run_example`` over the 33 test needles of the published run (seed 0, 2k/4k/8k x 11
depths) with the published Quest setting (``SETTINGS["sparse-decode-quest"]``) at pages of 16 and 64 tokens;
result in ``longcontext_accuracy.json["probe_quest_pages"]``. Coarse pages are what made Quest 4.27x full
decode at 128k (``kernels_h200.json["quest_page_size_probe"]``); a real choice must be made on dev needles.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench_longcontext as B


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, required=True, help="head profile JSON of the published run")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sparsa.config import load_settings
    from sparsa.kernels.kv_compression import HeadProfile
    from sparsa.models import resolve_model

    path = resolve_model("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(path)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(args.device).eval()
    profile = HeadProfile.load(args.profile)
    needles = B.niah_examples(tok, load_settings().data_dir / "longcontext", [2048, 4096, 8000],
                              [i / 10 for i in range(11)], 0)
    base = B.SETTINGS["sparse-decode-quest"]
    variants = {f"quest-{b}-page64-rh": base | {"budget_tokens": b, "page_size": 64} for b in (1024, 2048)}
    variants["quest-1024-page16-rh"] = dict(base)
    start = time.time()
    records = [B.run_example(model, tok, ex, profile, variants) for ex in needles]
    summary = B.summarise(records, ["full", *variants])
    print(json.dumps({"seconds": round(time.time() - start), "summary": summary}, indent=1))
    args.out.write_text(json.dumps({"summary": summary, "records": records}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
