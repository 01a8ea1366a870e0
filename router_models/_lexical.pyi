# Types of the C module router_models/_lexical.c (built at install; optional).
from collections.abc import Sequence

from numpy import ndarray

def hash_counts(text: bytes, bits: int, /) -> tuple[bytes, bytes]: ...
def structure(
    raw: bytes,
    sample: bytes,
    code_markers: Sequence[bytes],
    math_markers: Sequence[bytes],
    len_text: int,
    len_last_user: int,
    n_user: int,
    n_assistant: int,
    len_system: int,
    n_tools: int,
    n_tool_msgs: int,
    n_images: int,
    /,
) -> tuple[float, ...]: ...
def route(
    raw: bytes,
    bits: int,
    code_markers: Sequence[bytes],
    math_markers: Sequence[bytes],
    len_text: int,
    len_last_user: int,
    n_user: int,
    n_assistant: int,
    len_system: int,
    n_tools: int,
    n_tool_msgs: int,
    n_images: int,
    projection: ndarray,
    abilities: ndarray,
    biases: ndarray,
    /,
) -> tuple[list[float], list[float]]: ...
def conversation(
    messages: object, tools: object, /
) -> tuple[bytes, tuple[int, int, int, int, int, int, int, int]] | None: ...
