"""Several models in one decode pass: same results as separate runs, rotation in memory, results
carried to the turned files by `apply rotation`, resume after a kill, and GPU JPEG decoding."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tests.tiny_models import PE_CORE, ROTNET, SSCD, make_tiny_models, write_test_images
from vdc_lake.catalog.connection import Catalog
from vdc_lake.cli import cli
from vdc_lake.cli.pipeline import step_arguments
from vdc_lake.catalog.sets import read_vectors

N_IMAGES = 10
MODELS = [(ROTNET, "rotation", "predictions"), (SSCD, "descriptor", "embeddings"), (PE_CORE, "embedding", "embeddings")]
CPU = ["--device", "cpu", "--decode", "cpu", "--num-workers", "0", "--batch-size", "4"]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """The tiny models; the rotation net's classifier (all zeros: every angle 0.25) gets random
    weights, so that it predicts angles other than 0 and the pass turns images."""
    folder = tmp_path_factory.mktemp("models")
    make_tiny_models(folder)
    checkpoint = torch.load(folder / f"{ROTNET}.pt", weights_only=True)
    generator = torch.Generator().manual_seed(0)
    weight = checkpoint["state"]["classifier.weight"]
    checkpoint["state"]["classifier.weight"] = torch.randn(weight.shape, generator=generator) * 2
    torch.save(checkpoint, folder / f"{ROTNET}.pt")
    return folder


def _scan(tmp_path, images):
    catalog = tmp_path / "catalog.duckdb"
    result = CliRunner().invoke(cli, ["--catalog", str(catalog), "-q", "scan", str(images)])
    assert result.exit_code == 0, result.output
    return catalog


@pytest.fixture()
def mixed(tmp_path):
    """JPEGs and PNGs, a file that is not an image (scan records it; nobody decodes it) and a
    truncated JPEG (its header reads; every decode of it fails)."""
    images = tmp_path / "images"
    paths = write_test_images(images, N_IMAGES)
    (images / "broken.jpg").write_bytes(b"not an image")
    (images / "cut.jpg").write_bytes(paths[0].read_bytes()[:1000])
    return _scan(tmp_path, images)


@pytest.fixture()
def pngs(tmp_path):
    """Lossless files, so a turned file holds exactly the pixels turned in memory."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(7)
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 256, size=(80, 112, 3), dtype=np.uint8)).save(images / f"p{i:02d}.png")
    return _scan(tmp_path, images)


