"""Model listing, loading and inference on tiny birder nets saved with birder's checkpoint code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.tiny_models import PE_CORE, ROTNET, SSCD, TINY_EMBEDDING_SIZE, make_tiny_models, write_test_images
from vdc_lake.models.checkpoints import ModelError, list_models, split_model_name
from vdc_lake.models.datasets import ImageFileDataset
from vdc_lake.models.inference import run_inference
from vdc_lake.models.loading import load_model


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("models")
    make_tiny_models(directory)
    return directory


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    directory = tmp_path_factory.mktemp("images")
    paths = write_test_images(directory, 5)
    corrupt = directory / "corrupt.jpg"
    corrupt.write_bytes(paths[0].read_bytes()[:200])  # a truncated JPEG
    tiff = directory / "scan.tiff"  # torchvision cannot decode TIFF: the Pillow fallback must
    Image.fromarray(np.full((40, 50, 3), 200, dtype=np.uint8)).save(tiff)
    return [*paths[:3], corrupt, *paths[3:], tiff]  # corrupt one at position 3


def test_tiny_checkpoints_are_small(models_dir):
    sizes = {p.name: p.stat().st_size for p in models_dir.iterdir()}
    assert len(sizes) == 3 and max(sizes.values()) < 1_000_000


def test_split_model_name_prefers_longest_network():
    assert split_model_name("resnet_v1_50_c1_sscd") == ("resnet_v1_50_c1", "sscd")
    assert split_model_name("resnet_v1_50_c1") == ("resnet_v1_50_c1", None)
    assert split_model_name("resnet_v1_50_c1_my_tag") == ("resnet_v1_50_c1", "my_tag")
    assert split_model_name("no_such_network_x") is None


def test_list_models_reports_the_three_models(models_dir):
    infos = {info.name: info for info in list_models(models_dir)}
    assert set(infos) == {SSCD, ROTNET, PE_CORE}
    assert all(info.loads and info.error is None for info in infos.values())
    got = {n: (i.network, i.tag, i.num_classes, i.size, i.kind, i.embedding_size) for n, i in infos.items()}
    assert got == {
        SSCD: ("resnet_v1_50_c1", "sscd", 512, (64, 64), "descriptor", TINY_EMBEDDING_SIZE),
        ROTNET: ("rope_vit_reg8_so150m_p14_swiglu_rms_ap", "rotnet-capi", 4, (56, 56), "rotation", 32),
        PE_CORE: ("rope_i_vit_b16_pn_aps_c1", "pe-core", 0, (64, 64), "embedding", 32),
    }
    assert infos[ROTNET].class_names == ["0", "90", "180", "270"]


def _collect(batches):
    batches = list(batches)
    return (
        np.concatenate([b.indices for b in batches]),
        np.concatenate([b.outputs for b in batches]),
        np.concatenate([b.failed for b in batches]),
        [e for b in batches for e in b.errors],
    )


@pytest.mark.parametrize(
    "name, tag, kind, dim",
    [(ROTNET, None, "rotation", 4), ("resnet_v1_50_c1", "sscd", "descriptor", 512), (PE_CORE, None, "embedding", 32)],
)
def test_run_inference_shapes_and_failures(models_dir, images, name, tag, kind, dim):
    loaded = load_model(models_dir, name, tag=tag)
    assert not loaded.net.training
    indices, outputs, failed, errors = _collect(
        run_inference(loaded, images, kind=kind, batch_size=3, num_workers=0)
    )
    assert indices.tolist() == [0, 1, 2, 4, 5, 6]  # input order, corrupt file left out
    assert outputs.shape == (6, dim) and outputs.dtype == np.float32
    assert failed.tolist() == [3] and "cannot decode" in errors[0]
    assert np.isfinite(outputs).all()
    if kind == "rotation":
        np.testing.assert_allclose(outputs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")  # birder's own loader
def test_outputs_match_birders_own_pipeline(models_dir, images):
    """Same decode (birder's tv loader), same preset, same net: same numbers as birder predict."""
    from birder.data.datasets.directory import tv_rgb_loader

    loaded = load_model(models_dir, SSCD)
    indices, outputs, _, _ = _collect(run_inference(loaded, images[:3], kind="descriptor", num_workers=1))
    with torch.inference_mode():
        batch = torch.stack([loaded.transform(tv_rgb_loader(str(p))) for p in images[:3]])
        expected = loaded.net(batch).numpy()
    assert indices.tolist() == [0, 1, 2]
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5)


