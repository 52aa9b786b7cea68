"""The decode steps ``bench_kernels_h200.py`` times (its ``decode`` and ``decode_layers`` sections): each
provider is a zero-argument callable running one decode step of one layer, eager or CUDA-graph captured.

``decode_providers``: SDPA and our kernel called directly (full cache, Quest pages, TidalDecode tokens);
``hf_decode_providers``: the step ``generate()`` runs per layer through our attention interface.
"""

from __future__ import annotations

import torch

from sparsa.kernels import sparse_decode as sd


def decode_providers(q, k, v, splits, budgets, quest_pages=()) -> dict:
    """name -> zero-argument callable running one decode step. ``quest_pages``: extra Quest page sizes, end to
    end (coarser pages: fewer bounds to score and pages to rank, looser bounds)."""
    bounds = sd.PageBounds.from_keys(k, 16)
    q4 = q[:, :, None]
    fns = {"sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(q4, k, v, enable_gqa=True),
           "ours-full": lambda: sd.decode_attention(q, k, v)}
    for n in splits:
        fns[f"ours-full-splits{n}"] = lambda n=n: sd.decode_attention(q, k, v, num_splits=n)
    for budget in budgets:
        idx, cnt = sd.quest_select(q, bounds, budget)
        tok_idx, tok_cnt = sd.tidal_select(q, k, budget)
        fns[f"quest-{budget}-kernel"] = (
            lambda i=idx, c=cnt: sd.decode_attention(q, k, v, indices=i, counts=c, page_size=16))

        def quest_end2end(b=budget):
            i, c = sd.quest_select(q, bounds, b)
            return sd.decode_attention(q, k, v, indices=i, counts=c, page_size=16)

        fns[f"quest-{budget}-end2end"] = quest_end2end
        for n in splits:
            fns[f"quest-{budget}-kernel-splits{n}"] = (
                lambda i=idx, c=cnt, n=n: sd.decode_attention(q, k, v, indices=i, counts=c, page_size=16,
                                                              num_splits=n))
        fns[f"tidal-{budget}-kernel"] = (
            lambda i=tok_idx, c=tok_cnt: sd.decode_attention(q, k, v, indices=i, counts=c, page_size=1))
        for page in quest_pages:
            coarse = sd.PageBounds.from_keys(k, page)

            def quest_coarse(b=budget, bounds=coarse, page=page):
                i, c = sd.quest_select(q, bounds, b)
                return sd.decode_attention(q, k, v, indices=i, counts=c, page_size=page)

            fns[f"quest-{budget}-page{page}-end2end"] = quest_coarse

    return fns


def hf_decode_providers(q, k, v, budgets) -> dict:
    """The decode step ``generate()`` runs per layer through our attention interface
    (``kernels.hf_decode.decode``, Quest pages of 64 as the reader's default). ``hf-*``: over a growing
    cache, one new key per call, so the page bounds take it (``PageBounds.update``) before selecting;
    ``hf-*-static``: over a preallocated cache (``StaticDecode``, as ``generate_greedy`` runs it graphed): the
    length is a device tensor and only the newest page's bounds are rewritten in place."""
    from sparsa.kernels import hf_decode as hf
    from sparsa.kernels.hf_attention import SparseAttentionConfig

    scale = q.shape[-1] ** -0.5
    q4 = q[:, :, None]

    def step(config: SparseAttentionConfig, static: bool = False):
        shared = {"config": config, "stats": hf.new_stats()}
        state = hf.LayerState(config, layer_idx=config.dense_layers, shared=shared)
        if static:
            shared["static"] = hf.StaticDecode(shared, torch.full((1,), k.shape[2], device=k.device))
            hf.decode(state, q4, k, v, scale)  # the prompt's bounds, built once; later calls update one page

        def run():
            if state.bounds is not None:
                state.bounds.length -= 1  # the newest key arrives: its (partial) page is recomputed
            return hf.decode(state, q4, k, v, scale)

        return run

    fns = {"hf-full": step(SparseAttentionConfig(decode="full")),
           "hf-full-static": step(SparseAttentionConfig(decode="full"), static=True)}
    for budget in budgets:
        config = SparseAttentionConfig(decode="sparse", budget_tokens=budget)
        fns[f"hf-quest-{budget}"] = step(config)
        fns[f"hf-quest-{budget}-static"] = step(config, static=True)
    return fns
