"""Replay backends for the demo: OpenAI-compatible servers that answer with the recorded
answers of real models (AlpacaEval) and a judge that returns the recorded judgments.

`dataset` holds the data and the token/latency estimates, `server` the ASGI app and its
entry point (`python -m gateway.replay`), `process` a subprocess helper.
"""

from gateway.replay.dataset import JUDGE_MODEL, REPLAY_MODELS, Answer, ReplayModel, load_all
from gateway.replay.process import ReplayServer

__all__ = ["JUDGE_MODEL", "REPLAY_MODELS", "Answer", "ReplayModel", "ReplayServer", "load_all"]
