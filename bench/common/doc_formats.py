"""The formatters a figure in bench/results_doc.toml names instead of a format string: each takes the
figure's value (and its argument, when the figure gives one) and returns the text docs/results.md quotes.
"""

from __future__ import annotations

from collections.abc import Callable


def passed(checks: list[dict]) -> str:
    ok = sum(bool(c.get("pass", c.get("passed"))) for c in checks)
    return f"{ok} of {len(checks)} pass"


def vs_sdpa(row: dict) -> str:
    return f"{row['speedup_vs_sdpa']:.2f}x vs SDPA {row['sdpa_best']}"


def vs_flex(row: dict) -> str:
    return f"{row['speedup_vs_flex']:.2f}x vs Flex {row['flex_best']}"


def eager_ms(row: dict) -> str:
    return f"{row['eager_ms']:.3f}"


def both_hops(table: dict, mode: str) -> str:
    """Amar's table: Hits@1 of one mode on 1-hop / 2-hop questions."""
    return " / ".join(f"{table[hop][mode]['hits@1']:.3f}" for hop in ("1-hop", "2-hop"))


def out_of(summary: dict) -> str:
    return f"{round(summary['accuracy'] * summary['n'])}/{summary['n']}"


def em_f1(cell: dict) -> str:
    return f"EM {cell['em']:.4f} / F1 {cell['f1']:.4f}, {cell['retrievals']} of {cell['questions']} retrieve"


def engine(cell: dict) -> str:
    return f"{cell['batch_qps']:,} q/s, p50 {cell['p50_ms']} ms, recall@10 {cell['recall@10']}"


def load(cell: dict) -> str:
    lat = cell["latency_ms"]
    return (f"{cell['throughput_rps']} req/s, p50 {lat['p50']} ms, p99 {lat['p99']} ms, "
            f"{cell['errors']} errors in {cell['requests']:,} requests")


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


def ndcg_pair(row: dict) -> str:
    return " / ".join(str(row[side].get("nDCG@10", "not measured")) for side in ("ours", "baseline"))


def mb(size: int) -> str:
    return f"{size / 1e6:,.0f}"


def slashed_thousands(numbers: list) -> str:
    return " / ".join(f"{x:,}" for x in numbers)


def wins_losses(seeds: list[dict]) -> str:
    return ", ".join(f"{s['wins']}/{s['losses']}" for s in seeds)


def kill_build(kill: dict) -> str:
    return f"{yes(kill['published_manifest_unchanged'])} / {yes(kill['rerun_resumed'])}"


def ratio(row: dict, numerator: str, denominator: str) -> str:
    """Two timings of one record's row as a speed-up: ``numerator / denominator``."""
    return f"{row[numerator] / row[denominator]:.2f}x"


def comma_list(items: list) -> str:
    return ", ".join(items)


LSR_KEYS = (("scifact", "SciFact"), ("cranfield", "Cranfield"), ("cisi", "CISI"), ("dl19", "DL19 corpus"),
            ("dl19-pool", "DL19 pools"))


def lsr_system(results: dict, system: str) -> str:
    """One system of lsr.json: nDCG@10 / R@100 per dataset, then per corpus (SciFact / Cranfield / CISI /
    DL19) terms per document, index MB, docs/s and ms per query, and where it ran; '-' where not measured."""
    def cell(key: str, name: str, fmt: str) -> str:
        value = results.get(f"{system}.{key}", {}).get(name)
        return "-" if value is None else fmt.format(value / 1e6 if name == "index_bytes" else value)

    def per_corpus(name: str, fmt: str) -> str:
        return " / ".join(cell(key, name, fmt) for key, _ in LSR_KEYS if not key.endswith("-pool"))

    found = [results[f"{system}.{key}"] for key, _ in LSR_KEYS if f"{system}.{key}" in results]
    where = sorted({row.get("device_name") or row.get("device", "") for row in found} - {""})
    return (", ".join(f"{label} {cell(key, 'nDCG@10', '{:.4f}')} / {cell(key, 'R@100', '{:.4f}')}"
                      for key, label in LSR_KEYS)
            + f"; terms/doc {per_corpus('mean_doc_terms', '{:g}')}"
            + f"; index MB {per_corpus('index_bytes', '{:.1f}')}"
            + f"; docs/s {per_corpus('docs_per_s', '{:g}')}; ms/query {per_corpus('query_ms_median', '{:g}')}"
            + (f" ({'; '.join(where)})" if where else ""))


FORMATTERS: dict[str, Callable[..., str]] = {
    f.__name__: f for f in (passed, vs_sdpa, vs_flex, eager_ms, both_hops, out_of, em_f1, engine, load,
                            ndcg_pair, mb, slashed_thousands, wins_losses, kill_build, ratio, comma_list,
                            lsr_system, str.strip)}
