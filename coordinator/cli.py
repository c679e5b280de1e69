"""`pipeedge-coord`: deploy, inspect, use and benchmark a pipeline. Commands stay thin."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from pipeedge.logs import setup_logging

log = logging.getLogger("pipeedge.coord")

_PIPELINE_OPT = click.option("--pipeline", "pipeline_path", default="pipeline.json",
                             show_default=True, type=click.Path(path_type=Path),
                             help="Pipeline file written by deploy.")


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default="WARNING", show_default=True)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text")
def main(log_level: str, log_format: str) -> None:
    """PipeEdge coordinator: splits a model across stage servers and drives the pipeline."""
    setup_logging(log_level, log_format)


def _use_credentials(pipeline) -> None:
    """Open channels with the credentials deploy recorded in the pipeline file (README
    "Security"); nothing changes for a deployment without tls:/token:."""
    from pipeedge.security import use_pipeline

    use_pipeline(pipeline)


def _plan_for(hosts_file, partition, model, microbatch, progress):
    """Load hosts.yml and plan: partition, or profile-if-missing + scheduler."""
    from pipeedge.coordinator import planning
    from pipeedge.coordinator.hosts import load_deployment

    dep = load_deployment(hosts_file, partition=partition, model=model, microbatch=microbatch)
    planning.ensure_profiles(dep, progress=progress)
    return dep, planning.plan(dep)


def _user_errors():
    """Errors that are the user's to fix: printed as one line, exit code 2."""
    from pipeedge.coordinator.deploy import DeployError
    from pipeedge.coordinator.hosts import HostsFileError
    from pipeedge.coordinator.scheduler import SchedulingError
    from pipeedge.coordinator.stage_control import StageUnreachable
    from pipeedge.partition import PartitionError

    return (HostsFileError, PartitionError, StageUnreachable, DeployError, SchedulingError,
            ValueError, FileNotFoundError, RuntimeError)


_PLAN_OPTIONS = [
    click.argument("hosts_file", type=click.Path(path_type=Path)),
    click.option("--partition", "-pt", default=None,
                 help="Manual partition, e.g. 1,24,25,48 (skips the scheduler)."),
    click.option("--model", "-m", default=None, help="Override the model in hosts.yml."),
    click.option("--microbatch", "-b", type=int, default=None,
                 help="Override the microbatch size."),
    click.option("--no-progress", is_flag=True, help="No progress bars."),
]


def _plan_options(fn):
    for option in reversed(_PLAN_OPTIONS):
        fn = option(fn)
    return fn


@main.command()
@_plan_options
@click.option("--out", "pipeline_path", type=click.Path(path_type=Path), default=None,
              help="Where to write the pipeline file [default: from hosts.yml].")
@click.option("--quant", "-q", default=None,
              help="Output encoding after each stage, overriding hosts.yml, e.g. 8,4,0: uniform "
                   "bits 2..16, 0 = raw; or names such as float16, uniform:4:laplace, "
                   "adaptive:20. N-1 entries for N stages (an Nth is ignored).")
def deploy(hosts_file, partition, model, microbatch, no_progress, pipeline_path, quant):
    """Assign layer ranges to the stage servers in HOSTS_FILE and chain them.

    Without a partition: profile the device types if models.yml/device_types.yml are missing,
    run the scheduler, and deploy its plan.
    """
    from pipeedge.coordinator import deploy as deploy_mod
    from pipeedge.coordinator.epochs import EpochStore, state_path_for
    from pipeedge.coordinator.report import plan_table
    from pipeedge.coordinator.tables import render

    try:
        dep, plan = _plan_for(hosts_file, partition, model, microbatch, not no_progress)
        if plan.schedule is not None:
            click.echo(plan_table(plan) + "\n")
        stages = deploy_mod.apply_quant(plan.stages, quant)  # -q: activation compression
        out = Path(pipeline_path or dep.pipeline_file)
        # A new epoch above the last one this pipeline file's deployments used, and above what
        # the stages hold (README "Failure model").
        epoch = EpochStore(state_path_for(out)).next_epoch(
            deploy_mod.highest_epoch(dep.hosts, dep.security))
        pipeline = deploy_mod.deploy(dep, stages, epoch=epoch, progress=not no_progress)
    except _user_errors() as exc:
        _fail(str(exc))
    pipeline.save(out)
    rows = [[i + 1, s.name, s.address, f"{s.first_layer}-{s.last_layer}", s.backend,
             f"{b / 1e6:.1f}"] for i, (s, b) in
            enumerate(zip(pipeline.stages, pipeline.extra["parameter_bytes"]))]
    click.echo(render(["stage", "host", "address", "layers", "backend", "weights MB"], rows))
    click.echo(f"\n{pipeline.model} deployed on {len(rows)} stage(s) ({plan.how}); entry "
               f"{pipeline.entry}; pipeline file {out}")


