"""Entry point: ``sparsa <command>`` (also ``python -m sparsa``)."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.text import Text

from sparsa import __version__
from sparsa.cli import (
    ask,
    demo,
    dense,
    event,
    judge,
    kg,
    models,
    rerank,
    retrieval,
    router,
    serve,
    synthetic,
    tilde,
    train,
)
from sparsa.cli.common import console
from sparsa.cli.docstore import doc_store
from sparsa.errors import SparsaError

app = typer.Typer(
    name="sparsa",
    help="Learned sparse retrieval and retrieval-augmented QA.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(models.app, name="models")
train.app.command("event")(event.train_event)
train.app.command("dense")(dense.train_dense)
app.add_typer(train.app, name="train")
app.add_typer(kg.app, name="kg")
app.command("index")(retrieval.index)
app.command("search")(retrieval.search)
app.command("eval")(retrieval.eval_)
app.command("fuse")(dense.fuse)
app.command("rerank")(rerank.rerank)
app.command("rerank-store")(tilde.rerank_store)
app.command("doc-store")(doc_store)
app.command("dated-dataset")(event.dated_dataset)
app.command("ask")(ask.ask)
app.command("routing-set")(router.routing_set_command)
app.command("judge")(judge.judge)
app.command("generate-queries")(synthetic.generate_queries)
app.command("demo")(demo.demo)
app.command("serve")(serve.serve)


@app.callback()
def _options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="warnings only, no progress bars")] = False,
) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.getLogger("sparsa").setLevel(level)


@app.command("version")
def version() -> None:
    """Print the sparsa version."""
    console.print(f"sparsa {__version__}")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code. Errors print ``error: <message>``, never a traceback."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("sparsa")
    if not root.handlers:
        root.addHandler(handler)
        # Not also through the root logger: pyserini's import calls logging.basicConfig, which printed each
        # "loaded ..." / "serving ..." line a second time with a timestamp.
        root.propagate = False
    root.setLevel(logging.INFO)
    try:
        # Standalone mode lets typer print usage errors and help itself; it ends with SystemExit.
        app(args=argv, prog_name="sparsa")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except (SparsaError, OSError) as exc:
        console.print(Text.assemble(("error:", "red"), f" {exc}"))
        return 2
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    except Exception as exc:
        if type(exc).__name__ != "OutOfMemoryError":  # torch's (CUDA); matched by name: torch stays lazy
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "out of memory"
        hint = "give the command less work at once (index: --max-tokens; train: --batch-size; ask: " \
               "--max-context-tokens)"
        console.print(Text.assemble(("error:", "red"), f" the GPU ran out of memory ({first}); {hint}"))
        return 2
    return 0
