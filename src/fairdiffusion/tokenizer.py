"""The offline tokenizer of the tiny stack: a byte-level BPE vocabulary for CLIPTokenizer.

Real Stable Diffusion uses CLIPTokenizer with OpenAI's 49k-token vocabulary, which cannot be
downloaded here. The tiny stack uses the same class with a small vocabulary: every byte (plain
and end-of-word), plus merges that make each word of the datasets' prompt templates
a single token; anything else falls back to bytes.

The files are generated once by `write_files` and shipped in configs/tiny/tokenizer/ (the other
tiny architectures use them). Every ordering below is explicit (sorted by (-len, word)), never
set-iteration order, which follows Python's per-process string hashing and would change token
ids between processes.
"""

from __future__ import annotations

import json
from pathlib import Path

# The words of the prompt templates of FairGenMed, HAM10000 and CheXpert, lowercased (CLIPTokenizer
# lowercases and splits off punctuation and single digits before BPE).
PROMPT_WORDS = """
slo fundus image of a asian black white female male non hispanic patient with the following
conditions glaucoma normal mild moderate severe vision loss borderline abnormal cup disc ratio
positive neutral negative dermoscopic age under equal or older diagnostic category benign
malignant chest radiography diagnosed pleural effusion
""".split()

MODEL_MAX_LENGTH = 48
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply ranked merges to one word the way BPE does (lowest rank first)."""
    while len(symbols) > 1:
        pairs = [(ranks.get(p, len(ranks)), i) for i, p in enumerate(zip(symbols, symbols[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2:]
    return symbols


def build_vocab(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and ranked merges: bytes, bytes + '</w>', then merges making each word one token.

    For each word (longest first), the merges learnt so far split it into pieces; a new merge,
    appended with the highest rank, joins the first two pieces, until the word is one token.
    Appending never changes how an earlier word is split, since BPE applies the lowest-ranked
    merge available first.
    """
    byte_map = bytes_to_unicode()
    byte_chars = [byte_map[b] for b in range(256)]
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    ranks: dict[tuple[str, str], int] = {}
    for word in sorted(set(words), key=lambda w: (-len(w), w)):
        chars = [byte_map[b] for b in word.encode("utf-8")]
        chars[-1] += "</w>"
        pieces = _bpe(chars, ranks)
        while len(pieces) > 1:
            ranks[(pieces[0], pieces[1])] = len(ranks)
            tokens.append(pieces[0] + pieces[1])
            pieces = _bpe(chars, ranks)
    tokens += [BOS, EOS]
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    return vocab, sorted(ranks, key=ranks.get)


def write_files(out: str | Path, words: list[str] = PROMPT_WORDS) -> None:
    """Write vocab.json, merges.txt and tokenizer_config.json for CLIPTokenizer.from_pretrained."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab(words)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n")
    (out / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


if __name__ == "__main__":
    write_files(Path(__file__).parent / "configs" / "tiny" / "tokenizer")
