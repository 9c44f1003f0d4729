"""Can a draft model speculate for a target? Decided from the two GGUF files' tokenizer metadata.

Speculative decoding feeds the target's token ids to the draft and the draft's proposals back to
the target, so both must give every id the same meaning. The checks follow llama.cpp's
``common_speculative_are_compatible`` (common/speculative.cpp): same vocabulary type, same
BOS/EOS handling, sizes within 128 tokens, and identical token text from id 5 on.

The metadata is read here rather than with ``gguf.GGUFReader``: that reader turns every array
element into numpy views, which takes about 10 s on a 262k-token vocabulary. This reads only the
key/value section (no tensors) with ``struct`` and uses the gguf package's constants.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from gguf.constants import GGUF_MAGIC, GGUFValueType, Keys
from gguf.gguf_reader import READER_SUPPORTED_VERSIONS

from rolegate.errors import Code, RequestError

MAX_SIZE_DIFFERENCE = 128  # SPEC_VOCAB_MAX_SIZE_DIFFERENCE in llama.cpp
CHECK_START_TOKEN_ID = 5  # SPEC_VOCAB_CHECK_START_TOKEN_ID: llama.cpp ignores ids below this
_FIX = "use a draft made for this target's vocabulary (e.g. a vocab-transplant draft)"
_T = GGUFValueType
_V = TypeVar("_V")
# struct codes of GGUF's scalar types, in GGUFValueType order (8 STRING and 9 ARRAY are not).
_SCALARS = {_T(i): code for i, code in enumerate("BbHhIif?--Qqd") if code != "-"}


@dataclass(frozen=True, slots=True)
class TokenizerInfo:
    path: Path
    architecture: str | None
    model: str  # tokenizer.ggml.model: llama (SentencePiece), gpt2 (byte-level BPE), ...
    pre: str | None  # tokenizer.ggml.pre
    vocab_size: int
    tokens_sha256: str  # over each token as a little-endian u64 length + its UTF-8 bytes
    bos_id: int | None
    eos_id: int | None
    add_bos: bool | None
    add_eos: bool | None
    tokens: tuple[bytes, ...] = field(repr=False, compare=False)

    def piece(self, token_id: int | None) -> str:
        """A token id with its text, for messages: token 2 ('<bos>')."""
        if token_id is None:
            return "no token"
        if not 0 <= token_id < self.vocab_size:
            return f"token {token_id} (outside the vocabulary)"
        return f"token {token_id} ({self.tokens[token_id].decode('utf-8', 'replace')!r})"


@dataclass(frozen=True, slots=True)
class Difference:
    field: str
    target: str
    draft: str
    why: str


@dataclass(frozen=True, slots=True)
class Compatibility:
    target: TokenizerInfo
    draft: TokenizerInfo
    differences: tuple[Difference, ...]
    notes: tuple[Difference, ...] = ()  # mismatches llama.cpp tolerates

    @property
    def compatible(self) -> bool:
        return not self.differences


class _Cursor:
    """Reads GGUF values from a buffer; running past its end raises struct.error."""

    def __init__(self, buf: mmap.mmap, order: str) -> None:
        self.buf, self.order, self.pos = buf, order, 0

    def scalar(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(self.order + fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> bytes:
        size = self.scalar("Q")
        end = self.pos + size
        if end > len(self.buf):
            raise struct.error("a string runs past the end of the file")
        text, self.pos = self.buf[self.pos : end], end
        return text

    def value(self, vtype: GGUFValueType) -> object:
        """A scalar or string; arrays are skipped (None), only the token list is kept."""
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _T.STRING:
            return self.string().decode("utf-8", "replace")
        item_type, count = self.vtype(), self.scalar("Q")
        if item_type in _SCALARS:
            self.pos += struct.calcsize(_SCALARS[item_type]) * count
        else:
            for _ in range(count):
                self.value(item_type)
        return None

    def vtype(self) -> GGUFValueType:
        raw = self.scalar("I")
        try:
            return _T(raw)
        except ValueError:
            raise ValueError(f"is not a usable GGUF file (unknown value type {raw})") from None

    def strings(self) -> list[bytes]:
        item_type, count = self.vtype(), self.scalar("Q")
        if item_type != _T.STRING:
            raise ValueError(f"has a {Keys.Tokenizer.LIST} of {item_type.name}, not strings")
        return [self.string() for _ in range(count)]


def _parse(buf: mmap.mmap) -> tuple[dict[str, object], list[bytes] | None]:
    if struct.unpack_from("<I", buf)[0] != GGUF_MAGIC:
        raise ValueError("is not a GGUF file (bad magic)")
    # A file written on a big-endian machine has its version's bytes swapped (as GGUFReader).
    order = ">" if struct.unpack_from("<I", buf, 4)[0] & 0xFFFF == 0 else "<"
    cur = _Cursor(buf, order)
    cur.pos = 4
    if (version := cur.scalar("I")) not in READER_SUPPORTED_VERSIONS:
        raise ValueError(f"is GGUF version {version}, which cannot be read (2 and 3 can)")
    _tensor_count, kv_count = cur.scalar("Q"), cur.scalar("Q")
    meta: dict[str, object] = {}
    tokens = None
    for _ in range(kv_count):
        key = cur.string().decode("utf-8", "replace")
        vtype = cur.vtype()
        if key == Keys.Tokenizer.LIST and vtype == _T.ARRAY:
            tokens = cur.strings()
        else:
            meta[key] = cur.value(vtype)
    if cur.pos > len(buf):
        raise struct.error("the metadata runs past the end of the file")
    return meta, tokens


def read_tokenizer(path: str | os.PathLike[str]) -> TokenizerInfo:
    """The tokenizer metadata of a GGUF file; RequestError if it is not a usable one."""
    path = Path(path)

    def bad(problem: str) -> RequestError:
        return RequestError(f"{path} {problem}", code=Code.INVALID_ARGUMENT)

    try:
        with path.open("rb") as file:
            if os.fstat(file.fileno()).st_size < 24:  # magic, version, two counts
                raise bad("is not a GGUF file (too short)")
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                meta, tokens = _parse(buf)
    except FileNotFoundError:
        raise bad("does not exist") from None
    except OSError as e:
        raise bad(f"cannot be read: {e.strerror or e}") from None
    except struct.error:
        raise bad("is not a GGUF file (truncated metadata)") from None
    except ValueError as e:  # _parse's own: bad magic, unsupported version, unknown value type
        raise bad(str(e)) from None

    def get(key: str, kind: type[_V]) -> _V | None:
        value = meta.get(key)
        return value if type(value) is kind else None  # not isinstance: a bool is an int

    model = get(Keys.Tokenizer.MODEL, str)
    if not tokens or model is None:
        missing = Keys.Tokenizer.LIST if not tokens else Keys.Tokenizer.MODEL
        raise bad(f"has no {missing}: it carries no tokenizer to compare (is it a model file?)")
    # Hashed as stored in a little-endian file, so a big-endian copy hashes the same.
    framed = b"".join(struct.pack("<Q", len(t)) + t for t in tokens)
    return TokenizerInfo(
        path=path,
        architecture=get(Keys.General.ARCHITECTURE, str),
        model=model,
        pre=get(Keys.Tokenizer.PRE, str),
        vocab_size=len(tokens),
        tokens_sha256=hashlib.sha256(framed).hexdigest(),
        bos_id=get(Keys.Tokenizer.BOS_ID, int),
        eos_id=get(Keys.Tokenizer.EOS_ID, int),
        add_bos=get(Keys.Tokenizer.ADD_BOS, bool),
        add_eos=get(Keys.Tokenizer.ADD_EOS, bool),
        tokens=tuple(tokens),
    )


def _first_difference(t: TokenizerInfo, d: TokenizerInfo, start: int, stop: int) -> int | None:
    return next((i for i in range(start, stop) if t.tokens[i] != d.tokens[i]), None)


def compare(target: TokenizerInfo, draft: TokenizerInfo) -> Compatibility:
    diffs: list[Difference] = []
    notes: list[Difference] = []

    def diff(name: str, t: object, d: object, why: str) -> None:
        diffs.append(Difference(name, str(t), str(d), f"{why}; {_FIX}"))

    def note(name: str, t: object, d: object, why: str) -> None:
        notes.append(Difference(name, str(t), str(d), why))

    if target.model != draft.model:
        why = f"the draft's tokenizer is {draft.model!r} but the target's {target.model!r}"
        diff("model", target.model, draft.model, f"{why}, so their ids mean other text")
    if target.pre != draft.pre:
        why = f"the pre-tokenizers differ ({target.pre!r} and {draft.pre!r})"
        note("pre", target.pre, draft.pre, f"{why}; harmless: the draft sees the target's ids")
    for name, kind, t_on, d_on in (
        ("add_bos", "a BOS", target.add_bos, draft.add_bos),
        ("add_eos", "an EOS", target.add_eos, draft.add_eos),
    ):
        # Only when both files say: llama.cpp's default when absent depends on the tokenizer.
        if None not in (t_on, d_on) and t_on != d_on:
            who, other = ("target", "draft") if t_on else ("draft", "target")
            why = f"the {who} adds {kind} token to every prompt but the {other} does not"
            diff(name, t_on, d_on, why)
    for name, verb, t_id, d_id in (
        ("bos_id", "starts", target.bos_id, draft.bos_id),
        ("eos_id", "ends", target.eos_id, draft.eos_id),
    ):
        if t_id != d_id:
            why = f"the draft {verb} sequences with {draft.piece(d_id)}"
            diff(name, t_id, d_id, f"{why} but the target with {target.piece(t_id)}")

    t_size, d_size = target.vocab_size, draft.vocab_size
    apart, shared = abs(t_size - d_size), min(t_size, d_size)
    sizes = f"the target has {t_size} tokens and the draft {d_size}"
    allowed = f"llama.cpp allows {MAX_SIZE_DIFFERENCE} more or fewer"
    if apart > MAX_SIZE_DIFFERENCE:
        diff("vocab_size", t_size, d_size, f"{sizes} ({allowed})")
    elif target.tokens_sha256 != draft.tokens_sha256:
        first = _first_difference(target, draft, CHECK_START_TOKEN_ID, shared)
        early = _first_difference(target, draft, 0, min(CHECK_START_TOKEN_ID, shared))
        for at, report in ((first, diff), (early, note)):
            if at is not None:
                t_piece, d_piece = target.piece(at), draft.piece(at)
                why = f"the target has {t_piece} where the draft has {d_piece}"
                if report is note:
                    why += f"; llama.cpp does not compare ids below {CHECK_START_TOKEN_ID}"
                else:
                    why += ", so the target would read the draft's proposals as other text"
                report("tokens", t_piece, d_piece, why)
        if apart and first is None:
            note("vocab_size", t_size, d_size, f"{sizes}, but the {shared} shared match; {allowed}")
    return Compatibility(target, draft, tuple(diffs), tuple(notes))


def compare_files(
    target_path: str | os.PathLike[str], draft_path: str | os.PathLike[str]
) -> Compatibility:
    return compare(read_tokenizer(target_path), read_tokenizer(draft_path))


def _summary(role: str, i: TokenizerInfo) -> str:
    adds = ", ".join(f"adds {n}" for n, on in (("bos", i.add_bos), ("eos", i.add_eos)) if on)
    return (
        f"{role}: {i.path} ({i.architecture or 'unknown architecture'}): tokenizer {i.model}, "
        f"pre {i.pre or 'none'}, {i.vocab_size} tokens, BOS {i.piece(i.bos_id)}, "
        f"EOS {i.piece(i.eos_id)}" + (f", {adds}" if adds else "")
    )


def format_compatibility(c: Compatibility) -> str:
    n = len(c.differences)
    lines = ["compatible" if c.compatible else f"INCOMPATIBLE: {n} difference{'s' * (n != 1)}"]
    lines += [f"  {d.field}: {d.why}" for d in c.differences]
    lines += [f"  note ({d.field}): {d.why}" for d in c.notes]
    lines += [_summary("target", c.target), _summary("draft", c.draft)]
    return "\n".join(lines)


def _info_json(i: TokenizerInfo) -> dict[str, Any]:
    names = [f.name for f in fields(i) if f.name != "tokens"]  # asdict would copy every token
    return {name: getattr(i, name) for name in names} | {"path": str(i.path)}


def compatibility_json(c: Compatibility) -> dict[str, Any]:
    return {
        "compatible": c.compatible,
        "differences": [asdict(d) for d in c.differences],
        "notes": [asdict(d) for d in c.notes],
        "target": _info_json(c.target),
        "draft": _info_json(c.draft),
    }
