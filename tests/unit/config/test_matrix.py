import json
from pathlib import Path

import pytest

from quantgate.config.matrix import MatrixError, load_matrices, load_matrix

REPO = Path(__file__).resolve().parents[3]

GOOD = """
[gate]
mode = "relative"
reference = "bf16"

[workload]
outputs = { short = 8, long = 32 }
contexts = [0, 128]
repeats = 2

[defaults]
env = { VLLM_CPU_KVCACHE_SPACE = "1" }

[[config]]
id = "bf16"
model = { recipe = "qwen3-dense" }

[[config]]
id = "ngram"
model = "${QG_TEST_MODELS}/m"
quantization = "w4a16"
speculative = { method = "ngram", num_speculative_tokens = 3, prompt_lookup_max = 4 }
serve_args = ["--enforce-eager"]
env = { EXTRA = "x" }
hardware = ["sm121", "sm120"]
expected_failure = "known broken"
"""


def write(tmp_path: Path, text: str, name: str = "m.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_matrix_parses_every_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QG_TEST_MODELS", "/models")
    m = load_matrix(write(tmp_path, GOOD))
    bf16, ngram = m.configs
    assert (bf16.quantization, bf16.hardware, bf16.env) == ("bf16", ("cpu",), {"VLLM_CPU_KVCACHE_SPACE": "1"})
    assert ngram.model == "/models/m"
    assert ngram.env == {"VLLM_CPU_KVCACHE_SPACE": "1", "EXTRA": "x"}
    assert ngram.serve_args == ("--enforce-eager",)
    assert ngram.expected_failure is not None and ngram.expected_failure.reason == "known broken"
    assert json.loads(ngram.speculative.to_serve_json(None)) == {
        "method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4}
    assert ngram.applies_to("sm121") and not ngram.applies_to("cpu-avx2")
    assert bf16.applies_to("cpu-avx512") and not bf16.applies_to("sm90")
    assert m.workload.outputs == {"short": 8, "long": 32} and m.workload.repeats == 2
    assert (m.gate.mode, m.gate.reference) == ("relative", "bf16")


@pytest.mark.fault(
    "matrix",
    "unknown key / quantization / speculative method, duplicate id, missing model, "
    "num_speculative_tokens out of range, env var not a string",
    "one-line MatrixError naming the file, the config and the value",
)
@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (lambda t: t.replace('id = "ngram"', 'id = "bf16"'), "duplicate config id 'bf16'"),
        (lambda t: t.replace('serve_args = ["--enforce-eager"]', "colour = 1"), "unknown key 'colour'"),
        (lambda t: t.replace('quantization = "w4a16"', 'quantization = "int3"'), "unknown quantization 'int3'"),
        (lambda t: t.replace('method = "ngram"', 'method = "medusa"'), "unknown speculative method 'medusa'"),
        (lambda t: t.replace("num_speculative_tokens = 3", "num_speculative_tokens = 0"),
         "num_speculative_tokens must be an integer 1..8, got 0"),
        (lambda t: t.replace('EXTRA = "x"', "EXTRA = 1"), "env var EXTRA must be a string"),
        (lambda t: t.replace('model = "${QG_TEST_MODELS}/m"\n', ""), "config 'ngram': missing 'model'"),
        (lambda t: t.replace('reference = "bf16"', 'reference = "nope"'), "reference 'nope' is not a config id"),
        (lambda t: t.replace("repeats = 2", "repeats = 0"), "repeats must be an integer 1..10000, got 0"),
        (lambda t: t.replace("id = \"bf16\"", "id = \"a b\""), "config id must be a non-empty string"),
    ],
)
def test_bad_matrix_names_file_config_and_value(tmp_path: Path, mutation, message: str) -> None:
    path = write(tmp_path, mutation(GOOD))
    with pytest.raises(MatrixError) as info:
        load_matrix(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.fault("matrix", "invalid TOML", "error names the file, line and column")
def test_invalid_toml_reports_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('id = "bf16"', 'id = "bf16'))
    with pytest.raises(MatrixError, match=r"invalid TOML: .*line \d+"):
        load_matrix(path)