@main.command()
@_plan_options
def plan(hosts_file, partition, model, microbatch, no_progress):
    """Like deploy, but only print the plan and its predicted throughput."""
    from pipeedge.coordinator.report import plan_table

    try:
        _, the_plan = _plan_for(hosts_file, partition, model, microbatch, not no_progress)
    except _user_errors() as exc:
        _fail(str(exc))
    click.echo(plan_table(the_plan))


@main.command()
@click.argument("hosts_file", type=click.Path(path_type=Path))
@click.option("--model", "-m", default=None, help="Model to profile [default: hosts.yml's].")
@click.option("--microbatch", "-b", type=int, default=None, help="Microbatch size to time.")
@click.option("--all", "all_hosts", is_flag=True,
              help="Profile every host, not one per device type (averaged per type).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Where models.yml and device_types.yml go [default: hosts.yml's "
                   "scheduler_dir, else beside hosts.yml].")
@click.option("--no-progress", is_flag=True)
def profile(hosts_file, model, microbatch, all_hosts, out_dir, no_progress):
    """Profile each device type on its own hardware, in parallel; write the scheduler's files."""
    from pipeedge.coordinator import planning
    from pipeedge.coordinator.hosts import load_deployment
    from pipeedge.coordinator.profiling import (
        hosts_to_profile,
        profile_hosts,
        write_scheduler_files,
    )

    try:
        dep = load_deployment(hosts_file, model=model, microbatch=microbatch)
        hosts = hosts_to_profile(dep, all_hosts=all_hosts)
        profiles = profile_hosts(dep, hosts, batch=dep.microbatch, dtype=dep.dtype,
                                 progress=not no_progress)
        paths = write_scheduler_files(dep, profiles, out_dir or planning.scheduler_dir(dep),
                                      batch=dep.microbatch, dtype=dep.dtype)
    except _user_errors() as exc:
        _fail(str(exc))
    for p in profiles:
        step = (f", {sum(p.step_time_s) * 1e3:.1f} ms per decode step at {p.step_context} "
                "cached tokens" if p.step_time_s else "")
        nic = f", NIC {p.nic_mbps:.0f} Mbps" if p.nic_mbps else ""
        click.echo(f"{p.host.name}: {len(p.time_s)} layers, {sum(p.time_s):.3f} s per "
                   f"microbatch of {dep.microbatch}{step}, {sum(p.mem_mb):.0f} MB weights, "
                   f"{p.memory_capacity_mb:.0f} MB memory{nic}")
    click.echo("wrote " + ", ".join(str(p) for p in paths.values()))


@main.command("measure-links")
@click.argument("hosts_file", type=click.Path(path_type=Path))
@click.option("--out", "out_path", type=click.Path(path_type=Path), default=None,
              help="links.yml path [default: in the scheduler directory].")
@click.option("--payload-mb", default=4.0, show_default=True, help="Bytes per probe, in MB.")
@click.option("--no-progress", is_flag=True)
def measure_links_cmd(hosts_file, out_path, payload_mb, no_progress):
    """Measure bandwidth/latency between every pair of stages and from here to each."""
    from pipeedge.coordinator import planning
    from pipeedge.coordinator.hosts import load_deployment
    from pipeedge.coordinator.link_measurement import measure_links, write_links

    try:
        dep = load_deployment(hosts_file)
        doc = measure_links(dep, payload_bytes=int(payload_mb * 1e6), progress=not no_progress)
        path = write_links(doc, out_path or planning.scheduler_dir(dep) / "links.yml")
    except _user_errors() as exc:
        _fail(str(exc))
    for src, dsts in doc["hosts"].items():
        for dst, link in dsts.items():
            click.echo(f"{src} -> {dst}: {link['bw_Mbps']:.1f} Mbps, {link['latency_ms']:.2f} ms")
    click.echo(f"wrote {path}")


