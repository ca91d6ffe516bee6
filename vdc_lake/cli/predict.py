"""Models and predictions: predict, import, models list."""

from __future__ import annotations

from typing import Any

import click

from vdc_lake.cli.base import Context, cli, config_help, echo_table, handle_errors, pass_ctx
from vdc_lake.cli.ingest import backend_options, chosen_backend
from vdc_lake.models.options import AMP_DTYPES, InferenceOptions


class EachModel(click.Option):
    """A repeatable option of predict, one value per --model, in order: `--kind rotation --kind
    descriptor` or `--kind rotation descriptor` (values up to the next token starting with '-'),
    so a pipeline step's list (kind = ["rotation", "descriptor"]) works as it is written."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, multiple=True, **kwargs)

    def add_to_parser(self, parser: Any, ctx: click.Context) -> Any:
        result = super().add_to_parser(parser, ctx)
        for name in self.opts:
            option = parser._long_opt.get(name)
            if option is not None:
                def process(value: Any, state: Any, _original=option.process) -> None:
                    _original(value, state)
                    while state.rargs and not state.rargs[0].startswith("-"):
                        _original(state.rargs.pop(0), state)

                option.process = process
        return result


def _per_model(values: tuple[str, ...], n: int, option: str) -> list[str | None]:
    """One value per model: none given (defaults), or exactly one per --model ('' = that model's default)."""
    if not values:
        return [None] * n
    if len(values) != n:
        raise click.UsageError(f"{option} was given {len(values)} times for {n} --model; give it once per "
                               f"--model, in the same order ('' for a model's default), or leave it out")
    return [v if v != "" else None for v in values]


def _predict_requests(model: tuple[str, ...], kind: tuple[str, ...], tag: tuple[str, ...],
                      set_name: tuple[str, ...], size: tuple[str, ...]) -> list[Any]:
    from vdc_lake.stages.predict import KIND_TABLE, PredictRequest

    if len(kind) != len(model):
        raise click.UsageError(f"{len(model)} --model and {len(kind)} --kind: give one --kind per --model, in order "
                               "(--model A --kind rotation --model B --kind descriptor)")
    for k in kind:
        if k not in KIND_TABLE:
            raise click.BadParameter(f"{k!r} is not one of rotation, descriptor, embedding", param_hint="--kind")
    sizes = []
    for value in _per_model(size, len(model), "--size"):
        if value is not None and (not value.isdigit() or int(value) < 1):
            raise click.BadParameter(f"{value!r} is not a size in pixels (a whole number >= 1, or '' for the "
                                     "model's own)", param_hint="--size")
        sizes.append(None if value is None else int(value))
    return [PredictRequest(m, k, t, s, z) for m, k, t, s, z in zip(
        model, kind, _per_model(tag, len(model), "--tag"), _per_model(set_name, len(model), "--set"), sizes)]


@cli.command()
@click.option("--model", cls=EachModel, required=True,
              help="birder weights name (resnet_v1_50_c1_sscd) or 'builtin'; repeat for one pass over several.")
@click.option("--kind", cls=EachModel, required=True,
              help="One per --model: rotation (4 class probabilities), descriptor (logits, SSCD) or embedding "
                   "(pooled features).")
@click.option("--tag", cls=EachModel, help="birder tag, when --model is a bare network name (one per --model).")
@click.option("--set", "set_name", cls=EachModel, help="Name of the result set [the model name] (one per --model).")
@click.option("--models-dir", default=None, help=f"Folder of birder checkpoints {config_help('predict', 'models_dir')}.")
@click.option("--size", cls=EachModel, help="Input resolution override [the model's] (one per --model).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help=f"{config_help('predict', 'device')}")
@click.option("--decode", type=click.Choice(["auto", "cpu", "gpu"]), default=None,
              help="Where JPEGs are decoded; auto: on the GPU (nvJPEG) when the device is CUDA, else the CPU. "
                   f"Files nvJPEG cannot read always decode on the CPU {config_help('predict', 'decode')}.")
@click.option("--rotate-threshold", type=float, default=None,
              help="With a rotation model in the pass, the other models see each image turned by its predicted "
                   "angle when the probability is above this; 1 turns none [config rotation_correction.threshold].")
@click.option("--draft-min-size", type=int, default=None,
              help=f"JPEG DCT-scaled decoding never below this side (px) {config_help('predict', 'draft_min_size', '; 0: off')}.")
@click.option("--batch-size", type=int, default=None, help=f"{config_help('predict', 'batch_size')}")
@click.option("--num-workers", type=int, default=None, help="Decoding processes [config predict.num_workers].")
@click.option("--amp", is_flag=True, help="Mixed precision (autocast).")
@click.option("--amp-dtype", type=click.Choice(AMP_DTYPES), default=AMP_DTYPES[0], show_default=True)
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model.")
@click.option("--fast-matmul", is_flag=True, help="Allow TF32 matmuls.")
@click.option("--channels-last", is_flag=True, help="channels_last memory format.")
@click.option("--retry-failed", is_flag=True,
              help="Try again the images that failed in a set before on the same bytes (see `status`).")
@backend_options
@pass_ctx
@handle_errors
def predict(ctx: Context, model: tuple[str, ...], tag: tuple[str, ...], kind: tuple[str, ...],
            set_name: tuple[str, ...], models_dir: str | None, size: tuple[str, ...], device: str | None,
            decode: str | None, rotate_threshold: float | None, draft_min_size: int | None, batch_size: int | None,
            num_workers: int | None, amp: bool, amp_dtype: str, compile_: bool, fast_matmul: bool,
            channels_last: bool, retry_failed: bool, backend: str | None, ray_address: str | None) -> None:
    """Run birder models over present images that have no result yet for their current version.

    Several --model/--kind pairs run in one pass: each image is decoded once (JPEGs at reduced
    scale when far larger than every model needs), and each model gets its own resize and
    normalisation of those pixels, so each set gets what a run of that model alone writes.
    With a rotation model in the pass, the other models see each image turned by the predicted
    angle (probability above --rotate-threshold), i.e. what `apply rotation` will write; once it
    has, those results stay current for the turned files. Results are committed in batches: a
    killed run resumes where it stopped, per set. With --backend ray each model runs alone in Ray
    tasks over shards of images, one GPU each when the device is cuda (or auto and the cluster
    has GPUs); the builtin descriptor always runs alone. An image that fails (does not decode)
    is recorded with its reason (see `status`) and not tried again in that set until its file
    changes, or with --retry-failed.

    \b
    Example:
        vdc-lake predict --model rope_vit_reg8_so150m_p14_swiglu_rms_ap_rotnet-capi --kind rotation \\
            --model resnet_v1_50_c1_sscd --kind descriptor \\
            --model rope_i_vit_b16_pn_aps_c1_pe-core --kind embedding --device cuda --amp
        vdc-lake predict --model resnet_v1_50_c1_sscd --kind descriptor --device cuda --amp
        vdc-lake predict --model builtin --kind descriptor
    """
    from vdc_lake.stages.predict import predict_pass

    requests = _predict_requests(model, kind, tag, set_name, size)
    # checked here, so that a bad value is named by its option or its config file and key
    cfg = ctx.section("predict", models_dir=models_dir, batch_size=batch_size, num_workers=num_workers,
                      device=device, decode=decode, draft_min_size=draft_min_size)
    threshold = ctx.get("rotation_correction", "threshold", rotate_threshold, name="--rotate-threshold")
    options = InferenceOptions.from_config(
        ctx.config, **cfg, rotate_threshold=threshold, max_pixels=ctx.get("sanitize", "max_pixels"), amp=amp,
        amp_dtype=amp_dtype, compile=compile_, fast_matmul=fast_matmul, channels_last=channels_last)
    backend = chosen_backend(ctx, backend, ray_address)
    with ctx.writer() as catalog:
        summaries = predict_pass(catalog, requests, options, quiet=ctx.quiet, backend=backend,
                                 retry_failed=retry_failed)
    for s in summaries:
        click.echo(f"predict run {s.run_id}: set {s.set_name} ({s.kind}): {s.written} of {s.todo} images written, "
                   f"{s.failed} failed, {s.images_per_second} images/s")
        if s.skipped:
            reasons = ", ".join(f"{n} {reason}" for reason, n in s.skipped_reasons.items())
            click.echo(f"  {s.skipped} skipped, not decoded: {reasons}")
        if s.not_retried:
            click.echo(f"  {s.not_retried} not tried again: they failed on the same bytes before "
                       "(reasons: vdc-lake status; --retry-failed tries them)")
    for s in summaries:  # after every set's counts, so the reasons are not lost among them
        if s.errors:
            click.echo(f"failed in set {s.set_name}:", err=True)
        for error in s.errors:
            click.echo(f"  {error}", err=True)
        if s.failed > len(s.errors):
            click.echo(f"  and {s.failed - len(s.errors)} more (vdc-lake status)", err=True)


@cli.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--set", "set_name", default=None, help="Set name [from birder's file name: network_tag].")
@click.option("--kind", type=click.Choice(["rotation", "descriptor", "embedding"]), default=None,
              help="[output files: rotation; logits: descriptor; embeddings: embedding]")
@click.option("--model", default=None, help="The model that computed the file [from birder's file name: network_tag].")
@pass_ctx
@handle_errors
def import_command(ctx: Context, file: str, set_name: str | None, kind: str | None, model: str | None) -> None:
    """Import a birder result file (*_output / *_logits / *_embeddings, parquet or csv), or VDC's
    and pandas' (logits.parquet, embeddings.parquet: name the model with --model).

    Samples match catalog images by absolute path or by path relative to a scanned root;
    unmatched samples are counted and listed.

    \b
    Example:
        vdc-lake import results/gldv2_resnet_v1_50_c1_sscd_512_320px_crop1.0_4126694_logits.parquet
        vdc-lake import vdc-out/embeddings.parquet --kind embedding --model resnet_v1_50_c1_sscd
    """
    from vdc_lake.stages.predict import import_results

    with ctx.writer() as catalog:
        s = import_results(catalog, file, set_name=set_name, kind=kind, model=model)
    click.echo(f"import run {s.run_id}: set {s.set_name} ({s.kind}): {s.matched} of {s.rows} rows imported, "
               f"{s.unmatched} unmatched")
    if s.duplicates:
        click.echo(f"  {s.duplicates} row(s) name an image an earlier row named: the last of them counts")
    if s.unmatched:
        click.echo("unmatched samples (first ones): " + ", ".join(s.unmatched_examples), err=True)
    if s.not_finite:
        click.echo(f"{s.not_finite} row(s) hold NaN or infinite values, not imported (first ones): "
                   + ", ".join(s.not_finite_examples), err=True)


@cli.group()
def models() -> None:
    """birder checkpoints in the models folder."""


@models.command("list")
@click.option("--models-dir", default=None, help=f"{config_help('predict', 'models_dir')}")
@pass_ctx
@handle_errors
def models_list(ctx: Context, models_dir: str | None) -> None:
    """List checkpoints with task, resolution, output size and whether they load.

    \b
    Example:
        vdc-lake models list --models-dir models
    """
    from vdc_lake.models.checkpoints import list_models

    folder = ctx.get("predict", "models_dir", models_dir)
    rows = [(m.name, m.kind or m.task or "", "x".join(map(str, m.size)) if m.size else "", m.num_classes,
             m.embedding_size, "yes" if m.loads else f"no: {m.error}") for m in list_models(folder)]
    if not rows:
        click.echo(f"no birder checkpoints in {folder}/; get one with "
                   "`python -m birder.tools download-model NAME` on a connected machine")
        return
    echo_table(rows, ["model", "kind", "size", "classes", "embedding", "loads"])
