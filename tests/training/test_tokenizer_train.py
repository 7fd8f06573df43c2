"""The trained byte-level BPE: special ids fixed, and every byte of whitespace survives."""

from __future__ import annotations

from diffusion_core.tokenizer import Tokenizer
from diffusion_core.training.tokenizer_train import BEGIN, EOS, MASK, train_tokenizer

CODE = [
    "def f(x):\n    if x:\n        return x * 2\n    return 0\n",
    "class A:\n\tdef g(self):\n\t\tpass\r\n",
    "const add = (a, b) => {\n  return a + b;\n};\n",
] * 20

ROUND_TRIP = [
    "def f(x):\n    if x:\n        return x\n",
    "\t\tmixed \t tabs\t\n",
    "    \n\n\n        trailing   \n",
    "line\r\nwindows\r\n",
    "unicode: café, 中文, emoji 🚀\n",
    "x\u00a0=\u3000 1\n",
    "e\u0301  # decomposed accent stays decomposed\n",
    "",
    " ",
]


def test_special_tokens_and_round_trip() -> None:
    backend = train_tokenizer(CODE, vocab_size=300)
    assert [backend.token_to_id(t) for t in (EOS, MASK, BEGIN)] == [0, 1, 2]
    tok = Tokenizer(backend)
    assert {0, 1, 2} <= tok.special_ids
    for text in ROUND_TRIP:
        assert tok.decode(tok.encode(text)) == text, repr(text)
    # learned merges: a common code word (with its leading space) is one token
    assert len(tok.encode(" return")) == 1
    # the mask/eos/begin strings in source text are specials only when added as ids, never by text
    # merges: encoding ordinary text never yields them
    assert not set(tok.encode("".join(CODE[:3]))) & {0, 1, 2}
