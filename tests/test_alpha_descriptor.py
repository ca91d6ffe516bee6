"""The alpha-aware built-in descriptor (builtin-dct-msa): distinct transparent shapes stay
apart, a resized transparent copy pairs, opaque images keep their vectors, and a builtin set
made before it is never mixed with its vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.conftest import catalog_rows, ok_output
from vdc_lake.kernels.descriptor import (ALPHA_VIEW_NAME, DEDUP_THRESHOLDS, DESCRIPTOR_DIM, MULTI_VIEW_NAME,
                                         SET_DIM, VIEWS, alpha_band, builtin_descriptor,
                                         descriptors_from_thumbnails, set_distances)

APPLY, REPORT = DEDUP_THRESHOLDS[ALPHA_VIEW_NAME]
SHAPES = ("disc", "star", "ring", "bar", "cross", "triangle")


def _shape(kind: str, size: int = 96, colour: tuple = (40, 90, 200)) -> Image.Image:
    """An RGBA icon: one shape in one colour on transparent pixels whose hidden RGB is that
    same colour (what many encoders leave), so only the alpha tells the shapes apart."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    s = size
    if kind == "disc":
        draw.ellipse((s * .15, s * .15, s * .85, s * .85), fill=255)
    elif kind == "star":
        pts = [(s / 2 + s * (.42 if i % 2 == 0 else .17) * np.sin(i * np.pi / 5),
                s / 2 - s * (.42 if i % 2 == 0 else .17) * np.cos(i * np.pi / 5)) for i in range(10)]
        draw.polygon(pts, fill=255)
    elif kind == "ring":
        draw.ellipse((s * .1, s * .1, s * .9, s * .9), fill=255)
        draw.ellipse((s * .3, s * .3, s * .7, s * .7), fill=0)
    elif kind == "bar":
        draw.rectangle((s * .1, s * .4, s * .9, s * .6), fill=255)
    elif kind == "cross":
        draw.rectangle((s * .4, s * .1, s * .6, s * .9), fill=255)
        draw.rectangle((s * .1, s * .4, s * .9, s * .6), fill=255)
    else:
        draw.polygon([(s * .5, s * .1), (s * .9, s * .85), (s * .1, s * .85)], fill=255)
    icon = Image.new("RGBA", (size, size), colour + (0,))
    icon.putalpha(mask)
    return icon


def _without_alpha(img: Image.Image) -> Image.Image:
    return img.convert("RGB")


def test_distinct_transparent_shapes_stay_apart():
    icons = [_shape(kind) for kind in SHAPES]
    new = set_distances(np.stack([builtin_descriptor(i) for i in icons]))
    old = np.stack([builtin_descriptor(_without_alpha(i)) for i in icons])
    off = ~np.eye(len(SHAPES), dtype=bool)
    assert new[off].min() > REPORT, new  # far apart, not just over the apply threshold
    assert not old.any()  # alpha ignored: six flat blue squares, the zero vector, no copy ever found


def test_resized_and_recompressed_transparent_copies_pair(tmp_path):
    icons = [_shape(kind, size=256, colour=(200, 60, 30)) for kind in SHAPES]
    copies = []
    for i, icon in enumerate(icons):
        icon.resize((64, 64), Image.Resampling.LANCZOS).save(tmp_path / f"{i}.png")
        icon.save(tmp_path / f"{i}.webp", quality=70)
        copies += [Image.open(tmp_path / f"{i}.png"), Image.open(tmp_path / f"{i}.webp")]
    dist = set_distances(np.stack([builtin_descriptor(i) for i in icons]),
                         np.stack([builtin_descriptor(c) for c in copies]))
    for i in range(len(icons)):
        assert dist[i, 2 * i] < APPLY and dist[i, 2 * i + 1] < APPLY, dist[i]
        assert np.delete(dist[i], [2 * i, 2 * i + 1]).min() > APPLY


def test_palette_transparency_is_composited():
    icon = _shape("star")
    palette = icon.convert("RGB").quantize(4)
    palette.info["transparency"] = palette.getpixel((0, 0))  # the hidden colour is the shape's: index of both
    rgba = palette.convert("RGBA")
    assert alpha_band(palette) is not None and alpha_band(rgba) is not None
    np.testing.assert_allclose(builtin_descriptor(palette), builtin_descriptor(rgba), atol=1e-6)


def _legacy_descriptor(img: Image.Image) -> np.ndarray:
    """The recipe of builtin-dct-ms (issue 15): grayscale thumbnails of the views, no alpha."""
    gray = img.convert("L")
    w, h = gray.size
    thumbs = []
    for scale in (1.0, 0.9, 0.81):
        box = None if scale == 1 else tuple(round(c, 6) for c in (
            (1 - scale) * w / 2, (1 - scale) * h / 2, (1 + scale) * w / 2, (1 + scale) * h / 2))
        thumbs.append(np.asarray(gray.resize((32, 32), Image.Resampling.BOX, box=box, reducing_gap=2.0), np.float32))
    return (descriptors_from_thumbnails(np.stack(thumbs)) * np.float32(1 / np.sqrt(VIEWS))).reshape(-1)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA_opaque", "LA_opaque"])
