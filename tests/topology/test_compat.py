"""Draft/target tokenizer compatibility, read from real and synthetic GGUF files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from gguf.constants import GGUFEndian, Keys

from rolegate.errors import Code, RequestError
from rolegate.topology.compat import (
    Compatibility,
    compare_files,
    compatibility_json,
    format_compatibility,
    read_tokenizer,
)
from tests.support.llama import require_llama

TOK = Keys.Tokenizer
# Gemma's specials first, and a comma at 11 like Qwen3-Coder's vocabulary, whose BOS it is.
VOCAB = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", *(f"w{i}" for i in range(5, 300))]
VOCAB[11] = ","


def write_gguf(
    path: Path,
    tokens: list[str] = VOCAB,
    *,
    model: str = "llama",
    pre: str = "default",
    bos: int = 2,
    eos: int = 1,
    add_bos: bool = True,
    add_eos: bool = False,
    tokenizer: bool = True,
    endianess: GGUFEndian = GGUFEndian.LITTLE,
    scores: list[float] | None = None,
    types: list[int] | None = None,
) -> Path:
    """A small GGUF with a tokenizer and one tensor, written by llama.cpp's own writer."""
    writer = gguf.GGUFWriter(path, arch="gemma3", endianess=endianess)
    if tokenizer:
        writer.add_tokenizer_model(model)
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_scores(scores or [0.0] * len(tokens))
        writer.add_token_types(types or [1] * len(tokens))
        writer.add_bos_token_id(bos)
        writer.add_eos_token_id(eos)
        writer.add_add_bos_token(add_bos)
        writer.add_add_eos_token(add_eos)
    writer.add_tensor("token_embd.weight", np.arange(8, dtype=np.float32).reshape(2, 4))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def pair(tmp_path: Path, target: dict[str, Any], draft: dict[str, Any]) -> Compatibility:
    return compare_files(
        write_gguf(tmp_path / "target.gguf", **target), write_gguf(tmp_path / "draft.gguf", **draft)
    )


@pytest.fixture(scope="module")
def real() -> tuple[Path, gguf.GGUFReader]:
    """The test model and llama.cpp's reader of it (slow: ~10 s for its 262k-token vocabulary)."""
    _, path = require_llama()
    return Path(path), gguf.GGUFReader(path)


def test_real_gguf_is_compatible_with_itself_and_read_as_gguf_reads_it(
    real: tuple[Path, gguf.GGUFReader],
) -> None:
    path, reader = real
    c = compare_files(path, path)
    assert c.compatible
    assert (c.differences, c.notes) == ((), ())
    info = c.target
    assert info.vocab_size > 1000
    assert info.bos_id == reader.fields[TOK.BOS_ID].contents()
    assert info.eos_id == reader.fields[TOK.EOS_ID].contents()
    assert info.add_bos == reader.fields[TOK.ADD_BOS].contents()
    assert info.model == reader.fields[TOK.MODEL].contents()
    assert info.pre == reader.fields[TOK.PRE].contents()
    assert info.architecture == reader.fields[Keys.General.ARCHITECTURE].contents()
    # Every token, in order, as the reference reader decodes it.
    assert [t.decode() for t in info.tokens] == reader.fields[TOK.LIST].contents()
    assert format_compatibility(c).splitlines()[0] == "compatible"


def test_real_tokenizer_copied_with_another_bos_differs_on_bos_only(
    real: tuple[Path, gguf.GGUFReader], tmp_path: Path
) -> None:
    path, reader = real
    fields = reader.fields
    tokens: list[str] = fields[TOK.LIST].contents()
    comma = tokens.index(",")
    copy = write_gguf(
        tmp_path / "draft.gguf",
        tokens,
        model=fields[TOK.MODEL].contents(),
        pre=fields[TOK.PRE].contents(),
        bos=comma,
        eos=fields[TOK.EOS_ID].contents(),
        add_bos=fields[TOK.ADD_BOS].contents(),
        add_eos=fields[TOK.ADD_EOS].contents(),
        scores=fields[TOK.SCORES].contents(),
        types=fields[TOK.TOKEN_TYPE].contents(),
    )
    c = compare_files(path, copy)
    assert c.target.tokens_sha256 == c.draft.tokens_sha256  # the same vocabulary...
    assert not c.compatible
    (d,) = c.differences  # ...so the BOS is the only difference
    assert (d.field, d.target, d.draft) == ("bos_id", "2", str(comma))
    assert f"token {comma} (',')" in d.why
    assert "token 2 ('<bos>')" in d.why
    assert c.notes == ()