def test_duplicate_ids_across_files(tmp_path: Path) -> None:
    a = write(tmp_path, GOOD, "a.toml")
    b = write(tmp_path, '[[config]]\nid = "bf16"\nmodel = "/x"\n', "b.toml")
    with pytest.raises(MatrixError, match="duplicate config id 'bf16'"):
        load_matrices([a, b])


def test_shipped_cpu_matrix_loads_with_required_configs() -> None:
    m = load_matrix(REPO / "fixtures/matrix/cpu.toml")
    ids = {c.id for c in m.configs}
    assert {"bf16", "w4a16", "w8a8", "fp8-dynamic", "moe-bf16", "ngram-nst3", "draft-nst3"} <= ids
    assert m.get("ngram-nst3").speculative.num_speculative_tokens == 3
    assert m.get("draft-nst3").speculative.method == "draft_model"


def test_benchy_and_concurrency_tables_are_typed_settings_built_at_load(tmp_path: Path) -> None:
    from quantgate.config.settings import BenchySettings, SweepSettings

    text = GOOD + "\n[benchy]\npp = [64, 128]\nlatency_mode = \"none\"\n\n[concurrency]\nlevels = [1, 2]\n" \
        "percentiles = [50, 90]\n"
    m = load_matrix(write(tmp_path, text))
    assert m.benchy == BenchySettings(pp=(64, 128), latency_mode="none")
    assert m.concurrency == SweepSettings(levels=(1, 2), percentiles=(50.0, 90.0))
    assert load_matrix(write(tmp_path, GOOD, "plain.toml")).concurrency == SweepSettings()


@pytest.mark.parametrize(("table", "message"), [
    ("[benchy]\nlatency_mode = \"api\"", "[benchy]: latency_mode must be 'generation' or 'none', not 'api'"),
    ("[benchy]\npp = \"512\"", "[benchy]: pp must be a non-empty list of ints >= 0, got '512'"),
    ("[benchy]\nmax_model_len = 8", "[benchy]: unknown key 'max_model_len'"),
    ("[concurrency]\nlevels = [0, 2]", "[concurrency]: levels must be concurrencies >= 1"),
    ("[concurrency]\nprompt_len = 4", "[concurrency]: prompt_len must be at least 16"),
    ("[concurrency]\noutput_len = 1.5", "[concurrency]: output_len must be an integer >= 0, got 1.5"),
    ("concurrency = 3", "[concurrency] must be a table, got 3"),
])
def test_bad_workload_settings_are_matrix_errors(tmp_path: Path, table: str, message: str) -> None:
    # top-level keys go before the first table in TOML
    text = table + "\n" + GOOD if "=" in table.split("\n")[0] and "[" not in table else GOOD + "\n" + table + "\n"
    path = write(tmp_path, text)
    with pytest.raises(MatrixError) as err:
        load_matrix(path)
    assert str(err.value).startswith(str(path)) and message in str(err.value), str(err.value)


