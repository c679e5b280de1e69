"""Print the requirements of some wheels as pip on a Linux aarch64 board would read them.

    python docker/arm64/requirements.py [--extras onnx] [--python 3.11] WHEEL...

Why: `pip download --platform ...` picks wheels for the target but evaluates environment markers
for the machine it runs on, so on x86_64 it follows torch's `platform_machine == "x86_64"` CUDA
requirements. `make wheelhouse-arm64` downloads the given wheels with --no-deps and their
requirements from this list (markers evaluated for aarch64; the given wheels themselves left out).
"""

from __future__ import annotations

import argparse
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename


def requires_dist(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(zf.read(name).decode()).get_all("Requires-Dist") or []


def target_environment(python: str) -> dict[str, str]:
    env = default_environment()
    env.update(platform_machine="aarch64", platform_system="Linux", sys_platform="linux",
               os_name="posix", implementation_name="cpython",
               platform_python_implementation="CPython", python_version=python,
               python_full_version=f"{python}.0")
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheels", nargs="+", type=Path)
    parser.add_argument("--extras", default="", help="comma-separated extras of the wheels")
    parser.add_argument("--python", default="3.11", help="the target's Python (X.Y)")
    args = parser.parse_args(argv)

    given = {canonicalize_name(parse_wheel_filename(w.name)[0]) for w in args.wheels}
    extras = [""] + [e.strip() for e in args.extras.split(",") if e.strip()]
    env = target_environment(args.python)
    out: list[str] = []
    for wheel in args.wheels:
        for line in requires_dist(wheel):
            req = Requirement(line)
            if canonicalize_name(req.name) in given:
                continue
            if req.marker and not any(req.marker.evaluate({**env, "extra": e}) for e in extras):
                continue
            req.marker = None
            if str(req) not in out:
                out.append(str(req))
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
