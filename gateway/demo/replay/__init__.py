"""Replay backends for the demo: OpenAI-compatible servers that answer with the recorded
answers of real models (AlpacaEval) and a judge that returns the recorded judgments.

`dataset` holds the data and the token/latency estimates, `server` the ASGI app and its
entry point (`python -m gateway.demo.replay`), `process` a subprocess helper.
"""

from gateway.demo.replay.dataset import JUDGE_MODEL, REPLAY_MODELS, Answer, ReplayModel, load_all
from gateway.demo.replay.process import ReplayServer

__all__ = ["JUDGE_MODEL", "REPLAY_MODELS", "Answer", "ReplayModel", "ReplayServer", "load_all"]
