"""``avatarctl``: the one command-line tool of avatar-cluster.

Each sub-command lives in its own module and registers itself on :data:`app` here.
"""

from __future__ import annotations

import os

import typer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

app = typer.Typer(
    name="avatarctl",
    help="Run, measure and manage avatar-cluster: real-time conversational AI avatars.\n\n"
    "Start with `avatarctl serve` and open http://127.0.0.1:8000, or `avatarctl chat` to talk "
    "to the default avatar in the terminal.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    _registered = True
    from cluster.cli import avatar, bench, chat, kb, loadtest, place, plan, serve

    app.add_typer(kb.app, name="kb")
    app.add_typer(avatar.app, name="avatar")
    app.add_typer(bench.app, name="bench")
    app.add_typer(place.app, name="place")
    chat.register(app)
    serve.register(app)
    plan.register(app)
    loadtest.register(app)


def main() -> None:
    _register()
    app()
