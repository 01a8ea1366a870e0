"""The router's C code (router_models/_lexical.c) under AddressSanitizer and
UndefinedBehaviorSanitizer: built into a separate copy of the extension with
``-fsanitize=address,undefined -fno-sanitize-recover=all``, loaded by a python run with the
sanitizer runtimes preloaded, and fed generated conversations (tests/sanitize_lexical.py).
An out-of-bounds read or write, a use after free, a signed overflow, a misaligned load or a
bad shift aborts that run with the sanitizer's report, which fails this test.

Budget: 400 conversations (a few of 70,000 characters), about 20-40 s on a loaded 2-core
machine, most of it the build. gcc 12 ships libasan and libubsan with the compiler."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONVERSATIONS = 400


def _runtime(cc: str, lib: str) -> str:
    out = subprocess.run([cc, f"-print-file-name={lib}"], capture_output=True, text=True)
    path = out.stdout.strip()
    if not os.path.isabs(path) or not os.path.exists(path):
        pytest.fail(f"{cc} has no {lib}: install gcc's sanitizer runtimes (libasan, libubsan)")
    return path


SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]


def _build(tmp: Path, cc: str, src: Path = REPO / "router_models/_lexical.c") -> Path:
    so = tmp / ("_lexical" + str(sysconfig.get_config_var("EXT_SUFFIX")))
    cmd = [
        cc,
        "-shared",
        "-fPIC",
        "-O1",
        "-g",
        "-fno-omit-frame-pointer",
        *SANITIZE,
        f"-I{sysconfig.get_paths()['include']}",
        str(src),
        "-o",
        str(so),
        "-lm",
    ]
    built = subprocess.run(cmd, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    return so


def _run(so: Path, cc: str, n: int, seed: int) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["LD_PRELOAD"] = f"{_runtime(cc, 'libasan.so')}:{_runtime(cc, 'libubsan.so')}"
    # Python itself leaks by design at exit: leak reports would be noise, not the C code's
    env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=1:allocator_may_return_null=1"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONMALLOC"] = "malloc"  # every allocation through ASan's allocator
    return subprocess.run(
        [sys.executable, str(REPO / "tests/sanitize_lexical.py"), str(so), str(n), str(seed)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=900,
    )


@pytest.fixture(scope="module")
def cc() -> str:
    found = shutil.which("gcc") or shutil.which("cc")
    if found is None:
        pytest.fail("no C compiler: the sanitizer build needs gcc (as the extension does)")
    return found


def test_lexical_c_code_is_clean_under_asan_and_ubsan(tmp_path: Path, cc: str) -> None:
    so = _build(tmp_path, cc)
    run = _run(so, cc, CONVERSATIONS, seed=22)
    report = run.stderr[-6000:]
    assert "AddressSanitizer" not in run.stderr and "runtime error" not in run.stderr, report
    assert run.returncode == 0, report
    assert run.stdout.split() == ["ok", str(CONVERSATIONS)], run.stdout + report


def test_the_harness_catches_an_out_of_bounds_write(tmp_path: Path, cc: str) -> None:
    """The harness is not blind: the same build with one byte written past a heap buffer
    in route() (the call every scored conversation makes) is caught and reported."""
    src = (REPO / "router_models/_lexical.c").read_text()
    anchor = "static PyObject *route(PyObject *Py_UNUSED(self), PyObject *args) {"
    assert anchor in src
    broken = src.replace(
        anchor,
        anchor + "\n    { volatile char *p = malloc(8); p[8] = 1; free((void *)p); }",
    )
    bad = tmp_path / "router_models"
    bad.mkdir()
    (bad / "_lexical.c").write_text(broken)
    so = _build(tmp_path, cc, bad / "_lexical.c")
    run = _run(so, cc, 3, seed=1)
    assert run.returncode != 0
    # UBSan's object-size check or ASan's heap-buffer-overflow, whichever sees it first,
    # pointing at the planted line
    assert "heap-buffer-overflow" in run.stderr or "runtime error" in run.stderr, run.stderr
    assert "_lexical.c:" in run.stderr and "ok" not in run.stdout.split()
