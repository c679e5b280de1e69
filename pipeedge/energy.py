"""Device energy counters: Intel RAPL through powercap sysfs, or EnergyMon through ctypes.

`open_meter()` picks what this machine has: the EnergyMon "default" library when it is installed
(`libenergymon-default.so`, the seed's optional dependency; built for the platform, e.g. RAPL MSRs
or a Jetson's INA3221), else the readable `/sys/class/powercap/intel-rapl:*` zones, else `None`.
`None` means "not available": callers show that instead of 0 J. `PIPEEDGE_ENERGY=none|rapl|
energymon` forces one choice; `PIPEEDGE_POWERCAP_ROOT` reads the powercap tree from elsewhere (a
container with the host's /sys/class/powercap bind-mounted, or a test's fake tree).

Both sources measure a whole device (CPU packages, DRAM, or the board), not one process: stages
sharing a machine each report that machine's energy, so a pipeline total counts each machine once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

POWERCAP_ROOT = Path("/sys/class/powercap")


class EnergyMeter(ABC):
    """A monotonic energy counter in joules since the meter was opened."""

    source: str = ""

    @abstractmethod
    def read_joules(self) -> float:
        """Energy since the meter was opened, in joules (never decreases)."""

    def close(self) -> None:
        pass


# -- Intel RAPL (powercap sysfs) -----------------------------------------------------------------
@dataclass
class _Zone:
    name: str          # e.g. "package-0", "dram"
    energy_path: Path  # .../energy_uj, a counter in microjoules that wraps at max_uj
    max_uj: int        # max_energy_range_uj: the counter wraps to 0 after this value
    last_uj: int = 0
    total_uj: int = 0  # accumulated since opening, wraps undone


class RaplMeter(EnergyMeter):
    """Sum of the RAPL zones that do not overlap: every package plus its DRAM subzone, or the
    platform (`psys`) zone alone when the machine has one (it already covers the packages).

    `energy_uj` wraps at `max_energy_range_uj` (every few minutes to hours depending on power);
    each read adds the difference and undoes a wrap, and a sampler thread reads at least every
    `sample_interval_s` so no wrap goes unseen between reads.
    """

    def __init__(self, zones: list[_Zone], *, sample_interval_s: float = 10.0) -> None:
        if not zones:
            raise ValueError("no RAPL zones")
        self._zones = zones
        self._lock = threading.Lock()
        for z in zones:
            z.last_uj = _read_int(z.energy_path)
        self.source = "rapl:" + ",".join(z.name for z in zones)
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, args=(sample_interval_s,),
                                         name="rapl-sampler", daemon=True)
        self._sampler.start()

    @classmethod
    def open(cls, root: Path = POWERCAP_ROOT, *,
             sample_interval_s: float = 10.0) -> RaplMeter | None:
        """The machine's RAPL meter, or None when RAPL is absent or unreadable (non-root since
        Linux 5.10 unless energy_uj is made readable)."""
        zones = _rapl_zones(root)
        if not zones:
            return None
        try:
            return cls(zones, sample_interval_s=sample_interval_s)
        except (OSError, ValueError) as exc:
            log.info("RAPL present but not readable (%s); energy not available", exc)
            return None

    def read_joules(self) -> float:
        with self._lock:
            for z in self._zones:
                now = _read_int(z.energy_path)
                delta = now - z.last_uj
                if delta < 0:  # the counter wrapped past max_energy_range_uj
                    delta += z.max_uj + 1
                z.total_uj += delta
                z.last_uj = now
            return sum(z.total_uj for z in self._zones) / 1e6

    def _sample(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.read_joules()
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


def _rapl_zones(root: Path) -> list[_Zone]:
    """Top-level `intel-rapl:N` zones plus their `dram` subzones (`intel-rapl:N:M`); only the
    `psys` zone when present. Zones whose energy_uj cannot be read are skipped."""
    if not root.is_dir():
        return []
    found: list[tuple[str, Path]] = []
    for d in sorted(root.glob("intel-rapl:*")):
        parts = d.name.split(":")
        try:
            name = (d / "name").read_text().strip()
        except OSError:
            continue
        top = len(parts) == 2
        if top or name == "dram":
            found.append((name, d))
    psys = [(n, d) for n, d in found if n.startswith("psys")]
    chosen = psys or found
    zones = []
    for name, d in chosen:
        try:
            _read_int(d / "energy_uj")
            max_uj = _read_int(d / "max_energy_range_uj")
        except (OSError, ValueError):
            continue
        zones.append(_Zone(name, d / "energy_uj", max_uj))
    return zones


# -- EnergyMon (ctypes) ---------------------------------------------------------------------------
class _EnergyMonStruct(ctypes.Structure):
    """`struct energymon` from energymon.h: seven function pointers and an opaque state."""

    _fields_ = [("finit", ctypes.c_void_p), ("fread", ctypes.c_void_p),
                ("ffinish", ctypes.c_void_p), ("fsource", ctypes.c_void_p),
                ("finterval", ctypes.c_void_p), ("fprecision", ctypes.c_void_p),
                ("fexclusive", ctypes.c_void_p), ("state", ctypes.c_void_p)]


_EM_P = ctypes.POINTER(_EnergyMonStruct)
_INIT = ctypes.CFUNCTYPE(ctypes.c_int, _EM_P)
_READ = ctypes.CFUNCTYPE(ctypes.c_uint64, _EM_P)
_SOURCE = ctypes.CFUNCTYPE(ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t)


class EnergyMonMeter(EnergyMeter):
    """`energymon_get_default` from libenergymon-default; readings are microjoules (uint64)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        self._em = _EnergyMonStruct()
        get = lib.energymon_get_default
        get.argtypes, get.restype = [_EM_P], ctypes.c_int
        if get(ctypes.byref(self._em)):
            raise OSError("energymon_get_default failed")
        buf = ctypes.create_string_buffer(128)
        _SOURCE(self._em.fsource)(buf, len(buf))
        self.source = "energymon:" + buf.value.decode(errors="replace")
        if _INIT(self._em.finit)(ctypes.byref(self._em)):
            raise OSError(f"EnergyMon init failed (errno {ctypes.get_errno()})")
        self._read = _READ(self._em.fread)
        self._lock = threading.Lock()
        self._start_uj: int = self._read(ctypes.byref(self._em))  # microjoules (a foreign call)
        self._closed = False

    @classmethod
    def open(cls) -> EnergyMonMeter | None:
        name = ctypes.util.find_library("energymon-default")
        candidates = [name] if name else []
        candidates.append("libenergymon-default.so")
        for candidate in candidates:
            try:
                lib = ctypes.CDLL(candidate, use_errno=True)
            except OSError:
                continue
            try:
                return cls(lib)
            except (OSError, AttributeError) as exc:
                log.info("EnergyMon found but unusable (%s); trying RAPL", exc)
                return None
        return None

    def read_joules(self) -> float:
        with self._lock:
            if self._closed:
                raise OSError("EnergyMon meter is closed")
            now: int = self._read(ctypes.byref(self._em))
            return (now - self._start_uj) / 1e6

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                _INIT(self._em.ffinish)(ctypes.byref(self._em))
                self._closed = True