def test_opaque_images_keep_their_descriptor(mode):
    rng = np.random.default_rng(3)
    rgb = Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).resize((240, 180))
    img = {"RGB": rgb, "L": rgb.convert("L"), "RGBA_opaque": rgb.convert("RGBA"),
           "LA_opaque": rgb.convert("LA")}[mode]
    assert alpha_band(img) is None
    assert builtin_descriptor(img).shape == (SET_DIM,)
    assert np.array_equal(builtin_descriptor(img), _legacy_descriptor(rgb if mode != "L" else img))


def _icon_folder(root: Path, kinds=SHAPES[:4]) -> None:
    (root / "icons").mkdir(parents=True)
    for kind in kinds:
        _shape(kind, size=128).save(root / "icons" / f"{kind}.png")
        _shape(kind, size=128).resize((48, 48), Image.Resampling.LANCZOS).save(root / "icons" / f"{kind}_48.png")


def test_new_catalog_pairs_copies_not_shapes(run_cli, tmp_path):
    root, catalog = tmp_path / "data", tmp_path / "c.duckdb"
    _icon_folder(root)
    ok_output(run_cli(["scan", root], catalog))
    ok_output(run_cli(["sanitize"], catalog))
    ok_output(run_cli(["dedup", "report", "--set", "builtin"], catalog))
    assert catalog_rows(catalog, "SELECT model, dim FROM embedding_sets WHERE name = 'builtin'") == [
        (ALPHA_VIEW_NAME, SET_DIM)]
    pairs = catalog_rows(catalog, """
        SELECT ia.rel_path, ib.rel_path, e.distance FROM dup_edges e
        JOIN images ia ON ia.image_id = e.image_a JOIN images ib ON ib.image_id = e.image_b""")
    close = {frozenset(Path(p).stem.removesuffix("_48") for p in (a, b)) for a, b, d in pairs if d < APPLY}
    assert close == {frozenset([k]) for k in SHAPES[:4]}, pairs  # each icon with its own resized copy only


def _legacy_catalog(run_cli, tmp_path, *, transparent: bool) -> Path:
    """A catalog whose builtin set was made before issue 23 (builtin-dct-ms), its images
    described then; then one new image (transparent or not) is added and scanned."""
    from vdc_lake.catalog.connection import Catalog
    from vdc_lake.catalog.sets import register_embedding_set, write_vectors

    root, catalog = tmp_path / "data", tmp_path / "old.duckdb"
    (root / "photos").mkdir(parents=True)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).resize((160, 120)).save(
            root / "photos" / f"p{seed}.png")
    ok_output(run_cli(["scan", root], catalog))
    with Catalog(catalog) as c:
        run_id = c.begin_run("sanitize", {})
        register_embedding_set(c, "builtin", kind="descriptor", model=MULTI_VIEW_NAME, dim=SET_DIM,
                               preprocessing={"thumbnail": 32, "grayscale": True}, run_id=run_id)
        rows = c.rows("SELECT image_id, version, rel_path FROM images ORDER BY image_id")
        vectors = np.stack([_legacy_descriptor(Image.open(root / r[2])) for r in rows])
        write_vectors(c, "embeddings", "builtin", run_id, np.array([r[0] for r in rows]),
                      np.array([r[1] for r in rows]), vectors)
        c.finish_run(run_id)
    new = _shape("ring", size=128) if transparent else _shape("ring", size=128).convert("RGB")
    new.save(root / "photos" / "new.png")
    ok_output(run_cli(["scan", root], catalog))
    return catalog


def test_old_set_keeps_its_model_for_opaque_images(run_cli, tmp_path):
    catalog = _legacy_catalog(run_cli, tmp_path, transparent=False)
    ok_output(run_cli(["sanitize"], catalog))
    assert catalog_rows(catalog, "SELECT model FROM embedding_sets WHERE name = 'builtin'") == [(MULTI_VIEW_NAME,)]
    assert catalog_rows(catalog, "SELECT count(*) FROM embeddings WHERE set_name = 'builtin'") == [(4,)]


def test_old_set_refuses_transparent_images_and_the_fix_works(run_cli, tmp_path):
    catalog = _legacy_catalog(run_cli, tmp_path, transparent=True)
    result = run_cli(["sanitize"], catalog)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.count("\n") == 1, result.output  # one line
    assert f"holds {MULTI_VIEW_NAME} vectors" in result.output and "never mixed" in result.output
    assert catalog_rows(catalog, "SELECT count(*) FROM embeddings WHERE set_name = 'builtin'") == [(3,)]
    # the fix the message names: a new set of every image, and sanitize without the old one
    ok_output(run_cli(["predict", "--model", "builtin", "--kind", "descriptor", "--set", "builtin-alpha"], catalog))
    assert catalog_rows(catalog, "SELECT model FROM embedding_sets WHERE name = 'builtin-alpha'") == [
        (ALPHA_VIEW_NAME,)]
    assert catalog_rows(catalog, "SELECT count(*) FROM embeddings WHERE set_name = 'builtin-alpha'") == [(4,)]
    config = tmp_path / "vdc-lake.toml"
    config.write_text("[sanitize]\nbuiltin_descriptor = false\n")
    ok_output(run_cli(["sanitize"], catalog, config=config))
    ok_output(run_cli(["dedup", "report", "--set", "builtin-alpha"], catalog))


def test_one_view_of_a_set_vector_is_the_whole_image():
    img = _shape("cross")
    desc = builtin_descriptor(img)
    assert desc.shape == (SET_DIM,) and DESCRIPTOR_DIM * VIEWS == SET_DIM
    np.testing.assert_allclose(np.linalg.norm(desc), 1.0, atol=1e-5)
