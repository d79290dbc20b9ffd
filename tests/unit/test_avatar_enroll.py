"""Avatar enrollment: photo -> pack with real FaceMesh landmarks, and ``avatarctl avatar``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from cluster.cli import avatar
from models.errors import InputError
from models.render.enroll import crop_box, enroll, head_yaw, load_photo, preview, square_crop
from models.render.pack import AvatarPack, load_pack

pytestmark = pytest.mark.unit

skimage_data = pytest.importorskip("skimage.data")
runner = CliRunner()


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    root = typer.Typer()
    root.add_typer(avatar.app, name="avatar")
    return root


@pytest.fixture(scope="module")
def default_pack() -> AvatarPack:
    return load_pack("default")


@pytest.fixture(scope="module")
def astronaut_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    Image.fromarray(skimage_data.astronaut()).save(path)
    return path


@pytest.mark.slow
def test_enrolling_the_astronaut_reproduces_the_default_pack(default_pack: AvatarPack) -> None:
    steps: list[str] = []
    pack = enroll(skimage_data.astronaut(), "default",
                  progress=lambda step, _done: steps.append(step))
    assert pack.meta["crop_in_source_px"] == default_pack.meta["crop_in_source_px"] \
        == [124, 29, 202]
    assert np.abs(pack.portrait.astype(int) - default_pack.portrait).max() <= 1
    assert np.abs(pack.landmarks - default_pack.landmarks).max() < 1.5
    assert steps[:4] == ["loading", "detecting", "cropping", "re-detecting"]
    assert pack.meta["warnings"] == [] and abs(pack.meta["yaw_asymmetry"]) < 0.1


@pytest.mark.slow
def test_cli_enroll_writes_a_loadable_pack_and_refuses_to_overwrite(
        cli: typer.Typer, astronaut_png: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ada"
    args = ["avatar", "enroll", str(astronaut_png), "--name", "ada", "--out", str(folder),
            "--size", "256"]
    result = runner.invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    pack = load_pack(folder)
    assert pack.name == "ada" and pack.size_px == 256 and summary["size_px"] == 256
    assert pack.meta["source"] == "astronaut.png"
    # the 256 px pack's landmarks are the default's, scaled (same crop, lower resolution)
    default = load_pack("default").landmarks[:, :2] / 2
    assert np.median(np.abs(pack.landmarks[:, :2] - default)) < 1.0
    assert Image.open(folder / "preview.png").size == (256, 256)

    again = runner.invoke(cli, args)
    assert again.exit_code == 2
    assert "--force" in again.output and "Traceback" not in again.output
    assert runner.invoke(cli, [*args, "--force", "--json"]).exit_code == 0


@pytest.mark.slow
def test_a_photo_without_a_face_is_refused_with_a_clear_message(
        cli: typer.Typer, tmp_path: Path) -> None:
    photo = tmp_path / "wall.png"
    Image.fromarray(np.full((320, 400, 3), 128, np.uint8)).save(photo)
    result = runner.invoke(cli, ["avatar", "enroll", str(photo), "--name", "x",
                                 "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "no face found in wall.png" in text and "frontal photo" in text
    assert not (tmp_path / "x").exists()


def test_tiny_and_non_image_files_are_refused_before_detection(
        cli: typer.Typer, tmp_path: Path) -> None:
    tiny = tmp_path / "tiny.png"
    Image.fromarray(skimage_data.astronaut()[::4, ::4]).save(tiny)
    notes = tmp_path / "notes.png"
    notes.write_text("not a picture")
    for photo, expected in ((tiny, "at least 256 px"), (notes, "not an image"),
                            (tmp_path / "missing.jpg", "does not exist")):
        result = runner.invoke(cli, ["avatar", "enroll", str(photo), "--name", "x",
                                     "--out", str(tmp_path / "x")])
        assert result.exit_code == 2, result.output
        assert expected in " ".join(result.output.split())


def test_huge_photos_and_bad_names_are_refused(cli: typer.Typer, tmp_path: Path) -> None:
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (6000, 8000, 3))
    with pytest.raises(InputError, match="at most 40 MP"):
        load_photo(huge)
    result = runner.invoke(cli, ["avatar", "enroll", "x.png", "--name", "../etc"])
    assert result.exit_code == 2 and "not allowed" in result.output


def test_crop_box_and_yaw_from_landmarks(default_pack: AvatarPack) -> None:
    lm = default_pack.landmarks
    x0, y0, side = crop_box(lm)
    box = max(np.ptp(lm[:, 0]), np.ptp(lm[:, 1]))
    assert side == round(1.9 * box)
    assert x0 < lm[:, 0].min() and x0 + side > lm[:, 0].max()
    assert y0 < lm[:, 1].min() and y0 + side > lm[:, 1].max()
    assert abs(head_yaw(lm)) < 0.1
    turned = lm.copy()
    turned[1, 0] = lm[454, 0] - 0.05 * (lm[454, 0] - lm[234, 0])  # nose near one face edge
    assert head_yaw(turned) > 0.6


def test_square_crop_pads_beyond_the_image() -> None:
    image = np.arange(300 * 300 * 3, dtype=np.uint8).reshape(300, 300, 3)
    assert np.array_equal(square_crop(image, 10, 20, 100), image[20:120, 10:110])
    padded = square_crop(image, -50, 250, 120)
    assert padded.shape == (120, 120, 3)
    assert np.array_equal(padded[0, 0], image[250, 0])


def test_preview_draws_the_mesh_on_the_portrait(default_pack: AvatarPack) -> None:
    drawn = preview(default_pack, 256)
    plain = np.asarray(Image.fromarray(default_pack.portrait).resize(
        (256, 256), Image.Resampling.LANCZOS))
    assert drawn.shape == (256, 256, 3) and drawn.dtype == np.uint8
    mouth = default_pack.landmarks[[61, 291, 0, 17], :2] / 2
    (x0, y0), (x1, y1) = mouth.min(0).astype(int), mouth.max(0).astype(int) + 1
    lips_changed = np.any(drawn[y0:y1, x0:x1] != plain[y0:y1, x0:x1], axis=-1).mean()
    assert lips_changed > 0.05
    assert np.array_equal(drawn[5, 5], plain[5, 5])  # the corner, far from the face


def test_list_and_show(cli: typer.Typer, tmp_path: Path) -> None:
    listed = runner.invoke(cli, ["avatar", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    names = {row["name"]: row for row in json.loads(listed.stdout)["avatars"]}
    assert names["default"]["size_px"] == 512
    out = tmp_path / "p.png"
    shown = runner.invoke(cli, ["avatar", "show", "default", "--out", str(out)])
    assert shown.exit_code == 0, shown.output
    assert Image.open(out).size == (256, 256)
    missing = runner.invoke(cli, ["avatar", "show", "nobody"])
    assert missing.exit_code == 2 and "unknown avatar" in missing.output
