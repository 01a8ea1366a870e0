"""The router's C extension; everything else is in pyproject.toml.

The lexical featurizer's hashing in C (router_models/_lexical.c): a routing decision on a
short prompt drops from ~150 us to ~25 us of CPU (issue 7). Optional: without a compiler the
install still succeeds and router_models/lexical.py falls back to its numpy path (same
features, slower); `tollgate serve` logs which one it runs. Declared here rather than under
`[tool.setuptools.ext-modules]`, which setuptools still calls experimental and warns about on
every build.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "router_models._lexical",
            sources=["router_models/_lexical.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
