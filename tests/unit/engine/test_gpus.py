"""quantgate.engine.gpus: GPU leases shared by processes (flock), first come first served, parallel sizes."""

from __future__ import annotations

import multiprocessing
import os
import stat
import time
from pathlib import Path

import pytest

from quantgate.engine.gpus import GpuLeaseError, GpuPool, gpus_needed, visible_gpus
from quantgate.locks import LockError


@pytest.mark.parametrize(("args", "n"), [
    ((), 1),
    (("--tensor-parallel-size", "2"), 2),
    (("-tp", "4", "--enforce-eager"), 4),
    (("--tensor-parallel-size=2", "--pipeline-parallel-size", "2"), 4),
    (("--data-parallel-size", "2", "-tp", "2"), 4),
])
def test_gpus_needed(args: tuple[str, ...], n: int) -> None:
    assert gpus_needed(args) == n


def test_gpus_needed_rejects_bad_sizes() -> None:
    with pytest.raises(GpuLeaseError, match=r"--tensor-parallel-size 'two'"):
        gpus_needed(["--tensor-parallel-size", "two"])
    with pytest.raises(GpuLeaseError, match=r"-tp ''"):
        gpus_needed(["-tp"])


def test_visible_gpus_follow_cuda_visible_devices() -> None:
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []


def test_leases_are_exclusive_and_released(tmp_path: Path) -> None:
    pool = GpuPool(("0", "1"), tmp_path)
    a = pool.acquire(1, "a")
    b = pool.acquire(1, "b")
    assert {a.gpus, b.gpus} == {("0",), ("1",)}
    with pytest.raises(GpuLeaseError, match=r"c waited 0 s for 1 free GPU\(s\) of 0, 1; last holders: GPU 0: "
                                            r"pid \d+ a; GPU 1: pid \d+ b"):
        pool.acquire(1, "c", timeout_s=0.2, poll_s=0.05)
    a.release()
    c = pool.acquire(1, "c", timeout_s=1)
    assert c.gpus == ("0",) and c.cuda_visible_devices == "0"
    b.release()
    c.release()
    both = pool.acquire(2, "tp2", timeout_s=1)
    assert both.cuda_visible_devices == "0,1"
    both.release()


def test_more_gpus_than_the_machine_has(tmp_path: Path) -> None:
    with pytest.raises(GpuLeaseError, match=r"tp4 needs 4 GPUs; this machine offers 2 \(0, 1;"):
        GpuPool(("0", "1"), tmp_path).acquire(4, "tp4")


def _hold(lock_dir: str, gpus: int, seconds: float, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    lease = GpuPool(("0", "1"), Path(lock_dir)).acquire(gpus, f"child-{gpus}", timeout_s=30, poll_s=0.05)
    out.put((gpus, lease.gpus, time.monotonic()))
    time.sleep(seconds)
    lease.release()


def test_leases_across_processes_and_first_come_first_served(tmp_path: Path) -> None:
    """A waiter for two GPUs is served before a later single-GPU waiter, although a GPU frees up first."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    pool = GpuPool(("0", "1"), tmp_path)
    held = pool.acquire(1, "parent")  # GPU 0 busy
    tp2 = ctx.Process(target=_hold, args=(str(tmp_path), 2, 0.3, out))
    tp2.start()
    time.sleep(1.5)  # the two-GPU waiter is queued first
    single = ctx.Process(target=_hold, args=(str(tmp_path), 1, 0.0, out))
    single.start()
    time.sleep(1.0)
    assert out.empty(), "GPU 1 is free, but the single-GPU waiter came second and must wait"
    held.release()
    first = out.get(timeout=30)
    second = out.get(timeout=30)
    tp2.join(30)
    single.join(30)
    assert first[:2] == (2, ("0", "1"))
    assert second[0] == 1 and second[2] >= first[2] + 0.25  # only after the two-GPU lease ended


def test_a_crashed_holder_frees_its_gpus(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_hold, args=(str(tmp_path), 2, 60, out))
    proc.start()
    out.get(timeout=30)
    proc.kill()
    proc.join(10)
    lease = GpuPool(("0", "1"), tmp_path).acquire(2, "after", timeout_s=5, poll_s=0.05)
    assert lease.gpus == ("0", "1")


@pytest.mark.fault("security", "GPU lock folder: pre-created by another user, writable by others, a symlink; "
                   "a lock file planted as a symlink",
                   "created 0700; a foreign, open or symlinked folder is refused naming it; lock files are opened "
                   "with O_NOFOLLOW, so a planted symlink is refused and its target untouched")
def test_gpu_lock_folder_is_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        pool = GpuPool(("0",), tmp_path / "fresh")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.lstat(pool.lock_dir).st_mode) == 0o700
    squatted = tmp_path / "squatted"
    squatted.mkdir(mode=0o700)
    os.chown(squatted, 65534, 65534)  # as if another user had made it first (the tests run as root)
    with pytest.raises(GpuLeaseError, match=rf"{squatted}: lock folder belongs to uid 65534"):
        GpuPool(("0",), squatted)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(GpuLeaseError, match=rf"{shared}: lock folder is writable by others \(mode 777\)"):
        GpuPool(("0",), shared)
    (tmp_path / "link").symlink_to(tmp_path / "fresh")
    with pytest.raises(GpuLeaseError, match="lock folder is a symbolic link"):
        GpuPool(("0",), tmp_path / "link")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (pool.lock_dir / "gpu-0.lock").symlink_to(victim)
    with pytest.raises(LockError, match=r"gpu-0.lock: lock file is a symbolic link"):
        pool.acquire(1, "t", timeout_s=1)
    assert victim.read_text() == "precious\n"
