"""Tokenizer: plain encode/decode, and the prefix/suffix budget windows used on huge buffers."""

from __future__ import annotations

import random
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model_fixtures import BEGIN_TOKEN, CODE_SAMPLE, EOS_TOKEN, MASK_TOKEN, tiny_tokenizer

from diffusion_core.tokenizer import Tokenizer

TOK = tiny_tokenizer()

ODD_TEXT = (
    "def héllo(wörld):\r\n\treturn '😀 中文字符'  \n\n\n    x\u00a0=\u3000 1\t\t# tab\r\n"
    "  \n🚀🚀 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 e\u0301 Ω\n"
)


def test_roundtrip_on_code_and_unicode() -> None:
    for text in (CODE_SAMPLE, ODD_TEXT, "", " ", "\r\n", "\t\t\t"):
        ids = TOK.encode(text)
        # NFC normalisation is part of the pipeline, so decomposed input comes back composed
        assert TOK.decode(ids) == unicodedata.normalize("NFC", text)


def test_specials_are_ids_and_dropped_on_decode() -> None:
    mask, eos, begin = (TOK.token_to_id(t) for t in (MASK_TOKEN, EOS_TOKEN, BEGIN_TOKEN))
    assert None not in (mask, eos, begin)
    assert {mask, eos, begin} <= TOK.special_ids
    body = TOK.encode("x = 1")
    assert TOK.decode([begin, *body, mask, eos]) == "x = 1"
    assert TOK.token_to_id("<|definitely-not-a-token|>") is None
    # ids beyond the tokenizer (a padded model head) are dropped rather than crashing
    assert TOK.decode([*body, TOK.vocab_size + 5]) == "x = 1"


def test_encode_adds_no_specials() -> None:
    ids = TOK.encode("a")
    assert ids and not set(ids) & TOK.special_ids


def test_special_strings_in_user_text_stay_text() -> None:
    """A buffer that contains "<|mask|>" or "<|endoftext|>" (tokenizer code, docs) must not
    open a hole or end the document: by default those strings encode as plain text."""
    text = 'MASK = "<|mask|>"\nEOS = "<|endoftext|>"\n'
    ids = TOK.encode(text)
    assert not set(ids) & TOK.special_ids
    assert TOK.decode(ids) == text
    assert not set(TOK.encode_prefix(text, 8)) & TOK.special_ids
    assert not set(TOK.encode_suffix(text, 8)) & TOK.special_ids
    mask = TOK.token_to_id(MASK_TOKEN)
    assert TOK.encode("a<|mask|>b", allow_special=True)[1] == mask
    assert mask not in TOK.encode("a<|mask|>b")  # the opt-in did not leak into the default


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _check_prefix(tok: Tokenizer, text: str, budget: int) -> list[int]:
    ids = tok.encode_prefix(text, budget)
    full = tok.encode(text)
    assert len(ids) <= max(budget, 0)
    if len(full) <= budget:
        assert ids == full
    elif budget > 0:
        kept = tok.decode(ids)
        assert _nfc(text).endswith(kept)  # touches the cursor
        assert tok.encode(kept) == ids  # exactly the encoding of the kept text
        assert len(ids) >= budget - 4  # uses (nearly) the whole budget
    return ids


def _check_suffix(tok: Tokenizer, text: str, budget: int) -> list[int]:
    ids = tok.encode_suffix(text, budget)
    full = tok.encode(text)
    assert len(ids) <= max(budget, 0)
    if len(full) <= budget:
        assert ids == full
    elif budget > 0:
        kept = tok.decode(ids)
        assert _nfc(text).startswith(kept)
        assert tok.encode(kept) == ids
        assert len(ids) >= budget - 4
    return ids


@pytest.mark.parametrize("budget", [0, 1, 2, 7, 64, 500, 100000])
def test_budgets_on_code(budget: int) -> None:
    text = CODE_SAMPLE + ODD_TEXT + CODE_SAMPLE
    _check_prefix(TOK, text, budget)
    _check_suffix(TOK, text, budget)