def test_one_hardware_family_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Configs, expected failures and Hardware all follow hardware.marker_for: a new family rule (here: a
    GPU id carrying its model, sm90-h200 -> sm90) needs one edit, not six."""
    from quantgate import hardware
    from quantgate.config.matrix import EngineConfig, ExpectedFailure

    cpu = EngineConfig(id="a", model="/m", quantization="bf16", hardware=("cpu",))
    assert cpu.applies_to("cpu-amx") and not cpu.applies_to("sm121")
    assert EngineConfig(id="b", model="/m", quantization="bf16", hardware=("cpu-amx",)).applies_to("cpu-amx")
    assert not EngineConfig(id="c", model="/m", quantization="bf16", hardware=("cpu-avx2",)).applies_to("cpu-amx")
    monkeypatch.setattr(hardware, "marker_for", lambda hw: hw.split("-")[0] if hw.startswith("sm") else "cpu")
    sm90 = EngineConfig(id="d", model="/m", quantization="bf16", hardware=("sm90",))
    assert sm90.applies_to("sm90-h200") and not sm90.applies_to("sm121-gb10")
    assert ExpectedFailure("x", hardware=("sm90",)).applies_to("sm90-h200")
    h = hardware.Hardware(id="sm90-h200", name="H200")
    assert h.marker == "sm90" and h.is_gpu
HOSTILE = [
    # (what, mutation of GOOD, text the one-line error must contain)
    # top-level keys go first: after a [table] header they would belong to that table
    ("config = [1]", lambda t: "config = [1]\n" + t.split("[[config]]")[0], "every [[config]] entry must be a table"),
    ("defaults = 1", lambda t: "defaults = 1\n" + t.replace('[defaults]\nenv = { VLLM_CPU_KVCACHE_SPACE = "1" }', ""),
     "[defaults] must be a table, got 1"),
    ("env = \"X=1\"", lambda t: t.replace('env = { EXTRA = "x" }', 'env = "X=1"'), "env must be a table, got 'X=1'"),
    ("string tolerance", lambda t: t.replace('reference = "bf16"', 'reference = "bf16"\ndefault_tolerance = "5%"'),
     "default_tolerance must be a number > 0 and <= 1, got '5%'"),
    ("negative tolerance", lambda t: t.replace('reference = "bf16"', 'reference = "bf16"\ndefault_tolerance = -0.1'),
     "default_tolerance must be a number > 0 and <= 1"),
    ("huge tolerance", lambda t: t.replace('reference = "bf16"', 'reference = "bf16"\ndefault_tolerance = 5.0'),
     "default_tolerance must be a number > 0 and <= 1, got 5.0"),
    ("serve_args a string", lambda t: t.replace('serve_args = ["--enforce-eager"]', 'serve_args = "--enforce-eager"'),
     "serve_args must be a list of strings, got '--enforce-eager'"),
    ("id noise", lambda t: t.replace('id = "ngram"', 'id = "noise"'), "config id 'noise' is reserved"),
    ("id ..", lambda t: t.replace('id = "ngram"', 'id = ".."'), "config id '..' must be letters"),
    ("id workers", lambda t: t.replace('id = "ngram"', 'id = "workers"'), "config id 'workers' is reserved"),
    ("id report.md", lambda t: t.replace('id = "ngram"', 'id = "report.md"'), "config id 'report.md' is reserved"),
    ("id with /", lambda t: t.replace('id = "ngram"', 'id = "a/b"'), "config id must be a non-empty string"),
    ("contexts = [true]", lambda t: t.replace("contexts = [0, 128]", "contexts = [true]"),
     "contexts must be a list of token counts"),
    ("negative timeout", lambda t: t.replace("repeats = 2", "repeats = 2\nrequest_timeout_s = -1"),
     "request_timeout_s must be a number > 0"),
    ("string timeout", lambda t: t.replace("repeats = 2", "repeats = 2\nrequest_timeout_s = 'soon'"),
     "request_timeout_s must be a number > 0"),
    ("inf timeout", lambda t: t.replace("repeats = 2", "repeats = 2\nsettle_s = inf"), "settle_s must be a number"),
    ("undefined var in a matrix-wide path", lambda t: t + '\n[accuracy]\npath = "${QG_NOT_SET_ANYWHERE}/gsm8k.jsonl"\n',
     "names $QG_NOT_SET_ANYWHERE, which is not set"),
    ("--host in serve_args", lambda t: t.replace('["--enforce-eager"]', '["--host", "0.0.0.0"]'),
     "serve argument '--host' sets --host"),
    ("--host= in serve_args", lambda t: t.replace('["--enforce-eager"]', '["--host=0.0.0.0"]'),
     "serve argument '--host=0.0.0.0' sets --host"),
    ("--port abbreviated", lambda t: t.replace('["--enforce-eager"]', '["--por", "80"]'),
     "serve argument '--por' sets --port"),
    ("--host in defaults", lambda t: t.replace("[defaults]\n", '[defaults]\nserve_args = ["--HOST=::"]\n'),
     "sets --host"),
    ("VLLM_API_KEY in env", lambda t: t.replace('EXTRA = "x"', 'VLLM_API_KEY = "fixed"'),
     "env sets VLLM_API_KEY"),
    ("unknown key in defaults", lambda t: t.replace("[defaults]\n", "[defaults]\ncolour = 1\n"),
     "[defaults]: unknown key 'colour'"),
    ("budget_s zero", lambda t: t.replace('id = "ngram"', 'id = "ngram"\nbudget_s = 0'),
     "budget_s must be a number > 0"),
    ("expected_slow without reason",
     lambda t: t.replace('id = "ngram"', 'id = "ngram"\nexpected_slow = {hardware = []}'),
     "expected_slow needs a 'reason'"),
    ("label not a string", lambda t: t.replace('id = "ngram"', 'id = "ngram"\nlabel = 3'), "label must be a string"),
    ("max_model_len bool", lambda t: t.replace('id = "ngram"', 'id = "ngram"\nmax_model_len = true'),
     "max_model_len must be an integer 64.."),
    ("accuracy not a table", lambda t: "accuracy = 3\n" + t, "[accuracy] must be a table"),
]


@pytest.mark.fault("matrix", "hostile values: config = [1], defaults = 1, env = \"X=1\", string/negative/huge "
                   "tolerances, serve_args a string, reserved or path-like ids, contexts = [true], negative timeout, "
                   "unset ${VAR}, --host/--port in any spelling, VLLM_API_KEY in env",
                   "one MatrixError naming the file, the config and the key; never a traceback")
@pytest.mark.parametrize(("what", "mutation", "message"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_matrix_is_one_matrix_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str,
                                            mutation, message: str) -> None:
    monkeypatch.setenv("QG_TEST_MODELS", "/models")
    path = write(tmp_path, mutation(GOOD))
    assert mutation(GOOD) != GOOD, what
    with pytest.raises(MatrixError) as info:
        load_matrix(path)
    assert message in str(info.value)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.fault("matrix", "Latin-1 (non-UTF-8) matrix file", "MatrixError naming the file, the byte and the line")
def test_latin1_matrix(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_bytes(GOOD.replace('id = "ngram"', 'id = "ngram"\nlabel = "d\u00e9j\u00e0"').encode("latin-1"))
    with pytest.raises(MatrixError, match=r"m.toml: not UTF-8 \(byte 0xe9 on line \d+\)"):
        load_matrix(path)


@pytest.mark.fault("matrix", "model path names an unset ${VAR}",
                   "MatrixError naming the variable where the config runs; configs for other hardware still load")
def test_unset_model_variable_named_where_it_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QG_TEST_MODELS", raising=False)
    path = write(tmp_path, GOOD)
    assert load_matrices([path], "cpu-avx512")  # 'ngram' is for sm121/sm120: its variable is not needed here
    with pytest.raises(MatrixError, match=r"config 'ngram': model names \$QG_TEST_MODELS, which is not set"):
        load_matrices([path], "sm121")
    monkeypatch.setenv("QG_TEST_MODELS", "/models")
    assert load_matrices([path], "sm121")[0].get("ngram").model == "/models/m"


def test_shipped_matrices_load_on_cpu() -> None:
    assert load_matrices(sorted((REPO / "fixtures/matrix").glob("*.toml")), "cpu-amx")


@pytest.mark.parametrize(("value", "message"), [
    ('"../../../etc/passwd"', "baseline_of must name another config id"),
    ('"noise"', "baseline_of must name another config id"),
    ('"bf16-nowhere"', "baseline_of 'bf16-nowhere' is not a config id of this matrix"),
])
def test_baseline_of_names_a_config_of_the_matrix(tmp_path: Path, value: str, message: str) -> None:
    # baseline_of names the baseline file a copy is judged against: never a path, never an unknown id
    text = GOOD.replace('id = "bf16"\n', 'id = "bf16"\n').replace(
        '[[config]]\nid = "ngram"', f'[[config]]\nid = "bf16-copy"\nmodel = {{ recipe = "qwen3-dense" }}\n'
                                    f'baseline_of = {value}\n\n[[config]]\nid = "ngram"')
    with pytest.raises(MatrixError, match=message):
        load_matrix(write(tmp_path, text))
    ok = load_matrix(write(tmp_path, text.replace(f"baseline_of = {value}", 'baseline_of = "bf16"'), "ok.toml"))
    assert ok.get("bf16-copy").baseline_of == "bf16"
