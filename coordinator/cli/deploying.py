"""Commands that place a model on the devices: plan, profile, measure-links, deploy, release,
export-onnx, certs."""

from __future__ import annotations

from pathlib import Path

import click

from pipeedge.coordinator.cli.common import (
    PIPELINE_OPT,
    plan_for,
    plan_options,
    user_errors,
)


@click.command()
@plan_options
@click.option("--out", "pipeline_path", type=click.Path(path_type=Path), default=None,
              help="Where to write the pipeline file [default: from hosts.yml].")
@click.option("--quant", "-q", default=None,
              help="Output encoding after each stage, overriding hosts.yml, e.g. 8,4,0: uniform "
                   "bits 2..16, 0 = raw; or names such as float16, uniform:4:laplace, "
                   "adaptive:20. N-1 entries for N stages (an Nth is ignored).")
@user_errors
def deploy(hosts_file, partition, model, microbatch, no_progress, pipeline_path, quant):
    """Assign layer ranges to the stage servers in HOSTS_FILE and chain them.

    Without a partition: profile the device types if models.yml/device_types.yml are missing,
    run the scheduler, and deploy its plan.
    """
    from pipeedge.coordinator import deploy as deploy_mod
    from pipeedge.coordinator.epochs import EpochStore, state_path_for
    from pipeedge.coordinator.report import plan_table
    from pipeedge.coordinator.tables import render

    dep, plan = plan_for(hosts_file, partition, model, microbatch, not no_progress)
    if plan.schedule is not None:
        click.echo(plan_table(plan) + "\n")
    stages = deploy_mod.apply_quant(plan.stages, quant)  # -q: activation compression
    out = Path(pipeline_path or dep.pipeline_file)
    # A new epoch above the last one this pipeline file's deployments used, and above what
    # the stages hold (docs/failure-model.md).
    epoch = EpochStore(state_path_for(out)).next_epoch(
        deploy_mod.highest_epoch(dep.hosts, dep.control_security))
    pipeline = deploy_mod.deploy(dep, stages, epoch=epoch, progress=not no_progress)
    pipeline.save(out)
    rows = [[i + 1, s.name, s.address, f"{s.first_layer}-{s.last_layer}", s.backend,
             f"{b / 1e6:.1f}"] for i, (s, b) in
            enumerate(zip(pipeline.stages, pipeline.parameter_bytes))]
    click.echo(render(["stage", "host", "address", "layers", "backend", "weights MB"], rows))
    click.echo(f"\n{pipeline.model} deployed on {len(rows)} stage(s) ({plan.how}); entry "
               f"{pipeline.entry}; pipeline file {out}")


@click.command()
@plan_options
@user_errors
def plan(hosts_file, partition, model, microbatch, no_progress):
    """Like deploy, but only print the plan and its predicted throughput."""
    from pipeedge.coordinator.report import plan_table

    _, the_plan = plan_for(hosts_file, partition, model, microbatch, not no_progress)
    click.echo(plan_table(the_plan))


@click.command()
@click.argument("hosts_file", type=click.Path(path_type=Path))
@click.option("--model", "-m", default=None, help="Model to profile [default: hosts.yml's].")
@click.option("--microbatch", "-b", type=int, default=None, help="Microbatch size to time.")
@click.option("--all", "all_hosts", is_flag=True,
              help="Profile every host, not one per device type (averaged per type).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Where models.yml and device_types.yml go [default: hosts.yml's "
                   "scheduler_dir, else beside hosts.yml].")
@click.option("--no-progress", is_flag=True)
@user_errors
def profile(hosts_file, model, microbatch, all_hosts, out_dir, no_progress):
    """Profile each device type on its own hardware, in parallel; write the scheduler's files."""
    from pipeedge.coordinator import planning
    from pipeedge.coordinator.hosts import load_deployment
    from pipeedge.coordinator.profiling import (
        hosts_to_profile,
        profile_hosts,
        write_scheduler_files,
    )

    dep = load_deployment(hosts_file, model=model, microbatch=microbatch)
    hosts = hosts_to_profile(dep, all_hosts=all_hosts)
    profiles = profile_hosts(dep, hosts, batch=dep.microbatch, dtype=dep.dtype,
                             progress=not no_progress)
    paths = write_scheduler_files(dep, profiles, out_dir or planning.scheduler_dir(dep),
                                  batch=dep.microbatch, dtype=dep.dtype)
    for p in profiles:
        step = (f", {sum(p.step_time_s) * 1e3:.1f} ms per decode step at {p.step_context} "
                "cached tokens" if p.step_time_s else "")
        nic = f", NIC {p.nic_mbps:.0f} Mbps" if p.nic_mbps else ""
        wire_cost = (f", frames {p.frame_time_s * 1e3:.1f} ms + {p.wire_time_s_per_mb * 1e3:.1f}"
                     " ms/MiB" if p.frame_time_s else "")
        click.echo(f"{p.host.name}: {len(p.time_s)} layers, {sum(p.time_s):.3f} s per "
                   f"microbatch of {dep.microbatch}{step}, {sum(p.mem_mb):.0f} MB weights, "
                   f"{p.memory_capacity_mb:.0f} MB memory{nic}{wire_cost}")
    click.echo("wrote " + ", ".join(str(p) for p in paths.values()))


