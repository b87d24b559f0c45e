"""scripts/tune_readout.py: its candidates are the shipped readout-attention kernels at IMDB's width with other
tiles, and without a GPU it says so in one line."""

import importlib.util
from pathlib import Path

import pytest
import torch

_spec = importlib.util.spec_from_file_location("tune_readout", Path(__file__).parents[1] / "scripts" / "tune_readout.py")
tune = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tune)


@pytest.mark.parametrize("direction", ["fwd", "bwd"])
def test_a_candidate_is_the_shipped_spec_with_its_tiles(direction):
    ra = importlib.import_module("kernels.readout_attention")
    tiles = (64, 4)
    spec = tune.spec_for(direction, tiles)
    assert spec.fn is (ra._readout_fwd if direction == "fwd" else ra._readout_bwd)
    assert spec.constexprs["BLOCK_C"] == tune.WIDTH and (spec.constexprs["BLOCK_L"], spec.num_warps) == tiles
    assert ra._TILES[direction][tune.WIDTH] != tiles  # the shipped table is not touched


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's answer")
def test_without_a_gpu_it_says_so_and_exits_0(capsys):
    assert tune.main([]) == 0
    assert capsys.readouterr().out.strip() == "tune_readout: no CUDA device; nothing to time"
