"""Programmatic dependent launch (kernels._pdl): every launch opts in, and the switch is off by default.

A PDL launch lets a kernel start before the one ahead of it has finished; what keeps that safe is the
kernel's ``enter(PDL)``, a wait before any memory access, which ``kernels._compile`` checks in each
kernel's PDL build (tests/kernels/test_compile.py). What the CPU can check besides: that every launch
site in the package passes ``pdl``'s keywords (a launch without them would never use PDL; a kernel
with PDL launched without its wait cannot happen, since both come from one call), that each kernel's
first statement is ``enter(PDL)``, and that the switch gives nothing off a GPU. Whether PDL changes a
step's numbers (it must not) is tests/gpu/test_pdl_cuda.py's question.
"""

import ast
import pathlib

import pytest
import torch

import kernels
from kernels import _pdl

SOURCES = sorted(pathlib.Path(kernels.__file__).parent.glob("*.py"))


def _launches(tree):
    """Every ``kernel[grid](...)`` call: a call of a subscript."""
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript)]


def _jit_functions(tree):
    def jit(d):
        return ast.unparse(d.func if isinstance(d, ast.Call) else d) == "triton.jit"
    return [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and any(map(jit, node.decorator_list))]


# Launched once per tensor at a model's start, in no step: no chain of kernels to overlap (and Triton 3.6
# sets up its stack frame before any first statement; see kernels/_compile.py's pdl_specs).
NO_PDL = {("init.py", "_init_kernel")}


def test_every_launch_passes_the_pdl_keywords():
    found = 0
    for path in SOURCES:
        for call in _launches(ast.parse(path.read_text())):
            if (path.name, ast.unparse(call.func.value)) in NO_PDL:
                continue
            found += 1
            spread = [k.value for k in call.keywords if k.arg is None]
            assert any(isinstance(v, ast.Call) and ast.unparse(v.func) == "pdl" for v in spread), \
                f"{path.name}:{call.lineno} launches {ast.unparse(call.func)} without **pdl(...)"
    assert found >= 13  # every kernel module's launches were seen


def test_every_kernel_with_pdl_waits_first():
    kernels_with_pdl = 0
    for path in SOURCES:
        for fn in _jit_functions(ast.parse(path.read_text())):
            params = [a.arg for a in fn.args.args]
            if "PDL" not in params or (path.name, fn.name) == ("_pdl.py", "enter"):
                continue
            kernels_with_pdl += 1
            assert params[-1] == "PDL" and ast.unparse(fn.args.defaults[-1]) == "False", fn.name
            body = [s for s in fn.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
            assert ast.unparse(body[0]) == "enter(PDL)", f"{path.name}: {fn.name} starts with {ast.unparse(body[0])}"
    assert kernels_with_pdl >= 14


def test_the_switch_gives_nothing_off_a_gpu():
    x = torch.zeros(3)
    previous = _pdl.set_pdl(True)
    try:
        assert _pdl.pdl_enabled() and _pdl.pdl(x) == {}
    finally:
        _pdl.set_pdl(previous)
    assert _pdl.set_pdl(previous) is previous


@pytest.mark.parametrize("value, on", [("1", True), ("0", False), (None, False)])
def test_the_environment_sets_the_default(value, on):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "GROKFAST_PDL"}
    if value is not None:
        env["GROKFAST_PDL"] = value
    out = subprocess.run([sys.executable, "-c", "from kernels import _pdl; print(_pdl.pdl_enabled())"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(on)