def test_identical_synthetic_files_are_compatible(tmp_path: Path) -> None:
    c = pair(tmp_path, {}, {})
    assert c.compatible
    assert (c.differences, c.notes) == ((), ())
    assert c.target.vocab_size == 300
    assert c.target.tokens_sha256 == c.draft.tokens_sha256
    out = compatibility_json(c)
    assert json.loads(json.dumps(out)) == out
    assert out["compatible"] is True
    assert out["target"]["path"] == str(tmp_path / "target.gguf")
    assert out["draft"]["bos_id"] == 2
    assert "tokens" not in out["draft"]


def test_a_different_bos_is_one_difference_naming_both_tokens(tmp_path: Path) -> None:
    c = pair(tmp_path, {"bos": 11}, {"bos": 2})
    assert not c.compatible
    (d,) = c.differences
    assert (d.field, d.target, d.draft) == ("bos_id", "11", "2")
    assert d.why.startswith(
        "the draft starts sequences with token 2 ('<bos>') but the target with token 11 (',')"
    )
    assert "vocab-transplant" in d.why
    text = format_compatibility(c)
    assert text.splitlines()[0] == "INCOMPATIBLE: 1 difference"
    assert d.why in text
    assert "target: " in text
    assert "BOS token 11 (',')" in text


def test_a_different_eos_is_a_difference(tmp_path: Path) -> None:
    c = pair(tmp_path, {}, {"eos": 3})
    assert [d.field for d in c.differences] == ["eos_id"]
    assert "token 3 ('<unk>')" in c.differences[0].why


def test_one_different_token_is_named_by_id_and_text(tmp_path: Path) -> None:
    draft = list(VOCAB)
    draft[150] = "zzz"
    c = pair(tmp_path, {}, {"tokens": draft})
    assert not c.compatible
    (d,) = c.differences
    assert (d.field, d.target, d.draft) == ("tokens", "token 150 ('w150')", "token 150 ('zzz')")
    assert "token 150 ('w150')" in d.why
    assert "token 150 ('zzz')" in d.why


def test_a_token_below_id_5_differing_is_only_a_note(tmp_path: Path) -> None:
    # llama.cpp starts comparing token text at id 5.
    draft = list(VOCAB)
    draft[4] = "<extra>"
    c = pair(tmp_path, {}, {"tokens": draft})
    assert c.compatible
    (n,) = c.notes
    assert n.field == "tokens"
    assert "token 4 ('<mask>')" in n.why
    assert "token 4 ('<extra>')" in n.why


def test_vocab_sizes_more_than_128_apart_are_a_difference(tmp_path: Path) -> None:
    bigger = [*VOCAB, *(f"x{i}" for i in range(129))]
    c = pair(tmp_path, {}, {"tokens": bigger})
    assert not c.compatible
    (d,) = c.differences
    assert (d.field, d.target, d.draft) == ("vocab_size", "300", "429")
    assert "300" in d.why
    assert "429" in d.why


def test_vocab_sizes_up_to_128_apart_with_the_same_prefix_are_compatible_with_a_note(
    tmp_path: Path,
) -> None:
    bigger = [*VOCAB, *(f"x{i}" for i in range(128))]
    c = pair(tmp_path, {}, {"tokens": bigger})
    assert c.compatible
    (n,) = c.notes
    assert (n.field, n.target, n.draft) == ("vocab_size", "300", "428")
    assert "the 300 shared match" in n.why
    assert format_compatibility(c).splitlines()[0] == "compatible"
    assert "note (vocab_size)" in format_compatibility(c)


