"""birder result files: names parse, and files written by birder's own writers read back exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from vdc_lake.models.result_files import (
    ResultFileError,
    open_result_file,
    parse_result_name,
    read_result_file,
)

# birder.scripts.predict holds the writer functions `python -m birder.scripts.predict` calls.
predict = pytest.importorskip("birder.scripts.predict")

ROTNET_OUTPUT = "gldv2_rope_vit_reg8_so150m_p14_swiglu_rms_ap_rotnet-capi_4_252px_crop1.0_4126694_output.parquet"
SSCD_LOGITS = "gldv2_resnet_v1_50_c1_sscd_512_320px_crop1.0_4126694_logits.parquet"
PE_EMBEDDINGS = "gldv2_rope_i_vit_b16_pn_aps_c1_pe-core_0_224px_crop1.0_4108282_embeddings.parquet"
ROTATION_CLASSES = ["0", "90", "180", "270"]


def test_parse_walkthrough_names():
    rot = parse_result_name(ROTNET_OUTPUT)
    assert (rot.prefix, rot.network, rot.tag) == ("gldv2", "rope_vit_reg8_so150m_p14_swiglu_rms_ap", "rotnet-capi")
    assert (rot.classes, rot.size, rot.crop, rot.n, rot.kind, rot.format) == (4, 252, 1.0, 4126694, "output", "parquet")

    sscd = parse_result_name(Path("results") / SSCD_LOGITS)
    assert (sscd.prefix, sscd.network, sscd.tag, sscd.classes, sscd.size, sscd.kind) == (
        "gldv2", "resnet_v1_50_c1", "sscd", 512, 320, "logits"
    )
    assert sscd.model == "resnet_v1_50_c1_sscd"

    pe = parse_result_name(PE_EMBEDDINGS)
    assert (pe.prefix, pe.network, pe.tag, pe.classes, pe.size, pe.n, pe.kind) == (
        "gldv2", "rope_i_vit_b16_pn_aps_c1", "pe-core", 0, 224, 4108282, "embeddings"
    )


@pytest.mark.parametrize(
    "filename, expected",
    [
        # no prefix, no tag
        ("resnet_v1_50_c1_512_320px_crop1.0_10_logits.csv", (None, "resnet_v1_50_c1", None, "logits", (), None)),
        # epoch, flags, dtype and suffix all present
        (
            "p_resnet_v1_50_c1_sscd_512_e3_320px_crop0.875_10_sc_tta_bfloat16_raw_data_output.csv",
            ("p", "resnet_v1_50_c1", "sscd", "output", ("sc", "tta", "bfloat16"), "raw_data"),
        ),
        # --save-results file: no kind suffix
        ("vit_b16_2_224px_crop1.0_7.csv", (None, "vit_b16", None, "results", (), None)),
    ],
)
def test_parse_variants(filename, expected):
    name = parse_result_name(filename)
    assert (name.prefix, name.network, name.tag, name.kind, name.flags, name.suffix) == expected


def test_parse_unknown_network_keeps_whole_head():
    name = parse_result_name("my_custom_net_3_224px_crop1.0_5_logits.parquet")
    assert (name.network, name.prefix, name.tag, name.network_known) == ("my_custom_net", None, None, False)


def test_parse_rejects_other_names():
    with pytest.raises(ResultFileError, match="not a birder result file name"):
        parse_result_name("embeddings.parquet")


def _sample_data(n: int, d: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    samples = [f"/data/gldv2/{i:05d}.jpg" for i in range(n)]
    return samples, rng.standard_normal((n, d)).astype(np.float32)


def test_output_parquet_and_csv(tmp_path):
    samples, logits = _sample_data(7, 4)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    parquet = tmp_path / ROTNET_OUTPUT
    writer = predict._init_parquet_writer(["sample", "prediction"], ROTATION_CLASSES, parquet)
    predict.save_output_parquet(writer, samples[:4], ROTATION_CLASSES, probs[:4])
    predict.save_output_parquet(writer, samples[4:], ROTATION_CLASSES, probs[4:])  # birder writes per chunk
    writer.close()
    csv = tmp_path / ROTNET_OUTPUT.replace(".parquet", ".csv")
    predict.save_output(csv, samples, ROTATION_CLASSES, probs, append=False)

    for path in (parquet, csv):
        result = read_result_file(path)
        assert result.kind == "output"
        assert result.class_names == ROTATION_CLASSES
        assert result.samples == samples  # birder sorts csv rows by sample; these are pre-sorted
        assert result.values.dtype == np.float32 and result.values.shape == (7, 4)
        np.testing.assert_allclose(result.values, probs, rtol=1e-6)
        assert result.name.tag == "rotnet-capi"


def test_logits_parquet_and_csv_with_labels(tmp_path):
    samples, logits = _sample_data(5, 512)
    class_names = [str(i) for i in range(512)]
    labels = np.arange(5, dtype=np.int64)
    parquet = tmp_path / SSCD_LOGITS
    writer = predict._init_parquet_writer(["sample", "label"], class_names, parquet)
    predict.save_logits_parquet(writer, samples, class_names, logits, labels=labels)
    writer.close()
    csv = tmp_path / SSCD_LOGITS.replace(".parquet", ".csv")
    predict.save_logits(csv, samples, class_names, logits, append=False, labels=labels)

    gz = tmp_path / (csv.name + ".gz")  # a gzipped copy, as people archive them
    gz.write_bytes(__import__("gzip").compress(csv.read_bytes()))

    for path in (parquet, csv, gz):
        result = read_result_file(path)
        assert (result.kind, result.values.shape, len(result.class_names)) == ("logits", (5, 512), 512)
        np.testing.assert_allclose(result.values, logits, rtol=1e-6)
        np.testing.assert_array_equal(result.labels, labels)


def test_embeddings_parquet_and_csv(tmp_path):
    samples, emb = _sample_data(6, 16)
    parquet = tmp_path / PE_EMBEDDINGS
    writer = predict._init_array_parquet_writer(["sample"], "embedding", 16, parquet)
    predict.save_embeddings_parquet(writer, samples[:3], [emb[:3]])
    predict.save_embeddings_parquet(writer, samples[3:], [emb[3:]])
    writer.close()
    csv = tmp_path / PE_EMBEDDINGS.replace(".parquet", ".csv")
    predict.save_embeddings(csv, samples, [emb], append=False)

    for path in (parquet, csv):
        result = read_result_file(path)
        assert (result.kind, result.class_names, result.values.shape) == ("embeddings", None, (6, 16))
        np.testing.assert_allclose(result.values, emb, rtol=1e-6)
        assert result.samples == samples


def test_streaming_batches_cover_every_row(tmp_path):
    samples, emb = _sample_data(10, 8)
    parquet = tmp_path / PE_EMBEDDINGS
    writer = predict._init_array_parquet_writer(["sample"], "embedding", 8, parquet)
    predict.save_embeddings_parquet(writer, samples, [emb])
    writer.close()
    result_file = open_result_file(parquet)
    assert (result_file.kind, result_file.dim) == ("embeddings", 8)
    batches = list(result_file.batches(batch_rows=3))
    assert [len(b.values) for b in batches] == [3, 3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([b.values for b in batches]), emb)


def test_results_csv_with_metadata_line(tmp_path, monkeypatch):
    from birder.conf import settings
    from birder.results.classification import Results

    samples, logits = _sample_data(4, 4)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    monkeypatch.setattr(settings, "RESULTS_DIR", tmp_path)
    name = "rope_vit_reg8_so150m_p14_swiglu_rms_ap_rotnet-capi_4_252px_crop1.0_4.csv"
    Results(samples, [0, 1, 2, 3], ROTATION_CLASSES, probs).save(name)

    assert (tmp_path / name).read_text().startswith(",,,,0,90,180,270")
    result = read_result_file(tmp_path / name)
    assert (result.kind, result.class_names, result.name.kind) == ("output", ROTATION_CLASSES, "results")
    np.testing.assert_allclose(result.values, probs, rtol=1e-6)


def test_renamed_file_is_recognised_by_its_columns(tmp_path):
    samples, emb = _sample_data(3, 8)
    path = tmp_path / "vectors.parquet"
    writer = predict._init_array_parquet_writer(["sample"], "embedding", 8, path)
    predict.save_embeddings_parquet(writer, samples, [emb])
    writer.close()
    result = read_result_file(path)
    assert (result.kind, result.name) == ("embeddings", None)


def test_clear_errors_for_foreign_files(tmp_path):
    other = tmp_path / "x_1_224px_crop1.0_3_logits.parquet"
    pq.write_table(__import__("pyarrow").table({"path": ["a"], "v": [1.0]}), other)
    with pytest.raises(ResultFileError, match="no 'sample' column"):
        read_result_file(other)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ResultFileError, match="unknown format"):
        read_result_file(text)
    with pytest.raises(ResultFileError, match="does not exist"):
        read_result_file(tmp_path / "missing_output.parquet")
