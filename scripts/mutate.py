#!/usr/bin/env python
"""Mutation check: apply representative bugs one at a time to a copy of the repository and see
whether the test suite catches each.

    python scripts/mutate.py                 # every mutant, each against the test files it names
    python scripts/mutate.py --full          # every mutant against the whole suite (slow)
    python scripts/mutate.py --only M3 K1    # some mutants
    python scripts/mutate.py --list          # the mutants, and whether each pattern is still in the code
    python scripts/mutate.py --markdown out.md

The copy is ``git archive HEAD`` (what a clone of main holds) in a temporary directory; the
working tree is never touched. ``--worktree`` copies the working tree instead (tracked files plus
untracked, non-ignored ones: uncommitted work included), and ``--overlay PATH ...`` lays
chosen working-tree files over the HEAD copy (e.g. a test file being written).

Each mutant is (id, area, file, [(exact old text, new text), ...], description, tests). The old
text must occur exactly once in the file: a mutant whose pattern is missing or ambiguous is
reported as PATTERN NOT FOUND / AMBIGUOUS -- never as killed -- because the code it was written
against has changed; rewrite it against the current code. Results:

    killed     the named tests (or the whole suite with --full) fail on the mutant
    survived   they pass: the suite does not see this bug
    timeout    the tests ran past --timeout (counted as killed, shown separately)

Before any mutant the unmutated copy's tests must pass (baseline); otherwise every mutant would
look killed. Exit code: 0 all killed, 1 some survived, 2 a pattern is stale or the baseline failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import io
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Mutant:
    id: str
    area: str
    file: str
    edits: tuple[tuple[str, str], ...]  # (exact old text, new text), each old text unique in the file
    description: str
    tests: tuple[str, ...]  # test files (or node ids) that should catch it


def M(id, area, file, edits, description, tests):
    if isinstance(edits[0], str):  # one (old, new) pair
        edits = (edits,)
    return Mutant(id, area, file, tuple(tuple(e) for e in edits), description, tuple(tests))


T_ATT = "tests/kernels/test_attention.py"
T_ADAMW = "tests/kernels/test_adamw.py"
T_LN = "tests/kernels/test_layer_norm.py"
T_EMB = "tests/kernels/test_fused_embedding.py"
T_CE = "tests/kernels/test_cross_entropy.py"
T_DRAW = "tests/kernels/test_batch_draw.py"
T_WG = "tests/kernels/test_weight_grads.py"
T_DEF = "tests/trainer/test_deferred.py"
T_MM = "tests/kernels/test_matmul.py"
T_TEMB = "tests/kernels/test_token_embedding.py"
T_INIT = "tests/kernels/test_init.py"
T_INITREF = "tests/kernels/test_init_reference.py"
T_MODELS = "tests/trainer/test_models.py"
T_RA = "tests/kernels/test_readout_attention.py"
T_EMBSUM = "tests/trainer/test_embedding_sum.py"
T_METRICS = "tests/trainer/test_metrics.py"
T_PLUMB = "tests/trainer/test_plumbing.py"
T_RESUME = "tests/trainer/test_resume_mid_interval.py"
T_RUN = "tests/trainer/test_run.py"
T_SAMPLER = "tests/trainer/test_sampler.py"
T_CONFIG = "tests/trainer/test_config.py"
T_PRESETS = "tests/trainer/test_presets.py"
T_DATA = "tests/trainer/test_data.py"
T_ANALYSIS = "tests/trainer/test_analysis.py"
T_REPORT = "tests/trainer/test_report.py"

MUTANTS: list[Mutant] = [
    # -- kernels ---------------------------------------------------------------------------------
    M("K1", "kernels", "kernels/fused_attention.py",
      ("sm_scale * _LOG2E,\n", "sm_scale * _LOG2E * 1.01,\n"),  # the forward launch (the backward's has no newline)
      "attention forward: scores scaled 1 % too much", [T_ATT]),
    M("K2", "kernels", "kernels/fused_attention.py",
      ("shift = (Lk - Lq) if causal else Lk", "shift = (Lk - Lq + 1) if causal else Lk"),
      "attention: causal mask shifted by one key", [T_ATT]),
    M("K3", "kernels", "kernels/adamw.py",
      ("step_size = (lr / (1.0 - pw1)).to(tl.float32)", "step_size = lr.to(tl.float32)"),
      "FusedAdamW: first-moment bias correction dropped", [T_ADAMW]),
    M("K4", "kernels", "kernels/adamw.py",
      ("h = tl.where(t == 1, g, h * ga.to(tl.float32) + g * (1.0 - ga).to(tl.float32))",
       "h = tl.where(t == 1, g, h * (1.0 - ga).to(tl.float32) + g * ga.to(tl.float32))"),
      "FusedAdamW: Grokfast EMA weights swapped (alpha on g, 1-alpha on h)", [T_ADAMW]),
    M("K5", "kernels", "kernels/adamw.py",
      ("decay = (1.0 - lr * wd).to(tl.float32)", "decay = (1.0 - wd).to(tl.float32)"),
      "FusedAdamW: weight decay not scaled by lr", [T_ADAMW]),
    M("K6", "kernels", "kernels/fused_layer_norm.py",
      ("rstd = tl.div_rn(1.0, tl.sqrt_rn(var + eps))", "rstd = tl.div_rn(1.0, tl.sqrt_rn(var) + eps)"),
      "LayerNorm kernel: eps outside the square root", [T_LN]),
    M("K7", "kernels", "kernels/fused_embedding.py",
      ("rstd = tl.div_rn(1.0, tl.sqrt_rn(var + eps))", "rstd = tl.div_rn(1.0, tl.sqrt_rn(var) + eps)"),
      "fused embedding+LayerNorm kernel: eps outside the square root", [T_EMB]),
    M("K8", "kernels", "kernels/init.py",
      ("w.copy_(torch.randn(w.shape, generator=gen, dtype=torch.float32).mul_(std).to(w))",
       "w.copy_(torch.randn(w.shape, generator=gen, dtype=torch.float32).mul_(2 * std).to(w))"),
      "reference init (every real CPU run): std doubled", [T_INIT, T_INITREF]),
    M("K9", "kernels", "kernels/init.py",
      ("w.copy_(torch.randn(w.shape, generator=gen, dtype=torch.float32).mul_(std).to(w))",
       "w.copy_(torch.randn(w.shape, generator=gen, dtype=torch.float32).mul_(std * 1.01).to(w))"),
      "reference init: std 1 % too large", [T_INIT, T_INITREF]),
    M("K10", "kernels", "kernels/init.py",
      ("        if id(w) in done:\n            return\n", ""),
      "reference init: a tied weight drawn twice", [T_INIT, T_INITREF]),
    M("K11", "kernels", "kernels/init.py",
      ("                m.weight.fill_(1.0)\n", "                m.weight.fill_(1.0 / alpha)\n"),
      "reference init: LayerNorm weight 1 instead of alpha after the rescale", [T_INIT, T_INITREF]),
    M("K12", "kernels", "kernels/init.py",
      ("val = tl.randn(seed, (rng + idx).to(tl.int32)) * std * alpha",
       "val = tl.randn(seed, (rng + idx).to(tl.int32)) * std * alpha * 1.02"),
      "Triton init: normal weights 2 % too wide", [T_INIT]),
    M("K13", "kernels", "kernels/init.py",
      ("val = tl.full([BLOCK], 1.0, tl.float32) * alpha", "val = tl.full([BLOCK], 1.0, tl.float32)"),
      "Triton init: LayerNorm weight not x alpha", [T_INIT]),
    M("K14", "kernels", "kernels/init.py",
      ("val = tl.randn(seed, (rng + idx).to(tl.int32)) * std * alpha",
       "val = tl.randn(seed, (rng + idx).to(tl.int32)) * std * alpha * alpha"),
      "Triton init: normal weights x alpha twice", [T_INIT]),
    M("K15", "kernels", "kernels/init.py",
      ("torch.empty_like(t, memory_format=torch.contiguous_format)", "torch.empty_like(t)"),
      "Triton init: a non-contiguous parameter written in memory order (elements permuted)", [T_INIT]),
    M("K16", "kernels", "kernels/adamw.py",
      ("        if set_to_none:\n            for p, _, _, _ in self._bindings:\n                p.grad = None\n            return\n", ""),
      "FusedAdamW: zero_grad() keeps the views, so backward adds into them (a memset + a kernel per parameter)",
      [T_ADAMW]),
    M("K17", "kernels", "kernels/adamw.py",
      ("        if absent:\n            torch._foreach_zero_(absent)\n", ""),
      "FusedAdamW: a parameter left without a gradient steps on its last one", [T_ADAMW]),
    M("K18", "kernels", "kernels/fused_cross_entropy.py",
      ("d = tl.where(live[:, None], w[:, None] * (e / s[:, None] - is_t.to(tl.float32)), 0.0)",
       "d = w[:, None] * (e / s[:, None] - is_t.to(tl.float32))"),
      "cross_entropy: a row out (weight 0) with non-finite logits puts 0 x NaN into the gradient", [T_CE]),
    M("K19", "kernels", "kernels/fused_cross_entropy.py",
      ("sums = SUMS + tl.maximum(quad - 1, 0)", "sums = SUMS + tl.maximum(3 - quad, 0)"),
      "cross_entropy: the sums row written in reverse (rows, correct, loss)", [T_CE]),
    M("K20", "kernels", "kernels/fused_cross_entropy.py",
      ("return (dlogits * g).to(ctx.dtype), None, None, None", "return dlogits.to(ctx.dtype), None, None, None"),
      "cross_entropy: the backward ignores the incoming gradient", [T_CE]),
    M("K21", "kernels", "kernels/fused_cross_entropy.py",
      ("for t0 in range(0, tiles, BLOCK_T):", "for t0 in range(0, 1, BLOCK_T):"),
      "cross_entropy: the reduction reads only the first 128 programs' partials", [T_CE]),
    M("K22", "kernels", "kernels/fused_cross_entropy.py",
      ("t = tl.load(TARGETS + run * t_run_stride + rows", "t = tl.load(TARGETS + rows"),
      "cross_entropy: every run of a pack reads the first run's targets", [T_CE]),
    M("K23", "kernels", "kernels/fused_layer_norm.py",
      ("    return (sums[0], sums[1]) if packed else (sums[0, 0], sums[1, 0])",
       "    return (sums[1], sums[0]) if packed else (sums[1, 0], sums[0, 0])"),
      "LayerNorm backward: dweight and dbias read from each other's half of the shared partials", [T_LN]),
    M("K24", "kernels", "kernels/fused_embedding.py",
      ("    dw, db, dt = parts.sum(2)  # one reduction for the three", "    db, dw, dt = parts.sum(2)"),
      "fused embedding backward: the LayerNorm's dweight and dbias swapped", [T_EMB]),
    M("K25", "kernels", "kernels/batch_draw.py",
      ("if ticket == R * blocks - 1:", "if ticket == 0:"),
      "batch draw: the first program to finish advances the offsets, before the others have read them", [T_DRAW]),
    M("K26", "kernels", "kernels/batch_draw.py",
      ("        tl.store(COUNTER, 0)  # ready", "        pass  # ready"),
      "batch draw: the ticket counter is not reset, so no later call advances the offsets", [T_DRAW]),
    M("K27", "kernels", "kernels/batch_draw.py",
      ("        rows += tl.load(BASE + run)", "        rows += 0"),
      "batch draw: every run of a pack reads the first run's training set", [T_DRAW]),
    M("K28", "kernels", "kernels/weight_grads.py",
      ("p = tl.where(pid >= tl.load(META + i * 17 + 10), i, p)", "p = tl.where(pid > tl.load(META + i * 17 + 10), i, p)"),
      "weight grads: a layer's first program computes the layer before it", [T_WG]),
    M("K29", "kernels", "kernels/weight_grads.py",
      ("        if tile_k == 0:", "        if True:"),
      "weight grads: every column of tiles adds the bias, not the first alone", [T_WG]),
    M("K30", "kernels", "kernels/weight_grads.py",
      ("    accumulate = (flags & 2) != 0", "    accumulate = False"),
      "weight grads: a gradient already there is overwritten, not added to", [T_WG]),
    M("K31", "kernels", "kernels/token_embedding.py",
      ("    walks = is_tok | (first < L)", "    walks = is_tok"),
      "token embedding backward: the position rows get no gradient", [T_TEMB]),
    M("K32", "kernels", "kernels/token_embedding.py",
      ("(rows // L).to(tl.int64) * ids_bs + rows % L, mask=live", "(rows // L).to(tl.int64) * L + rows % L, mask=live"),
      "token embedding backward: ids read as if contiguous (the decoder's are a slice)", [T_TEMB]),
    M("K33", "kernels", "kernels/token_embedding.py",
      ("    p = tl.load(POS + run * pos_rs + ", "    p = tl.load(POS + "),
      "token embedding forward: every run of a pack reads the first run's position table", [T_TEMB]),
    M("K34", "kernels", "kernels/matmul.py",
      ("        acc += tl.load(BIAS + run * bias_rs + offs_n", "        acc += tl.load(BIAS + offs_n"),
      "matmul: every run of a pack adds the first run's bias", [T_MM]),
    M("K35", "kernels", "kernels/matmul.py",
      ("        b = tl.load(B + k[:, None] * b_ks, mask=(k < K)[:, None] & n_ok[None, :], other=0.0)",
       "        b = tl.load(B + k[:, None] * b_ks, mask=n_ok[None, :], other=0.0)"),
      "matmul: the ragged last K block reads past the operand", [T_MM]),
    M("K36", "kernels", "kernels/matmul.py",
      ("        g = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 0.134145 * x * x)",
       "        g = 0.5 * (1.0 + t)"),
      "matmul: GELU'(tanh form) drops its second term", [T_MM]),
    M("K57", "kernels", "kernels/matmul.py",
      ("        t = _tanh(x)\n        g = 1.0 - t * t", "        t = _tanh(x)\n        g = 1.0 - t"),
      "matmul: tanh's derivative taken as 1 - tanh, not 1 - tanh²", [T_MM]),
    M("DW14", "models", "grokfast_train/models/encoder.py",
      ('self.pooler.bias, act="tanh"))', 'self.pooler.bias, act=None))'),
      "deferred encoder: the pooler's tanh dropped where it rides in the product", [T_DEF]),
    M("K58", "kernels", "kernels/matmul.py",
      ("    r = tl.where(a < 0.25, series, r)", "    r = tl.where(a < 0.0, series, r)"),
      "matmul: tanh near 0 from (1 - t) / (1 + t), which loses its digits there", [T_MM]),
    M("K59", "kernels", "kernels/matmul.py",
      ("            B, BIAS, C = B2, BIAS2, C2", "            B, BIAS, C = B2, BIAS, C2"),
      "matmul_fan: the second layer adds the first layer's bias", [T_MM, T_DEF]),
    M("K60", "kernels", "kernels/matmul.py",
      ("        A2 += run * a_rs + offs_m.to(tl.int64)[:, None] * a_ms", "        A2 = A"),
      "matmul pair: the second product reads the first's gradient (dk Wv for dv Wv)", [T_MM, T_DEF]),
    M("K61", "kernels", "kernels/matmul.py",
      ("            c1 += tl.sum(g * xhat, axis=1)", "            c1 += tl.sum(g, axis=1)"),
      "matmul_layer_norm_grad: the backward's mean(g x̂) taken as mean(g)", [T_MM]),
    M("K62", "kernels", "kernels/matmul.py",
      ("        part_half = tl.num_programs(1) * tl.cdiv(M, BLOCK_M) * K", "        part_half = 0"),
      "matmul_layer_norm_grad: dbias's partials written over dweight's", [T_MM]),
    M("K63", "kernels", "kernels/matmul.py",
      ("        PART += (run * tl.cdiv(M, BLOCK_M) + pid // tiles_n) * K", "        PART += (pid // tiles_n) * K"),
      "matmul_layer_norm_grad: every run of a pack writes the first run's partials", [T_MM]),
    M("K64", "kernels", "kernels/matmul.py",
      ("        LNW += run * ln_rs", "        LNW += 0"),
      "matmul_layer_norm_grad: every run of a pack reads the first run's LayerNorm weight", [T_MM]),
    M("K65", "kernels", "kernels/matmul.py",
      ("written once\n                tl.store(DPRE + rows, a, mask=a_mask)\n                tl.store(PART + k,",
       "written once\n                tl.store(DPRE + rows, dy, mask=a_mask)\n                tl.store(PART + k,"),
      "matmul_layer_norm_grad: dz returned is the LayerNorm's output gradient, not its input's", [T_MM, T_DEF]),
    M("K66", "kernels", "kernels/matmul.py",
      ("part[i, 0] for i in (0, 1)))", "part[i, 0] for i in (1, 0)))"),
      "matmul_layer_norm_grad: dweight's and dbias's partials swapped", [T_MM, T_DEF]),
    M("PD1", "kernels", "kernels/matmul.py",
      ("num_warps=warps, num_stages=stages,\n                         **pdl(a))",
       "num_warps=warps, num_stages=stages)"),
      "matmul launched without the PDL keywords: the product never takes programmatic dependent launch",
      ["tests/kernels/test_pdl.py"]),
    M("PD2", "kernels", "kernels/batch_draw.py",
      ("    enter(PDL)\n    run = tl.program_id(1)\n    lanes = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)\n"
       "    ok = lanes < width\n    n = tl.load(N + run)\n",
       "    run = tl.program_id(1)\n    lanes = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)\n"
       "    ok = lanes < width\n    n = tl.load(N + run)\n    enter(PDL)\n"),
      "draw_batch reads a run's subset size before its PDL wait: a race with the kernel before it",
      ["tests/kernels/test_pdl.py"]),
    M("PD3", "kernels", "kernels/_compile.py",
      ('_BEFORE_WAIT_OK = re.compile(r"^(?:ld\\.param|mov)\\b")', '_BEFORE_WAIT_OK = re.compile(r"")'),
      "the compile check no longer asks a PDL build to wait before it touches memory",
      ["tests/kernels/test_compile.py::test_a_pdl_build_must_wait_before_it_touches_memory_or_branches"]),
    M("PD4", "kernels", "kernels/_pdl.py",
      ("    if not _ON or t.device.type != \"cuda\"", "    if not _ON or t.device.type == \"meta\""),
      "PDL keywords given for CPU tensors: the interpreter path would take the GPU-only wait",
      ["tests/kernels/test_pdl.py"]),
    M("K67", "kernels", "kernels/matmul.py",
      ("A, B, BIAS, C, M, a_ms, c_rs = A3, B3, BIAS3, C3, M3, a3_ms, c3_rs",
       "A, B, BIAS, C, M, c_rs = A3, B3, BIAS3, C3, M3, c3_rs"),
      "matmul_fan: the third layer reads its rows at the other layers' row stride, not the readout row's",
      [T_MM, T_DEF]),
    M("K68", "kernels", "kernels/matmul.py",
      ("A, B, BIAS, C, M, a_ms, c_rs = A3, B3, BIAS3, C3, M3, a3_ms, c3_rs",
       "A, B, BIAS, C, M, a_ms = A3, B3, BIAS3, C3, M3, a3_ms"),
      "matmul_fan: a pack's third-layer outputs written at the other layers' run stride", [T_MM]),
    M("K69", "kernels", "kernels/matmul.py",
      ("    rows_fit = a is None or _third_rows_fit(a, a3)\n", "    rows_fit = True\n"),
      "matmul_fits_fan: a third layer's rows taken whatever their run stride (the launch would refuse them)",
      [T_MM]),
    M("K70", "kernels", "kernels/fused_cross_entropy.py",
      ("        if sums_mode == 1:\n            old = tl.load(", "        if sums_mode != 0:\n            old = tl.load("),
      "cross_entropy: accumulate=False adds to what the sums held instead of setting them", [T_CE]),
    M("K71", "kernels", "kernels/fused_cross_entropy.py",
      ("        tl.store(COUNTER + run, 0)  # ready for the next call", "        pass  # ready for the next call"),
      "cross_entropy: the last program leaves the counter at the run's program count, not zero", [T_CE]),
    M("K72", "kernels", "kernels/fused_cross_entropy.py",
      ("SUMS + run * sums_rs, tiles", "SUMS + run * 3, tiles"),
      "cross_entropy: the sums' rows read as contiguous whatever their run stride", [T_CE]),
    M("K73", "kernels", "kernels/fused_cross_entropy.py",
      ("                or (sums.dim() == 2 and runs > 1 and sums.stride(0) < 3)):", "                ):"),
      "cross_entropy: sums rows that overlap (an expanded row) taken, where the runs' last programs would race",
      [T_CE]),
    M("K74", "kernels", "kernels/readout_attention.py",
      ("        alpha = tl.exp(m - m_safe)\n", "        alpha = tl.where(m == float(\"-inf\"), 0.0, 1.0)\n"),
      "readout_attention: online softmax keeps earlier blocks' sums unscaled when the maximum grows", [T_RA]),
    M("K75", "kernels", "kernels/readout_attention.py",
      ("rows, 1) + tl.load(BV + o, mask=o_ok, other=0.0)", "rows, 1)"),
      "readout_attention: the value projection's bias left out", [T_RA]),
    M("K76", "kernels", "kernels/readout_attention.py",
      ("             + tl.load(BQ + o, mask=o_ok, other=0.0)) * scale", "             + tl.load(BQ + o, mask=o_ok, other=0.0))"),
      "readout_attention: scores not scaled by 1/sqrt(head size)", [T_RA]),
    M("K77", "kernels", "kernels/readout_attention.py",
      ("    delta = tl.sum(d_mixed * mixed, 1)", "    delta = tl.sum(d_mixed * 0.0, 1)"),
      "readout_attention: softmax's backward without its mean term", [T_RA]),
    M("K78", "kernels", "kernels/readout_attention.py",
      ("    dx_row = tl.sum(p_row[:, None] * d_mixed + ds_row[:, None] * q_in, 0)",
       "    dx_row = tl.sum(0.0 * d_mixed, 0)"),
      "readout_attention: the query row's gradient as a key and a value dropped", [T_RA]),
    M("K79", "kernels", "kernels/readout_attention.py",
      ("mask=c_ok & (cols < has_drow * C), other=0.0)", "mask=c_ok & (cols < 0), other=0.0)"),
      "readout_attention: the residual's gradient at the query row dropped", [T_RA]),
    M("K80", "kernels", "kernels/readout_attention.py",
      ("q_heads * d_qbk[:, None], mask=", "q_heads, mask="),
      "readout_attention: bk's gradient rows not weighted by d(q·bk)", [T_RA]),
    M("K81", "kernels", "kernels/readout_attention.py",
      ("    run = n // per_run\n", "    run = n * 0\n"),
      "readout_attention: every sequence of a pack read with run 0's weights", [T_RA]),
    M("K82", "kernels", "kernels/readout_attention.py",
      ("    return p_ok & (m != 0)", "    return p_ok"),
      "readout_attention: the key padding mask ignored", [T_RA]),
    M("K83", "kernels", "kernels/readout_attention.py",
      ("hidden % heads == 0 and keys >= MIN_KEYS", "hidden % heads == 0"),
      "readout_attention.fits: the modular task's 6-key prompts sent to a kernel that reads the weights per sequence",
      [T_RA]),
    M("K84", "kernels", "kernels/readout_attention.py",
      ("    return x.float().contiguous()",
       "    x = x.float()\n    return x if x.stride(-1) == 1 and x.stride(-2) == x.shape[-1] else x.contiguous()"),
      "readout_attention: x's sequences read in place at any stride, dx (contiguous) written at x's", [T_RA]),
    M("RA7", "models", "grokfast_train/models/readout_attention.py",
      ("(g.d_q_in, g.q_heads, wk, None)", "(g.q_heads, g.d_q_in, wk, None)"),
      "readout kernels: k's weight gradient transposed within each head", [T_MODELS]),
    M("RA8", "models", "grokfast_train/models/readout_attention.py",
      ("(None, g.bk_rows, None, bk)", "(None, g.q_heads, None, bk)"),
      "readout kernels: bk's gradient the query's sum, not its d(q·bk)-weighted sum", [T_MODELS]),
    M("CG1", "analysis", "scripts/checkpoint_gradient.py",
      ('other = logits.scatter(1, y[:, None], float("-inf")).amax(1)', 'other = logits.amax(1)'),
      "checkpoint_gradient: the margin taken against the largest logit, the label's own included", ["tests/test_checkpoint_gradient.py"]),
    M("RW1", "models", "grokfast_train/models/rows.py",
      ("    if padding_idx is not None:\n        grad[padding_idx] = 0\n", ""),
      "the CPU gather's gradient: the padding row gets the gradient of its ids", ["tests/trainer/test_rows.py"]),
    M("RW2", "models", "grokfast_train/models/rows.py",
      ("grad.index_add_(0, ids, dy)", "grad.index_add_(0, ids.flip(0), dy.flip(0))"),
      "the CPU gather's gradient: each row's additions in another order (not the bits nn.Embedding's give)",
      ["tests/trainer/test_rows.py"]),
    M("RA10", "models", "grokfast_train/models/readout_attention.py",
      ("grads.update({p: t for p, t in ((w, dw), (b, db)) if p is not None})",
       "grads.update({p: t for p, t in ((w, dw),) if p is not None})"),
      "readout kernels outside deferred(): the biases' gradients computed but not returned", [T_MODELS]),
    M("RA9", "models", "grokfast_train/models/block.py",
      ("or readout_fits(C, self.heads, x.shape[-2])):", "or False):"),
      "triton backend: the readout layer projects every position's keys and values again", [T_MODELS]),
    M("DW20", "models", "grokfast_train/models/deferred.py",
      ("                    outs[third], saved[1 + 2 * third] = rest[0], ws[third]",
       "                    outs[third], saved[1 + 2 * third] = rest[0], ws[j]"),
      "fan_out: the query's input gradient taken through the value projection's weight", [T_DEF]),
    M("DW19", "models", "grokfast_train/models/deferred.py",
      ("            dz2 = dz\n", "            dz2 = dy2\n"),
      "linear_norm: the projection's weight gradient from the LayerNorm's output gradient, not dz", [T_DEF]),
    M("DW17", "models", "grokfast_train/models/deferred.py",
      ("(dys[pair[1]], saved[2 * pair[1]])", "(dys[pair[0]], saved[2 * pair[1]])"),
      "fan-out: k's gradient paired with v's weight in the summed input gradient", [T_DEF]),
    M("K37", "kernels", "kernels/matmul.py",
      ("dy, written once\n                tl.store(DPRE + rows, a, mask=a_mask)",
       "dy, written once\n                tl.store(DPRE + rows, a * 0.5, mask=a_mask)"),
      "matmul_act_grad: the weight gradient's dy is not the one dx was computed from", [T_MM]),
    M("DW4", "models", "grokfast_train/models/deferred.py",
      ("                _, dy2 = kernels.matmul_act_grad(dy2, pre, w, act, add=add, out=out)",
       "                _, _ = kernels.matmul_act_grad(dy2, pre, w, act, add=add, out=out)"),
      "deferred linear: the FFN's first weight gradient taken before GELU's gradient", [T_DEF]),
    M("K38", "kernels", "kernels/fused_layer_norm.py",
      ("            r_offs = rows.to(tl.int64)[:, None] * r_row_stride + cols[None, :] if R_STRIDED else offs",
       "            r_offs = offs"),
      "LayerNorm backward: a strided residual read as contiguous rows", [T_LN]),
    M("K39", "kernels", "kernels/fused_attention.py",
      ("        off = b.to(tl.int64) * sb + (pair - b * H).to(tl.int64) * sh",
       "        off = pair.to(tl.int64) * sh"),
      "attention: heads interleaved in the rows addressed as if contiguous per head", [T_ATT]),
    M("K40", "kernels", "kernels/fused_cross_entropy.py",
      ("            return dlogits, None, None, None", "            return dlogits * 2, None, None, None"),
      "cross-entropy: the unit seed's shortcut returns another gradient than a ones seed's", [T_CE]),
    M("K41", "kernels", "kernels/matmul.py",
      ("    if ADDS >= 2:", "    if ADDS >= 3:"),
      "matmul: the second addend is not added", [T_MM]),
    M("K42", "kernels", "kernels/matmul.py",
      ("    out = run * c_rs + offs_m.to(tl.int64)[:, None] * c_ms + offs_n[None, :]",
       "    out = run * c_rs + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]"),
      "matmul: a strided out written at the contiguous row stride", [T_MM]),
    M("K43", "kernels", "kernels/matmul.py",
      ("        acc = d * rstd[:, None] * lw[None, :] + lb[None, :]", "        acc = d * rstd[:, None] * lw[None, :]"),
      "matmul_layer_norm: the LayerNorm's bias is not added", [T_MM]),
    M("K44", "kernels", "kernels/matmul.py",
      ("        mean = tl.sum(z, axis=1) / N  #", "        mean = tl.sum(z, axis=1) / BLOCK_N  #"),
      "matmul_layer_norm: the mean taken over the padded tile width", [T_MM]),
    M("K45", "kernels", "kernels/fused_layer_norm.py",
      ("        return _packed_affine_fp32(weight, weight.shape[-1], 1.0, weight.device)",
       "        return weight.float().contiguous(), 0"),
      "LayerNorm backward (layer_norm_backward, matmul_layer_norm_grad): a pack's weight rows read at run stride 0",
      [T_LN, T_MM]),
    M("DW7", "models", "grokfast_train/models/deferred.py",
      ("        return dx, dz.view(r_shape).to(r_dtype), None", "        return dx, None, None"),
      "linear_norm: the residual's gradient is dropped", [T_DEF]),
    M("K46", "kernels", "kernels/fused_attention.py",
      ("    tl.store(Delta + offs_m, delta, mask=m_ok)", "    tl.store(Delta + offs_m, delta * 0.5, mask=m_ok)"),
      "attention: the dQ kernel stores another delta than the one it used", [T_ATT]),
    M("K47", "kernels", "kernels/fused_attention.py",
      ('        _launch("dq", lambda c: (B * H, triton.cdiv(Lq, c["BLOCK_M"])),\n'
       '                q, k, v, mask, do, o, lse, delta, dq, dk, dv, *common, **config)\n',
       ""),
      "attention: delta never written (the dQ launch that writes it dropped)", [T_ATT]),
    M("WS1", "kernels", "kernels/weight_grads.py",
      ("            for s in range(0, splits):", "            for s in range(0, splits - 1):"),
      "weight grads, split rows: the last ticket's program sums every partial but the last split's", [T_WG]),
    M("WS2", "kernels", "kernels/weight_grads.py",
      ("            tl.store(counter, 0)  # ready for the next launch", "            pass  # ready for the next launch"),
      "weight grads, split rows: a tile's ticket counter left at its split count, so the next launch never writes",
      [T_WG]),
    M("WS3", "kernels", "kernels/weight_grads.py",
      ("for m0 in range(split * chunk, tl.minimum(m, split * chunk + chunk), BLOCK_M):",
       "for m0 in range(split * chunk, m, BLOCK_M):"),
      "weight grads, split rows: each split walks on to the last row, so rows are summed more than once", [T_WG]),
    M("WS4", "kernels", "kernels/weight_grads.py",
      ("        part = tile_part + split * PART\n", "        part = tile_part\n"),
      "weight grads, split rows: every split of a tile stores its partial in the same place", [T_WG]),
    M("TS1", "kernels", "kernels/token_embedding.py",
      ("            for s in range(0, splits):", "            for s in range(1, splits):"),
      "token embedding backward, split ids: the last ticket's program leaves out the first split's partial", [T_TEMB]),
    M("TS2", "kernels", "kernels/token_embedding.py",
      ("            tl.store(counter, 0)  # ready for the next launch", "            pass  # ready for the next launch"),
      "token embedding backward, split ids: a block's ticket counter left at its split count", [T_TEMB]),
    M("TS3", "kernels", "kernels/token_embedding.py",
      ("for n0 in range(split * chunk, tl.minimum(n_rows, split * chunk + chunk), BLOCK_N):",
       "for n0 in range(split * chunk, n_rows, BLOCK_N):"),
      "token embedding backward, split ids: each split walks on to the last id, so ids count more than once", [T_TEMB]),
    M("K48", "kernels", "kernels/weight_grads.py",
      ("        slots = runs * triton.cdiv(n_out, block_n) * max(triton.cdiv(k, block_k), 1)",
       "        slots = runs * triton.cdiv(n_out, block_n) * triton.cdiv(k, block_k)"),
      "weight grads: a sum alone (k = 0) gets no programs", [T_WG]),
    M("K49", "kernels", "kernels/token_embedding.py",
      ("        tl.store(DTOK + run * dtok_rs + table_rows[:, None] * C + cols[None, :], acc,",
       "        tl.store(DTOK + run * V * C + table_rows[:, None] * C + cols[None, :], acc,"),
      "token embedding backward: a pack's token gradient written as if its runs were contiguous", [T_TEMB]),
    M("K50", "kernels", "kernels/fused_layer_norm.py",
      ("    return dz.view(z.shape), *(part[i] if packed else part[i, 0] for i in (0, 1))",
       "    return dz.view(z.shape), *(part[1 - i] if packed else part[1 - i, 0] for i in (0, 1))"),
      "layer_norm_backward(reduce=False): dweight's and dbias's partials swapped", [T_LN]),
    M("DW8", "models", "grokfast_train/models/deferred.py",
      ("fresh.setdefault(p, self.home(p))", "fresh.setdefault(p, torch.empty_like(p))"),
      "deferred: weight gradients written to fresh tensors, not where the optimiser reads them", [T_DEF]),
    M("DW9", "models", "grokfast_train/models/deferred.py",
      ("zip((part_w, part_b), ctx.norm, ctx.needs_input_grad[6:])",
       "zip((part_b, part_w), ctx.norm, ctx.needs_input_grad[6:])"),
      "linear_norm: the LayerNorm's weight and bias gradients swapped", [T_DEF]),
    M("DW10", "models", "grokfast_train/models/deferred.py",
      ("        outs = [ctx.pending.home(t) if n and t.grad is None else torch.empty_like(t) for t, n in zip(ctx.tables, need)]",
       "        outs = [torch.empty_like(t) for t in ctx.tables]"),
      "deferred embedding: the tables' gradients written to fresh tensors, not where the optimiser reads them", [T_DEF]),
    M("DW11", "models", "grokfast_train/models/deferred.py",
      ("        outs = [ctx.pending.home(t) if n and t.grad is None else torch.empty_like(t) for t, n in zip(ctx.tables, need)]",
       "        outs = [ctx.pending.home(t) if n else torch.empty_like(t) for t, n in zip(ctx.tables, need)]"),
      "deferred embedding: a second backward writes over the gradient the first left in the optimiser's view", [T_DEF]),
    M("K54", "kernels", "kernels/weight_grads.py",
      ("            tl.store(bout, bsum, mask=offs_n < n_out)", "            tl.store(bout, bsum, mask=offs_n < n)"),
      "weight_grads: a sum wider than its partials leaves the columns past them unwritten (no zeros)", [T_WG, T_DEF]),
    M("K55", "kernels", "kernels/fused_embedding.py",
      ("        tl.store(DT_PART + pid * N + cols, tl.sum(dpos_acc, axis=0), mask=col_mask)",
       "        tl.store(DT_PART + pid * N + cols, tl.sum(dpos_acc, axis=0) * 0.5, mask=col_mask)"),
      "embedding backward: each program's share of type 0's gradient halved", [T_EMB]),
    M("K56", "kernels", "kernels/fused_embedding.py",
      ("        DWORD += run64 * dword_run_stride", "        DWORD += run64 * word_run_stride"),
      "embedding backward: a pack's word gradient addressed at the word table's run stride, not its own",
      [T_EMB]),
    M("DW12", "models", "grokfast_train/models/deferred.py",
      ("            dword = (ctx.pending.home(word) if in_place else torch.empty_like(word, dtype=torch.float32)).zero_()",
       "            dword = ctx.pending.home(word) if in_place else torch.empty_like(word, dtype=torch.float32).zero_()"),
      "deferred encoder embedding: the word gradient's home not zeroed before the kernel adds into it", [T_DEF]),
    M("DW15", "models", "grokfast_train/models/deferred.py",
      ("return _EmbeddingLayerNorm.apply(ids, _active[-1], word.padding_idx,",
       "return _EmbeddingLayerNorm.apply(ids, _active[-1], None,"),
      "deferred encoder embedding: the padding row given a gradient", [T_DEF]),
    M("DW16", "models", "grokfast_train/models/deferred.py",
      ("        if held:\n            dword = word.grad\n", "        if held:\n            dword = word.grad.zero_()\n"),
      "deferred encoder embedding: a second backward wipes the word gradient the first left", [T_DEF]),
    M("DW13", "models", "grokfast_train/models/deferred.py",
      ("(parts.type0, typ), (parts.ln_weight, ln_weight)", "(parts.ln_bias, typ), (parts.ln_weight, ln_weight)"),
      "deferred encoder embedding: the type gradient summed from the LayerNorm bias's partials", [T_DEF]),
    M("K51", "kernels", "kernels/fused_attention.py",
      ("            tl.store(DK + kv_tile, (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)",
       "            tl.store(DK + kv_tile, dk.to(DK.dtype.element_ty), mask=kv_mask)"),
      "attention, one query block: dK written without the softmax scale", [T_ATT]),
    M("K52", "kernels", "kernels/fused_attention.py",
      ("            dv = _mma(tl.trans(p).to(do.dtype), do, None, DOT_PRECISION, UPCAST)",
       "            dv = _mma(tl.trans(ds).to(do.dtype), do, None, DOT_PRECISION, UPCAST)"),
      "attention, one query block: dV from dS instead of P", [T_ATT]),
    M("K53", "kernels", "kernels/fused_attention.py",
      ("        if Lq <= _SMALL_LQ:  # one block holds every query", "        if Lq <= 0:  # one block holds every query"),
      "attention: a one-block backward still launches dK/dV apart (3 kernels where 2 do)", [T_ATT]),
    M("DW5", "models", "grokfast_train/models/deferred.py",
      ("                add = () if whole else (out,)", "                add = ()"),
      "fan-out: the readout row's product overwrites the gradient the others wrote there", [T_DEF]),
    M("DW6", "models", "grokfast_train/models/deferred.py",
      ("                    add, g_res = (*add, _flat(g_res, runs)), None", "                    add, g_res = add, None"),
      "fan-out: the residual's gradient is dropped", [T_DEF]),
    M("DW1", "models", "grokfast_train/models/deferred.py",
      ("                add = any(p.grad is not None for p in params)", "                add = False"),
      "deferred linear: the tied head's gradient replaces the embedding's", [T_DEF]),
    M("DW2", "models", "grokfast_train/models/deferred.py",
      ("            wave = next((w for w in waves if not any(p is q for other in w for p in _params(item)\n"
       "                                                     for q in _params(other))), None)",
       "            wave = waves[0] if waves else None"),
      "deferred linear: a weight used twice written by two programs of one launch", [T_DEF]),
    M("DW3", "models", "grokfast_train/models/deferred.py",
      ("(_flat(_rows(xc, pos), runs), dy2, ctx.params[2 * i], ctx.params[2 * i + 1]))",
       "(_flat(_rows(xc, pos), runs), dy2, ctx.params[2 * i], None))"),
      "deferred linear: the bias gradient is dropped", [T_DEF]),
    M("DW18", "models", "grokfast_train/models/deferred.py",
      ("(_flat(xc, runs), dy2, ctx.params[2 * i], ctx.params[2 * i + 1]))", "(_flat(xc, runs), dy2, ctx.params[2 * i], None))"),
      "fan-out: the paired layer's (v's) bias gradient dropped", [T_DEF]),
    # -- models ----------------------------------------------------------------------------------
    M("MO1", "models", "grokfast_train/models/encoder.py",
      ("return self.head(torch.tanh(self.pooler(first)))", "return self.head(self.pooler(first))"),
      "encoder: pooler without tanh", [T_MODELS]),
    M("MO5", "models", "grokfast_train/models/embedding_sum.py",
      ("pair_ids = self.ids * L + torch.arange(L, device=self.ids.device)", "pair_ids = self.ids * L"),
      "first layer from the tables: every position reads position 0's projection", [T_MODELS, T_EMBSUM]),
    M("MO6", "models", "grokfast_train/models/embedding_sum.py",
      ("+ tied_head(self.pos, linear.weight)", "+ linear(self.pos).unsqueeze(-3)"),
      "first layer from the tables: the bias added twice", [T_MODELS, T_EMBSUM]),
    M("MO2", "models", "grokfast_train/models/block.py",
      ("F.gelu(self.fc1(h), approximate=self.gelu)", "F.gelu(self.fc1(h), approximate=\"none\")"),
      "block: exact GELU where GPT uses tanh", [T_MODELS]),
    M("MO3", "models", "grokfast_train/models/decoder.py",
      ("r = (self.readout_pos if readout_pos is None else readout_pos) % x.shape[-1]",
       "r = (self.readout_pos if readout_pos is None else readout_pos) % x.shape[-1] - 1"),
      "decoder: logits read one position early", [T_MODELS]),
    M("MO4", "models", "grokfast_train/models/block.py",
      ("h = ops.layer_norm(self.o(a), self.ln1, residual=xq, backend=self.backend)",
       "h = ops.layer_norm(self.o(a), self.ln1, residual=None, backend=self.backend)"),
      "block: attention residual dropped", [T_MODELS]),
    M("RA1", "models", "grokfast_train/models/readout_attention.py",
      ('scores = scores.masked_fill(~mask.unsqueeze(-2) & seen, float("-inf"))',
       'scores = scores.masked_fill(~mask.unsqueeze(-2), float("-inf"))'),
      "readout attention: a query with no key gets NaN scores, whose gradients poison x's", [T_MODELS]),
    M("RA2", "models", "grokfast_train/models/readout_attention.py",
      ("qh = q.unflatten(-1, (heads, D)) * D ** -0.5", "qh = q.unflatten(-1, (heads, D))"),
      "readout attention: scores not scaled by 1/sqrt(head dim)", [T_MODELS]),
    M("RA4", "models", "grokfast_train/models/readout_attention.py",
      ("            dx[..., row, :] += torch.einsum(", "            dx[..., row, :] -= torch.einsum("),
      "readout attention: the query projection's input gradient subtracted from x's row", [T_MODELS]),
    M("RA5", "models", "grokfast_train/models/readout_attention.py",
      ("                dx[..., row:row + 1, :] += d_row.to(dtype)  # the residual", "                pass"),
      "readout attention: the residual row's gradient dropped from x's", [T_MODELS]),
    M("RA6", "models", "grokfast_train/models/readout_attention.py",
      ("ds = p * (dp - (dp * p).sum(-1, keepdim=True))", "ds = p * dp"),
      "readout attention: softmax's backward without its mean term", [T_MODELS]),
    M("RA3", "models", "grokfast_train/models/block.py",
      ('if query_pos is not None and isinstance(x, torch.Tensor) and (self.backend == "torch"',
       'if False and (self.backend == "torch"'),
      "torch backend: the readout layer projects every position's keys and values again", [T_MODELS]),
    # -- metrics ---------------------------------------------------------------------------------
    M("ME1", "metrics", "kernels/fused_cross_entropy.py",
      [("total = (loss.detach().double() * t.shape[-1] if ce is None", "total = (loss.detach().double() if ce is None"),
       ("live.sum(-1).double()], dim=-1)", "live.any(-1).double()], dim=-1)")],
      "train meter: mean of batch means (not weighted by batch size)", [T_METRICS, T_PLUMB, T_RESUME]),
    M("ME2", "metrics", "grokfast_train/metrics.py",
      ("totals += torch.stack([losses.double().sum(),",
       "totals += torch.stack([losses.double().mean() * min(batch_size, x.shape[0]),"),
      "evaluate: test loss averaged per batch", [T_METRICS, T_PLUMB]),
    M("ME3", "metrics", "grokfast_train/metrics.py",
      ('if row[key] >= threshold:', 'if row[key] > threshold:'),
      "summary: > where the threshold says >=", [T_METRICS, T_PLUMB]),
    M("ME4", "metrics", "grokfast_train/metrics.py",
      ("unique = list({id(p): p for p in params}.values())", "unique = list(params)"),
      "weight norm: a tied weight counted twice", [T_METRICS, T_PLUMB]),
    M("ME5", "metrics", "grokfast_train/metrics.py",
      ('"grokking_delay": (gen - mem)', '"grokking_delay": (mem - gen)'),
      "summary: grokking delay with its sign swapped", [T_METRICS]),
    M("ME6", "metrics", "grokfast_train/metrics.py",
      ('    model.eval()\n', '    pass\n'),
      "evaluate: model left in train mode", [T_METRICS]),
    M("ME7", "metrics", "grokfast_train/train.py",
      ('"test_loss": test_loss_sum / n,', '"test_loss": train_loss,'),
      "run: test_loss row holds the train loss", [T_PLUMB, T_RUN]),
    M("ME8", "metrics", "grokfast_train/train.py",
      ('        with deferred(on=self.cfg.backend == "triton"), self.autocast():\n            logits = self.model(x, mask)',
       '        with self.autocast():\n            logits = self.model(x, mask)'),
      "evaluation: the plain modules' forward (~25 kernels a chunk), not the step's fused products",
      ["tests/test_kernel_census.py"]),
    M("ME9", "metrics", "kernels/adamw.py",
      ("return torch.linalg.vector_norm(self._flat_param, out=out)",
       "return torch.linalg.vector_norm(self._flat_grad, out=out)"),
      "weight norm from the flat buffer: the gradients' norm", ["tests/trainer/test_graph_cpu.py"]),
    M("ME10", "metrics", "grokfast_train/graph.py",
      ("self.run.eval_chunk(None, self.ones, self.result,", "self.run.eval_chunk(None, None, self.result,"),
      "one-chunk evaluation: the loss sum as the batch mean times its size (fp32), not each row's in fp64",
      ["tests/trainer/test_graph_cpu.py"]),
    M("ME12", "metrics", "grokfast_train/graph.py",
      ("self.ones, self.result, accumulate=False,", "self.ones, self.result, accumulate=True,"),
      "one-chunk evaluation: each evaluation's sums added to the last one's instead of set",
      ["tests/trainer/test_graph_cpu.py"]),
    M("ME11", "metrics", "kernels/adamw.py",
      ("return {id(p) for p, _, _, _ in self._bindings} == {id(p) for p in params}",
       "return {id(p) for p, _, _, _ in self._bindings} >= {id(p) for p in params}"),
      "FusedAdamW.holds: true for a subset, so a model's parameter outside the optimiser leaves the norm",
      ["tests/kernels/test_adamw.py"]),
    # -- sampler ---------------------------------------------------------------------------------
    M("S1", "sampler", "kernels/batch_draw.py",
      ("tl.store(OFFSET + rs, (o + step) % size, mask=live)", "tl.store(OFFSET + rs, (o + step - 1) % size, mask=live)"),
      "sampler: consecutive batches overlap by one example", [T_SAMPLER]),
    M("S2", "sampler", "grokfast_train/sampler.py",
      ('if self.order == "shuffle" and step % self.batches_per_epoch == 0:',
       'if self.order == "shuffle" and step == 0:'),
      "sampler: shuffle order never reshuffles after the first epoch", [T_SAMPLER]),
    M("S3", "sampler", "grokfast_train/sampler.py",
      ("self.offset.fill_(offset % self.n)", "self.offset.fill_(0)"),
      "sampler: position inside the epoch not restored on resume", [T_SAMPLER, T_RESUME]),
    # -- checkpoint / resume -------------------------------------------------------------------------
    M("R1", "resume", "grokfast_train/train.py",
      ('            self.meter.load_state_dict(state["meter"])\n', ""),
      "resume: the interval meter's partial sums dropped", [T_RESUME, T_RUN]),
    M("R2", "resume", "grokfast_train/train.py",
      ('                self.grad_filter.load_state_dict(state["grad_filter"])\n',
       '                pass\n'),
      "resume: Grokfast filter state dropped", [T_RESUME, T_RUN]),
    M("R3", "resume", "grokfast_train/train.py",
      ('            self.opt.load_state_dict(state["optimizer"])\n', ""),
      "resume: optimiser moments dropped", [T_RESUME, T_RUN]),
    M("R4", "resume", "grokfast_train/loop.py",
      ("if run.step % cfg.checkpoint_every == 0 or run.step == cfg.steps or stop.set or not live():",
       "if run.step % cfg.checkpoint_every == 0 or run.step == cfg.steps or not live():"),
      "Ctrl-C: no checkpoint written at the interrupt", [T_RESUME, T_RUN]),
    M("LP1", "resume", "grokfast_train/loop.py",
      ("                run.advance(steps_to_host_work(run))\n                publish()",
       "                publish()\n                run.advance(steps_to_host_work(run))"),
      "an evaluation's output written before the next steps are queued: the device idles while the host writes",
      ["tests/trainer/test_loop.py"]),
    M("LP2", "resume", "grokfast_train/loop.py",
      ("                    publish()\n                    save(now())", "                    save(now())"),
      "a checkpoint written before its evaluation's metrics row", ["tests/trainer/test_loop.py"]),
    M("LP3", "resume", "grokfast_train/loop.py",
      ("            publish()\n        raise", "            pass\n        raise"),
      "the last evaluation's output lost when the next steps fail", ["tests/trainer/test_loop.py"]),
    M("LP4", "resume", "grokfast_train/loop.py",
      ("        with contextlib.suppress(Exception):  # write what can be written; the error in flight is the one to report\n"
       "            publish()\n", "        publish()\n"),
      "an evaluation's output that fails while another error propagates replaces that error", ["tests/trainer/test_loop.py"]),
    M("R5", "resume", "grokfast_train/metrics.py",
      ('return {"sums": self.sums.cpu()}', 'return {"sums": torch.zeros_like(self.sums.cpu())}'),
      "checkpoint: meter saved empty", [T_METRICS, T_RESUME]),
    # -- config and its plumbing -----------------------------------------------------------------------
    M("C1", "config", "grokfast_train/train.py",
      ("kernels.scaled_init_(model, std=cfg.init_std, alpha=cfg.init_scale, seed=cfg.seed)",
       "kernels.scaled_init_(model, std=cfg.init_std, alpha=1.0, seed=cfg.seed)"),
      "run: --init-scale ignored", [T_PLUMB, T_RUN]),
    M("C2", "config", "grokfast_train/train.py",
      ("kernels.scaled_init_(model, std=cfg.init_std, alpha=cfg.init_scale, seed=cfg.seed)",
       "kernels.scaled_init_(model, std=0.02, alpha=cfg.init_scale, seed=cfg.seed)"),
      "run: --init-std ignored", [T_PLUMB, T_RUN]),
    M("C3", "config", "grokfast_train/train.py",
      ("kernels.scaled_init_(model, std=cfg.init_std, alpha=cfg.init_scale, seed=cfg.seed)",
       "kernels.scaled_init_(model, std=cfg.init_std, alpha=cfg.init_scale, seed=0)"),
      "run: init not seeded by --seed", [T_PLUMB, T_RUN]),
    M("C4", "config", "grokfast_train/optim.py",
      ("opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,",
       "opt = torch.optim.AdamW(params, lr=cfg.lr, eps=cfg.eps,"),
      "optimiser: --betas ignored (torch backend)", [T_PLUMB, T_RUN]),
    M("C5", "config", "grokfast_train/optim.py",
      ("opt = FusedAdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,",
       "opt = FusedAdamW(params, lr=1e-3, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,"),
      "optimiser: --lr ignored (triton backend)", [T_PLUMB, T_RUN]),
    M("C10", "config", "grokfast_train/train.py",
      ("summary = summarize(self.history, cfg.mem_threshold, cfg.gen_threshold,",
       "summary = summarize(self.history, 0.99, cfg.gen_threshold,"),
      "run: --mem-threshold ignored in summary.json", [T_PLUMB, T_RUN]),
    M("C11", "config", "grokfast_train/train.py",
      ("batch = n_train if cfg.batch_size == FULL_BATCH else cfg.batch_size",
       "batch = n_train if cfg.batch_size == FULL_BATCH else 64"),
      "run: --batch-size ignored (a fixed 64)", [T_PLUMB, T_RUN]),
    M("C6", "config", "grokfast_train/config.py",
      ("lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98),", "lr=1e-3, weight_decay=1.0, betas=(0.9, 0.999),"),
      "modular preset: torch's betas instead of the paper's (0.9, 0.98)", [T_CONFIG, T_PRESETS]),
    M("C7", "config", "grokfast_train/config.py",
      ("_TEXT = dict(n_layers=1, hidden=128, heads=4, ffn=512, init_scale=10.0,",
       "_TEXT = dict(n_layers=1, hidden=128, heads=4, ffn=512, init_scale=1.0,"),
      "text preset: alpha 1 instead of the paper's 10", [T_CONFIG, T_PRESETS]),
    M("C8", "config", "grokfast_train/config.py",
      ("if cfg.resume and cfg.force:", "if False:"),
      "validation: --resume with --force accepted", [T_CONFIG, T_PRESETS, T_PLUMB]),
    M("C9", "config", "grokfast_train/rundir.py",
      ('"resume", "force", "out"', '"resume", "force", "lr", "out"'),
      "resume: a changed --lr accepted", [T_RUN]),
    # -- data ------------------------------------------------------------------------------------
    M("D1", "data", "grokfast_train/data/modular.py",
      ("        c = (a + b) % p\n", "        c = (a + b + 1) % p\n"),
      "modular: wrong answers for add", [T_DATA, T_PRESETS]),
    M("D2", "data", "grokfast_train/data/modular.py",
      ('return {"op": p + 1, "eq": p + 2, "mod": p + 3}', 'return {"op": p + 1, "eq": p + 3, "mod": p + 2}'),
      "modular paper tokens: '=' and '%' ids swapped", [T_DATA, T_PRESETS]),
    M("D3", "data", "grokfast_train/data/modular.py",
      ("TRAIN_SHARE = (3, 4)", "TRAIN_SHARE = (4, 5)"),
      "modular: 80/20 split instead of 75/25", [T_DATA, T_PRESETS]),
    M("D4", "data", "grokfast_train/data/subset.py",
      ("gen = torch.Generator().manual_seed(seed)", "gen = torch.Generator().manual_seed(seed + k)"),
      "subsets: permutation depends on the size (subsets no longer nest)", [T_DATA]),
    # -- Grokfast filter (torch path) ------------------------------------------------------------------
    M("G1", "grokfast", "grokfast_train/grokfast.py",
      ("torch._foreach_lerp_(self.h, grads, 1.0 - self.alpha)", "torch._foreach_lerp_(self.h, grads, self.alpha)"),
      "Grokfast EMA weights swapped", [T_RUN + "::test_triton_backend_trains_like_the_torch_backend", T_RESUME]),
    M("G2", "grokfast", "grokfast_train/grokfast.py",
      ("self.h = [g.clone() for g in grads]", "self.h = [torch.zeros_like(g) for g in grads]"),
      "Grokfast: h starts at zero, not at the first gradient", [T_RUN + "::test_triton_backend_trains_like_the_torch_backend", T_RESUME]),
    # -- CLI -------------------------------------------------------------------------------------
    M("CL1", "cli", "grokfast_train/errors.py",
      ('class RunError(GrokfastError):\n    """The run could not proceed: missing data, unreachable hub, corrupt checkpoint, ... (exit code 1)."""\n\n    exit_code = 1',
       'class RunError(GrokfastError):\n    """The run could not proceed: missing data, unreachable hub, corrupt checkpoint, ... (exit code 1)."""\n\n    exit_code = 2'),
      "CLI: runtime errors exit 2 instead of 1", [T_RUN]),
    M("CL2", "cli", "grokfast_train/rundir.py",
      ('raise UsageError(f"nothing to resume in {run_dir}: it has no {CONFIG}; start a new run without --resume")',
       'raise UsageError(f"--out {run_dir} is a file, not a directory; choose another --out")'),
      "CLI: --resume of an empty directory gets another error's message (exit code still 2)", [T_RUN]),
    M("CL3", "cli", "grokfast_train/train.py",
      ('pass --steps larger than {step} to extend it")', 'pass --force to start it over")'),
      "CLI: a finished run's --resume advises --force, which destroys it (exit code still 2)", [T_RUN]),
]

T_SWEEP = "tests/trainer/test_sweep.py"
T_RESOURCES = "tests/trainer/test_resources.py"

# Sweep and report code: add mutants here as that code lands (same form as above).
SWEEP_REPORT_MUTANTS: list[Mutant] = [
    M("SW1", "sweep", "grokfast_train/sweep.py",
      ("            if final >= steps:\n                return \"done\"", "            if final > steps:\n                return \"done\""),
      "sweep: a run finished at exactly --steps is not recognised as done", [T_SWEEP]),
    M("SW2", "sweep", "grokfast_train/sweep.py",
      ("for seed in seeds for h in hidden for n in layers for s in sizes]",
       "for seed in seeds[:1] for h in hidden for n in layers for s in sizes]"),
      "sweep grid: only the first seed", [T_SWEEP]),
    M("SW3", "sweep", "grokfast_train/sweep.py",
      ("run_settings.update(point.settings(), out=str(sweep_dir / point.name), quiet=True)",
       "run_settings.update(out=str(sweep_dir / point.name), quiet=True)"),
      "sweep: grid point settings (size, hidden, layers, seed) not applied to its run", [T_SWEEP]),
    M("SW4", "sweep", "grokfast_train/sweep.py",
      ('what = f"resumes from its checkpoint at step {_start_step(c):,} of {c.steps:,}"',
       'what = f"resumes from its checkpoint at step {0:,} of {c.steps:,}"'),
      "sweep --dry-run: a resumable run shown as resuming from step 0", [T_SWEEP + "::test_a_dry_run_shows_the_plan_and_writes_nothing"]),
    M("SW5", "sweep", "grokfast_train/sweep.py",
      ("    if given.get(\"dry_run\"):\n        return show_plan(", "    if False:\n        return show_plan("),
      "sweep --dry-run: ignored, the sweep trains", [T_SWEEP + "::test_a_dry_run_shows_the_plan_and_writes_nothing"]),
    M("SW6", "sweep", "grokfast_train/sweep.py",
      ("initargs=(os.getpid(),)) as pool, _sigint_forwarded_to_workers():", "initargs=(os.getpid(),)) as pool:"),
      "sweep --jobs N: a SIGINT to the sweep no longer reaches its running runs",
      [T_SWEEP + "::test_a_sigint_to_a_parallel_sweep_stops_its_running_runs"]),
    M("SW10", "sweep", "grokfast_train/sweep.py",
      ("    _signal_when_parent_dies(sweep_pid)\n", "    pass\n"),
      "sweep --jobs N: the workers of a SIGKILLed sweep train on for no one",
      [T_SWEEP + "::test_workers_of_a_killed_sweep_checkpoint_and_stop"]),
    M("SW7", "sweep", "grokfast_train/sweep.py",
      ('given.get("jobs", "auto")', 'given.get("jobs", 1)'),
      "sweep: one run at a time by default on the CPU", [T_SWEEP + "::test_parallel_jobs_give_the_same_runs"]),
    M("SW8", "sweep", "grokfast_train/resources.py",
      ("return max(1, min(n, math.ceil(quota))) if quota else n", "return n"),
      "--jobs auto: a cgroup CPU quota ignored", [T_RESOURCES]),
    M("SW9", "sweep", "grokfast_train/sweep.py",
      ("fit = resources.available_memory() // RUN_MEMORY", "fit = 1 << 30"),
      "--jobs auto: as many workers as cores whatever the memory", [T_RESOURCES]),
    M("RP1", "report", "grokfast_train/report.py",
      ("run.smoothed = an.smooth(run.steps, run.test_acc, opts.sigma)",
       "run.smoothed = an.smooth(run.steps, run.train_acc, opts.sigma)"),
      "report: steps-to-threshold read from train accuracy instead of test", [T_REPORT, T_ANALYSIS]),
    M("RP2", "report", "grokfast_train/report.py",
      ('runs.update({(d.name if len(roots) == 1 else f"{prefix}/{d.name}"): d for d in dirs})',
       'runs.update({d.name: d for d in dirs})'),
      "report on several sweeps: runs of the same name in two sweeps overwrite each other", [T_REPORT]),
    M("A1", "analysis", "grokfast_train/analysis.py",
      ("hits = np.flatnonzero(np.asarray(values) >= threshold)", "hits = np.flatnonzero(np.asarray(values) > threshold)"),
      "steps-to-threshold: > where the paper takes the first index >= t", [T_ANALYSIS, T_REPORT]),
    M("A2", "analysis", "grokfast_train/analysis.py",
      ('return gaussian_filter1d(values, sigma_steps / spacing, mode="reflect")',
       'return gaussian_filter1d(values, sigma_steps, mode="reflect")'),
      "smoothing: sigma in evaluations, not in steps", [T_ANALYSIS, T_REPORT]),
    M("A3", "analysis", "grokfast_train/analysis.py",
      ("return max(reached) if reached else None", "return min(reached) if reached else None"),
      "highest point: the lowest threshold step instead of the highest", [T_ANALYSIS, T_REPORT]),
    M("A4", "analysis", "grokfast_train/analysis.py",
      ('if p["generalised"] == p["seeds"] and p["train_size"] in comparable}',
       'if p["generalised"] == p["seeds"]}'),
      "critical size: the steps-to-generalise peak counts a size that only some seeds ran", [T_ANALYSIS]),
    M("CL4", "cli", "grokfast_train/errors.py",
      ("    except OSError as e:\n        print(", "    except ValueError as e:\n        print("),
      "CLI: an OSError while writing (a report, a run's files) is a traceback, not one line", [T_REPORT]),
]

T_EARLY = "tests/trainer/test_early_stop.py"

# --stop-after-generalising: each bug would lose data or train a finished run again.
EARLY_STOP_MUTANTS: list[Mutant] = [
    M("ES1", "early stop", "grokfast_train/loop.py",
      ("or stop.set or not live():", "or stop.set:"),
      "early stop: no checkpoint at the stop step (the run cannot train on from where it stopped)", [T_EARLY]),
    M("ES2", "early stop", "grokfast_train/pack.py",
      ("            if m.marks.stop:\n                _write(m, row, lines)\n                self._stop_early(r, now)\n"
       "            else:\n                later.append((m, row, lines))",
       "            later.append((m, row, lines))"),
      "early stop: a packed run ignores its stop and trains on", [T_EARLY]),
    M("ES3", "early stop", "grokfast_train/sweep.py",
      ('if generalised_for(stop_after_generalising, final, s.get("generalization_step")):',
       "if False:"),
      "early stop: a sweep rerun trains its stopped runs again", [T_EARLY]),
    M("ES4", "early stop", "grokfast_train/train.py",
      ("return step < self.cfg.steps and generalised_for(", "return generalised_for("),
      "early stop: a run whose stop falls on its last step is reported as stopped early", [T_EARLY]),
    M("ES5", "early stop", "grokfast_train/loop.py",
      ("if stop.set and run.step < cfg.steps and live():", "if stop.set and run.step < cfg.steps:"),
      "early stop: a Ctrl-C at the stop step leaves the run interrupted, without its summary",
      ["tests/trainer/test_loop.py"]),
    M("ES6", "early stop", "grokfast_train/pack.py",
      ("for r in [r for r in self.active if self.members[r].marks.stop]:", "for r in []:"),
      "early stop: a packed run resumed at its stop trains on past it", [T_EARLY]),
    M("ES8", "early stop", "grokfast_train/train.py",
      ('self.stop = bool(history) and history[-1]["step"] == step and self._stops_at(step)',
       'self.stop = bool(history) and self._stops_at(history[-1]["step"])'),
      "early stop: a run resumed between evaluations past its stop ends there, its last interval unevaluated",
      [T_EARLY]),
    M("ES9", "early stop", "grokfast_train/sweep.py",
      ("if budget is None or budget >= steps or not", "if True or"),
      "early stop: a sweep whose --steps was raised leaves its stopped runs at the old budget (split report)",
      [T_EARLY]),
    M("ES7", "early stop", "grokfast_train/report.py",
      ('"warnings": duplicates(runs) + stopped_early(runs),', '"warnings": duplicates(runs),'),
      "report: runs cut short by an early stop are not flagged", [T_EARLY]),
    M("CL5", "cli", "grokfast_train/interrupt.py",
      ("                outer.set = True", "                pass"),
      "Ctrl-C during a run that then finishes: the sweep starts the next run anyway", ["tests/trainer/test_loop.py"]),
]

T_PACK = "tests/trainer/test_pack.py"
T_PADAMW = "tests/kernels/test_packed_adamw.py"

# Packed runs: each bug would make a packed run differ from its solo run.
PACK_MUTANTS: list[Mutant] = [
    M("P1", "pack", "kernels/batch_draw.py",
      ("    n = tl.load(N + run)\n", "    n = tl.load(N + 0)\n"),
      "pack sampler: every run wraps at the first run's subset size", [T_PACK]),
    M("P1b", "pack", "kernels/batch_draw.py",
      ("rows = perm.gather(1, (offset[:, None] + lanes) % n[:, None])",
       "rows = perm.gather(1, (offset[:, None] + lanes) % n.max())"),
      "the draw's reference (the CPU path): every run wraps at the largest subset's size", [T_DRAW]),
    M("P2", "pack", "grokfast_train/pack.py",
      ("self.weights = (self.sampler.valid / self.sampler.batch[:, None]).float()",
       "self.weights = (self.sampler.valid / self.sampler.width).float()"),
      "pack loss: padded batches averaged over the widest batch", [T_PACK]),
    M("P3", "pack", "grokfast_train/models/runs.py",
      ("            grad[:, ctx.padding_idx] = 0", "            pass"),
      "packed embedding: the padding row gets a gradient", [T_PACK]),
    M("P4", "pack", "kernels/packed_adamw.py",
      ("self._run_of = torch.arange(R, dtype=torch.int32).repeat_interleave(programs_per_run).to(device)",
       "self._run_of = torch.arange(R, dtype=torch.int32).flip(0).repeat_interleave(programs_per_run).to(device)"),
      "packed AdamW kernel: blocks read another run's hyperparameters", [T_PADAMW, T_PACK]),
    M("P5", "pack", "kernels/packed_adamw.py",
      ("            h = row[\"grokfast_h\"]\n", "            h = [v[0] for v in self.views[\"grokfast_h\"]]\n"),
      "packed AdamW CPU rows: every run's filter reads the first run's EMA", [T_PADAMW]),
    M("P15", "pack", "kernels/packed_adamw.py",
      ("                torch._foreach_lerp_(h, grads, 1.0 - alpha)\n",
       "                torch._foreach_mul_(h, alpha)\n                torch._foreach_add_(h, grads, alpha=1.0 - alpha)\n"),
      "packed AdamW CPU rows: the filter as a h + (1 - a) g (FusedAdamW's rounding, not the solo run's)",
      [T_PADAMW, T_PACK]),
    M("P19", "pack", "kernels/packed_adamw.py",
      ("        if alpha or lamb:  # a filter", "        if lamb:  # a filter"),
      "packed AdamW CPU rows: a run's filter of gain 0 keeps no EMA (its checkpoint's h differs from its solo run's)",
      [T_PADAMW]),
    M("P20", "pack", "kernels/packed_adamw.py",
      ("        t = int(self._steps[0]) + 1\n", "        self._steps.add_(1)\n        t = int(self._steps[0])\n"),
      "PackedAdamW rows: the step counted before the runs step (a failing run leaves the pack a step ahead)",
      [T_PADAMW]),
    M("P16", "pack", "kernels/packed_adamw.py",
      ("                self._update_run(r, grads_of(r), t, step)\n",
       "                self.set_run_grads(r, grads_of(r))\n                self._update_run(r, [g[r] for g in self.views[\"grad\"]], t, step)\n"),
      "PackedAdamW.step_runs on the rows: each run's gradients copied into the buffer first (~1 ms an IMDB run-step)",
      [T_PADAMW]),
    M("P17", "pack", "grokfast_train/optim.py",
      ("weight_decay=cfg.weight_decay,\n                            fused=True)",
       "weight_decay=cfg.weight_decay,\n                            foreach=True)"),
      "the torch backend's AdamW back to foreach: slower, and a run-by-run pack no longer its solo run",
      [T_PACK]),
    M("P18", "pack", "grokfast_train/pack.py",
      ("for m in self.members], kernel=None if cfg.backend == \"triton\" else False)",
       "for m in self.members])"),
      "a torch-backend pack's optimiser the Triton kernel (the interpreter's here): not its solo runs' arithmetic",
      [T_PACK]),
    M("P13", "pack", "kernels/packed_adamw.py",
      ("            p.grad = None if set_to_none else gv", "            p.grad = gv"),
      "PackedAdamW.zero_grad: the views kept, not zeroed: each backward adds to the last step's gradients",
      [T_PADAMW, T_PACK]),
    M("P14", "pack", "kernels/packed_adamw.py",
      ("            if p.grad is None:\n                p.grad = view.zero_()\n", ""),
      "PackedAdamW.set_run_grads after zero_grad(): the gradients written, then zero-filled by step()",
      [T_PADAMW]),
    M("P6", "pack", "grokfast_train/pack.py",
      ('"model": run_state(self.model, r),', '"model": run_state(self.model, 0),'),
      "pack checkpoint: every run saves the first run's weights", [T_PACK]),
    M("P7", "pack", "grokfast_train/pack.py",
      ("self.opt.set_step_count(self.step)", "pass"),
      "pack resume: the optimiser's step count restarts at 0 (bias correction of step 1)", [T_PACK]),
    M("P8", "pack", "grokfast_train/models/runs.py",
      ("torch.ops.aten.native_layer_norm.out(x[r], shape, weight[r], bias[r], eps,",
       "torch.ops.aten.native_layer_norm.out(x[r], shape, weight[0], bias[r], eps,"),
      "packed LayerNorm: runs read each other's weights", [T_PACK]),
    M("P9", "pack", "grokfast_train/pack.py",
      ("        b = self.sampler.runs[r].batch_size\n", "        b = x.shape[1]\n"),
      "pack run by run: a run trains on its padding lanes too", [T_PACK]),
    M("P10", "pack", "grokfast_train/pack.py",
      ("model.zero_grad(set_to_none=True)  # ... which the optimiser then holds alone", "pass  #"),
      "pack run by run: each run's gradients pile up from step to step", [T_PACK]),
    M("P12", "pack", "grokfast_train/pack.py",
      ("losses = ops.cross_entropy(logits, y, self.weights, self.sums, self.cfg.backend,",
       "losses = ops.cross_entropy(logits, y, None, self.sums, self.cfg.backend,"),
      "stacked pack: each run's loss a mean over the widest batch, its padding lanes in", [T_PACK]),
    M("P11", "pack", "grokfast_train/heap.py",
      ("_done = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))",
       "_done = bool(mallopt(M_MMAP_MAX, 0))"),
      "CPU heap: the freed top still trimmed, so steps fault their memory in again", ["tests/trainer/test_heap.py"]),
]

ALL = MUTANTS + SWEEP_REPORT_MUTANTS + EARLY_STOP_MUTANTS + PACK_MUTANTS


# -- the copy ------------------------------------------------------------------------------------
def _git(*args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True).stdout


def make_copy(dest: Path, worktree: bool, overlay: list[str]) -> str:
    """Fill ``dest`` with the code under test; returns a description of what was copied."""
    if worktree:
        files = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard").split(b"\0")
        n = 0
        for f in filter(None, files):
            src = ROOT / f.decode()
            if src.is_file():
                (dest / f.decode()).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / f.decode())
                n += 1
        what = f"working tree ({n} files, uncommitted changes included)"
    else:
        head = _git("rev-parse", "--short", "HEAD").decode().strip()
        with tarfile.open(fileobj=io.BytesIO(_git("archive", "--format=tar", "HEAD"))) as tar:
            tar.extractall(dest)
        what = f"HEAD {head}"
    for rel in overlay:
        src = ROOT / rel
        if not src.is_file():
            raise SystemExit(f"--overlay {rel}: no such file in the working tree")
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
    if overlay:
        what += " + working-tree " + ", ".join(overlay)
    return what


# -- applying and running ----------------------------------------------------------------------------
def apply(m: Mutant, root: Path) -> tuple[str | None, str | None]:
    """Mutate the file in the copy; returns (original text, problem). problem is None when applied."""
    path = root / m.file
    if not path.is_file():
        return None, f"PATTERN NOT FOUND: file {m.file} does not exist"
    text = original = path.read_text()
    for i, (old, new) in enumerate(m.edits, 1):
        n = text.count(old)
        if n != 1:
            kind = "PATTERN NOT FOUND" if n == 0 else f"AMBIGUOUS PATTERN ({n} matches)"
            return None, f"{kind}: edit {i} in {m.file}: {old.splitlines()[0].strip()[:70]!r}"
        text = text.replace(old, new)
    path.write_text(text)
    return original, None


def run_tests(root: Path, tests: list[str], timeout: int) -> tuple[str, float, str]:
    """('pass' | 'fail' | 'timeout', seconds, first failure)."""
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}  # no stale .pyc of a mutant
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", "-o", "addopts=",
           *tests]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - t0, ""
    secs = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    if proc.returncode == 0:
        return "pass", secs, ""
    first = next((ln for ln in out.splitlines() if ln.startswith(("FAILED", "ERROR"))), "")
    if not first:
        first = next((ln for ln in reversed(out.splitlines()) if ln.strip()), f"exit code {proc.returncode}")
    if proc.returncode == 5:
        first = "no tests collected: " + first
    return "fail", secs, first[:160]


def check_import_root(root: Path) -> None:
    """The copy's packages, not an installed (editable) checkout, must be the ones imported."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    code = "import grokfast_train, kernels; print(grokfast_train.__file__); print(kernels.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    for f in out:
        if not Path(f).resolve().is_relative_to(root.resolve()):
            raise SystemExit(f"the copy imports {f}, not its own code; cannot mutate safely")