@main.command()
@click.argument("hosts_file", type=click.Path(path_type=Path))
@click.option("--host", default="0.0.0.0", show_default=True, help="Control-plane address.")
@click.option("--port", default=50050, show_default=True, help="Control-plane port.")
@click.option("--check-interval", default=0.5, show_default=True,
              help="Seconds between health checks of every stage.")
@click.option("--metrics-port", type=int, default=None,
              help="Serve Prometheus metrics of the control plane and its stages at "
                   "http://HOST:PORT/metrics (off by default).")
@click.option("--state-file", type=click.Path(path_type=Path), default=None,
              help="Where the last epoch and plan are kept across restarts [default: beside "
                   "the pipeline file, PIPELINE.state].")
def serve(hosts_file, host, port, check_interval, metrics_port, state_file):
    """Deploy, then keep the pipeline alive: re-plan around failed stages (SDK: coordinator=).

    A restart adopts the deployment the state file records when every stage still holds it.
    SIGHUP redeploys under a new epoch.
    """
    import signal
    import threading

    from pipeedge.coordinator.control_plane import ControlPlane, start_server
    from pipeedge.coordinator.deploy import DeployError
    from pipeedge.coordinator.hosts import HostsFileError, load_deployment
    from pipeedge.partition import PartitionError

    try:
        dep = load_deployment(hosts_file)
        plane = ControlPlane(dep, pipeline_path=Path(dep.pipeline_file),
                             check_interval_s=check_interval, state_path=state_file)
        pipeline = plane.start()
        server, bound = start_server(plane, f"{host}:{port}")
        metrics = None
        if metrics_port is not None:  # monitoring: coordinator/metrics.py
            from pipeedge.coordinator.metrics import serve_control_plane_metrics

            metrics = serve_control_plane_metrics(plane, host=host, port=metrics_port)
    except (HostsFileError, PartitionError, DeployError, ValueError, OSError,
            RuntimeError) as exc:
        _fail(str(exc))
    plane.start_watching()
    click.echo(f"serving pipeline epoch {plane.version} ({pipeline.model}, entry "
               f"{pipeline.entry}) on {host}:{bound}; pipeline file {dep.pipeline_file}",
               nl=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: plane.request_redeploy("SIGHUP"))
    stop.wait()
    plane.stop()
    server.stop(2).wait()
    if metrics:
        metrics.stop()


@main.command()
@_PIPELINE_OPT
@click.option("--watch", type=float, is_flag=False, flag_value=2.0, default=None,
              metavar="[SECONDS]",
              help="Refresh every SECONDS (default 2) until Ctrl-C: a live table with instant, "
                   "window and since-assignment rates and the bottleneck marked.")
@click.option("--window", default=10, show_default=True,
              help="Polls the window rate spans (with --watch).")
@click.option("--count", type=int, default=0, help="With --watch: stop after COUNT refreshes.")
def status(pipeline_path, watch, window, count):
    """Show each stage's assignment, queues, counters, rates and energy per item."""
    import time

    from pipeedge.coordinator.monitor import PipelineMonitor, render_snapshot
    from pipeedge.pipeline_file import Pipeline

    try:
        pipeline = Pipeline.load(pipeline_path)
        _use_credentials(pipeline)  # tls:/token: recorded by deploy
    except FileNotFoundError as exc:
        _fail(str(exc))
    live = watch is not None and sys.stdout.isatty()
    with PipelineMonitor(pipeline, window=window) as monitor:
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


@main.command()
@_PIPELINE_OPT
@click.option("--text", "texts", multiple=True, help="A sentence (BERT family); repeatable.")
@click.option("--image", "images", multiple=True, type=click.Path(exists=True),
              help="An image file (ViT/DeiT); repeatable.")
