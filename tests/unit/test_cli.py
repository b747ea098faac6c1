import json
import subprocess
import sys
from pathlib import Path

import pytest

from quantgate import cli, hardware

REPO = Path(__file__).resolve().parents[2]


def test_hardware_prints_detected_id(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTGATE_HARDWARE", "sm121")
    assert cli.main(["hardware"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["id"] == "sm121" and "versions" in data


def test_cpu_isa_ids() -> None:
    assert hardware.cpu_isa_id({"avx2", "avx512f", "amx_tile"}) == "cpu-amx"
    assert hardware.cpu_isa_id({"avx2", "avx512f"}) == "cpu-avx512"
    assert hardware.cpu_isa_id({"avx2"}) == "cpu-avx2"
    assert hardware.marker_for("cpu-avx2") == "cpu" and hardware.marker_for("sm90") == "sm90"
    assert hardware.bandwidth_for("NVIDIA H100 80GB HBM3") == 3350.0


def test_kernels_command_prints_record(capsys: pytest.CaptureFixture[str]) -> None:
    log = next((REPO / "fixtures/logs/cpu").glob("*w4a16*.log"))
    assert cli.main(["kernels", str(log)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["linear_kernels"] == {"CompressedTensorsWNA16": "CPUWNA16LinearKernel"}
    assert record["platform"] == "cpu"


def test_kernels_command_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["kernels", str(tmp_path / "nope.log")]) == 2
    assert "nope.log: no such file" in capsys.readouterr().err


def test_run_passes_pytest_options_through(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    envs: list[dict[str, str]] = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd, env: seen.append(cmd) or envs.append(env) or 0)
    monkeypatch.setenv("QUANTGATE_HARDWARE", "cpu-avx2")
    assert cli.main(["run", "-v", "-k", "w8a8 or bf16"]) == 0
    cmd = seen[0]
    assert cmd[:3] == [sys.executable, "-m", "pytest"]
    assert cmd[cmd.index("-m", 3) + 1] == "cpu"
    assert cmd[-3:] == ["-v", "-k", "w8a8 or bf16"]
    # the plugin's messages (no baselines here: rerun with --update-baselines) name the command as typed
    assert envs[0]["QUANTGATE_INVOKED_AS"] == "quantgate run -v -k 'w8a8 or bf16'"


def test_console_script_is_installed() -> None:
    out = subprocess.run([sys.executable, "-m", "quantgate.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "calibrate" in out.stdout


@pytest.mark.parametrize(("name", "text", "globs"), [
    ("pytest.ini", "[pytest]\nquantgate_matrix =\n    a/*.toml\n    b.toml\n", ["a/*.toml", "b.toml"]),
    ("pyproject.toml", '[tool.pytest.ini_options]\nquantgate_matrix = ["m/*.toml"]\n', ["m/*.toml"]),
    ("tox.ini", "[pytest]\nquantgate_matrix = x.toml\n", ["x.toml"]),
    ("setup.cfg", "[tool:pytest]\naddopts = -q\n", ["fixtures/matrix/*.toml"]),
])
def test_calibrate_reads_the_matrix_globs_as_pytest_does(tmp_path: Path, name: str, text: str, globs) -> None:
    (tmp_path / name).write_text(text)
    (tmp_path / "sub").mkdir()
    assert cli.ini_matrix_globs(tmp_path / "sub") == (tmp_path, globs)


def test_ini_without_a_pytest_section_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "tox.ini").write_text("[tox]\nenvlist = py\n")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (tmp_path / "inner").mkdir()
    (tmp_path / "inner" / "setup.cfg").write_text("[metadata]\nname = x\n")
    assert cli.ini_matrix_globs(tmp_path / "inner") == (tmp_path / "inner", ["fixtures/matrix/*.toml"])


def test_calibrate_without_matrix_names_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\nquantgate_matrix = nothing/*.toml\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["calibrate"]) == 4  # a matrix problem exits 4, as under pytest
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no matrix files found (looked for ['nothing/*.toml'] under" in err
def test_calibrate_bad_matrix_exits_4(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTGATE_HARDWARE", "cpu-avx2")
    bad = tmp_path / "m.toml"
    bad.write_text("config = [1]\n")
    assert cli.main(["calibrate", "--matrix", str(bad)]) == 4  # the exit code pytest gives for the same file
    err = capsys.readouterr().err
    assert f"{bad}: every [[config]] entry must be a table" in err and len(err.strip().splitlines()) == 1
