"""Small helpers for the example notebooks (examples/notebooks): image grids and plots.

matplotlib is imported only here, on first use (`pip install 'vdc-lake[notebooks]'`).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Sequence

from PIL import Image, ImageOps

from vdc_lake.fileops.probe import HeaderLimitError, default_max_pixels, open_image

THUMBNAIL_PX = 160


def _thumbnail(path: str | None, size: int) -> Image.Image:
    """The image at path, EXIF-oriented and shrunk; a grey tile when it is gone or unreadable, or
    over the pixel limit (sanitize's default, every frame counted) or the header limits."""
    if path and os.path.isfile(path):
        try:
            with open_image(path, default_max_pixels()) as img:
                img.draft("RGB", (size, size))
                img = ImageOps.exif_transpose(img).convert("RGB")
                img.thumbnail((size, size))
                return img
        except (OSError, ValueError, HeaderLimitError, Image.DecompressionBombError):
            pass
    return Image.new("RGB", (size, size), (200, 200, 200))


def image_grid(paths: Sequence[str | None], titles: Sequence[str] | None = None, *, columns: int = 6,
               size: int = THUMBNAIL_PX) -> Any:
    """A matplotlib figure of thumbnails, `columns` per row, each with its title (file name by
    default). Missing files show as grey tiles, so a grid of an applied catalog still renders."""
    import matplotlib.pyplot as plt

    paths = list(paths)
    titles = list(titles) if titles is not None else [os.path.basename(p or "(missing)") for p in paths]
    rows = max(1, -(-len(paths) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, path, title in zip(axes.flat, paths, titles):
        ax.imshow(_thumbnail(path, size))
        ax.set_title(title, fontsize=7)
    fig.tight_layout()
    return fig


def show_figure(fig: Any, folder: str | os.PathLike, name: str) -> str:
    """Save fig as FOLDER/NAME.png, say where, and show it: inline in Jupyter; run as a script
    (a non-interactive backend) the saved file is where the plot goes. Returns the file's path."""
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{name}.png")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    print(f"figure saved: {path}")
    with warnings.catch_warnings():  # Agg (a script without a display) cannot show: the file is the plot
        warnings.filterwarnings("ignore", message=".*non-interactive.*")
        plt.show()
    plt.close(fig)
    return path


def original_or_backup_sql(image_id_column: str = "image_id") -> str:
    """SQL expression: the image's current path, else the newest verified backup of it from the
    journal (an applied catalog), else NULL. Use inside a query over a table aliased `x`."""
    return f"""coalesce(
        (SELECT i.root || '/' || i.rel_path FROM images AS i WHERE i.image_id = x.{image_id_column} AND i.present),
        (SELECT j.backup FROM journal AS j WHERE j.image_id = x.{image_id_column} AND j.state = 'done'
           AND j.backup IS NOT NULL ORDER BY j.op_id DESC LIMIT 1))"""


def apply_threshold(con: Any, set_name: str | None = None) -> float:
    """The dedup apply threshold the catalog's decisions use for set_name (default: the set of
    the newest `dedup report`), from the dedup_thresholds view: config, else the set's own
    recommendation, else the bundled default."""
    row = con.execute("""
        WITH chosen AS (
            SELECT coalesce($1, (SELECT json_extract_string(params, '$.set') FROM newest_stage_runs
                                 WHERE stage = 'dedup-report')) AS set_name
        )
        SELECT t.apply_threshold FROM dedup_thresholds AS t, chosen AS c
        WHERE t.set_name = c.set_name OR t.set_name IS NULL
        ORDER BY t.set_name IS NULL LIMIT 1
    """, [set_name]).fetchall()
    return float(row[0][0])