@click.option("--random", "random_batch", type=int, default=0,
              help="Send a random batch of this size.")
@click.option("--tokenizer", type=click.Path(path_type=Path), default=None,
              help="Local model directory holding the tokenizer [default: the weights path].")
@click.option("--timeout", default=60.0, show_default=True, help="Deadline in seconds.")
def infer(pipeline_path, texts, images, random_batch, tokenizer, timeout):
    """Run one request through the deployed pipeline and print its outputs."""
    from pipeedge.client import PipelineClient, PipelineError
    from pipeedge.coordinator import inputs as inputs_mod
    from pipeedge.coordinator.report import describe_outputs
    from pipeedge.pipeline_file import Pipeline

    try:
        pipeline = Pipeline.load(pipeline_path)
        _use_credentials(pipeline)  # tls:/token: recorded by deploy
        info, directory = pipeline.model_info(), inputs_mod.weights_directory(pipeline)
        if texts:
            tok = tokenizer or Path(pipeline.weights.partition(":")[2])
            batch = inputs_mod.text_inputs(list(texts), tok, info)
        elif images:
            batch = inputs_mod.image_inputs(list(images), info, directory)
        else:
            batch = inputs_mod.random_inputs(info, random_batch or pipeline.microbatch)
        with PipelineClient(pipeline.entry, timeout_s=timeout) as client:
            outputs = client.infer(batch)
    except (FileNotFoundError, RuntimeError, ValueError, PipelineError) as exc:
        _fail(str(exc))
    click.echo(describe_outputs(outputs, texts=list(texts), labels=info.labels))


@main.command()
@_PIPELINE_OPT
@click.option("-n", "--microbatches", default=32, show_default=True)
@click.option("-b", "--batch", default=None, type=int, help="Items per microbatch "
              "[default: the pipeline's microbatch].")
@click.option("--window", default=4, show_default=True, help="Microbatches in flight.")
@click.option("--no-progress", is_flag=True)
def bench(pipeline_path, microbatches, batch, window, no_progress):
    """Stream random microbatches; print items/s and latency percentiles."""
    from pipeedge.client import PipelineClient, PipelineError
    from pipeedge.coordinator.bench import run_bench
    from pipeedge.coordinator.inputs import random_inputs
    from pipeedge.coordinator.monitor import EnergyProbe
    from pipeedge.energy import format_joules_per_item
    from pipeedge.pipeline_file import Pipeline

    try:
        pipeline = Pipeline.load(pipeline_path)
        _use_credentials(pipeline)  # tls:/token: recorded by deploy
        inputs = random_inputs(pipeline.model_info(), batch or pipeline.microbatch)
        probe = EnergyProbe(pipeline)  # stage energy counters around the timed run
        with PipelineClient(pipeline.entry) as client:
            r = run_bench(client, inputs, microbatches=microbatches, window=window,
                          progress=not no_progress, energy=probe)
    except (FileNotFoundError, PipelineError) as exc:
        _fail(str(exc))
    click.echo(f"{pipeline.model} on {len(pipeline.stages)} stage(s): {r.items_per_s:.2f} items/s "
               f"({r.microbatches} microbatches x {r.items // r.microbatches} in {r.seconds:.2f}s); "
               f"latency p50 {r.percentile(50) * 1e3:.0f} ms, p90 {r.percentile(90) * 1e3:.0f} ms, "
               f"p99 {r.percentile(99) * 1e3:.0f} ms")
    click.echo(f"energy: {format_joules_per_item(r.energy_joules, r.items)}"
               + (f" ({r.energy_source})" if r.energy_joules is not None
                  else f": {probe.note}" if probe.note else ""))


@main.command()
@_PIPELINE_OPT
def release(pipeline_path):
    """Drop every stage's assignment (frees their memory)."""
    from pipeedge.coordinator.deploy import release as release_all
    from pipeedge.pipeline_file import Pipeline

    try:
        pipeline = Pipeline.load(pipeline_path)
        _use_credentials(pipeline)  # tls:/token: recorded by deploy
    except FileNotFoundError as exc:
        _fail(str(exc))
    for name, released in release_all(pipeline):
        click.echo(f"{name}: {'released' if released else 'nothing to release or unreachable'}")


