# Types of the C module router_models/_lexical.c (built at install; optional).
from collections.abc import Sequence

from numpy import ndarray

def hash_counts(text: bytes, bits: int, /) -> tuple[bytes, bytes]: ...
def project(
    text: bytes,
    bits: int,
    struct: Sequence[float],
    projection: ndarray,
    abilities: ndarray,
    biases: ndarray,
    /,
) -> tuple[bytearray, list[float]]: ...
def text_counts(
    raw: bytes, sample: bytes, code_markers: Sequence[bytes], math_markers: Sequence[bytes], /
) -> tuple[int, int, int, int, int, int]: ...
