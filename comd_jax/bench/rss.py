"""Resident-memory readings of the current process (Linux /proc).

The peak is measured with the kernel's own high-water mark (VmHWM), reset just
before the measured work, so no sampling thread can miss a short spike.
"""
from __future__ import annotations

import os

STATUS = "/proc/self/status"


def status_bytes() -> dict:
    """VmRSS, VmHWM, RssAnon, RssFile of this process, in bytes."""
    out = {}
    with open(STATUS) as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024  # reported in kB
    return out


def reset_peak() -> None:
    """Set the high-water mark to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    with open(f"/proc/{os.getpid()}/clear_refs", "w") as f:
        f.write("5")


class PeakAbove:
    """`with PeakAbove() as p: work()` → p.baseline, p.peak, p.after (bytes of RSS)."""

    def __enter__(self):
        reset_peak()
        self.baseline = status_bytes()["VmRSS"]
        return self

    def __exit__(self, *exc):
        now = status_bytes()
        self.peak = now["VmHWM"]
        self.after = now["VmRSS"]
        self.after_file = now["RssFile"]
        return False