def test_prefix_suffix_match_full_encoding_on_typical_code() -> None:
    text = CODE_SAMPLE * 3
    full = TOK.encode(text)
    assert TOK.encode_prefix(text, 300) == full[-300:]
    assert TOK.encode_suffix(text, 300) == full[:300]


def test_multi_megabyte_buffer_is_windowed() -> None:
    """A 4 MB buffer must not be encoded whole: count the characters the backend sees."""
    big = (CODE_SAMPLE + ODD_TEXT) * 2500
    assert len(big) > 4_000_000
    seen: list[int] = []

    class Spy:
        def __init__(self, inner):  # noqa: ANN001
            self.inner = inner

        def encode(self, text, add_special_tokens=True):  # noqa: ANN001
            seen.append(len(text))
            return self.inner.encode(text, add_special_tokens=add_special_tokens)

        def __getattr__(self, name):  # noqa: ANN001
            return getattr(self.inner, name)

    tok = tiny_tokenizer()
    tok.backend = Spy(tok.backend)
    pre = tok.encode_prefix(big, 1536)
    suf = tok.encode_suffix(big, 512)
    assert max(seen) < 100_000
    assert len(pre) == 1536 and len(suf) == 512
    assert TOK.encode(TOK.decode(pre)) == pre and _nfc(big).endswith(TOK.decode(pre))
    assert TOK.encode(TOK.decode(suf)) == suf and _nfc(big).startswith(TOK.decode(suf))


def test_windows_grow_for_whitespace_heavy_text() -> None:
    """Long runs of spaces make few tokens per character: the window has to grow."""
    text = ("x" + " " * 3000 + "\n") * 40
    _check_prefix(TOK, text, 50)
    _check_suffix(TOK, text, 50)


_alphabet = st.sampled_from(
    list("abc xyz_(){}[]:.,=+-*/'\"#\t\n\r") + ["    ", "😀", "中", "é", "\u00a0", "def ", "return "]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(_alphabet, max_size=300), budget=st.integers(min_value=-1, max_value=120))
def test_budget_properties(parts: list[str], budget: int) -> None:
    text = "".join(parts)
    _check_prefix(TOK, text, budget)
    _check_suffix(TOK, text, budget)


def test_random_cut_points_of_code() -> None:
    rng = random.Random(0)
    text = CODE_SAMPLE + ODD_TEXT
    for _ in range(40):
        cursor = rng.randrange(len(text) + 1)
        budget = rng.randrange(1, 200)
        _check_prefix(TOK, text[:cursor], budget)
        _check_suffix(TOK, text[cursor:], budget)


# ----------------------------------------------------------------------------- parity with references
PARITY_TEXTS = [
    ODD_TEXT,
    "if (x) {\r\n\treturn y;\r\n}\r\n",
    "trailing   \nspaces\t \n\n\n\n    indented\n\t\tmixed \t tabs",
    "emoji 👩‍💻 family 👨‍👩‍👧 flags 🇯🇵 and skin 👍🏽",
    "中文注释: 计算总和\n# 日本語のコメント\n// 한국어 주석\nconst π = 3.14159; // ∑ ∫ ≠ ≤",
    "Ünïcödé ﬁligature Å Å (NFC vs NFD) e\u0301 \u212b",
    "numbers 1234567890 0x1F 1e-9 3.14 ١٢٣",
    "it's they're we've I'm you'll he'd IT'S",
    "mask<|mask|>inside and <|endoftext|> eos and <|im_end|>",
    "   leading spaces",
    "\n",
    "",
]


def _repo_code() -> list[str]:
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    files = [root / "diffusion_core" / "model.py", root / "diffusion_core" / "tokenizer.py", Path(__file__)]
    return [f.read_text(encoding="utf-8") for f in files if f.is_file()]


@pytest.fixture(scope="module")
def dream_tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_fixtures import make_family_dir

    return make_family_dir(tmp_path_factory.mktemp("tok") / "dream", "dream")[0]


