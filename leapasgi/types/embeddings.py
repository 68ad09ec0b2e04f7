"""The embeddings wire format: requests, responses, base64 vectors and the mock's vectors.

A base64 embedding is the vector's float32 values, little-endian, base64-encoded: what the
openai SDK decodes, and what it asks for unless told otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import sys
from array import array
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, cast

from pydantic import Discriminator, Field, Strict, Tag

from ._base import LIST_TAG, STR_TAG, TAG_MARK, CoreWireModel, WireModel
from .parsing import parse_wire

__all__ = [
    "MAX_EMBEDDING_INPUTS",
    "Embedding",
    "EmbeddingInput",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "EmbeddingUsage",
    "decode_base64_embedding",
    "deterministic_embedding",
    "encode_base64_embedding",
    "parse_embedding_request",
]

MAX_EMBEDDING_INPUTS = 2048

_TOKENS_TAG = f"tokens{TAG_MARK}"
_TOKEN_ARRAYS_TAG = f"token_arrays{TAG_MARK}"
_BIG_ENDIAN = sys.byteorder == "big"

_Text = Annotated[str, Strict(), Field(min_length=1)]
_Tokens = Annotated[list[Annotated[int, Strict()]], Field(min_length=1)]


def _pick_input(value: Any) -> str | None:
    if isinstance(value, str):
        return STR_TAG
    if not isinstance(value, list):
        return None
    # An empty list goes to the strings branch, which refuses it as too short.
    first = value[0] if value else ""
    if isinstance(first, list):
        return _TOKEN_ARRAYS_TAG
    if isinstance(first, int | float) and not isinstance(first, bool):
        return _TOKENS_TAG
    return LIST_TAG


EmbeddingInput = Annotated[
    Annotated[_Text, Tag(STR_TAG)]
    | Annotated[list[_Text], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS), Tag(LIST_TAG)]
    # One token array is one input: its length is the model's token limit, not ours to check.
    | Annotated[_Tokens, Tag(_TOKENS_TAG)]
    | Annotated[
        list[_Tokens],
        Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS),
        Tag(_TOKEN_ARRAYS_TAG),
    ],
    Discriminator(
        _pick_input,
        custom_error_type="embedding_input_type",
        custom_error_message=(
            "Input should be a string, an array of strings, an array of tokens "
            "or an array of token arrays"
        ),
    ),
]


class EmbeddingRequest(WireModel):
    """A ``POST /v1/embeddings`` body. Fields it does not model are kept and forwarded."""

    model: str = Field(min_length=1)
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    def texts(self) -> list[str | list[int]]:
        """The inputs as a list, one per embedding to produce, in order."""
        value = self.input
        # Validation left no empty arrays, and typed each by its first item.
        if isinstance(value, str) or isinstance(value[0], int):
            return [value]
        return cast("list[str | list[int]]", list(value))


class Embedding(CoreWireModel):
    """One embedding: a vector of floats, or its base64 form when that was asked for."""

    always_sent: ClassVar[frozenset[str]] = frozenset({"object", "index", "embedding"})

    object: str = "embedding"
    index: int = 0
    embedding: list[float] | str

    def as_floats(self) -> list[float]:
        """The vector as floats, decoded when it is base64."""
        vector = self.embedding
        return decode_base64_embedding(vector) if isinstance(vector, str) else vector


class EmbeddingUsage(CoreWireModel):
    """Token counts of one embeddings request."""

    always_sent: ClassVar[frozenset[str]] = frozenset({"prompt_tokens", "total_tokens"})

    prompt_tokens: int = 0
    total_tokens: int = 0


class EmbeddingResponse(CoreWireModel):
    """A list of embeddings, as ``POST /v1/embeddings`` answers."""

    always_sent: ClassVar[frozenset[str]] = frozenset({"object", "data", "model", "usage"})

    object: str = "list"
    data: list[Embedding] = Field(default_factory=list)
    model: str = ""
    usage: EmbeddingUsage = Field(default_factory=EmbeddingUsage)

    def encoded(self, encoding_format: str | None) -> EmbeddingResponse:
        """This response with its vectors in ``encoding_format``: base64 strings for
        ``"base64"``, floats otherwise (the OpenAI default); self when nothing changes."""
        want_base64 = encoding_format == "base64"
        if all(isinstance(item.embedding, str) == want_base64 for item in self.data):
            return self
        data = [
            item
            if isinstance(item.embedding, str) == want_base64
            else item.model_copy(update={"embedding": _convert(item.embedding)})
            for item in self.data
        ]
        return self.model_copy(update={"data": data})


def _convert(vector: list[float] | str) -> list[float] | str:
    if isinstance(vector, str):
        return decode_base64_embedding(vector)
    return encode_base64_embedding(vector)


def parse_embedding_request(body: bytes | str | Mapping[str, Any]) -> EmbeddingRequest:
    """Validate an embeddings body; raise InvalidRequestError naming the field at fault, also
    for fields that would pick the upstream or its key."""
    return parse_wire(EmbeddingRequest, body)


def encode_base64_embedding(vector: list[float]) -> str:
    """``vector`` as base64 of its little-endian float32 values."""
    values = array("f", vector)
    if _BIG_ENDIAN:
        values.byteswap()
    return base64.b64encode(values.tobytes()).decode("ascii")


def decode_base64_embedding(value: str) -> list[float]:
    """The vector a base64 embedding holds; ValueError when it is not one."""
    raw = base64.b64decode(value, validate=True)
    if len(raw) % 4:
        raise ValueError(f"a base64 embedding holds whole float32 values, not {len(raw)} bytes")
    values = array("f", raw)
    if _BIG_ENDIAN:
        values.byteswap()
    return values.tolist()


def deterministic_embedding(text: str | list[int], dimensions: int) -> list[float]:
    """A unit vector derived from a hash of ``text``: the same on every run and machine.

    Fewer dimensions give the longer vector cut short and renormalized, as the
    text-embedding-3 models do; values are float32, so base64 round-trips them exactly.
    """
    if dimensions < 1:
        raise ValueError(f"dimensions must be at least 1, not {dimensions}")
    if isinstance(text, str):
        seed = b"text\0" + text.encode("utf-8", "surrogatepass")
    else:
        seed = b"tokens\0" + ",".join(map(str, text)).encode("ascii")
    # An extendable-output hash, so that a prefix of the stream is the shorter vector's.
    stream = hashlib.shake_256(seed).digest(4 * dimensions)
    values = struct.unpack(f"<{dimensions}i", stream)
    norm = math.hypot(*values)
    if norm == 0:
        return [1.0] + [0.0] * (dimensions - 1)
    return array("f", [value / norm for value in values]).tolist()
