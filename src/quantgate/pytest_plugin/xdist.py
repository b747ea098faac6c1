"""pytest-xdist: every worker gets the controller's run id, all of a config's tests go to one worker, and each
worker's verdicts reach the controller's report."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from ..gate.baselines import Verdict, atomic_write
from ..session import Run
from .state import STATE_KEY, QuantgateState, _state


def _xdist_workers(config: pytest.Config) -> int:
    """Workers pytest-xdist will start (0 without -n); on a worker itself, 0."""
    if hasattr(config, "workerinput"):
        return 0
    n = getattr(config.option, "numprocesses", None)
    return n if isinstance(n, int) else 0


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist: every worker gets the controller's run id."""
    node.workerinput["quantgate_run_id"] = _state(node.config).run_id


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """pytest-xdist: send all of a config's tests (and, on a relative gate, its reference's) to one worker,
    so each engine starts once. Our own scope rule rather than --dist loadgroup, whose node-id tagging does
    nothing under pytest 9.2 (xdist 3.8 sets item._nodeid, which pytest no longer reads)."""
    state = config.stash.get(STATE_KEY, None)
    if state is None or state._run is None or config.getoption("dist", "no") not in _SPREAD_MODES:
        return None
    from xdist.scheduler import LoadScopeScheduling

    run = state.run
    by_length = sorted((c.id for c in run.configs()), key=len, reverse=True)

    class ConfigScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(run, by_length, nodeid)

    return ConfigScheduling(config, log)


_SPREAD_MODES = ("load", "loadgroup", "loadscope", "loadfile", "worksteal")


def xdist_scope(run: Run, config_ids: list[str], nodeid: str) -> str:
    """The scheduling unit of a test: its config's reference (or the config), found in the parameter id
    (`test_figure[<config>-<figure>]`); any other test is its own unit."""
    cid = config_of_nodeid(config_ids, nodeid)
    return nodeid if cid is None else "quantgate:" + (run.reference_of(cid) or cid)


def config_of_nodeid(config_ids: list[str], nodeid: str) -> str | None:
    """The config a test id belongs to, from its parameter id; config_ids longest first."""
    param = nodeid[nodeid.find("[") + 1:-1] if nodeid.endswith("]") and "[" in nodeid else ""
    for cid in config_ids:  # longest first: "w4a16-eagle3" before "w4a16"
        if param == cid or param.startswith(cid + "-"):
            return cid
    return None


def _save_worker_part(run: Run, state: QuantgateState, worker: str) -> None:
    if not state.verdicts and not state.updated and not state.write_failures:
        return
    folder = run.results / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    body = {"verdicts": [asdict(v) for v in state.verdicts], "updated": [str(p) for p in state.updated],
            "write_failures": state.write_failures}
    atomic_write(folder / f"{worker}.json", json.dumps(body, default=str))


def _load_worker_parts(run: Run, state: QuantgateState) -> None:
    for part in sorted((run.results / "workers").glob("*.json")):
        body = json.loads(part.read_text(encoding="utf-8"))
        for v in body.get("verdicts", []):
            v["kernel_diff"] = tuple(v.get("kernel_diff") or ())
            v["interval"] = tuple(v["interval"]) if v.get("interval") else None
            state.verdicts.append(Verdict(**v))
        state.updated += [Path(p) for p in body.get("updated", [])]
        state.write_failures += body.get("write_failures", [])
