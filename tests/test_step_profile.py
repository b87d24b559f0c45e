"""scripts/step_profile.py: its CPU rehearsal runs, and its table-projection switch reaches any device."""

import importlib.util
from pathlib import Path

import torch

_spec = importlib.util.spec_from_file_location("step_profile",
                                               Path(__file__).parents[1] / "scripts" / "step_profile.py")
step_profile = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(step_profile)


def test_the_cpu_rehearsal_prints_a_step_time_and_the_top_ops(capsys):
    assert step_profile.main(["--dataset", "modular", "--steps", "2", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "modular, eager:" in out and "per step (torch, graph off, K 1)" in out
    assert "aten::" in out  # the profiler's table of CPU ops
    assert "failed" not in out


def test_table_projection_is_switched_on_for_any_device_and_back_off():
    from grokfast_train.models.embedding_sum import EmbeddingSum

    ids, tok = torch.zeros(512, 6, dtype=torch.long, device="meta"), torch.zeros(117, 128, device="meta")
    assert not EmbeddingSum.worth_it(ids, tok)  # off where the trainer keeps it off (not the CPU)
    with step_profile.table_projection():
        assert EmbeddingSum.worth_it(ids, tok)
        assert not EmbeddingSum.worth_it(ids[:100], tok)  # still only where there are fewer pairs than rows
    assert not EmbeddingSum.worth_it(ids, tok)


def test_the_cpu_rehearsal_profiles_a_pack(capsys):
    assert step_profile.main(["--dataset", "modular", "--steps", "2", "--top", "3", "--pack", "3"]) == 0
    out = capsys.readouterr().out
    assert "modular, pack of 3, eager:" in out and ", 3 runs: " in out and "per run-step (torch, graph off, K 1)" in out
    assert "aten::" in out
    assert "failed" not in out
