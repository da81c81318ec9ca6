"""The packed layout of one quantised linear layer (docs/FORMAT.md, version 1): its fields,
their limits, the block grid, the packed tensor shapes and sizes. The one place in Python
where any of these is computed; plugins/bqq_matmul/bqq_layout.h is the one place in C++, and
tests/test_contract.py pins the two together."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import FormatError

FORMAT_NAME = "bqq"
FORMAT_VERSION = 1
# Field limits (docs/FORMAT.md section 1).
MAX_FEATURES = 2**31 - 1
MAX_GROUP = 4096
MAX_RANK = 4096
MAX_STACKS = 16
# Most elements one packed tensor may hold: its byte count and every offset into it then fit
# int64 with room to spare.
MAX_TENSOR_ELEMENTS = 2**59
WORD_BITS = 32
# Bits of one block's four fp16 scales (a, b, c, d).
SCALE_BITS = 4 * 16


def words_per_row(rank: int) -> int:
    """L: 32-bit words that hold one packed row of `rank` bits."""
    return -(-rank // WORD_BITS)


@dataclass(frozen=True)
class Layout:
    """Fields of docs/FORMAT.md section 1. Construct with Layout.checked(...) for untrusted
    values; the plain constructor trusts its caller."""

    out_features: int  # M
    in_features: int  # K
    group_rows: int  # g_r
    group_cols: int  # g_c
    rank: int  # l
    stacks: int  # p

    # Field keys as stored in the .bqq.safetensors metadata, with their limits.
    KEYS = ("M", "K", "g_r", "g_c", "l", "p")
    LIMITS = {"M": MAX_FEATURES, "K": MAX_FEATURES, "g_r": MAX_GROUP, "g_c": MAX_GROUP,
              "l": MAX_RANK, "p": MAX_STACKS}

    @classmethod
    def checked(cls, fields: dict, name: str = "layer") -> "Layout":
        """A Layout from {"M": .., "K": .., "g_r": .., "g_c": .., "l": .., "p": ..}; raises
        FormatError naming the field that is missing, not an integer or out of range."""
        if not isinstance(fields, dict):
            raise FormatError(f"{name}: layout fields are not an object")
        for key in cls.KEYS:
            value = fields.get(key)
            if type(value) is not int:  # bool, float and str are not fields
                raise FormatError(f"{name}: field {key} must be an integer, got {value!r}")
            if not 1 <= value <= cls.LIMITS[key]:
                raise FormatError(f"{name}: field {key}={value} outside [1, {cls.LIMITS[key]}]")
        layout = cls(*(fields[key] for key in cls.KEYS))
        if max(math.prod(shape) for shape in layout.shapes().values()) > MAX_TENSOR_ELEMENTS:
            raise FormatError(f"{name}: layout {layout.fields} gives a packed tensor of more than "
                              "2^59 elements")
        return layout

    @classmethod
    def for_weight(cls, out_features: int, in_features: int, group_shape: tuple[int, int],
                   rank: int, stacks: int) -> "Layout":
        return cls(out_features, in_features, group_shape[0], group_shape[1], rank, stacks)

    @property
    def fields(self) -> dict[str, int]:
        return dict(zip(self.KEYS, (self.out_features, self.in_features, self.group_rows,
                                    self.group_cols, self.rank, self.stacks)))

    @property
    def grid(self) -> tuple[int, int]:
        """(R, C): block rows and block columns."""
        return (math.ceil(self.out_features / self.group_rows),
                math.ceil(self.in_features / self.group_cols))

    @property
    def blocks(self) -> int:
        rows, cols = self.grid
        return rows * cols

    @property
    def words_per_row(self) -> int:
        return words_per_row(self.rank)

    @property
    def padded_shape(self) -> tuple[int, int]:
        """[R*g_r, C*g_c]: W padded with zeros to whole blocks."""
        rows, cols = self.grid
        return (rows * self.group_rows, cols * self.group_cols)

    @property
    def padded_weights(self) -> int:
        rows, cols = self.padded_shape
        return rows * cols

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the packed tensors (docs/FORMAT.md section 2)."""
        rows, cols = self.grid
        words, p = self.words_per_row, self.stacks
        return {"y_bits": (p, rows, cols, self.group_rows, words),
                "z_bits": (p, rows, cols, self.group_cols, words),
                "scales": (p, rows, cols, 4),
                "bias": (self.out_features,)}

    @property
    def packed_bits(self) -> int:
        """Bits of y_bits, z_bits and scales (bias excluded)."""
        block = WORD_BITS * self.words_per_row * (self.group_rows + self.group_cols) + SCALE_BITS
        return self.stacks * self.blocks * block

    @property
    def bits_per_weight(self) -> float:
        return self.packed_bits / (self.out_features * self.in_features)
