"""Throughput of vdc_lake.models inference: data loader alone, model alone, end to end.

Writes N synthetic JPEGs (default 512 at ~0.5 MP) to a temporary directory, then for each
model at its own input resolution prints images/s for

    loader   decode + birder preset transform in DataLoader workers (no model)
    model    the network alone on random input tensors already on the device
    e2e      vdc_lake.models.inference.run_inference over the files
    model/e2e  ~1.0: the model is the bottleneck (good); >1: decoding starves the model

and with --compare-birder also runs `python -m birder.scripts.predict` (its CLI, in a
subprocess, same images, model, batch size, workers and precision flags) and prints birder's
own samples/s and our e2e / birder ratio.

Models: the three tiny walkthrough stand-ins from tests/tiny_models.py by default (small
resolution, so decoding dominates), --real-size for the same three networks at their real size
and resolution with random weights (no download; the speed is the real nets'), or real ones:
--models-dir models --model NAME (repeat).

--multi measures the walkthrough's three models together: one decode pass with all three
(vdc_lake.models.passes.run_pass, rotation in memory at --rotate-threshold) against three separate
passes (run_inference each) and, with --compare-birder, three runs of birder's own predict;
per-model rates and the combined rate (images through all three models per second: for
separate runs 1 / sum(1 / rate)). The GPU targets: each model alone model/e2e <= 1.1, the pass
>= 0.9 x the combined model-only rate, >= 3 x birder's three runs combined.

    python benchmarks/bench_predict.py
    python benchmarks/bench_predict.py --multi --n 32 --repeat 1 --compare-birder      # CPU smoke run
    python benchmarks/bench_predict.py --device cuda --amp --compare-birder \\
        --models-dir models --model rope_i_vit_b16_pn_aps_c1_pe-core --model resnet_v1_50_c1_sscd
    python benchmarks/bench_predict.py --multi --real-size --device cuda --amp --compile --fast-matmul \\
        --decode auto --n 4000 --megapixels 0.25 --batch-size 256 --workers 12 --compare-birder
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the repo

from vdc_lake.models.datasets import image_loader  # noqa: E402
from vdc_lake.models.inference import run_inference  # noqa: E402
from vdc_lake.models.kinds import forward_fn  # noqa: E402
from vdc_lake.models.loading import LoadedModel, load_model  # noqa: E402
from vdc_lake.models.passes import PassModel, run_pass  # noqa: E402

KIND_FLAGS = {"rotation": "--save-output", "descriptor": "--save-logits", "embedding": "--save-embeddings"}


def write_synthetic_jpegs(directory: Path, count: int, *, megapixels: float, seed: int = 0) -> list[Path]:
    """count JPEGs (quality 90, 4:3) of smooth random content plus grain, like photos compress."""
    rng = np.random.default_rng(seed)
    width = int(math.sqrt(megapixels * 1e6 * 4 / 3))
    height = int(width * 3 / 4)
    grain = rng.normal(0, 6, size=(height, width, 3)).astype(np.float32)
    paths = []
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.float32)
        pixels = np.clip(smooth + np.roll(grain, i * 7, axis=1), 0, 255).astype(np.uint8)
        path = directory / f"{i:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loader_rate(loaded: LoadedModel, paths: list[Path], args: argparse.Namespace) -> float:
    """images/s of decode + transform alone (what the workers deliver)."""
    start = time.perf_counter()
    count = 0
    for index, _images, _errors in image_loader(loaded, paths, batch_size=args.batch_size, num_workers=args.workers):
        count += len(index)
    return count / (time.perf_counter() - start)


def model_rate(loaded: LoadedModel, kind: str, count: int, args: argparse.Namespace) -> float:
    """images/s of the network alone on random normalised input already on the device."""
    device = loaded.device
    forward = forward_fn(loaded.net, kind)
    if args.compile:
        forward = torch.compile(forward)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    if args.channels_last:
        loaded.net.to(memory_format=memory_format)
    x = torch.randn(args.batch_size, 3, *loaded.size, device=device).contiguous(memory_format=memory_format)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)
    batches = max(1, math.ceil(count / args.batch_size))
    with torch.inference_mode(), autocast:
        for _ in range(2):  # warm-up (and compile)
            forward(x)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(batches):
            forward(x)
        synchronize(device)
    return batches * args.batch_size / (time.perf_counter() - start)


def end_to_end_rate(loaded: LoadedModel, kind: str, paths: list[Path], args: argparse.Namespace) -> float:
    """images/s of run_inference over the files, worker start-up included (as a user sees it)."""
    options = dict(
        kind=kind, batch_size=args.batch_size, num_workers=args.workers, amp=args.amp,
        compile=args.compile, fast_matmul=args.fast_matmul, channels_last=args.channels_last,
        decode=args.decode, draft_min_size=args.draft_min_size,
    )
    for _ in run_inference(loaded, paths[: args.batch_size], **options):  # warm-up (and compile)
        pass
    start = time.perf_counter()
    count = sum(len(batch) for batch in run_inference(loaded, paths, **options))
    synchronize(loaded.device)
    return count / (time.perf_counter() - start)


def birder_rate(loaded: LoadedModel, kind: str, image_dir: Path, work: Path, args: argparse.Namespace) -> float:
    """birder.scripts.predict's own reported samples/s on the same images (its CLI, a subprocess)."""
    command = [
        sys.executable, "-m", "birder.scripts.predict", "-n", loaded.network,
        "--batch-size", str(args.batch_size), "-j", str(args.workers),
        KIND_FLAGS[kind], "--output-format", "parquet", str(image_dir),
    ]
    command += ["-t", loaded.tag] if loaded.tag else []
    command += ["--gpu"] if loaded.device.type == "cuda" else []
    command += ["--amp", "--amp-dtype", "bfloat16"] if args.amp else []
    command += ["--compile"] if args.compile else []
    command += ["--channels-last"] if args.channels_last else []
    command += ["--fast-matmul"] if args.fast_matmul else []
    env = {**os.environ, "MODELS_DIR": str(loaded.path.parent), "RESULTS_DIR": str(work / "results")}
    done = subprocess.run(command, env=env, cwd=work, capture_output=True, text=True)
    match = re.search(r"\(([\d.]+) samples/sec\)", done.stdout + done.stderr)
    if done.returncode != 0 or match is None:
        tail = (done.stdout + done.stderr)[-2000:]
        raise SystemExit(f"birder predict failed ({done.returncode}):\n{' '.join(command)}\n{tail}")
    return float(match.group(1))


