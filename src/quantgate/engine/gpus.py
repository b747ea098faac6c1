"""GPU leases: which GPUs an engine may use, shared by every quantgate process on the host.

Under pytest-xdist (`pytest -n 2`) workers start engines at the same time. Each engine takes the GPUs it needs
(tensor x pipeline x data parallel size, from its serve args) from one pool before it starts and gives them back
when it stops; the engine sees only those (CUDA_VISIBLE_DEVICES). A lease is an flock()ed file per GPU, so a
holder that crashes frees its GPUs at once, and two pytest sessions on one runner (two CI jobs) share the pool
instead of piling engines onto one GPU. Waiters are served first come, first served: a tensor-parallel config
waiting for two GPUs is not starved by single-GPU configs that keep grabbing whichever GPU frees up.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ..config.environment import Environment, from_env
from ..errors import QuantgateError
from ..hardware import _nvidia_smi_rows
from ..locks import LockError, lock_file, private_dir

_PARALLEL_FLAGS = {
    "--tensor-parallel-size": "tp", "-tp": "tp",
    "--pipeline-parallel-size": "pp", "-pp": "pp",
    "--data-parallel-size": "dp", "-dp": "dp",
}


class GpuLeaseError(QuantgateError, RuntimeError):
    """Not enough GPUs for a config, or none came free in time; the message says who holds them."""


def gpus_needed(serve_args: Sequence[str]) -> int:
    """GPUs one `vllm serve` uses: tensor x pipeline x data parallel size (each 1 unless given)."""
    sizes = {"tp": 1, "pp": 1, "dp": 1}
    args = list(serve_args)
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if flag not in _PARALLEL_FLAGS:
            continue
        if not eq:
            value = args[i + 1] if i + 1 < len(args) else ""
        if not value.isdigit() or int(value) < 1:
            raise GpuLeaseError(f"{flag} {value!r}: expected a positive integer")
        sizes[_PARALLEL_FLAGS[flag]] = int(value)
    return sizes["tp"] * sizes["pp"] * sizes["dp"]


def visible_gpus(env: dict[str, str] | None = None) -> list[str]:
    """The GPUs this process may hand out: CUDA_VISIBLE_DEVICES when set (ids or UUIDs), else every GPU
    nvidia-smi lists."""
    env = dict(os.environ if env is None else env)
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()]
    return [row[0] for row in _nvidia_smi_rows("--query-gpu=index", "--format=csv,noheader") if row and row[0]]


def default_lock_dir(env: Environment | None = None) -> Path:
    override = (env or from_env()).gpu_lock_dir
    return override if override else Path(tempfile.gettempdir()) / f"quantgate-gpus-{os.getuid()}"


@dataclass
class Lease:
    gpus: tuple[str, ...]
    _handles: list[IO[str]] = field(default_factory=list, repr=False)

    @property
    def cuda_visible_devices(self) -> str:
        return ",".join(self.gpus)

    def release(self) -> None:
        for handle in self._handles:
            with contextlib.suppress(OSError):
                handle.close()  # closing drops the flock
        self._handles.clear()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class GpuPool:
    gpus: tuple[str, ...]
    lock_dir: Path

    def __post_init__(self) -> None:
        try:  # 0700 and ours: in /tmp anyone could otherwise pre-create it and plant symlinks in it
            self.lock_dir = private_dir(self.lock_dir)
        except LockError as exc:
            raise GpuLeaseError(str(exc)) from None

    def _gpu_path(self, gpu: str) -> Path:
        return self.lock_dir / ("gpu-" + re.sub(r"[^\w.-]", "_", gpu) + ".lock")

    def holders(self) -> dict[str, str]:
        """GPU -> who last leased it (for messages; a stale name is harmless)."""
        out = {}
        for gpu in self.gpus:
            with contextlib.suppress(OSError):
                who = self._gpu_path(gpu).read_text(encoding="utf-8").strip()
                if who:
                    out[gpu] = who
        return out

    def acquire(self, count: int, who: str, timeout_s: float | None = None, poll_s: float = 0.5) -> Lease:
        if count > len(self.gpus):
            raise GpuLeaseError(f"{who} needs {count} GPUs; this machine offers {len(self.gpus)} "
                                f"({', '.join(self.gpus) or 'none'}; CUDA_VISIBLE_DEVICES limits them)")
        ticket = f"{os.getpid()} {uuid.uuid4().hex[:8]} {count} {who}"
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while True:
                lease = self._try(ticket, count, who)
                if lease is not None:
                    return lease
                if deadline is not None and time.monotonic() > deadline:
                    held = "; ".join(f"GPU {g}: {w}" for g, w in self.holders().items())
                    raise GpuLeaseError(f"{who} waited {timeout_s:.0f} s for {count} free GPU(s) of "
                                        f"{', '.join(self.gpus)}; last holders: {held or 'unknown'}")
                time.sleep(poll_s)
        except BaseException:
            self._dequeue(ticket)
            raise

    def _queue(self) -> tuple[IO[str], list[str]]:
        """The waiters' queue, locked; entries of processes that died are dropped."""
        handle = lock_file(self.lock_dir / "queue", blocking=True)
        assert handle is not None
        handle.seek(0)
        entries = [e for e in handle.read().splitlines() if e.strip() and _pid_alive(int(e.split()[0]))]
        return handle, entries

    @staticmethod
    def _write_queue(handle: IO[str], entries: list[str]) -> None:
        handle.seek(0)
        handle.truncate()
        handle.write("".join(e + "\n" for e in entries))
        handle.flush()

    def _try(self, ticket: str, count: int, who: str) -> Lease | None:
        handle, entries = self._queue()
        try:
            if ticket not in entries:
                entries.append(ticket)
            if entries[0] != ticket:
                self._write_queue(handle, entries)
                return None  # someone asked first
            taken: list[tuple[str, IO[str]]] = []
            for gpu in self.gpus:
                if len(taken) == count:
                    break
                held = lock_file(self._gpu_path(gpu), blocking=False)
                if held is not None:
                    taken.append((gpu, held))
            if len(taken) < count:
                for _, held in taken:
                    held.close()
                self._write_queue(handle, entries)
                return None
            for _, held in taken:
                held.seek(0)
                held.truncate()
                held.write(f"pid {os.getpid()} {who}\n")
                held.flush()
            self._write_queue(handle, [e for e in entries if e != ticket])
            return Lease(tuple(g for g, _ in taken), [h for _, h in taken])
        finally:
            handle.close()

    def _dequeue(self, ticket: str) -> None:
        handle, entries = self._queue()
        try:
            self._write_queue(handle, [e for e in entries if e != ticket])
        finally:
            handle.close()


def gpu_uuids() -> dict[str, str]:
    """nvidia-smi index -> UUID, to match CUDA_VISIBLE_DEVICES entries against per-GPU memory holders."""
    return {row[0]: row[1] for row in _nvidia_smi_rows("--query-gpu=index,uuid", "--format=csv,noheader")
            if len(row) == 2}
