"""The router's exceptions: every failure a user can act on has one type and a clear message."""

from __future__ import annotations


class ArtifactError(Exception):
    """A router artifact could not be loaded or saved; names the file and what is wrong."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class BenchError(Exception):
    """A benchmark or prompts file is malformed; names the file, the line and the fix."""