def test_progress_and_channels_last(models_dir, images):
    loaded = load_model(models_dir, PE_CORE)
    done = []
    indices, outputs, _, _ = _collect(
        run_inference(loaded, images, kind="embedding", batch_size=4, num_workers=0, channels_last=True,
                      progress=done.append)
    )
    assert done == [4, 3] and outputs.shape == (6, 32)


def test_dataset_never_raises(images, models_dir):
    loaded = load_model(models_dir, ROTNET)
    dataset = ImageFileDataset([images[3], "/no/such/file.jpg", images[-1]], loaded.transform)
    (_, bad, bad_error), (_, missing, missing_error), (_, tiff, tiff_error) = [dataset[i] for i in range(3)]
    assert bad.shape == tiff.shape == (3, 56, 56) and bool((bad == 0).all())
    assert bad_error.startswith("cannot decode") and "No such file" in missing_error and tiff_error == ""


def test_kind_must_fit_the_model(models_dir):
    loaded = load_model(models_dir, PE_CORE)
    with pytest.raises(ModelError, match="no classifier head"):
        next(run_inference(loaded, [], kind="rotation"))
    with pytest.raises(ModelError, match="unknown inference kind"):
        next(run_inference(loaded, [], kind="logits"))


def test_missing_model_names_the_fix(models_dir):
    with pytest.raises(ModelError, match=r"no model 'resnet_v1_50_c1_sscdx'.*not a birder pretrained name"):
        load_model(models_dir, "resnet_v1_50_c1_sscdx")
    with pytest.raises(ModelError, match=r"python -m birder.tools download-model rope_i_vit_l14_pn_aps_c1_pe-core"):
        load_model(models_dir, "rope_i_vit_l14_pn_aps_c1_pe-core")
    with pytest.raises(ModelError, match="does not exist"):
        load_model(models_dir / "nowhere", SSCD)
    checkpoint = next(models_dir.glob("*.pt"))  # the checkpoint given as the folder
    expected = (f"--models-dir {checkpoint} is a file, not the models folder: pass its folder "
                f"(--models-dir {models_dir}) and the model's name (--model {checkpoint.stem})")
    with pytest.raises(ModelError) as err:
        load_model(checkpoint, SSCD)
    assert str(err.value) == expected
    with pytest.raises(ModelError, match=r"is a file, not the models folder: pass its folder \(--models-dir "):
        list_models(checkpoint)