def test_vocab_merges_tokenizer_matches_transformers_qwen2(dream_tok_dir: Path) -> None:
    """Rebuilt from vocab.json + merges.txt (+ added tokens), our tokenizer encodes exactly as
    transformers' own Qwen2Tokenizer built from the same files."""
    transformers = pytest.importorskip("transformers")
    from diffusion_core.checkpoint import load_tokenizer

    ours, _ = load_tokenizer(dream_tok_dir)
    ref = transformers.Qwen2Tokenizer.from_pretrained(str(dream_tok_dir))
    assert len(ref) == ours.vocab_size
    for text in PARITY_TEXTS + _repo_code():
        want = ref.encode(text, add_special_tokens=False)
        assert ours.encode(text, allow_special=True) == want, text[:60]
        assert ours.decode(want) == ref.decode(want, skip_special_tokens=True)


def _bytes_to_unicode() -> dict[int, str]:
    """The byte-level BPE alphabet: printable bytes map to themselves, the rest to 256+."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _reference_encode(
    text: str, vocab: dict[str, int], merges: list[tuple[str, str]], specials: list[str]
) -> list[int]:
    """Plain-Python byte-level BPE (split specials, NFC, split regex, lowest-rank merge first)."""
    import regex

    from diffusion_core.tokenizer import QWEN2_SPLIT_PATTERN

    ranks = {pair: i for i, pair in enumerate(merges)}
    alphabet = _bytes_to_unicode()
    out: list[int] = []
    special_re = "(" + "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")"
    for chunk in regex.split(special_re, text) if specials else [text]:
        if chunk in specials:
            out.append(vocab[chunk])
            continue
        chunk = unicodedata.normalize("NFC", chunk)
        for piece in regex.findall(QWEN2_SPLIT_PATTERN, chunk):
            word = [alphabet[b] for b in piece.encode("utf-8")]
            while len(word) > 1:
                best = min(range(len(word) - 1), key=lambda i: ranks.get((word[i], word[i + 1]), 1 << 30))
                pair = (word[best], word[best + 1])
                if pair not in ranks:
                    break
                merged, i = [], 0
                while i < len(word):
                    if i < len(word) - 1 and (word[i], word[i + 1]) == pair:
                        merged.append(word[i] + word[i + 1])
                        i += 2
                    else:
                        merged.append(word[i])
                        i += 1
                word = merged
            out.extend(vocab[w] for w in word)
    return out


def test_vocab_merges_tokenizer_matches_plain_python_bpe(dream_tok_dir: Path) -> None:
    import json

    from diffusion_core.checkpoint import load_tokenizer
    from diffusion_core.tokenizer import read_merges

    ours, _ = load_tokenizer(dream_tok_dir)
    vocab = json.loads((dream_tok_dir / "vocab.json").read_text(encoding="utf-8"))
    added = json.loads((dream_tok_dir / "added_tokens.json").read_text(encoding="utf-8"))
    vocab.update(added)
    merges = read_merges(dream_tok_dir / "merges.txt")
    for text in PARITY_TEXTS + _repo_code():
        assert ours.encode(text, allow_special=True) == _reference_encode(text, vocab, merges, list(added))
        assert ours.encode(text) == _reference_encode(text, vocab, merges, []), text[:60]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=80))
def test_plain_python_bpe_parity_on_arbitrary_text(dream_tok_dir: Path, text: str) -> None:
    import json

    from diffusion_core.checkpoint import load_tokenizer
    from diffusion_core.tokenizer import read_merges

    ours, _ = load_tokenizer(dream_tok_dir)
    vocab = json.loads((dream_tok_dir / "vocab.json").read_text(encoding="utf-8"))
    added = json.loads((dream_tok_dir / "added_tokens.json").read_text(encoding="utf-8"))
    vocab.update(added)
    merges = read_merges(dream_tok_dir / "merges.txt")
    assert ours.encode(text, allow_special=True) == _reference_encode(text, vocab, merges, list(added))
    assert ours.decode(ours.encode(text)) == unicodedata.normalize("NFC", text)