# -- choosing ------------------------------------------------------------------------------------
def open_meter(prefer: str | None = None) -> EnergyMeter | None:
    """The best energy meter on this machine, or None ("not available").

    Args:
        prefer: "energymon", "rapl" or "none"; default $PIPEEDGE_ENERGY, else EnergyMon first.
    """
    prefer = (prefer or os.environ.get("PIPEEDGE_ENERGY", "")).lower()
    if prefer == "none":
        return None
    root = Path(os.environ.get("PIPEEDGE_POWERCAP_ROOT") or POWERCAP_ROOT)

    def rapl() -> RaplMeter | None:
        return RaplMeter.open(root)

    openers: dict[str, tuple[Callable[[], EnergyMeter | None], ...]] = {
        "rapl": (rapl,), "energymon": (EnergyMonMeter.open,)}
    order = openers.get(prefer, (EnergyMonMeter.open, rapl))
    for opener in order:
        meter = opener()
        if meter is not None:
            log.info("energy measured by %s", meter.source)
            return meter
    return None


def format_joules_per_item(joules: float | None, items: int) -> str:
    """`0.123 J/item`, or `not available` when energy cannot be measured (never a fake 0)."""
    if joules is None:
        return "not available"
    if items <= 0:
        return "-"
    return f"{joules / items:.3g} J/item"