def bench_model(name: str, models_dir: Path, paths: list[Path], work: Path, args: argparse.Namespace) -> dict:
    loaded = load_model(models_dir, name, device=args.device)
    kind = loaded.kind if loaded.kind in KIND_FLAGS else "descriptor"
    row = {"model": name, "size": f"{loaded.size[0]}x{loaded.size[1]}", "kind": kind}
    # Best of --repeat runs: on a shared machine the fastest run is the least disturbed one.
    best = lambda measure: max(measure() for _ in range(args.repeat))  # noqa: E731
    row["loader"] = best(lambda: loader_rate(loaded, paths, args))
    row["model_only"] = best(lambda: model_rate(loaded, kind, len(paths), args))
    row["e2e"] = best(lambda: end_to_end_rate(loaded, kind, paths, args))
    if args.compare_birder:
        row["birder"] = best(lambda: birder_rate(loaded, kind, paths[0].parent, work, args))
    return row


def pass_rate(models: list[tuple[LoadedModel, str]], paths: list[Path], args: argparse.Namespace) -> float:
    """images/s of one decode pass running every model on every image (rotation in memory when
    one of them is a rotation model), worker start-up included."""
    pass_models = [PassModel(loaded, kind) for loaded, kind in models]
    kinds = [kind for _, kind in models]
    rotation = kinds.index("rotation") if "rotation" in kinds else None
    options = dict(
        rotation=rotation, rotate_threshold=args.rotate_threshold, decode=args.decode, batch_size=args.batch_size,
        num_workers=args.workers, amp=args.amp, compile=args.compile, fast_matmul=args.fast_matmul,
        channels_last=args.channels_last, draft_min_size=args.draft_min_size,
    )
    for _ in run_pass(pass_models, paths[: args.batch_size], **options):  # warm-up (and compile)
        pass
    start = time.perf_counter()
    count = sum(len(batch) for batch in run_pass(pass_models, paths, **options))
    synchronize(models[0][0].device)
    return count / (time.perf_counter() - start)


def combined(rates: list[float]) -> float:
    """Images/s through every model when each runs on its own: 1 / sum(1 / rate)."""
    return 1.0 / sum(1.0 / r for r in rates)


