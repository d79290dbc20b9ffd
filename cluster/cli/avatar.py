"""``avatarctl avatar``: enroll a photo as an avatar pack, list the packs, preview one."""

from __future__ import annotations

import json as jsonlib
import re
import time
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cluster.cli.common import JsonOption, console, friendly_errors, out, print_json
from models.errors import InputError
from models.render.pack import AvatarPack

app = typer.Typer(
    help="Avatar packs: a square portrait and its face landmarks, made from one photo.\n\n"
    "Packs live in configs/avatars/NAME/ (portrait.png, landmarks.npy, pack.json, preview.png).",
    no_args_is_help=True,
)

PreviewSizeOption = typer.Option(256, "--preview-size", min=64, max=2048,
                                 help="Side of the preview image in pixels.")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _save_preview(pack: AvatarPack, path: Path, size_px: int) -> Path:
    """Write the mesh preview as a small palette PNG (a picture for people, not data)."""
    from PIL import Image

    from models.render.enroll import preview

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(preview(pack, size_px))
    image.quantize(256, dither=Image.Dither.FLOYDSTEINBERG).save(path, optimize=True)
    return path


@app.command()
def enroll(
    photo: Path = typer.Argument(..., help="A photo (PNG or JPEG) with one frontal face."),
    name: str = typer.Option(..., "--name", "-n", help="Avatar name (letters, digits, _ . -)."),
    out_dir: Path | None = typer.Option(
        None, "--out", help="Pack folder to write (default: configs/avatars/NAME)."),
    size: int = typer.Option(512, "--size", min=128, max=2048, help="Portrait side in pixels."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing pack."),
    preview_size: int = PreviewSizeOption,
    json: bool = JsonOption,
) -> None:
    """Detect the face in PHOTO, crop a square portrait around it and save an avatar pack."""
    from models.render.enroll import enroll as make_pack
    from models.render.pack import AVATAR_DIR, save_pack

    with friendly_errors():
        if not _NAME.match(name):
            raise InputError(f"avatar name {name!r} is not allowed; use letters, digits, "
                             "'_', '.' or '-' (at most 64 characters)")
        folder = out_dir if out_dir is not None else AVATAR_DIR / name
        if (folder / "pack.json").exists() and not force:
            raise InputError(f"a pack already exists in {folder}; pass --force to overwrite it "
                             "or choose another --name/--out")
        start = time.perf_counter()
        if json:
            pack = make_pack(photo, name, size_px=size)
            save_pack(pack, folder)
            shown = _save_preview(pack, folder / "preview.png", preview_size)
        else:
            columns = (TextColumn("[bold]{task.description:<13}"), BarColumn(),
                       TimeElapsedColumn())
            with Progress(*columns, console=console, transient=True) as bar:
                task = bar.add_task("loading", total=1.0)
                pack = make_pack(photo, name, size_px=size, progress=lambda step, done:
                                 bar.update(task, description=step, completed=done))
                bar.update(task, description="saving", completed=0.9)
                save_pack(pack, folder)
                shown = _save_preview(pack, folder / "preview.png", preview_size)
                bar.update(task, description="done", completed=1.0)
        seconds = time.perf_counter() - start
    warnings = list(pack.meta.get("warnings", []))
    if json:
        print_json({"name": name, "path": str(folder), "size_px": pack.size_px,
                    "crop_in_source_px": pack.meta["crop_in_source_px"],
                    "preview": str(shown), "warnings": warnings, "seconds": round(seconds, 3)})
        return
    for warning in warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    out.print(f"enrolled [bold]{name}[/] ({pack.size_px} px) in {folder} in {seconds:.1f} s; "
              f"preview: {shown}", highlight=False)


@app.command("list")
def list_packs(json: bool = JsonOption) -> None:
    """The avatar packs in configs/avatars/ with their size and source."""
    from models.render.pack import AVATAR_DIR

    rows = []
    folders = sorted(AVATAR_DIR.iterdir()) if AVATAR_DIR.is_dir() else []
    for folder in folders:
        if not (folder / "pack.json").is_file():
            continue
        try:
            meta = jsonlib.loads((folder / "pack.json").read_text())
        except ValueError:
            meta = {"source": "unreadable pack.json"}
        rows.append({"name": str(meta.get("name", folder.name)), "size_px": meta.get("size_px"),
                     "source": str(meta.get("source", "")), "path": str(folder)})
    if json:
        print_json({"avatars": rows})
        return
    table = Table(title=f"avatar packs in {AVATAR_DIR}")
    for column in ("name", "size_px", "source"):
        table.add_column(column, justify="right" if column == "size_px" else "left")
    for row in rows:
        table.add_row(row["name"], str(row["size_px"]), row["source"])
    out.print(table)
    if not rows:
        out.print("[yellow]no packs; make one with `avatarctl avatar enroll PHOTO --name NAME`[/]")


@app.command()
def show(
    name: str = typer.Argument(..., help="Avatar name (see `avatarctl avatar list`) or folder."),
    out_path: Path = typer.Option(Path("preview.png"), "--out", help="PNG file to write."),
    preview_size: int = PreviewSizeOption,
) -> None:
    """Write the portrait of a pack with its face mesh drawn on it."""
    from models.render.pack import load_pack

    with friendly_errors():
        pack = load_pack(name)
        try:
            path = _save_preview(pack, out_path, preview_size)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot write {out_path}: {exc}; choose another --out") from None
    out.print(f"preview of [bold]{pack.name}[/] written to {path}", highlight=False)
