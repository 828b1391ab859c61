"""Metrics: TensorBoard event files in the workdir, a progress bar with ETA on
the console, and MFU where the device's peak is known. Only process 0 writes."""
from __future__ import annotations

import time
from typing import Optional

import jax

# Dense bf16 peak FLOP/s per chip, by jax device_kind prefix.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6": 918e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
}


def device_peak_flops(device=None) -> Optional[float]:
    kind = (device or jax.devices()[0]).device_kind
    for prefix, peak in sorted(PEAK_FLOPS.items(), key=lambda kv: -len(kv[0])):
        if kind.startswith(prefix):
            return peak
    return None


class MetricsLogger:
    def __init__(self, logdir: str, total_steps: int, start_step: int, desc: str):
        self.is_main = jax.process_index() == 0
        self.writer = None
        self.bar = None
        if self.is_main:
            from tensorboardX import SummaryWriter
            from tqdm.auto import tqdm

            # SummaryWriter makes local folders itself and writes gs:// through its GCS writer.
            self.writer = SummaryWriter(logdir)
            self.bar = tqdm(total=total_steps, initial=start_step, desc=desc, dynamic_ncols=True,
                            mininterval=1.0)

    def scalars(self, step: int, values: dict, prefix: str = "train"):
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"{prefix}/{name}", float(value), step)

    def progress(self, steps: int, postfix: Optional[dict] = None):
        if self.bar is not None:
            self.bar.update(steps)
            if postfix:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def print(self, text: str):
        if self.is_main:
            (self.bar.write if self.bar is not None else print)(text)

    def close(self):
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
        if self.bar is not None:
            self.bar.close()


class Throughput:
    """Step time, tokens/s and MFU over a log interval."""

    def __init__(self, flops_per_step: float, num_devices: int):
        self.flops_per_step = flops_per_step
        peak = device_peak_flops()
        self.peak = peak * num_devices if peak else None
        self.reset()

    def reset(self):
        self.start = time.perf_counter()
        self.steps = 0
        self.tokens = 0.0

    def add(self, tokens: float):
        self.steps += 1
        self.tokens += tokens

    def summary(self) -> dict:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        out = {"step_time_s": elapsed / max(self.steps, 1), "tokens_per_s": self.tokens / elapsed}
        if self.peak:
            out["mfu"] = self.flops_per_step * self.steps / elapsed / self.peak
        return out
