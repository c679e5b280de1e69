"""Commands that use a deployed pipeline: status, infer, bench, eval, dataset, models."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pipeedge.coordinator.cli.common import (
    PIPELINE_OPT,
    pipeline_credentials,
    user_errors,
)


@click.command()
@PIPELINE_OPT
@click.option("--watch", type=float, is_flag=False, flag_value=2.0, default=None,
              metavar="[SECONDS]",
              help="Refresh every SECONDS (default 2) until Ctrl-C: a live table with instant, "
                   "window and since-assignment rates and the bottleneck marked.")
@click.option("--window", default=10, show_default=True,
              help="Polls the window rate spans (with --watch).")
@click.option("--count", type=int, default=0, help="With --watch: stop after COUNT refreshes.")
@user_errors
def status(pipeline_path, watch, window, count):
    """Show each stage's assignment, queues, counters, rates and energy per item."""
    import time

    from pipeedge.coordinator.monitor import PipelineMonitor, render_snapshot
    from pipeedge.pipeline_file import Pipeline

    pipeline = Pipeline.load(pipeline_path)
    creds = pipeline_credentials(pipeline)  # tls:/token: recorded by deploy
    live = watch is not None and sys.stdout.isatty()
    with PipelineMonitor(pipeline, window=window, security=creds) as monitor:
        refreshes = 0
        try:
            while True:
                text = render_snapshot(monitor.poll())
                refreshes += 1
                if live:
                    click.echo("\x1b[H\x1b[2J", nl=False)  # clear the terminal, redraw on top
                if watch is not None:
                    text = f"{time.strftime('%H:%M:%S')}  every {watch:g}s, window " \
                           f"{window} polls (Ctrl-C to stop)\n{text}\n"
                click.echo(text)
                if watch is None or (count and refreshes >= count):
                    break
                time.sleep(watch)
        except KeyboardInterrupt:
            pass


@click.command()
@PIPELINE_OPT
@click.option("--text", "texts", multiple=True, help="A sentence (BERT family); repeatable.")
@click.option("--image", "images", multiple=True, type=click.Path(exists=True),
              help="An image file (ViT/DeiT); repeatable.")
@click.option("--random", "random_batch", type=int, default=0,
              help="Send a random batch of this size.")
@click.option("--tokenizer", type=click.Path(path_type=Path), default=None,
              help="Local model directory holding the tokenizer [default: the weights path].")
@click.option("--timeout", default=60.0, show_default=True, help="Deadline in seconds.")
@user_errors
def infer(pipeline_path, texts, images, random_batch, tokenizer, timeout):
    """Run one request through the deployed pipeline and print its outputs."""
    from pipeedge.client import PipelineClient
    from pipeedge.coordinator import inputs as inputs_mod
    from pipeedge.coordinator.report import describe_outputs
    from pipeedge.pipeline_file import Pipeline

    pipeline = Pipeline.load(pipeline_path)
    creds = pipeline_credentials(pipeline)  # tls:/token: recorded by deploy
    info, directory = pipeline.model_info(), inputs_mod.weights_directory(pipeline)
    if texts:
        tok = tokenizer or pipeline.weights_directory or Path()
        batch = inputs_mod.text_inputs(list(texts), tok, info)
    elif images:
        batch = inputs_mod.image_inputs(list(images), info, directory)
    else:
        batch = inputs_mod.random_inputs(info, random_batch or pipeline.microbatch)
    with PipelineClient(pipeline.entry, timeout_s=timeout, security=creds) as client:
        outputs = client.infer(batch)
    click.echo(describe_outputs(outputs, texts=list(texts), labels=info.labels))


@click.command()
@PIPELINE_OPT
@click.option("-n", "--microbatches", default=32, show_default=True)
@click.option("-b", "--batch", default=None, type=int, help="Items per microbatch "
              "[default: the pipeline's microbatch].")
@click.option("--window", default=4, show_default=True, help="Microbatches in flight.")
@click.option("--no-progress", is_flag=True)
@user_errors
def bench(pipeline_path, microbatches, batch, window, no_progress):
    """Stream random microbatches; print items/s and latency percentiles."""
    from pipeedge.client import PipelineClient
    from pipeedge.coordinator.bench import run_bench
    from pipeedge.coordinator.inputs import random_inputs
    from pipeedge.coordinator.monitor import EnergyProbe
    from pipeedge.energy import format_joules_per_item
    from pipeedge.pipeline_file import Pipeline

    pipeline = Pipeline.load(pipeline_path)
    creds = pipeline_credentials(pipeline)  # tls:/token: recorded by deploy
    inputs = random_inputs(pipeline.model_info(), batch or pipeline.microbatch)
    probe = EnergyProbe(pipeline, security=creds)  # stage energy counters around the timed run
    with PipelineClient(pipeline.entry, security=creds) as client:
        r = run_bench(client, inputs, microbatches=microbatches, window=window,
                      progress=not no_progress, energy=probe)
    click.echo(f"{pipeline.model} on {len(pipeline.stages)} stage(s): {r.items_per_s:.2f} items/s "
               f"({r.microbatches} microbatches x {r.items // r.microbatches} in {r.seconds:.2f}s); "
               f"latency p50 {r.percentile(50) * 1e3:.0f} ms, p90 {r.percentile(90) * 1e3:.0f} ms, "
               f"p99 {r.percentile(99) * 1e3:.0f} ms")
    click.echo(f"energy: {format_joules_per_item(r.energy_joules, r.items)}"
               + (f" ({r.energy_source})" if r.energy_joules is not None
                  else f": {probe.note}" if probe.note else ""))