def test_close_vocab_sizes_with_a_different_shared_token_are_a_difference(tmp_path: Path) -> None:
    bigger = [*VOCAB, "extra"]
    bigger[200] = "changed"
    c = pair(tmp_path, {}, {"tokens": bigger})
    assert [d.field for d in c.differences] == ["tokens"]
    assert "token 200 ('changed')" in c.differences[0].why
    assert c.notes == ()


def test_a_different_tokenizer_model_is_a_difference(tmp_path: Path) -> None:
    c = pair(tmp_path, {"model": "llama"}, {"model": "gpt2"})
    assert [(d.field, d.target, d.draft) for d in c.differences] == [("model", "llama", "gpt2")]
    assert "'gpt2'" in c.differences[0].why


def test_a_different_pre_tokenizer_is_a_note(tmp_path: Path) -> None:
    c = pair(tmp_path, {"pre": "qwen2"}, {"pre": "llama-bpe"})
    assert c.compatible
    assert [(n.field, n.target, n.draft) for n in c.notes] == [("pre", "qwen2", "llama-bpe")]


def test_adding_bos_in_one_only_is_a_difference(tmp_path: Path) -> None:
    c = pair(tmp_path, {"add_bos": True}, {"add_bos": False})
    (d,) = c.differences
    assert (d.field, d.target, d.draft) == ("add_bos", "True", "False")
    assert "the target adds a BOS token to every prompt but the draft does not" in d.why


def test_a_big_endian_file_reads_the_same(tmp_path: Path) -> None:
    little = read_tokenizer(write_gguf(tmp_path / "le.gguf"))
    big = read_tokenizer(write_gguf(tmp_path / "be.gguf", endianess=GGUFEndian.BIG))
    assert big.tokens == little.tokens
    assert big.tokens_sha256 == little.tokens_sha256
    assert (big.bos_id, big.eos_id, big.add_bos) == (2, 1, True)


def test_synthetic_file_is_read_as_gguf_reader_reads_it(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", bos=11, eos=7, add_eos=True)
    info = read_tokenizer(path)
    fields = gguf.GGUFReader(path).fields
    assert [t.decode() for t in info.tokens] == fields[TOK.LIST].contents() == VOCAB
    assert (info.bos_id, info.eos_id, info.add_bos, info.add_eos) == (11, 7, True, True)
    assert (info.model, info.pre, info.architecture) == ("llama", "default", "gemma3")


def expect_invalid(path: Path, *words: str) -> None:
    with pytest.raises(RequestError) as raised:
        read_tokenizer(path)
    assert raised.value.code is Code.INVALID_ARGUMENT
    assert path.name in raised.value.message
    for word in words:
        assert word in raised.value.message


def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "draft.gguf"
    path.write_text("this is a text file, not a model\n")
    expect_invalid(path, "is not a GGUF file (bad magic)")


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    expect_invalid(tmp_path / "nowhere.gguf", "does not exist")


def test_an_empty_file_and_a_directory_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    expect_invalid(empty, "too short")
    folder = tmp_path / "folder.gguf"
    folder.mkdir()
    expect_invalid(folder, "cannot be read")


def test_a_truncated_gguf_is_refused(tmp_path: Path) -> None:
    whole = write_gguf(tmp_path / "whole.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[:1000])  # inside the token list
    expect_invalid(cut, "truncated")


def test_a_gguf_without_a_tokenizer_is_refused(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "weights.gguf", tokenizer=False)
    expect_invalid(path, "has no tokenizer.ggml.tokens")


def test_an_unknown_value_type_is_refused(tmp_path: Path) -> None:
    data = bytearray(write_gguf(tmp_path / "good.gguf").read_bytes())
    # The first key/value follows the 24-byte header: key length (8), key, then its type (4).
    key_len = int.from_bytes(data[24:32], "little")
    type_at = 32 + key_len
    data[type_at : type_at + 4] = (99).to_bytes(4, "little")
    path = tmp_path / "odd.gguf"
    path.write_bytes(data)
    expect_invalid(path, "unknown value type 99")
