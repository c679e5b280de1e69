"""`make bench`: the testbed benchmark report.

Brings up emulated edge devices (`pipeedge.coordinator.testbed`, needs root), runs five
sections (scaling on 1-16 devices, scheduler predictions, heterogeneous sets of 8 and 16
devices against three baselines, slow links with compression, transport latency), each with
its baseline measured in the same run, plus cost growth (deploy, idle stages, solve time), and
writes bench/results.json, one PNG per section and bench/REPORT.md. A section that needs
something not available here is skipped with the reason printed; the others still run.

    python bench/run_report.py                 # everything (~26 minutes on 2 cores)
    python bench/run_report.py --quick         # tiny models: checks the report end to end
    python bench/run_report.py --quick --max-devices 2   # the CI smoke run (tests/)
    python bench/run_report.py -s scaling -s transport
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import json
import logging
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from testbed_bench.context import Settings, Skipped, Testbeds  # after sys.path

log = logging.getLogger("bench.report")

SECTIONS = ("scaling", "predictions", "heterogeneous", "slow_links", "transport")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out_dir = args.out.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="pipeedge-report-"))
    settings = Settings(out_dir=out_dir, workdir=workdir, cpu=args.cpu, priority=args.priority,
                        microbatch=args.microbatch, quick=args.quick, seed=args.seed,
                        max_devices=args.max_devices, scale_cpu=args.scale_cpu,
                        testbed_prefix=args.testbed_prefix, subnets=args.subnets)
    start = time.monotonic()
    results = {"generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "quick": args.quick,
               "settings": {"cpu": args.cpu, "priority": args.priority,
                            "microbatch": args.microbatch, "seed": args.seed,
                            "max_devices": args.max_devices, "scale_cpu": args.scale_cpu},
               "environment": _environment(), "sections": {}}
    failed = False
    from pipeedge.coordinator.testbed import problems

    blockers = problems()
    testbeds = Testbeds(settings)
    try:
        for name in args.sections:
            results["sections"][name] = _run_section(name, settings, testbeds, blockers)
            failed |= results["sections"][name]["status"] == "failed"
    finally:
        testbeds.close()
        shutil.rmtree(workdir, ignore_errors=True)
    results["environment"]["loadavg_end"] = _loadavg()
    results["elapsed_s"] = time.monotonic() - start
    _write(results, out_dir)
    print(f"report: {out_dir / 'REPORT.md'} ({results['elapsed_s']:.0f} s)")
    return 1 if failed else 0


def _run_section(name: str, settings: Settings, testbeds: Testbeds,
                 blockers: list[str]) -> dict:
    module = importlib.import_module(f"testbed_bench.sections.{name}")
    title = getattr(module, "TITLE", name)
    if blockers:
        print(f"[{name}] skipped: {blockers[0]}")
        return {"title": title, "status": "skipped", "reason": blockers[0]}
    print(f"[{name}] {title} ...", flush=True)
    start = time.monotonic()
    try:
        result = module.run(settings, testbeds)
    except Skipped as exc:
        print(f"[{name}] skipped: {exc}")
        return {"title": title, "status": "skipped", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 - one broken section must not lose the others'
        traceback.print_exc()
        print(f"[{name}] FAILED: {exc}")
        return {"title": title, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    result.update(status="ok", seconds=time.monotonic() - start)
    for part, why in (result.get("skipped_parts") or {}).items():
        print(f"[{name}] {part} skipped: {why}")
    print(f"[{name}] done in {result['seconds']:.0f} s", flush=True)
    return result


def _write(results: dict, out_dir: Path) -> None:
    from testbed_bench.markdown import write_report
    from testbed_bench.plots import draw_all

    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    figures = draw_all(results["sections"], out_dir)
    write_report(results, figures, out_dir / "REPORT.md")


def _environment() -> dict:
    import torch

    env = {"cpus": os.cpu_count(), "kernel": platform.release(), "torch": torch.__version__,
           "python": platform.python_version(), "loadavg_start": _loadavg()}
    try:
        from pipeedge.coordinator.testbed.cgroups import detect

        env["cgroup_version"] = detect().version
    except Exception as exc:  # noqa: BLE001 - no cgroups: the sections say so
        log.info("no cgroup version: %s", exc)
    return env


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-s", "--section", dest="sections", action="append", choices=SECTIONS,
                   help="Run only this section (repeatable) [default: all].")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                   help="Where results.json, REPORT.md and the figures go [default: bench/].")
    p.add_argument("--cpu", type=float, default=0.4,
                   help="Cores per equal device (4 x 0.5 would be every core of a 2-core host, "
                        "leaving none for the client and kernel).")
    p.add_argument("--priority", type=float, default=10.0,
                   help="Testbed cpu_priority: CPU weight of each device vs an ordinary process "
                        "(1 = no precedence; the quota caps it either way).")
    p.add_argument("--microbatch", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="Tiny models, few microbatches.")
    p.add_argument("--max-devices", type=int, default=16, choices=(2, 3, 4, 8, 16),
                   help="Most emulated devices of a testbed: 16 for the report (scaling to 16, "
                        "heterogeneous sets of 8 and 16), 2 for a smoke run (every section "
                        "still runs, on 1-2 stages).")
    p.add_argument("--scale-cpu", type=float, default=0.1,
                   help="Cores per device in the scaling section (16 x 0.1 leave the host 0.4 "
                        "of 2 cores).")
    p.add_argument("--testbed-prefix", default="pe",
                   help="Testbeds are named PREFIXbench and PREFIXhet (1-3 lowercase letters "
                        "or digits, starting with a letter) [default: pe].")
    p.add_argument("--subnets", default="10.77.10.0/23",
                   help="Private /23 for the two testbeds' /24s [default: 10.77.10.0/23].")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    args.sections = args.sections or list(SECTIONS)
    if not re.fullmatch(r"[a-z][a-z0-9]{0,2}", args.testbed_prefix):
        p.error(f"--testbed-prefix {args.testbed_prefix!r}: use 1-3 lowercase letters or digits "
                "starting with a letter")
    try:
        if ipaddress.IPv4Network(args.subnets).prefixlen > 23:
            p.error(f"--subnets {args.subnets}: need a /23 or larger (two /24s)")
    except ValueError as exc:
        p.error(f"--subnets: {exc}")
    return args


if __name__ == "__main__":
    sys.exit(main())