# -- reporting ---------------------------------------------------------------------------------------
def markdown(rows, header: str) -> str:
    lines = [header, "", "| id | area | mutant | result | caught by |", "|---|---|---|---|---|"]
    for m, result, secs, detail in rows:
        caught = detail.removeprefix("FAILED ").split(" - ")[0] if result in ("killed", "timeout") else ""
        if result not in ("killed", "survived", "timeout"):
            caught = detail
        lines.append(f"| {m.id} | {m.area} | {m.description} | **{result}** | {caught} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="run the whole suite for each mutant (slow)")
    ap.add_argument("--only", nargs="+", metavar="ID", help="run these mutants only")
    ap.add_argument("--list", action="store_true", help="list the mutants and whether their patterns still apply")
    ap.add_argument("--worktree", action="store_true", help="mutate a copy of the working tree, not of HEAD")
    ap.add_argument("--overlay", nargs="+", default=[], metavar="PATH",
                    help="working-tree files laid over the HEAD copy (e.g. new tests not yet committed)")
    ap.add_argument("--tests", nargs="+", metavar="PATH",
                    help="run these tests for every mutant instead of the ones each names (e.g. to check one new test)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per test run (default 900)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run (not recommended)")
    ap.add_argument("--markdown", metavar="FILE", help="also write the result table as Markdown")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copy")
    args = ap.parse_args(argv)

    chosen = ALL
    if args.only:
        unknown = set(args.only) - {m.id for m in ALL}
        if unknown:
            ap.error(f"unknown mutant ids: {', '.join(sorted(unknown))}")
        chosen = [m for m in ALL if m.id in args.only]
    ids = [m.id for m in ALL]
    assert len(ids) == len(set(ids)), "duplicate mutant ids"

    tmp = Path(tempfile.mkdtemp(prefix="mutate-"))
    try:
        what = make_copy(tmp, args.worktree, args.overlay)
        if args.list:
            for m in chosen:
                orig, problem = apply(m, tmp)
                if orig is not None:
                    (tmp / m.file).write_text(orig)
                print(f"{m.id:5} {m.area:9} {'OK' if problem is None else problem:20.200}  {m.description}")
            return 0
        check_import_root(tmp)
        print(f"mutating a copy of {what} in {tmp}")
        print(f"python {platform.python_version()}, {'whole suite' if args.full else 'named tests'} per mutant")

        def tests_of(m):
            wanted = ["tests"] if args.full else (args.tests or list(m.tests))
            return [t for t in wanted if (tmp / t.split("::")[0]).exists()]

        if not args.no_baseline:
            targets = ["tests"] if args.full else sorted({t for m in chosen for t in tests_of(m)})
            print(f"baseline: {' '.join(targets)} ...", flush=True)
            status, secs, detail = run_tests(tmp, targets, args.timeout * 3)
            print(f"baseline: {status} in {secs:.0f} s {detail}", flush=True)
            if status != "pass":
                print("BASELINE FAILS: the unmutated code does not pass these tests; fix that first", file=sys.stderr)
                return 2

        rows = []
        for m in chosen:
            orig, problem = apply(m, tmp)
            if problem is not None:
                rows.append((m, problem.split(":")[0], 0.0, problem))
                print(f"!!! {m.id:5} {problem}", flush=True)
                continue
            tests = tests_of(m)
            missing = [t for t in (args.tests or m.tests) if not (tmp / t.split("::")[0]).exists()]
            try:
                if not tests:
                    status, secs, detail = "fail", 0.0, "NO TEST FILES: " + ", ".join(m.tests)
                    rows.append((m, "NO TESTS", secs, detail))
                    print(f"!!! {m.id:5} {detail}", flush=True)
                    continue
                status, secs, detail = run_tests(tmp, tests, args.timeout)
            finally:
                (tmp / m.file).write_text(orig)
            result = {"pass": "survived", "fail": "killed", "timeout": "timeout"}[status]
            if missing:
                detail = f"(missing test files: {', '.join(missing)}) {detail}"
            rows.append((m, result, secs, detail))
            flag = "   " if result != "survived" else "!!!"
            print(f"{flag} {m.id:5} {result:9} {secs:6.0f} s  {m.description}  {detail}", flush=True)

        counts: dict[str, int] = {}
        for _, result, _, _ in rows:
            counts[result] = counts.get(result, 0) + 1
        stale = [r for r in rows if r[1] not in ("killed", "survived", "timeout")]
        survived = [r for r in rows if r[1] == "survived"]
        summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        print(f"\n{len(rows)} mutants: {summary}")
        if survived:
            print("SURVIVED (the suite does not see these bugs): " + ", ".join(r[0].id for r in survived))
        if stale:
            print("\n" + "!" * 78, file=sys.stderr)
            print("STALE MUTANTS: the code changed under these; they were NOT run and are NOT counted as killed:",
                  file=sys.stderr)
            for m, result, _, detail in stale:
                print(f"  {m.id}: {detail}", file=sys.stderr)
            print("!" * 78, file=sys.stderr)
        if args.markdown:
            date = _dt.date.today().isoformat()
            how = (f"`python scripts/mutate.py{' --full' if args.full else ''}` on {what}, {date}: "
                   f"{summary}")
            Path(args.markdown).write_text(markdown(rows, how))
        return 2 if stale else (1 if survived else 0)
    finally:
        if args.keep:
            print(f"copy kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
