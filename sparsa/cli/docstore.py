"""``sparsa doc-store``: build the on-disk document store ``ask`` and ``serve`` read passages from.

    sparsa doc-store --dataset realtimeqa-passages        # -> $SPARSA_HOME/docstores/<name>-<hash>
    sparsa doc-store --dataset scifact --out stores/scifact-docs

``ask`` and ``serve`` build a dataset's store themselves the first time they need it (a corpus file of
16 MiB or more; smaller ones are read into memory); this command builds it ahead of time, or anywhere
(``--out``, then give that folder as ``--dataset``). See ``sparsa.docstore``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sparsa.cli.common import console, dataset_path


def doc_store(
    dataset: Annotated[str, typer.Option(help="dataset folder or name, or a corpus JSONL file")],
    out: Annotated[Path | None, typer.Option(help="store folder (default: the one ask and serve look for, "
                                                   "under $SPARSA_HOME/docstores)")] = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="rebuild a store that is up to date")] = False,
) -> None:
    """Build a corpus's document store (ids -> title, text, meta; word document frequencies) atomically."""
    from sparsa.data.beir import corpus_file
    from sparsa.docstore import DocStore, build_docstore, is_fresh, store_path

    path = dataset_path(dataset)
    source = corpus_file(path)
    folder = out if out is not None else store_path(path)
    if not rebuild and folder.exists() and is_fresh(folder, source):
        store = DocStore(folder)
        console.print(f"{folder} is up to date ({len(store)} documents of {source}); --rebuild to rebuild it")
        return
    store = build_docstore(source, folder, name=path.name)
    console.print(f"stored {len(store)} documents of {source} in {store.folder}")