def test_corrupt_checkpoint(tmp_path, models_dir):
    (tmp_path / f"{SSCD}.pt").write_bytes((models_dir / f"{SSCD}.pt").read_bytes()[:5000])
    (tmp_path / "resnet_v1_50_c1_other.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "resnet_v1_50_c1_other_states.pt").write_bytes(b"optimizer states are not models")
    infos = list_models(tmp_path)
    assert [i.name for i in infos] == ["resnet_v1_50_c1_other", SSCD]
    assert not any(i.loads for i in infos) and all("re-download" in i.error for i in infos)
    with pytest.raises(ModelError, match="cannot be loaded"):
        load_model(tmp_path, SSCD)


def test_checkpoint_for_the_wrong_network(tmp_path, models_dir):
    # A file whose name claims a different network than its tensors: loads=False, clear error.
    (tmp_path / "resnet_v1_18_x.pt").write_bytes((models_dir / f"{SSCD}.pt").read_bytes())
    (info,) = list_models(tmp_path)
    assert not info.loads and "does not fit network resnet_v1_18" in info.error


def test_gpu_split_preprocessing_matches_birders_preset(models_dir, images):
    """On CUDA, workers stop at uint8 and the device normalises: same numbers as the full preset."""
    from vdc_lake.models.decoding import decode_rgb
    from vdc_lake.models.loading import gpu_split, normalizer

    loaded = load_model(models_dir, SSCD)
    steps = gpu_split(loaded.transform)
    assert steps is not None, "birder's inference preset no longer ends with ToDtype, Normalize"
    from torchvision.transforms import v2

    pixels = decode_rgb(str(images[0]))
    uint8 = v2.Compose(steps[:-2])(pixels)
    assert uint8.dtype == torch.uint8
    on_device = normalizer(steps[-1].mean, steps[-1].std, torch.device("cpu"))(uint8[None])[0]
    torch.testing.assert_close(on_device, loaded.transform(pixels), rtol=0, atol=1e-6)


def test_odd_images_give_batchable_tensors(tmp_path, models_dir):
    """Animated GIF (first frame) and 16-bit PNG, through both the CPU and the GPU worker transform."""
    from torchvision.transforms import v2

    from vdc_lake.models.loading import gpu_split

    frames = [Image.fromarray(np.full((20, 30, 3), 60 * i, dtype=np.uint8)) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(np.full((20, 30), 40000, dtype=np.uint16)).save(tmp_path / "deep.png")
    loaded = load_model(models_dir, ROTNET)
    uint8_transform = v2.Compose(gpu_split(loaded.transform)[:-2])
    for transform, dtype in ((loaded.transform, torch.float32), (uint8_transform, torch.uint8)):
        dataset = ImageFileDataset([tmp_path / "anim.gif", tmp_path / "deep.png"], transform)
        for i in range(2):
            _, image, error = dataset[i]
            assert error == "" and image.shape == (3, 56, 56) and image.dtype == dtype
    _, first_frame, _ = ImageFileDataset([tmp_path / "anim.gif"], uint8_transform)[0]
    assert int(first_frame.max()) == 0  # frame 0 is black


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated, birder still writes .pts
def test_torchscript_and_safetensors_files(tmp_path, models_dir, images):
    import json
    import struct

    from birder.common import fs_ops

    loaded = load_model(models_dir, SSCD)
    signature = {"inputs": [{"data_shape": [0, 3, 64, 64]}], "outputs": [{"data_shape": [0, 512]}]}
    class_to_idx = {str(i): i for i in range(512)}
    fs_ops.save_pts(torch.jit.script(loaded.net), tmp_path / f"{SSCD}.pts", "image_classification",
                    class_to_idx, signature, loaded.rgb_stats)
    header = json.dumps({"__metadata__": {"signature": json.dumps(signature), "task": "image_classification",
                                           "class_to_idx": json.dumps(class_to_idx)}}).encode()
    (tmp_path / "resnet_v1_50_c1_st.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)

    pts, st = list_models(tmp_path)
    assert (pts.format, pts.loads, pts.num_classes, pts.size) == ("pts", True, 512, (64, 64))
    assert (st.format, st.num_classes) == ("safetensors", 512)  # metadata read without safetensors
    scripted = load_model(tmp_path, SSCD)
    _, outputs, _, _ = _collect(run_inference(scripted, images[:2], kind="descriptor", num_workers=0))
    _, expected, _, _ = _collect(run_inference(loaded, images[:2], kind="descriptor", num_workers=0))
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5)


def test_exif_orientation_is_not_applied_like_birder(tmp_path):
    """birder's tv loader ignores EXIF orientation; so do we (rotation is judged on stored pixels)."""
    from vdc_lake.models.decoding import decode_rgb

    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(tmp_path / "o.jpg", exif=exif.tobytes())
    assert tuple(decode_rgb(str(tmp_path / "o.jpg")).shape) == (3, 20, 30)


def test_draft_decoding_keeps_every_side_at_least_the_draft_size(tmp_path):
    """A JPEG far larger than the pass needs decodes at DCT scale; small ones and PNGs decode like birder."""
    from vdc_lake.models.decoding import decode_for_pass, decode_rgb, draft_size_for

    rng = np.random.default_rng(0)
    big = np.asarray(Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((1000, 760)))
    Image.fromarray(big).save(tmp_path / "big.jpg", quality=90)
    Image.fromarray(big).save(tmp_path / "big.png")
    drafted = decode_for_pass(str(tmp_path / "big.jpg"), draft_size=180)
    assert tuple(drafted.shape) == (3, 190, 250)  # 1/4 scale: 1/8 would give 95 < 180
    assert tuple(decode_for_pass(str(tmp_path / "big.jpg"), draft_size=200).shape) == (3, 380, 500)
    assert (drafted.float().mean() - decode_rgb(str(tmp_path / "big.jpg")).float().mean()).abs() < 2
    assert tuple(decode_for_pass(str(tmp_path / "big.jpg"), draft_size=400).shape) == (3, 760, 1000)  # 1/2: 380 < 400
    assert torch.equal(decode_for_pass(str(tmp_path / "big.png"), draft_size=200), decode_rgb(str(tmp_path / "big.png")))
    assert draft_size_for([], 0) is None


def test_rotation_angles_follow_rotation_actions():
    from vdc_lake.models.kinds import rotation_angles

    probs = np.array([[0.1, 0.7, 0.1, 0.1],    # 90 above 0.5
                      [0.1, 0.1, 0.5, 0.3],    # 180 at the threshold: not above it
                      [0.9, 0.05, 0.05, 0.0],  # upright
                      [0.1, 0.1, 0.4, 0.4],    # a tie: the first maximum (180)
                      [0.0, 0.0, 0.0, 1.0]], np.float32)
    assert rotation_angles(probs, 0.5).tolist() == [90, 0, 0, 0, 270]
    assert rotation_angles(probs, 0.3).tolist() == [90, 180, 0, 180, 270]
    # float32 probabilities against a float64 threshold, as DuckDB compares them (0.1f > 0.1)
    assert rotation_angles(np.array([[0.0, np.float32(0.1), 0.0, 0.0]], np.float32), 0.1).tolist() == [90]


@pytest.mark.parametrize("action", ["rotate_90", "rotate_180", "rotate_270"])
def test_turning_in_memory_is_what_apply_writes(tmp_path, action):
    from pathlib import Path

    from vdc_lake.fileops.imageops import ACTIONS
    from vdc_lake.models.decoding import decode_rgb, rotate_clockwise

    pixels = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    ACTIONS[action].run(Path(tmp_path / "a.png"), Path(tmp_path / "b.png"), {})
    turned = rotate_clockwise(decode_rgb(str(tmp_path / "a.png")), int(action.split("_")[1]))
    assert torch.equal(turned, decode_rgb(str(tmp_path / "b.png")))


def test_gpu_decode_needs_cuda():
    from vdc_lake.models.decoding import resolve_decode

    assert resolve_decode("auto", torch.device("cpu")) == "cpu"
    with pytest.raises(ModelError, match="--decode gpu needs a CUDA device"):
        resolve_decode("gpu", torch.device("cpu"))


def test_shipped_network_names_agree_with_birders_registry():
    """`import` reads birder file names without importing birder (0.75 GiB): the shipped list
    must be the installed birder's registry, or be ignored for another version."""
    from vdc_lake.models import names as birder_names
    version, names = birder_names._shipped()
    assert names, "vdc_lake/birder_networks.txt is missing or empty"
    registry = birder_names.registry_networks()
    if version == birder_names._installed_birder():
        assert names == registry, "regenerate it: python -m vdc_lake.models.names"
    assert birder_names.known_networks() == registry


def test_reading_a_birder_file_name_does_not_import_torch(tmp_path):
    """The name split behind `import` stays cheap: no torch, no birder in the process."""
    import subprocess
    import sys

    from vdc_lake.models import names as birder_names
    version, _ = birder_names._shipped()
    if version != birder_names._installed_birder():
        pytest.skip(f"the shipped name list is for birder {version}: regenerate it for this birder")
    code = ("import sys; from vdc_lake.models.result_files import parse_result_name as p; "
            "n = p('gldv2_resnet_v1_50_c1_sscd_0_320px_crop1.0_10_embeddings.parquet'); "
            "print(n.network, n.tag, 'torch' in sys.modules, 'birder' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["resnet_v1_50_c1", "sscd", "False", "False"]


def test_inference_options_come_from_the_config_with_given_values_on_top(tmp_path, monkeypatch):
    import pickle

    from vdc_lake.config.loader import Config, bundled_defaults
    from vdc_lake.models.options import InferenceOptions

    bundled = bundled_defaults()
    options = InferenceOptions.from_config()
    assert (options.batch_size, options.num_workers, options.draft_min_size, options.device, options.decode) == (
        bundled["predict"]["batch_size"], bundled["predict"]["num_workers"], bundled["predict"]["draft_min_size"],
        bundled["predict"]["device"], bundled["predict"]["decode"])
    assert options.max_pixels == bundled["sanitize"]["max_pixels"]
    assert options.rotate_threshold == bundled["rotation_correction"]["threshold"]
    assert not (options.amp or options.compile or options.fast_matmul or options.channels_last)
    config = Config.bundled()
    config.overlay({"predict": {"batch_size": 8, "models_dir": "~/weights"}}, "test")
    monkeypatch.setenv("HOME", str(tmp_path))
    mine = InferenceOptions.from_config(config, batch_size=None, num_workers=0, amp=True)
    assert (mine.batch_size, mine.num_workers, mine.amp) == (8, 0, True)  # None: not given
    assert mine.models_dir == str(tmp_path / "weights")  # absolute, `~` expanded
    assert mine.with_values(device="cpu", batch_size=None) == InferenceOptions.from_config(
        config, num_workers=0, amp=True, device="cpu")
    assert pickle.loads(pickle.dumps(mine)) == mine and hash(mine) == hash(pickle.loads(pickle.dumps(mine)))
    with pytest.raises(TypeError, match="unknown inference option"):
        InferenceOptions.from_config(batch=4)
