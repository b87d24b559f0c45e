"""scripts/tune_matmul.py: its candidates are the shipped forward kernel with other tiles, and without a GPU
it says so in one line."""

import importlib.util
from pathlib import Path

import pytest
import torch

_spec = importlib.util.spec_from_file_location("tune_matmul", Path(__file__).parents[1] / "scripts" / "tune_matmul.py")
tune = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tune)


@pytest.mark.parametrize("mode", ["tf32x3", "tf32", "16bit"])
def test_a_candidate_is_the_shipped_forward_spec_with_its_tiles(mode):
    mm = importlib.import_module("kernels.matmul")
    tiles = (128, 32, 16, 8, 3)
    spec = tune.spec_for(mode, tiles)
    assert spec.fn is mm._matmul_kernel and spec.constexprs["HAS_BIAS"] and not spec.constexprs["ACT_OUT"]
    assert spec.constexprs["DOT_PRECISION"] == ("tf32" if mode == "16bit" else mode)
    c = spec.constexprs
    assert (c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"], spec.num_warps, spec.num_stages) == tiles
    assert mm._TILES[mode] != tiles  # the shipped table is not touched


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's answer")
def test_without_a_gpu_it_says_so_and_exits_0(capsys):
    assert tune.main([]) == 0
    assert capsys.readouterr().out.strip() == "tune_matmul: no CUDA device; nothing to time"