def invoke(catalog, *args):
    result = CliRunner().invoke(cli, ["--catalog", str(catalog), "-q", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


def vectors(catalog, table, name):
    with Catalog(catalog, read_only=True) as c:
        vs = read_vectors(c, table, name)
    return dict(zip(vs.image_ids.tolist(), vs.vectors))


def test_one_pass_equals_three_separate_runs(mixed, models_dir):
    for model, kind, _ in MODELS:
        invoke(mixed, "predict", "--model", model, "--kind", kind, "--set", f"alone_{kind}",
               "--models-dir", models_dir, *CPU)
    # the pass as a pipeline step writes it: lists become one option with several values
    step = {"command": "predict", "model": [m for m, _, _ in MODELS], "kind": [k for _, k, _ in MODELS],
            "set": [f"pass_{k}" for _, k, _ in MODELS], "models_dir": str(models_dir), "device": "cpu",
            "decode": "cpu", "num_workers": 0, "batch_size": 4, "rotate_threshold": 1.0}
    output = invoke(mixed, *step_arguments(step, apply=False))
    assert output.count(f"{N_IMAGES} of {N_IMAGES + 1} images written, 1 failed") == 3, output
    for _, kind, table in MODELS:
        alone, together = vectors(mixed, table, f"alone_{kind}"), vectors(mixed, table, f"pass_{kind}")
        assert len(alone) == N_IMAGES and alone.keys() == together.keys()
        diff = max(np.abs(alone[i] - together[i]).max() for i in alone)
        assert diff <= 1e-4, (kind, diff)
    with Catalog(mixed, read_only=True) as c:
        runs = c.rows("SELECT json_extract_string(params, '$.set'), json_keys(params), "
                      "json_extract_string(params, '$.decode') FROM runs WHERE stage = 'predict' ORDER BY run_id")
    assert [r[0] for r in runs] == [f"alone_{k}" for _, k, _ in MODELS] + [f"pass_{k}" for _, k, _ in MODELS]
    assert all(keys == runs[0][1] for _, keys, _ in runs)  # the same params as separate runs
    assert {r[2] for r in runs} == {"cpu"}
    again = invoke(mixed, *step_arguments(step, apply=False))
    # nothing is left; the truncated file failed on these bytes in every set, so it is not tried again
    assert again.count("0 of 0 images written, 0 failed") == 3 and again.count("1 not tried again") == 3, again


def _turned(catalog):
    with Catalog(catalog, read_only=True) as c:
        return dict(c.rows("SELECT image_id, any_value(angle) FROM applied_rotations GROUP BY image_id"))


def test_rotation_in_memory_is_what_apply_rotation_writes(pngs, models_dir, tmp_path):
    args = ["predict", "--models-dir", models_dir, *CPU, "--rotate-threshold", "0"]
    for model, kind, _ in MODELS:
        args += ["--model", model, "--kind", kind]
    invoke(pngs, *args)
    turned = _turned(pngs)
    with Catalog(pngs, read_only=True) as c:
        actions = dict(c.rows("SELECT image_id, action FROM rotation_actions(threshold := 0.0)"))
    # the pass turned exactly what apply will turn, by the same angle
    assert turned and {i: f"rotate_{a}" for i, a in turned.items()} == {i: a for i, a in actions.items() if a != "none"}
    before = {name: vectors(pngs, table, name) for name, _, table in MODELS[1:]}

    invoke(pngs, "apply", "rotation", "--threshold", "0", "--backup-dir", tmp_path / "backup", "--apply")
    with Catalog(pngs, read_only=True) as c:
        versions = dict(c.rows("SELECT image_id, version FROM images WHERE present"))
    assert {i for i, v in versions.items() if v > 1} == set(turned)
    output = invoke(pngs, "predict", "--models-dir", models_dir, *CPU, "--model", SSCD, "--kind", "descriptor",
                    "--model", PE_CORE, "--kind", "embedding")
    assert output.count("0 of 0 images written") == 2, output  # the pass's results are current
    for name, kind, table in MODELS[1:]:
        carried = vectors(pngs, table, name)
        assert carried.keys() == before[name].keys()
        for i in carried:  # turned images: the very vectors of the pass, now for the new version
            np.testing.assert_array_equal(carried[i], before[name][i])
        # computed from the turned files themselves: what the pass computed in memory
        invoke(pngs, "predict", "--models-dir", models_dir, *CPU, "--model", name, "--kind", kind,
               "--set", f"from_files_{kind}")
        from_files = vectors(pngs, table, f"from_files_{kind}")
        diff = max(np.abs(from_files[i] - carried[i]).max() for i in carried)
        assert diff <= 1e-4, (kind, diff)


def test_killed_pass_resumes_each_set_without_duplicates(mixed, models_dir):
    # The child commits every 4 images and SIGKILLs itself right after its second commit.
    script = textwrap.dedent(f"""
        import os, signal
        import vdc_lake.stages.predict as p
        from vdc_lake.catalog.connection import Catalog
        from vdc_lake.models.options import InferenceOptions
        original, commits = p._commit_pass, []
        def commit_then_die(*args):
            original(*args)
            commits.append(1)
            if len(commits) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        p._commit_pass = commit_then_die
        requests = [p.PredictRequest(m, k) for m, k in {[(m, k) for m, k, _ in MODELS]!r}]
        with Catalog({str(mixed)!r}) as catalog:
            options = InferenceOptions.from_config(None, models_dir={str(models_dir)!r}, device="cpu", decode="cpu",
                                                   rotate_threshold=0.0, batch_size=4, num_workers=0)
            p.predict_pass(catalog, requests, options, commit_every=4, quiet=True)
    """)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert child.returncode == -9, child.stderr
    with Catalog(mixed, read_only=True) as c:
        done = {name: c.scalar(f"SELECT count(*) FROM {table} WHERE set_name = ?", [name]) for name, _, table in MODELS}
        # the truncated file's failure, if its batch was committed before the kill
        failed = {name: c.scalar("SELECT count(*) FROM predict_failures WHERE set_name = ?", [name])
                  for name, _, _ in MODELS}
    assert all(0 < n < N_IMAGES for n in done.values()), done
    args = ["predict", "--models-dir", models_dir, *CPU, "--rotate-threshold", "0"]
    for model, kind, _ in MODELS:
        args += ["--model", model, "--kind", kind]
    output = invoke(mixed, *args)
    for name, _, _ in MODELS:
        left = N_IMAGES - done[name]
        resumed = f"{left} of {left} images written, 0 failed" if failed[name] else \
            f"{left} of {left + 1} images written, 1 failed"
        assert f"set {name} " in output and resumed in output, output
    with Catalog(mixed, read_only=True) as c:
        assert c.rows("SELECT set_name, count(*) FROM predict_failures GROUP BY set_name ORDER BY set_name") == \
            sorted((name, 1) for name, _, _ in MODELS)  # one failure per set, none recorded twice
        for name, _, table in MODELS:
            total, distinct = c.rows(f"SELECT count(*), count(DISTINCT image_id) FROM {table} WHERE set_name = ?",
                                     [name])[0]
            assert total == distinct == N_IMAGES
        statuses = [r[0] for r in c.rows("SELECT status FROM runs WHERE stage = 'predict' ORDER BY run_id")]
        duplicated = c.scalar("SELECT count(*) - count(DISTINCT (run_id, image_id)) FROM applied_rotations")
    assert statuses == ["interrupted"] * 3 + ["done"] * 3
    assert duplicated == 0


def test_kinds_must_pair_with_models(mixed, models_dir):
    result = CliRunner().invoke(cli, ["--catalog", str(mixed), "predict", "--model", SSCD, "--model", PE_CORE,
                                      "--kind", "descriptor", "--models-dir", str(models_dir)])
    assert result.exit_code == 2
    assert "2 --model and 1 --kind" in result.output
    result = CliRunner().invoke(cli, ["--catalog", str(mixed), "predict", "--model", SSCD, "--model", PE_CORE,
                                      "--kind", "descriptor", "embedding", "--set", "only_one",
                                      "--models-dir", str(models_dir)])
    assert result.exit_code == 2 and "--set was given 1 times for 2 --model" in result.output
    with Catalog(mixed, read_only=True) as c:
        assert c.scalar("SELECT count(*) FROM runs WHERE stage = 'predict'") == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU JPEG decoding needs CUDA (nvJPEG)")
def test_gpu_decode_matches_the_cpu_decode(tmp_path, models_dir):
    from vdc_lake.models.decoding import decode_for_pass, decode_jpegs_on_device, gpu_jpeg_bytes
    from vdc_lake.models.loading import load_model
    from vdc_lake.models.passes import PassModel, run_pass

    rng = np.random.default_rng(3)
    smooth = np.asarray(Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((320, 240), Image.BICUBIC))
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(smooth).save(tmp_path / "rgb.jpg", quality=90)
    Image.fromarray(smooth).save(tmp_path / "oriented.jpg", quality=90, exif=exif.tobytes())
    Image.fromarray(smooth).convert("L").save(tmp_path / "grey.jpg", quality=90)
    Image.fromarray(smooth).save(tmp_path / "progressive.jpg", quality=90, progressive=True)
    Image.fromarray(smooth).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=90)
    Image.fromarray(smooth).save(tmp_path / "lossless.png")
    (tmp_path / "corrupt.jpg").write_bytes((tmp_path / "rgb.jpg").read_bytes()[:200])
    device = torch.device("cuda")
    for name in ("rgb.jpg", "oriented.jpg", "grey.jpg", "progressive.jpg"):
        data = gpu_jpeg_bytes(str(tmp_path / name), None)
        assert data is not None, name
        (gpu,) = decode_jpegs_on_device([data], device)
        if gpu is None:  # nvJPEG refused it: the pass decodes it on the CPU instead
            continue
        cpu = decode_for_pass(str(tmp_path / name))
        assert gpu.shape == cpu.shape, name  # EXIF orientation not applied on either
        assert (gpu.cpu().float() - cpu.float()).abs().mean() < 2.0, name
    assert gpu_jpeg_bytes(str(tmp_path / "cmyk.jpg"), None) is None  # CMYK: CPU
    assert gpu_jpeg_bytes(str(tmp_path / "lossless.png"), None) is None
    assert decode_jpegs_on_device([torch.frombuffer(bytearray((tmp_path / "corrupt.jpg").read_bytes()),
                                                    dtype=torch.uint8)], device) == [None]

    paths = sorted(str(p) for p in tmp_path.iterdir() if p.is_file())
    loaded = load_model(models_dir, SSCD, device="cuda")
    results = {}
    for decode in ("cpu", "gpu"):
        batches = list(run_pass([PassModel(loaded, "descriptor")], paths, decode=decode, batch_size=4, num_workers=0))
        results[decode] = (np.concatenate([b.done[0] for b in batches]), np.concatenate([b.outputs[0] for b in batches]))
    cpu_done, cpu_out = results["cpu"]
    gpu_done, gpu_out = results["gpu"]
    assert (cpu_done == gpu_done).all() and cpu_done.sum() == len(paths) - 1  # only the corrupt file fails
    assert np.abs(cpu_out - gpu_out)[cpu_done].mean() < 0.05 * np.abs(cpu_out[cpu_done]).mean()


def test_device_side_branch_equals_worker_resizing(tmp_path, models_dir):
    """What CUDA runs (workers ship JPEG bytes or whole images; the main process decodes the
    bytes in batches, falls back per file, turns and resizes per model), run here on the CPU,
    gives the same numbers as the CPU path where the workers resize."""
    from torch.utils.data import DataLoader

    import vdc_lake.models.passes as m
    from vdc_lake.models.datasets import PassDataset, collate_pass
    from vdc_lake.models.kinds import forward_fn, rotation_order
    from vdc_lake.models.loading import load_model, preprocessing_steps

    paths = [str(p) for p in write_test_images(tmp_path / "images", 7)]
    Image.fromarray(np.zeros((30, 40), np.uint8)).convert("CMYK").save(tmp_path / "images" / "cmyk.jpg")
    (tmp_path / "images" / "cut.jpg").write_bytes(open(paths[0], "rb").read()[:300])  # nvJPEG and libjpeg refuse it
    paths += [str(tmp_path / "images" / "cmyk.jpg"), str(tmp_path / "images" / "cut.jpg")]
    models = [m.PassModel(load_model(models_dir, name), kind) for name, kind, _ in MODELS]

    def collect(batches):
        batches = list(batches)
        return (np.concatenate([b.done for b in batches], axis=1), np.concatenate([b.angles for b in batches]),
                [np.concatenate([b.outputs[i] for b in batches]) for i in range(len(models))])

    workers = collect(m.run_pass(models, paths, rotation=0, rotate_threshold=0.0, decode="cpu", batch_size=4,
                                 num_workers=0))
    steps = []
    for model in models:
        resize, normalize = preprocessing_steps(model.loaded)
        order = rotation_order(model.loaded) if model.kind == "rotation" else None
        steps.append(m._PassStep(model, resize, normalize, forward_fn(model.loaded.net, model.kind), order))
    dataset = PassDataset(paths, [], [model.loaded.size for model in models], ship_full=True, gpu_jpeg=True)
    loader = DataLoader(dataset, batch_size=4, num_workers=0, collate_fn=collate_pass)
    context = m._PassContext(steps, dataset, torch.device("cpu"), np.ones((3, len(paths)), bool), 0, 0.0,
                             np.full((len(paths), 4), np.nan, np.float32), None)
    device_side = collect(m._pass_batches(context, loader, torch.autocast("cpu", enabled=False), None, False, None))
    done, angles, outputs = workers
    assert (device_side[0] == done).all() and done.sum(axis=1).tolist() == [len(paths) - 1] * 3
    assert (device_side[1] == angles).all() and (angles != 0).any()
    for i in range(len(models)):
        np.testing.assert_allclose(device_side[2][i][done[i]], outputs[i][done[i]], rtol=0, atol=1e-5)


def test_stored_rotation_turns_the_images_without_running_the_rotation_model(tmp_path, models_dir):
    """A pass whose rotation set already holds an image's probabilities turns it by those."""
    from vdc_lake.models.loading import load_model
    from vdc_lake.models.passes import PassModel, run_pass

    paths = [str(p) for p in write_test_images(tmp_path / "images", 6)]
    models = [PassModel(load_model(models_dir, ROTNET), "rotation"), PassModel(load_model(models_dir, SSCD), "descriptor")]
    options = dict(rotation=0, rotate_threshold=0.0, decode="cpu", batch_size=4, num_workers=0)
    first = list(run_pass(models, paths, **options))
    probs = np.concatenate([b.outputs[0] for b in first])
    needs = np.array([[False] * 6, [True] * 6])
    second = list(run_pass(models, paths, needs=needs, known_rotation=probs, **options))
    assert not np.concatenate([b.done[0] for b in second]).any()  # the rotation model did not run
    angles = np.concatenate([b.angles for b in first])
    assert (angles != 0).any() and (np.concatenate([b.angles for b in second]) == angles).all()
    np.testing.assert_array_equal(np.concatenate([b.outputs[1] for b in second]),
                                  np.concatenate([b.outputs[1] for b in first]))


def test_filter_examples_embeds_the_examples_as_predict_embedded_the_set(tmp_path, models_dir):
    """An example that is a copy of a catalog image is at distance 0 from it: the examples are
    embedded at the set's input size (--size) and decoded as predict decodes (JPEG draft)."""
    import shutil

    images, examples = tmp_path / "images", tmp_path / "examples"
    paths = write_test_images(images, 3)
    rng = np.random.default_rng(5)
    smooth = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((1200, 1000), Image.BICUBIC)
    smooth.save(images / "big.jpg", quality=90)  # both sides >= 2 x 448: predict decodes it drafted
    examples.mkdir()
    shutil.copy(images / "big.jpg", examples / "big.jpg")
    shutil.copy(paths[0], examples / "small.jpg")
    catalog = tmp_path / "catalog.duckdb"
    base = ["--catalog", str(catalog), "-q"]
    for args in (["scan", str(images)],
                 ["predict", "--model", PE_CORE, "--kind", "embedding", "--size", "96", "--models-dir",
                  str(models_dir), "--device", "cpu", "--num-workers", "0"],
                 ["filter", "examples", "--set", PE_CORE, "--examples", str(examples), "--models-dir",
                  str(models_dir)]):
        result = CliRunner().invoke(cli, base + args)
        assert result.exit_code == 0, result.output
    with Catalog(catalog, read_only=True) as c:
        rows = dict(c.rows("SELECT i.rel_path, d.distance FROM example_distances AS d JOIN images AS i USING (image_id)"))
    assert rows["big.jpg"] < 1e-5 and rows[paths[0].name] < 1e-5, rows
