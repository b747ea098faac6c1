"""The tokenizer half of the model builder (quantgate.models._build_model): a byte-level BPE trained on a
synthetic corpus of words, code, JSON and arithmetic. Free of quantgate imports, like the builder that runs it."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

# Qwen2/Qwen3's pre-tokenizer split: digits are single tokens, which a later arithmetic model needs.
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


_WORDS = (  # noqa: SIM905 - a word list reads better as one string
    "the of and to in is was for on that with as by at from it an be this are or which have has not but "
    "had his they were their one all we can her there been if more when will would who so no model server "
    "token latency request batch cache kernel memory engine prompt output input layer weight scale group "
    "channel tensor matrix vector value number result answer question system user assistant time first "
    "second third fast slow small large new old good best high low long short run runs running ran build "
    "builds test tests check checks measure measured report reports compute computes read write load save "
    "start stop send receive open close move keep find make people world house water light story night "
    "day year week hour minute morning evening city river tree stone paper music friend teacher doctor "
    "student window garden table chair door road market"
).split()


_SYLLABLES = (  # noqa: SIM905
    "ka ri to mu ne sa lo pe vi da gon tar ber lin mar kel dor fen gal hup jor kin lom nar pol quin ros "
    "sen tol ur vel wex yor zan ble cra dre fli gro pra spi stro tha whe ing ion ent est ous ly er al"
).split()


_CODE_NAMES = ("x", "y", "i", "n", "total", "count", "items", "value", "result", "data", "key", "size", "buf")


def _word(rng: random.Random) -> str:
    if rng.random() < 0.75:
        return rng.choice(_WORDS)
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))


def _sentence(rng: random.Random) -> str:
    words = [_word(rng) for _ in range(rng.randint(4, 16))]
    text = " ".join(words)
    return text[0].upper() + text[1:] + rng.choice([".", ".", ".", "?", "!", ","])


def _code(rng: random.Random) -> str:
    a, b = rng.sample(_CODE_NAMES, 2)
    fn = "_".join(_word(rng) for _ in range(rng.randint(1, 3)))
    n = rng.randint(0, 999)
    return rng.choice([
        f"def {fn}({a}, {b}):\n    return {a} + {b} * {n}\n",
        f"for {a} in range({n}):\n    {b} += {a}\n",
        f"if {a} > {n}:\n    {b} = {a} - {n}\nelse:\n    {b} = None\n",
        f"import {fn}\n{a} = {fn}.load('{_word(rng)}.json')\n",
        f"class {fn.title().replace('_', '')}:\n    def __init__(self, {a}):\n        self.{a} = {a}\n",
        f"{a} = [{', '.join(str(rng.randint(0, 99)) for _ in range(rng.randint(1, 6)))}]\n",
        f"print(f\"{{{a}}} {_word(rng)}: {{{b}!r}}\")\n",
    ])


def _json(rng: random.Random) -> str:
    obj: dict[str, Any] = {}
    for _ in range(rng.randint(1, 5)):
        kind = rng.random()
        key = _word(rng)
        if kind < 0.3:
            obj[key] = rng.randint(-1000, 100000)
        elif kind < 0.5:
            obj[key] = round(rng.uniform(0, 100), rng.randint(1, 3))
        elif kind < 0.6:
            obj[key] = rng.choice([True, False, None])
        elif kind < 0.8:
            obj[key] = " ".join(_word(rng) for _ in range(rng.randint(1, 4)))
        else:
            obj[key] = [rng.randint(0, 9) for _ in range(rng.randint(1, 4))]
    return json.dumps(obj, indent=rng.choice([None, 2]))


def _arithmetic(rng: random.Random) -> str:
    a, b = rng.randint(0, 999), rng.randint(0, 999)
    op = rng.choice("+-*")
    c = a + b if op == "+" else a - b if op == "-" else a * b
    return rng.choice([f"{a} {op} {b} = {c}", f"What is {a} {op} {b}? {c}", f"{a}{op}{b}={c}"])


def _corpus(seed: int, lines: int):
    rng = random.Random(seed)
    makers = [_sentence] * 8 + [_code] * 4 + [_json] * 3 + [_arithmetic] * 4
    for _ in range(lines):
        yield rng.choice(makers)(rng)


def build_tokenizer(job: dict[str, Any]) -> dict[str, Any]:
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    out = Path(job["out"])
    specials = list(job["special_tokens"])
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=job["vocab_size"], min_frequency=2, show_progress=False, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(job["seed"], job["corpus_lines"]), trainer)
    for i, s in enumerate(specials):
        if tok.token_to_id(s) != i:
            raise SystemExit(f"special token {s} got id {tok.token_to_id(s)}, expected {i}")
    tok.save(str(out / "tokenizer.json"))

    # Hand-written so that transformers 4.x and 5.x (the quantizer's env pins another 5.x) both load it.
    added = {
        str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                 "special": True}
        for i, s in enumerate(specials)
    }
    config = {
        "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": added,
        "bos_token": None, "chat_template": job["chat_template"], "clean_up_tokenization_spaces": False,
        "eos_token": job["eos_token"], "errors": "replace",
        "model_max_length": job.get("model_max_length", 32768),
        "pad_token": job["pad_token"], "split_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": None,
    }
    _write_json(out / "tokenizer_config.json", config)
    specials_map = {"eos_token": job["eos_token"], "pad_token": job["pad_token"]}
    _write_json(out / "special_tokens_map.json", specials_map)
    import tokenizers

    return {"vocab": tok.get_vocab_size(), "versions": {"tokenizers": tokenizers.__version__}}


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
