"""Every shipped kernel configuration compiles for sm_80 and sm_90 on this CPU-only machine.

``python -m kernels._compile`` lowers each configuration with ``triton.compile`` for a real
GPU target and fails on register spills or, for the kernels built on ``tl.dot``, on PTX without
tensor-core (mma/wgmma) instructions. It runs in subprocesses (one per architecture, in parallel)
because this test session has ``TRITON_INTERPRET=1``, under which kernels cannot be lowered.
The compiler's report (registers, shared memory, warps, spills) is printed: ``pytest -s`` shows it.
"""

import os
import subprocess
import sys

import pytest

from kernels._compile import ARCHS, all_specs


@pytest.fixture(scope="module")
def reports():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    procs = {arch: subprocess.Popen([sys.executable, "-m", "kernels._compile", "--arch", str(arch)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for arch in ARCHS}
    return {arch: proc.communicate(timeout=900) + (proc.returncode,) for arch, proc in procs.items()}


def test_every_kernel_ships_configurations():
    names = {spec.name.split("[")[0] for spec in all_specs()}
    for kernel in ("attn_fwd", "attn_dkdv", "attn_dq", "fused_adamw", "scaled_init",
                   "layer_norm_fwd", "layer_norm_bwd", "embedding_layer_norm_fwd", "embedding_layer_norm_bwd"):
        assert kernel in names, (kernel, sorted(names))


@pytest.mark.parametrize("arch", ARCHS)
def test_compiles_without_spills_and_with_tensor_cores(reports, arch):
    out, err, code = reports[arch]
    print(out)
    lines = [line for line in out.splitlines() if line.startswith(f"sm_{arch} ")]
    assert code == 0, "\n".join(line for line in out.splitlines() if "FAIL" in line) or err[-2000:]
    assert len(lines) == len(all_specs())
    assert all("registers=" in line and "shared=" in line for line in lines)
