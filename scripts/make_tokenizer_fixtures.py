#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""A small DeepSeek-V3-style byte-level BPE tokenizer and its reference encodings, made with
Hugging Face `tokenizers`.

DeepSeek's own tokenizer.json (128k tokens, ~7 MB) is not redistributable in this repository at
a reasonable size, so a tokenizer is trained here, with exactly DeepSeek-V3's pipeline: no
normalizer, the pre_tokenizer below (three regex Splits, then ByteLevel without its regex), a
ByteLevel decoder, the BOS/EOS/pad specials at ids 0-2, and non-special added tokens past the
model vocabulary as in V3 (<｜User｜>, <think>, ...). Its training text is generated here
(English, code, digits, CJK, kana, emoji, other scripts, whitespace runs), from a fixed seed.

Writes to tests/fixtures/tokenizer/:
  tokenizer.json   the trained tokenizer (vocab 3000 + added tokens)
  reference.json   {"tokenizers_version", "variants": [{"name", "overrides", "cases"}],
                    "decode": [...]}
      variants: the file as is ("deepseek_v3", a few hundred strings), then the same vocabulary
        and merges with other pipeline parts replacing top-level keys of tokenizer.json
        ("overrides": GPT-2's ByteLevel regex, Split behaviours, Digits, TemplateProcessing,
        lstrip/rstrip added tokens, ignore_merges), each on the hand-picked strings and 30
        generated ones.
      cases: {"text"} or, for invalid UTF-8, {"bytes_hex"} (encoded as `tokenizers` encodes
        bytes.decode("utf-8", "replace"), i.e. each maximal invalid subpart → U+FFFD);
        "ids" (add_special_tokens=False), "ids_special" (True).
      decode: {"ids", "text", "text_skip_special"} for random id sequences (incl. split
        characters, which `tokenizers` decodes lossily) on the "deepseek_v3" variant.

Deterministic: rerunning with the tokenizers version in scripts/requirements-fixtures.txt
rewrites identical files.