def bench_multi(names: list[str], models_dir: Path, paths: list[Path], work: Path, args: argparse.Namespace) -> None:
    best = lambda measure: max(measure() for _ in range(args.repeat))  # noqa: E731
    rows = [bench_model(name, models_dir, paths, work, args) for name in names]
    models = [(load_model(models_dir, name, device=args.device), row["kind"]) for name, row in zip(names, rows)]
    together = best(lambda: pass_rate(models, paths, args))
    print_table(rows, args)
    print()
    header = ["combined (3 models)", "img/s", "vs model-only", "vs birder"]
    model_only = combined([r["model_only"] for r in rows])
    lines = [("model only (floor)", model_only), ("three separate passes", combined([r["e2e"] for r in rows])),
             ("one pass", together)]
    if args.compare_birder:
        lines.append(("birder predict x3", combined([r["birder"] for r in rows])))
    cells = [[label, f"{rate:.1f}", f"{rate / model_only:.2f}",
              f"{rate / combined([r['birder'] for r in rows]):.2f}" if args.compare_birder else ""]
             for label, rate in lines]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-+-".join("-" * w for w in widths))
    for row in cells:
        print(" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))


def real_size_models(models_dir: Path) -> list[str]:
    """The three walkthrough networks at their real size and resolution, random weights."""
    from tests.tiny_models import TINY_SPECS, TinySpec, make_tiny_model

    real_sizes = {"resnet_v1_50_c1_sscd": 320, "rope_vit_reg8_so150m_p14_swiglu_rms_ap_rotnet-capi": 252,
                  "rope_i_vit_b16_pn_aps_c1_pe-core": 224}
    for name, side in real_sizes.items():
        tiny = TINY_SPECS[name]
        make_tiny_model(models_dir, TinySpec(tiny.network, tiny.tag, tiny.class_names, (side, side), tiny.rgb_mode, None))
    return list(real_sizes)


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    header = ["model", "size", "kind", "loader img/s", "model img/s", "e2e img/s", "model/e2e"]
    if args.compare_birder:
        header += ["birder img/s", "e2e/birder"]
    lines = []
    for r in rows:
        cells = [r["model"], r["size"], r["kind"], f"{r['loader']:.1f}", f"{r['model_only']:.1f}",
                 f"{r['e2e']:.1f}", f"{r['model_only'] / r['e2e']:.2f}"]
        if args.compare_birder:
            cells += [f"{r['birder']:.1f}", f"{r['e2e'] / r['birder']:.2f}"]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(header)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-+-".join("-" * w for w in widths))
    for cells in lines:
        print(" | ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", "--n", type=int, default=512, help="number of synthetic JPEGs (default 512)")
    parser.add_argument("--megapixels", type=float, default=0.5, help="size of each JPEG (default 0.5 MP)")
    parser.add_argument("--models-dir", type=Path, help="real birder models (default: build the tiny ones)")
    parser.add_argument("--model", action="append", help="model name in --models-dir (repeatable)")
    parser.add_argument("--real-size", action="store_true",
                        help="the three walkthrough nets at real size and resolution, random weights")
    parser.add_argument("--multi", action="store_true", help="also: all models in one pass vs separate passes")
    parser.add_argument("--decode", default="auto", choices=["auto", "cpu", "gpu"], help="where JPEGs decode")
    parser.add_argument("--rotate-threshold", type=float, default=0.75, help="--multi: rotation in memory above this")
    parser.add_argument("--draft-min-size", type=int, default=448, help="JPEG draft decoding floor (0: off)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--fast-matmul", action="store_true", help="TF32 matmuls")
    parser.add_argument("--compare-birder", action="store_true", help="also time birder.scripts.predict")
    parser.add_argument("--repeat", type=int, default=3, help="report the best of this many runs (default 3)")
    args = parser.parse_args()
    if args.model and args.models_dir is None:
        parser.error("--model needs --models-dir")
    return args


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        work = Path(tmp)
        (work / "images").mkdir()
        paths = write_synthetic_jpegs(work / "images", args.images, megapixels=args.megapixels)
        if args.real_size:
            models_dir, names = work / "models", real_size_models(work / "models")
        elif args.models_dir is None:
            from tests.tiny_models import make_tiny_models

            models_dir, names = work / "models", list(make_tiny_models(work / "models"))
        else:
            models_dir, names = args.models_dir, args.model or []
        print(
            f"\n{args.images} JPEGs of {args.megapixels} MP, device {args.device}, decode {args.decode}, batch "
            f"{args.batch_size}, {args.workers} workers, torch threads {torch.get_num_threads()}, amp {args.amp}, "
            f"compile {args.compile}, best of {args.repeat}"
        )
        if args.multi:
            bench_multi(names, models_dir, paths, work, args)
        else:
            print_table([bench_model(name, models_dir, paths, work, args) for name in names], args)


if __name__ == "__main__":
    main()
