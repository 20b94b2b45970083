"""Which GPUs a local worker may use: each worker gets its own ``CUDA_VISIBLE_DEVICES`` slice."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping


def visible_gpus(environ: Mapping[str, str]) -> list[str] | None:
    """GPU ids this process may hand out, or None when no GPU is visible.

    ``CUDA_VISIBLE_DEVICES`` (when set) is the operator's word and wins; otherwise ``nvidia-smi`` is asked.
    """
    cvd = environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        ids = [x.strip() for x in cvd.split(",") if x.strip() and x.strip() != "-1"]
        return ids or None
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    ids = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return ids if out.returncode == 0 and ids else None


class GpuSlices:
    """Hands out disjoint groups of ``per_worker`` GPU ids and takes them back when a worker exits."""

    def __init__(self, gpus: list[str], per_worker: int) -> None:
        self.per_worker = per_worker
        self._free = [gpus[i : i + per_worker] for i in range(0, len(gpus) - per_worker + 1, per_worker)]
        self._held: dict[str, list[str]] = {}

    @property
    def capacity(self) -> int:
        return len(self._free) + len(self._held)

    def take(self, worker_id: str) -> str | None:
        """The ``CUDA_VISIBLE_DEVICES`` value for a new worker, or None when every slice is in use."""
        if not self._free:
            return None
        ids = self._free.pop(0)
        self._held[worker_id] = ids
        return ",".join(ids)

    def give_back(self, worker_id: str) -> None:
        ids = self._held.pop(worker_id, None)
        if ids is not None:
            self._free.append(ids)