@main.command("export-onnx")
@click.argument("hosts_file", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", default="onnx-export", show_default=True,
              type=click.Path(path_type=Path), help="Directory to write the files into.")
@click.option("--partition", "-pt", default=None, help="Override: e.g. 1,24,25,48.")
@click.option("--model", "-m", default=None, help="Override the model in hosts.yml.")
@click.option("--all", "all_stages", is_flag=True, help="Export every stage, not only onnx ones.")
@click.option("--opset", default=17, show_default=True,
              help="Must match the stages' PIPEEDGE_ONNX_OPSET (default 17).")
@click.option("--weights-path", type=click.Path(path_type=Path), default=None,
              help="Where this machine has the weights of local:/push: [default: hosts.yml's].")
def export_onnx(hosts_file, out_dir, partition, model, all_stages, opset, weights_path):
    """Export the onnx stages' shards ahead of time, named as the devices' cache expects."""
    from pipeedge.coordinator import onnx_export
    from pipeedge.coordinator.deploy import DeployError
    from pipeedge.coordinator.hosts import HostsFileError, load_deployment
    from pipeedge.coordinator.planning import plan
    from pipeedge.coordinator.tables import render
    from pipeedge.partition import PartitionError

    try:
        dep = load_deployment(hosts_file, partition=partition, model=model)
        stages = onnx_export.onnx_stages(dep, plan(dep).stages, all_stages)
        done = onnx_export.export_stages(dep, stages, out_dir, opset=opset,
                                         weights_path=weights_path)
    except (HostsFileError, PartitionError, DeployError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    click.echo(render(["host", "layers", "file", "MB", "export s"],
                      [[d.host, f"{d.first_layer}-{d.last_layer}", d.stem + ".onnx",
                        f"{d.megabytes:.1f}", f"{d.seconds:.1f}" if d.seconds else "cached"]
                       for d in done]))
    click.echo(f"\nwrote {out_dir}; on each host copy its files ({out_dir}/<file stem>.*) into "
               "<pipeedge-stage --cache-dir>/onnx/, e.g. rsync -a "
               f"{out_dir}/ HOST:~/.cache/pipeedge/onnx/")


@main.command("eval")
@click.argument("dataset", type=click.Path(exists=True, path_type=Path))
@_PIPELINE_OPT
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
def eval_cmd(dataset, pipeline_path, task, batch, window, limit, seed, classes_file, tokenizer,
             timeout, no_progress):
    """Accuracy of the deployed pipeline over DATASET: an ImageNet-style folder (top-1) or a
    GLUE CoLA .tsv file (Matthews correlation)."""
    from pipeedge.client import PipelineClient, PipelineError
    from pipeedge.coordinator import eval as eval_mod
    from pipeedge.coordinator import inputs as inputs_mod
    from pipeedge.coordinator.datasets import ImageFolder, load_cola
    from pipeedge.pipeline_file import Pipeline

    try:
        pipeline = Pipeline.load(pipeline_path)
        _use_credentials(pipeline)  # tls:/token: recorded by deploy
        if task == "auto":
            task = "cola" if dataset.is_file() else "imagenet"
        batch = batch or pipeline.microbatch
        with PipelineClient(pipeline.entry, timeout_s=timeout) as client:
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
                tok = tokenizer or Path(pipeline.weights.partition(":")[2])
                result = eval_mod.evaluate_cola(client, examples, tok, batch=batch,
                                                window=window, progress=not no_progress,
                                                model=pipeline.model_info())
    except (FileNotFoundError, RuntimeError, ValueError, OSError, PipelineError) as exc:
        _fail(str(exc))
    click.echo(f"{pipeline.model} on {len(pipeline.stages)} stage(s), {dataset}: "
               f"{result.summary()}")


@main.group()
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
def imagenet_prepare(src, out, wnids_file, no_progress):
    """Extract the ILSVRC2012 archives in SRC (train tar of per-class tars, val tar, devkit)
    into train/<wnid>/ and val/<wnid>/ folders that `eval` reads."""
    from tqdm import tqdm

    from pipeedge.coordinator.datasets import prepare_ilsvrc2012

    bars = []

    def progress(desc, total):
        bars.append(tqdm(total=total, desc=desc, unit="img", disable=no_progress))
        return bars[-1].update

    try:
        report = prepare_ilsvrc2012(src, out, wnids_file=wnids_file, progress=progress)
    except (FileNotFoundError, RuntimeError, ValueError, OSError) as exc:
        _fail(str(exc))
    finally:
        for bar in bars:
            bar.close()
    click.echo(f"train: {report.train_images} images in {report.train_classes} classes; "
               f"val: {report.val_images} images in {report.val_classes} classes; "
               f"under {report.out}"
               + (f" (not found, skipped: {', '.join(report.skipped)})" if report.skipped else ""))


@main.command()
@click.argument("hosts_file", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", default="certs", show_default=True,
              type=click.Path(path_type=Path), help="Folder for the CA, certificates and token.")
@click.option("--days", default=825, show_default=True, help="Validity of new certificates.")
@click.option("--coordinator-host", "coordinator_hosts", multiple=True,
              help="Address (IP or DNS) to put in the coordinator certificate's SAN, for when "
                   "it serves; repeatable.")
@click.option("--no-token", is_flag=True, help="Do not create a bearer token file.")
def certs(hosts_file, out_dir, days, coordinator_hosts, no_token):
    """Create a CA and certificates for HOSTS_FILE: one per host, coordinator, client."""
    from pipeedge.coordinator import certs as certs_mod
    from pipeedge.coordinator.hosts import HostsFileError, load_deployment

    try:
        dep = load_deployment(hosts_file, with_security=False)
        result = certs_mod.make_certs(dep.hosts, out_dir, days=days, token=not no_token,
                                      coordinator_hosts=tuple(coordinator_hosts))
    except (HostsFileError, certs_mod.CertsError, OSError) as exc:
        _fail(str(exc))
    click.echo(certs_mod.summary(result))


@main.command("models")
def list_models():
    """List the models PipeEdge ships configs for."""
    from pipeedge import models

    for name in models.MODEL_NAMES:
        info = models.model_info(name)
        click.echo(f"{name:48s} {info.family:5s} {info.num_blocks:3d} blocks  "
                   f"layers 1-{info.num_layers}")


@main.command("serve-http")
@click.option("--pipeline", "pipeline_paths", multiple=True, type=click.Path(path_type=Path),
              help="Pipeline file written by deploy; repeat to serve several models (decoders "
                   "get completions and chat, encoders embeddings)  [default: pipeline.json]")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--tokenizer", type=click.Path(path_type=Path), default=None,
              help="Local model directory holding the tokenizer [default: the weights path, "
                   "else byte-level].")