@click.command("measure-links")
@click.argument("hosts_file", type=click.Path(path_type=Path))
@click.option("--out", "out_path", type=click.Path(path_type=Path), default=None,
              help="links.yml path [default: in the scheduler directory].")
@click.option("--payload-mb", default=4.0, show_default=True, help="Bytes per probe, in MB.")
@click.option("--no-progress", is_flag=True)
@user_errors
def measure_links_cmd(hosts_file, out_path, payload_mb, no_progress):
    """Measure bandwidth/latency between every pair of stages and from here to each."""
    from pipeedge.coordinator import planning
    from pipeedge.coordinator.hosts import load_deployment
    from pipeedge.coordinator.link_measurement import measure_links
    from pipeedge.coordinator.scheduler.links import write_links

    dep = load_deployment(hosts_file)
    doc = measure_links(dep, payload_bytes=int(payload_mb * 1e6), progress=not no_progress)
    path = write_links(out_path or planning.scheduler_dir(dep) / "links.yml", doc,
                       "`pipeedge-coord measure-links`")
    for src, dsts in doc["hosts"].items():
        for dst, link in dsts.items():
            click.echo(f"{src} -> {dst}: {link['bw_Mbps']:.1f} Mbps, {link['latency_ms']:.2f} ms")
    click.echo(f"wrote {path}")


@click.command()
@PIPELINE_OPT
@user_errors
def release(pipeline_path):
    """Drop every stage's assignment (frees their memory)."""
    from pipeedge.coordinator.deploy import release as release_all
    from pipeedge.pipeline_file import Pipeline

    pipeline = Pipeline.load(pipeline_path)
    for name, released in release_all(pipeline):  # with the credentials deploy recorded
        click.echo(f"{name}: {'released' if released else 'nothing to release or unreachable'}")


@click.command("export-onnx")
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
@click.option("--weights-dtype", default=None,
              help="Override hosts.yml's weights_dtype for every stage: float32, float16, int8.")
@user_errors
def export_onnx(hosts_file, out_dir, partition, model, all_stages, opset, weights_path,
                weights_dtype):
    """Export the onnx stages' shards ahead of time, named as the devices' cache expects."""
    from pipeedge.coordinator import onnx_export
    from pipeedge.coordinator.hosts import load_deployment
    from pipeedge.coordinator.planning import plan
    from pipeedge.coordinator.tables import render

    dep = load_deployment(hosts_file, partition=partition, model=model)
    if weights_dtype:
        dep = onnx_export.with_weights_dtype(dep, weights_dtype)
    stages = onnx_export.onnx_stages(dep, plan(dep).stages, all_stages)
    done = onnx_export.export_stages(dep, stages, out_dir, opset=opset,
                                     weights_path=weights_path)
    click.echo(render(["host", "layers", "file", "MB", "export s"],
                      [[d.host, f"{d.first_layer}-{d.last_layer}", d.stem + ".onnx",
                        f"{d.megabytes:.1f}", f"{d.seconds:.1f}" if d.seconds else "cached"]
                       for d in done]))
    click.echo(f"\nwrote {out_dir}; on each host copy its files ({out_dir}/<file stem>.*) into "
               "<pipeedge-stage --cache-dir>/onnx/, e.g. rsync -a "
               f"{out_dir}/ HOST:~/.cache/pipeedge/onnx/")


@click.command()
@click.argument("hosts_file", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", default="certs", show_default=True,
              type=click.Path(path_type=Path), help="Folder for the CA, certificates and token.")
@click.option("--days", default=825, show_default=True, help="Validity of new certificates.")
@click.option("--coordinator-host", "coordinator_hosts", multiple=True,
              help="Address (IP or DNS) to put in the coordinator certificate's SAN, for when "
                   "it serves; repeatable.")
@click.option("--no-token", is_flag=True, help="Do not create a bearer token file.")
@user_errors
def certs(hosts_file, out_dir, days, coordinator_hosts, no_token):
    """Create a CA and certificates for HOSTS_FILE: one per host, coordinator, client."""
    from pipeedge.coordinator import certs as certs_mod
    from pipeedge.coordinator.hosts import load_deployment

    dep = load_deployment(hosts_file, with_security=False)
    result = certs_mod.make_certs(dep.hosts, out_dir, days=days, token=not no_token,
                                  coordinator_hosts=tuple(coordinator_hosts))
    click.echo(certs_mod.summary(result))