@click.command("eval")
@click.argument("dataset", type=click.Path(exists=True, path_type=Path))
@PIPELINE_OPT
@click.option("--task", type=click.Choice(["auto", "imagenet", "cola"]), default="auto",
              show_default=True, help="auto: a folder is ImageNet-style, a .tsv file is CoLA.")
@click.option("-b", "--batch", type=int, default=None,
              help="Items per microbatch [default: the pipeline's microbatch].")
@click.option("--window", default=4, show_default=True, help="Microbatches in flight.")
@click.option("--limit", type=int, default=0, help="Evaluate this many items, drawn at random "
              "over all classes (0 = all).")
@click.option("--seed", default=0, show_default=True, help="Seed of the --limit draw.")
@click.option("--classes", "classes_file", type=click.Path(exists=True, path_type=Path),
              default=None, help="Class names in label order, one per line (default: sorted "
              "folder names, as torchvision's ImageFolder).")
@click.option("--tokenizer", type=click.Path(path_type=Path), default=None,
              help="CoLA: local model directory with the tokenizer [default: the weights path].")
@click.option("--timeout", default=120.0, show_default=True, help="Deadline per microbatch, s.")
@click.option("--no-progress", is_flag=True)
@user_errors
def eval_cmd(dataset, pipeline_path, task, batch, window, limit, seed, classes_file, tokenizer,
             timeout, no_progress):
    """Accuracy of the deployed pipeline over DATASET: an ImageNet-style folder (top-1) or a
    GLUE CoLA .tsv file (Matthews correlation)."""
    from pipeedge.apps import eval as eval_mod
    from pipeedge.apps.datasets import ImageFolder, load_cola
    from pipeedge.client import PipelineClient
    from pipeedge.coordinator import inputs as inputs_mod
    from pipeedge.pipeline_file import Pipeline

    pipeline = Pipeline.load(pipeline_path)
    creds = pipeline_credentials(pipeline)  # tls:/token: recorded by deploy
    if task == "auto":
        task = "cola" if dataset.is_file() else "imagenet"
    batch = batch or pipeline.microbatch
    with PipelineClient(pipeline.entry, timeout_s=timeout, security=creds) as client:
        if task == "imagenet":
            root = dataset / "val" if (dataset / "val").is_dir() else dataset
            folder = ImageFolder.open(root, classes_file=classes_file).subset(limit,
                                                                              seed=seed)
            result = eval_mod.evaluate_images(
                client, folder, pipeline.model_info(), batch=batch, window=window,
                directory=inputs_mod.weights_directory(pipeline),
                progress=not no_progress)
        else:
            examples = load_cola(dataset)
            if limit:
                examples = examples[:limit]
            tok = tokenizer or pipeline.weights_directory or Path()
            result = eval_mod.evaluate_cola(client, examples, tok, batch=batch,
                                            window=window, progress=not no_progress,
                                            model=pipeline.model_info())
    click.echo(f"{pipeline.model} on {len(pipeline.stages)} stage(s), {dataset}: "
               f"{result.summary()}")


@click.group()
def dataset() -> None:
    """Prepare local evaluation datasets."""


@dataset.command("imagenet-prepare")
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Where train/ and val/ go [default: SRC].")
@click.option("--wnids", "wnids_file", type=click.Path(exists=True, path_type=Path),
              default=None, help="ILSVRC2012_ID -> wnid list (line k = wnid of ID k), instead "
              "of the devkit's meta.mat (which needs scipy).")
@click.option("--no-progress", is_flag=True)
@user_errors
def imagenet_prepare(src, out, wnids_file, no_progress):
    """Extract the ILSVRC2012 archives in SRC (train tar of per-class tars, val tar, devkit)
    into train/<wnid>/ and val/<wnid>/ folders that `eval` reads."""
    from tqdm import tqdm

    from pipeedge.apps.datasets import prepare_ilsvrc2012

    bars = []

    def progress(desc, total):
        bars.append(tqdm(total=total, desc=desc, unit="img", disable=no_progress))
        return bars[-1].update

    try:
        report = prepare_ilsvrc2012(src, out, wnids_file=wnids_file, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    click.echo(f"train: {report.train_images} images in {report.train_classes} classes; "
               f"val: {report.val_images} images in {report.val_classes} classes; "
               f"under {report.out}"
               + (f" (not found, skipped: {', '.join(report.skipped)})" if report.skipped else ""))


@click.command("models")
def list_models():
    """List the models PipeEdge ships configs for."""
    from pipeedge import models

    for name in models.MODEL_NAMES:
        info = models.model_info(name)
        click.echo(f"{name:48s} {info.family:5s} {info.num_blocks:3d} blocks  "
                   f"layers 1-{info.num_layers}")