Usage: scripts/make_tokenizer_fixtures.py [--out tests/fixtures/tokenizer]
"""

from __future__ import annotations

import argparse
import copy
import json
import random
from pathlib import Path

import tokenizers
from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers,
                        processors, trainers)

# DeepSeek-V3's pre_tokenizer, as in its tokenizer.json (deepseek-ai/DeepSeek-V3).
DEEPSEEK_V3_SPLITS = [
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
]
SPECIALS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"]
ADDED = ["<think>", "</think>", "<｜User｜>", "<｜Assistant｜>", "<｜tool▁call▁begin｜>"]
VOCAB_SIZE = 3000

WORDS = """the of and to in is was for on that with as by at from his her it an were are which
this be or has had first one their its new after who they have two been but not other also
into all more time during when there would only most over later some year these can where
city may school between used him world such about many while state under both out since
known including three through then before than called being each well team people made
series album during film season part game music became university against high early
model token tokenizer expert router layer attention matrix vector gradient weight bias
learning language large mixture experts sparse dense compute memory cache prefix decode
quick brown fox jumps lazy dog café naïve résumé über straße façade piñata coöperate
Hello World Python Rust DeepSeek Transformer GPU CPU API JSON HTTP URL""".split()

CODE = [
    "def forward(self, x):\n    h = self.norm(x)\n    return x + self.attn(h)\n",
    "for (int i = 0; i < n; ++i) {\n  sum += a[i] * b[i];\n}\n",
    "if __name__ == \"__main__\":\n\tmain(sys.argv[1:])\n",
    "const auto it = std::find_if(v.begin(), v.end(), [](int x) { return x > 0; });\n",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;\n",
    "fn main() {\n    let v: Vec<u32> = (0..10).collect();\n    println!(\"{:?}\", v);\n}\n",
    "<div class=\"row\"><span id='x'>&nbsp;</span></div>\r\n",
    "x = {'a': [1, 2, 3], \"b\": None}  # comment\n",
    "    return torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(d)\n",
    "#include <vector>\n#include <string>\n\nint main() { return 0; }\n",
]

CJK = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能"
    "下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加"
    "量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与"
    "关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者"
    "最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少"
    "图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光"
    "门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采"
    "转更单风切打白教速花带安场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节"
    "话米整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际"
    "商非验连断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精"
    "值号率族维划选标写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识适属圆包火住"
    "调满县局照参红细引听该铁价严")
KANA = (
    "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわ"
    "をんアイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤユヨラリルレ"
    "ロワヲンー")
OTHER = ["Привет, мир! Как дела?", "مرحبا بالعالم", "שלום עולם", "Γειά σου Κόσμε",
         "नमस्ते दुनिया", "สวัสดีชาวโลก", "안녕하세요 세계", "Xin chào thế giới",
         "e\u0301te\u0301 cafe\u0301", "Ångström ÅÅÅ", "Łódź żółć"]
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "🇯🇵", "🤖", "✨", "🔥🔥🔥", "👩🏻‍💻", "©", "™", "∑", "→"]


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 14))]
    words[0] = words[0].capitalize()
    text = " ".join(words)
    if rng.random() < 0.3:
        text += f" {rng.randint(0, 10 ** rng.randint(1, 9))}"
    return text + rng.choice([".", "!", "?", ",", ";", ":", "..."])


def cjk(rng: random.Random, alphabet: str) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(2, 20)))


def mixed(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 6)):
        kind = rng.randrange(8)
        if kind == 0:
            parts.append(sentence(rng))
        elif kind == 1:
            parts.append(rng.choice(CODE))
        elif kind == 2:
            parts.append(cjk(rng, CJK) + rng.choice(["。", "，", "！", ""]))
        elif kind == 3:
            parts.append(cjk(rng, KANA))
        elif kind == 4:
            parts.append(rng.choice(OTHER))
        elif kind == 5:
            parts.append("".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 4))))
        elif kind == 6:
            parts.append(str(rng.randint(0, 10 ** rng.randint(1, 12))))
        else:
            parts.append(rng.choice([" ", "  ", "\n", "\n\n", "\t", "\r\n", "    ", " \n "]))
    return rng.choice(["", " ", "\n"]).join(parts)


def corpus(rng: random.Random, n: int) -> list[str]:
    return [mixed(rng) for _ in range(n)]


def deepseek_v3_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(p), behavior="isolated", invert=False)
         for p in DEEPSEEK_V3_SPLITS]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])


def train() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.normalizer = None
    tok.pre_tokenizer = deepseek_v3_pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, min_frequency=2, show_progress=False,
        special_tokens=[AddedToken(s, special=True, normalized=False) for s in SPECIALS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(random.Random(1), 20000), trainer=trainer)
    tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in ADDED])
    return tok


def edge_cases() -> list[str]:
    """Hand-picked strings: each kind of text and every rule of the pipeline."""
    return [
        "", " ", "  ", "a", "Hello world", "Hello world!", " Hello", "Hello  world",
        "Hello   world ",
        "1", "12", "123", "1234", "1234567", "3.14159", "-42", "1,000,000", "x1y22z333",
        "٣٤٥", "²³", "１２３４", "v2.0.1-rc3",
        "The quick brown fox jumps over the lazy dog.",
        "It's a dog's life, isn't it? They'll say we'd've done it.",
        "def f(x):\n    return x * 2\n",
        "if (a) {\n\tb();\n}\n", "\t\tindented\twith\ttabs",
        "line1\nline2\r\nline3\rline4", "\n", "\n\n\n", "\r\n", "\r\n\r\n", " \n", "\n ", "a \n b",
        "trailing spaces   ", "   leading spaces", "a" + " " * 17 + "b", " " * 64, "\t" * 9,
        "中文测试", "我们是中国人。", "日本語のテキストです", "ひらがな", "カタカナ", "ｶﾀｶﾅ",
        "漢字とかなの混在テスト",
        "한국어 텍스트", "Привет мир", "naïve café résumé", "e\u0301", "a\u0308o\u0308u\u0308",
        "\u1100\u1161\u11a8", "ﬁ ligature", "Ǆ ǅ ǆ",
        "😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "🇯🇵🇺🇸", "emoji 🤖 in text", "🔥🔥🔥",
        "a\u00a0b", "a\u2003b", "a\u3000b", "a\u0085b", "a\u2028b", "a\u200bb", "a\ufeffb",
        "a\u180eb", " \u180e", "a \u180e b", "x\u180e\u180e ",  # not White_Space since Unicode 6.3
        "\u00a0\u00a0x", "x\u2009\u2009",
        "!!!", "...", "?!", "--flag", "@user", "#hashtag", "$100", "50%", "a+b=c", "(x)", "[1, 2]",
        "{\"k\": \"v\"}", "<tag>", "C++", "e.g.", "U.S.A.", "https://example.com/a?b=c&d=e",
        "user@example.com", "~/path/to/file.txt", "C:\\Windows\\System32", "'quoted'", "\"dq\"",
        "_underscore_", "snake_case_name", "CamelCaseName", "a--b", "a__b", "¿Qué?", "«guillemets»",
        "“smart quotes”", "—em dash—", "…", "•bullet", "°C", "€100", "£5", "¥", "±1",
        "<｜begin▁of▁sentence｜>", "<｜begin▁of▁sentence｜>Hello", "Hello<｜end▁of▁sentence｜>",
        "a<｜begin▁of▁sentence｜>b<｜end▁of▁sentence｜>c", "<｜User｜>Hi<｜Assistant｜>",
        "<think>\nreasoning\n</think>\n\nanswer", "<｜User｜> spaced <｜Assistant｜> ",
        "<｜begin▁of▁sentence｜><｜begin▁of▁sentence｜>", "<｜begin▁of▁sentence", "｜>", "<think",
        "<｜▁pad▁｜><｜▁pad▁｜>", "<｜tool▁call▁begin｜>{\"a\":1}",
        " <think> x </think> y <｜User｜>  z", "a\u3000<｜User｜>\u3000b", "\t<think>\t",
        "\x00", "\x01\x02\x7f", "tab\there", "\x0b\x0c",
    ]


def generated_cases(n: int) -> list[str]:
    """Mixtures like the training text (another seed), one long text, one long repetition."""
    rng = random.Random(2)
    return ([mixed(rng) for _ in range(n)] + [" ".join(mixed(rng) for _ in range(60))]
            + ["word " * 400])


INVALID_UTF8 = [b"\xff", b"abc\x80def", b"\xc0\x80", b"\xe0\x80\x80", b"\xed\xa0\x80",
                b"\xf0\x9f\x98", b"\xf0\x9f\x98 x", b"\xf4\x90\x80\x80", b"caf\xe9", b"\xe2\x82",
                b"\xe4\xb8\xad\xe6", b"ok\xf5\xfe\xff ok", b"\x80\x80\x80"]


def encode_cases(tok: Tokenizer, strings: list[str], invalid: list[bytes]) -> list[dict]:
    cases = []
    for text in strings:
        cases.append({"text": text,
                      "ids": tok.encode(text, add_special_tokens=False).ids,
                      "ids_special": tok.encode(text, add_special_tokens=True).ids})
    for raw in invalid:
        text = raw.decode("utf-8", errors="replace")
        cases.append({"bytes_hex": raw.hex(),
                      "ids": tok.encode(text, add_special_tokens=False).ids,
                      "ids_special": tok.encode(text, add_special_tokens=True).ids})
    return cases


def variants(base: dict) -> list[tuple[str, dict]]:
    """(name, overrides of tokenizer.json's top-level keys)."""
    def split(pattern: dict, behavior: str, invert: bool = False) -> dict:
        return {"type": "Split", "pattern": pattern, "behavior": behavior, "invert": invert}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": False}
    bos = SPECIALS[0]
    added = copy.deepcopy(base["added_tokens"])
    for t in added:
        if t["content"] == "<think>":
            t["lstrip"] = True
        if t["content"] == "</think>":
            t["rstrip"] = True
        if t["content"] == "<｜User｜>":
            t["lstrip"] = t["rstrip"] = True
    model = copy.deepcopy(base["model"])
    model["ignore_merges"] = True
    # the other of the two forms of merges ("a b" strings or [a, b] pairs) than the file's
    model["merges"] = [m.split(" ") if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return [
        ("gpt2_byte_level", {"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True,
                                               "trim_offsets": True, "use_regex": True}}),
        ("split_removed_digits", {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            split({"Regex": r"\s+"}, "Removed"),
            {"type": "Digits", "individual_digits": True}, byte_level]}}),
        ("split_merged", {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            split({"String": " "}, "MergedWithPrevious"),
            split({"Regex": r"\p{P}"}, "MergedWithNext"),
            {"type": "Digits", "individual_digits": False}, byte_level]}}),
        ("split_contiguous_invert", {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            split({"Regex": r"[aeiou]"}, "Contiguous"),
            split({"Regex": r"\p{L}+"}, "Isolated", invert=True),
            split({"Regex": r"x*"}, "Isolated"),
            split({"Regex": r"^\s+|\S$"}, "Isolated"), byte_level]}}),
        ("template_bos", {"post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [0], "tokens": [bos]}}}}),
        ("added_strip", {"added_tokens": added}),
        ("ignore_merges_other_merges_form", {"model": model}),
    ]


def decode_cases(tok: Tokenizer, n: int) -> list[dict]:
    rng = random.Random(3)
    size = tok.get_vocab_size(with_added_tokens=True)
    out = []
    for _ in range(n):
        ids = [rng.randrange(size) for _ in range(rng.randint(0, 12))]
        out.append({"ids": ids, "text": tok.decode(ids, skip_special_tokens=False),
                    "text_skip_special": tok.decode(ids, skip_special_tokens=True)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent.parent / "tests/fixtures/tokenizer")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    tok = train()
    path = args.out / "tokenizer.json"
    tok.save(str(path), pretty=False)
    base = json.loads(path.read_text(encoding="utf-8"))
    tok = Tokenizer.from_file(str(path))

    edges = edge_cases()
    strings = edges + generated_cases(200)
    result = {"tokenizers_version": tokenizers.__version__,
              "variants": [{"name": "deepseek_v3", "overrides": {},
                            "cases": encode_cases(tok, strings, INVALID_UTF8)}],
              "decode": decode_cases(tok, 200)}
    subset = edges + generated_cases(30)
    for name, overrides in variants(base):
        variant = Tokenizer.from_str(json.dumps({**base, **overrides}))
        result["variants"].append({"name": name, "overrides": overrides,
                                   "cases": encode_cases(variant, subset, INVALID_UTF8[:4])})
    (args.out / "reference.json").write_text(
        json.dumps(result, ensure_ascii=False, indent=None, separators=(",", ":")) + "\n",
        encoding="utf-8")
    n = sum(len(v["cases"]) for v in result["variants"])
    print(f"{path}: vocab {tok.get_vocab_size()}; reference.json: {n} encodings in "
          f"{len(result['variants'])} variants, {len(result['decode'])} decodings")


if __name__ == "__main__":
    main()
