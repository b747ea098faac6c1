# quantgate's plugin is loaded through its pytest11 entry point (pip install -e .); nothing else to do here.
# Registered for plain checkouts too, so `python -m pytest` works from the repo root without installing.
import importlib.util

if importlib.util.find_spec("quantgate") is None:  # pragma: no cover
    raise SystemExit("quantgate is not installed: run scripts/setup-cpu.sh (see README)")