@click.option("--timeout", default=60.0, show_default=True, help="Deadline per step in seconds.")
@click.option("--max-concurrency", default=16, show_default=True,
              help="Requests running at once; more get 429 with Retry-After.")
@click.option("--token", "token_spec", default=None,
              help="Require 'Authorization: Bearer <token>' (file:PATH, env:VAR or the token; "
                   "the gRPC token file works).")
@click.option("--cors-origin", "cors_origins", multiple=True,
              help="Allow browser calls from this origin (repeatable; '*' for any) "
                   "[default: CORS off].")
@click.option("--max-body", default=4 << 20, show_default=True,
              help="Largest request body in bytes (413 beyond).")
def serve_http(pipeline_paths, host, port, tokenizer, timeout, max_concurrency, token_spec,
               cors_origins, max_body):
    """Serve deployed models over an OpenAI-compatible HTTP API (SSE streaming)."""
    from pipeedge.coordinator.openai_http import serve as serve_openai
    from pipeedge.security import read_token

    try:
        token = read_token(token_spec) if token_spec else None
        serve_openai(pipeline_paths or [Path("pipeline.json")], host=host, port=port,
                     tokenizer=tokenizer, timeout_s=timeout, max_concurrency=max_concurrency,
                     token=token, cors_origins=cors_origins, max_body_bytes=max_body,
                     announce=click.echo)
    except (FileNotFoundError, ValueError, OSError) as exc:
        _fail(str(exc))


