"""How much memory this machine has free, and a refusal for work that cannot fit in it."""

from __future__ import annotations

import os

from saecircuits.core.errors import SaecircuitsError


def available_bytes() -> int:
    """Memory available to a new allocation (Linux ``MemAvailable``; elsewhere the physical total)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(what: str, units: int, bytes_per_unit: float, option: str, share: float = 0.8) -> float:
    """Refuse ``units`` of work needing ``bytes_per_unit`` each when they exceed ``share`` of the available
    memory, saying how many fit; returns the bytes needed."""
    need, free = units * bytes_per_unit, available_bytes()
    if need > share * free:
        fits = int(share * free / max(bytes_per_unit, 1))
        raise SaecircuitsError(f"{units:,} {what} need about {need / 2**30:.1f} GiB; {free / 2**30:.1f} GiB is free",
                               f"lower {option} to {fits:,} or fewer in all")
    return need
