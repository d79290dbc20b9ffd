"""``avatarctl kb``: ingest, search and list the tenant-scoped knowledge bases."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cluster.cli.common import (
    ConfigOption,
    JsonOption,
    console,
    friendly_errors,
    load,
    out,
    print_json,
)
from configs.schema import AppConfig, KnowledgeBaseConfig
from models.errors import ConfigError

if TYPE_CHECKING:
    from models.knowledge.base import KnowledgeStore

app = typer.Typer(
    help="Knowledge bases: ingest a folder of documents, search it, list what is stored.\n\n"
    "Every knowledge base belongs to one tenant; searches never cross tenants.",
    no_args_is_help=True,
)

KbOption = typer.Option(..., "--kb", help="Knowledge base name (see `avatarctl kb list`).")
TenantOption = typer.Option(
    None, "--tenant", help="Tenant owning the knowledge base (default: the configured one)."
)


def _configured(config: AppConfig, name: str) -> KnowledgeBaseConfig | None:
    return next((kb for kb in config.knowledge_bases if kb.name == name), None)


def _tenant(config: AppConfig, kb: str, tenant: str | None) -> str:
    if tenant:
        return tenant
    configured = _configured(config, kb)
    if configured is None:
        known = ", ".join(k.name for k in config.knowledge_bases) or "none"
        raise ConfigError(f"knowledge base {kb!r} is not configured (configured: {known}); "
                          f"pass --tenant, or add it under knowledge_bases in the profile")
    return configured.tenant


@contextmanager
def _store(config: AppConfig) -> Iterator[KnowledgeStore]:
    from models.knowledge import create_store

    store = create_store(config.models.knowledge)
    try:
        yield store
    finally:
        store.close()


@app.command()
def ingest(
    directory: Path | None = typer.Argument(
        None, help="Folder of .md/.txt/.yaml documents (default: the configured path of --kb)."
    ),
    kb: str = KbOption,
    tenant: str | None = TenantOption,
    config: str = ConfigOption,
    json: bool = JsonOption,
) -> None:
    """Replace a knowledge base with the documents in DIRECTORY (embedded on this machine)."""
    from configs.loader import knowledge_dir
    from models.knowledge.ingest import ingest_directory

    cfg = load(config)
    with friendly_errors():
        owner = _tenant(cfg, kb, tenant)
        folder = directory if directory is not None else knowledge_dir(cfg, kb)
        start = time.perf_counter()
        with _store(cfg) as store:
            if json:
                count = ingest_directory(store, owner, kb, folder)
            else:
                columns = (TextColumn("[bold]{task.description}"), BarColumn(),
                           MofNCompleteColumn(), TimeElapsedColumn())
                with Progress(*columns, console=console, transient=True) as bar:
                    task = bar.add_task(f"embedding {folder}", total=None)
                    count = ingest_directory(
                        store, owner, kb, folder,
                        progress=lambda done, total: bar.update(task, completed=done, total=total),
                    )
        seconds = time.perf_counter() - start
    if json:
        print_json({"kb": kb, "tenant": owner, "path": str(folder), "passages": count,
                    "seconds": round(seconds, 3)})
    else:
        out.print(f"ingested [bold]{count}[/] passages into [bold]{kb}[/] (tenant {owner}) "
                  f"in {seconds:.1f} s")


@app.command()
def search(
    query: str = typer.Argument(..., help="A question, as a user would say it."),
    kb: str = KbOption,
    tenant: str | None = TenantOption,
    top_k: int = typer.Option(4, "--top-k", "-k", min=1, max=50, help="Passages to show."),
    config: str = ConfigOption,
    json: bool = JsonOption,
) -> None:
    """Show the passages a question retrieves, best first, with their similarity scores."""
    cfg = load(config)
    with friendly_errors():
        owner = _tenant(cfg, kb, tenant)
        with _store(cfg) as store:
            start = time.perf_counter()
            passages = store.search(owner, kb, query, top_k)
            ms = 1000 * (time.perf_counter() - start)
    if json:
        print_json({"kb": kb, "tenant": owner, "query": query, "ms": round(ms, 2), "passages": [
            {"score": round(p.score, 4), "source": p.source, "text": p.text, "answer": p.answer}
            for p in passages
        ]})
        return
    table = Table(title=f"{kb} (tenant {owner}): {query!r} in {ms:.0f} ms")
    table.add_column("score", justify="right")
    table.add_column("source", style="cyan")
    table.add_column("text")
    for p in passages:
        text = p.text if p.answer is None else f"Q: {p.text}\nA: {p.answer}"
        table.add_row(f"{p.score:.3f}", p.source, text)
    out.print(table)
    if not passages:
        out.print(f"[yellow]nothing stored for {kb!r}; run `avatarctl kb ingest --kb {kb}`[/]")


@app.command("list")
def list_kbs(config: str = ConfigOption, json: bool = JsonOption) -> None:
    """The configured knowledge bases and how many passages each has stored."""
    cfg = load(config)
    rows = []
    with friendly_errors(), _store(cfg) as store:
        for kb in cfg.knowledge_bases:
            rows.append({"name": kb.name, "tenant": kb.tenant, "path": kb.path,
                         "passages": store.count(kb.tenant, kb.name),
                         "description": kb.description})
    if json:
        print_json({"knowledge_bases": rows})
        return
    table = Table(title=f"knowledge bases (profile {cfg.profile})")
    for column in ("name", "tenant", "passages", "path", "description"):
        table.add_column(column, justify="right" if column == "passages" else "left")
    for row in rows:
        table.add_row(row["name"], row["tenant"], str(row["passages"]), row["path"],
                      row["description"])
    out.print(table)