_STATE_DIR_OPT = click.option("--state-dir", default="/run/pipeedge-testbed", show_default=True,
                              type=click.Path(path_type=Path), help="Testbed state and logs.")


@main.group()
def testbed() -> None:
    """Emulated edge devices on this host (namespaces, tc, cgroups); needs root."""


@testbed.command("up")
@click.argument("testbed_file", type=click.Path(path_type=Path))
@click.option("--hosts-out", type=click.Path(path_type=Path), default=None,
              help="Where to write hosts.yml [default: hosts_file in the testbed file].")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None,
              help="Override state_dir of the testbed file.")
def testbed_up(testbed_file, hosts_out, state_dir):
    """Create the devices in TESTBED_FILE, start their stage servers, write hosts.yml."""
    from pipeedge.coordinator.tables import render
    from pipeedge.coordinator.testbed import TestbedError, load_spec, up

    try:
        spec = load_spec(testbed_file, hosts_file=str(hosts_out.resolve()) if hosts_out else None,
                         state_dir=str(state_dir) if state_dir else None)
        state = up(spec)
    except TestbedError as exc:
        _fail(str(exc))
    click.echo(render(["device", "type", "address", "cpu", "mem_mb", "link Mbps"],
                      [[d.name, d.type, d.endpoint, f"{d.cpu:g}", f"{d.mem_mb:g}",
                        f"{d.bw_mbps:g}"] for d in state.devices]))
    click.echo(f"\ntestbed {state.prefix} up; coordinator at {state.host_address}; hosts file "
               f"{state.hosts_file}\ndeploy with: pipeedge-coord deploy {state.hosts_file}")


@testbed.command("down")
@click.argument("testbed_file", required=False, type=click.Path(path_type=Path))
@click.option("--name", "names", multiple=True, help="Testbed name (prefix); repeatable "
              "[default: the testbed file's, else every testbed in --state-dir and 'petb'].")
@_STATE_DIR_OPT
def testbed_down(testbed_file, names, state_dir):
    """Remove every namespace, link, qdisc, cgroup and stage process of a testbed."""
    from pipeedge.coordinator.testbed import TestbedError, down, load_spec
    from pipeedge.coordinator.testbed.naming import DEFAULT_PREFIX
    from pipeedge.coordinator.testbed.state import known_prefixes

    try:
        if testbed_file:
            spec = load_spec(testbed_file)
            names, state_dir = (*names, spec.name), Path(spec.state_dir)
        names = names or tuple(sorted({*known_prefixes(state_dir), DEFAULT_PREFIX}))
        remaining = {n: down(n, state_dir) for n in dict.fromkeys(names)}
    except TestbedError as exc:
        _fail(str(exc))
    for name, left in remaining.items():
        click.echo(f"testbed {name}: " + ("down" if left.empty() else
                                          f"still present: {left.describe()}"))
    if any(not left.empty() for left in remaining.values()):
        sys.exit(1)


@testbed.command("status")
@click.option("--name", default=None, help="Testbed name [default: every testbed that is up].")
@_STATE_DIR_OPT
def testbed_status(name, state_dir):
    """Show each emulated device: process, health, CPU and link caps, throttling."""
    from pipeedge.coordinator.tables import render
    from pipeedge.coordinator.testbed import TestbedError
    from pipeedge.coordinator.testbed.state import known_prefixes
    from pipeedge.coordinator.testbed.status import HEADERS, status_rows

    prefixes = [name] if name else known_prefixes(state_dir)
    if not prefixes:
        _fail(f"no testbed is up (nothing in {state_dir}); run `pipeedge-coord testbed up "
              "testbed.yml`")
    try:
        for prefix in prefixes:
            click.echo(f"testbed {prefix}\n" + render(HEADERS, status_rows(prefix, state_dir)))
    except TestbedError as exc:
        _fail(str(exc))


if __name__ == "__main__":
    main()
