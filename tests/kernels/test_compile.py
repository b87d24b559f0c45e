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

import kernels._compile as compile_mod
from kernels._compile import ARCHS, CompileReport, CompileSpec, all_specs, problems


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
                   "layer_norm_fwd", "layer_norm_bwd", "embedding_layer_norm_fwd", "embedding_layer_norm_bwd",
                   "cross_entropy", "draw_batch", "weight_grads", "matmul", "token_embedding_fwd",
                   "token_embedding_bwd"):
        assert kernel in names, (kernel, sorted(names))


@pytest.mark.parametrize("arch", ARCHS)
def test_compiles_without_spills_and_with_tensor_cores(reports, arch):
    out, err, code = reports[arch]
    print(out)
    lines = [line for line in out.splitlines() if line.startswith(f"sm_{arch} ")]
    assert code == 0, "\n".join(line for line in out.splitlines() if "FAIL" in line) or err[-2000:]
    assert len(lines) == len([spec for spec in all_specs() if arch in spec.archs])
    assert all("registers=" in line and "shared=" in line for line in lines)


# The shape of Triton 3.6's PTX for scaled_init: libdevice cosf's slow-path array and its 2/pi table.
_TRIG_PTX = (".global .align 4 .b8 __cudart_i2opi_f[24] = {65, 144};\n"
             ".visible .entry _init_kernel(\n)\n{\n\t.local .align 4 .b8 \t__local_depot0[28];\n"
             "\tst.local.b32 \t[%r1260], %r915;\n}\n")


def _report(name, spill, ptx=_TRIG_PTX, ptx_counts=()):
    spec = CompileSpec(name=name, fn=None, signature={}, constexprs={}, ptx_counts=ptx_counts)
    return CompileReport(spec, 90, 0, 4, 64, spill, ptx)


@pytest.mark.parametrize("version", [(3, 6), (3, 8)])
def test_only_scaled_inits_libdevice_trig_array_is_allowed_before_triton_3_9(monkeypatch, version):
    """The allowance for scaled_init's 32 B (libdevice cosf's Payne-Hanek array, see kernels/_compile.py)
    is exactly that: the kernel by name, that size, that PTX, a Triton before 3.9. Anything else spills."""
    monkeypatch.setattr(compile_mod, "triton_version", lambda: version)
    init = "scaled_init[BLOCK=1024,fp32,seed:i32]"
    assert problems(_report(init, 32)) == [] and "allowed: libdevice" in _report(init, 32).line()
    assert problems(_report(init, 0)) == []
    for report in (_report("layer_norm_bwd[BLOCK_M=4,BLOCK_N=512,bf16]", 32),  # another kernel
                   _report(init, 40),  # more than the array
                   _report(init, 32, ptx=_TRIG_PTX.replace("[28]", "[32]")),  # another local array
                   _report(init, 32, ptx=_TRIG_PTX + "\t.local .align 8 .b8 \t__local_depot1[8];\n"),
                   _report(init, 32, ptx=_TRIG_PTX.replace("__cudart_i2opi_f", "table"))):
        assert problems(report) == [f"{report.spill_bytes} B spilled"], report.spec.name
        assert "allowed" not in report.line()
    monkeypatch.setattr(compile_mod, "triton_version", lambda: (3, 9))
    assert problems(_report(init, 32)) == ["32 B spilled"]


def test_ptx_counts_are_exact():
    one = "@%p1 atom.global.gpu.relaxed.add.u32 %r4, [ %rd8 + 0 ], %r5;\n"
    counts = ((r"\batom\.", 1),)
    assert problems(_report("fused_adamw[x]", 0, one, counts)) == []
    for ptx, got in (("ld.global.b32 %r1, [%rd1];\n", 0), (one * 2, 2)):
        (problem,) = problems(_report("fused_adamw[x]", 0, ptx, counts))
        assert problem.startswith(f"{got} matches of") and problem.endswith("expected 1")


def test_every_kernel_has_a_pdl_build_for_sm_90_only():
    """Each kernel but scaled_init takes the PDL constexpr (kernels._pdl) and ships a build with it on, for sm_90
    alone."""
    specs = all_specs()
    kernels = {spec.fn for spec in specs if not spec.constexprs.get("PDL")}
    pdl = [spec for spec in specs if spec.constexprs.get("PDL")]
    no_pdl = {fn.__name__ for fn in kernels if "PDL" not in fn.arg_names}
    assert no_pdl == {"_init_kernel"}  # (once per tensor at a model's start: tests/kernels/test_pdl.py's NO_PDL)
    assert {spec.fn for spec in pdl} == {fn for fn in kernels if fn.__name__ not in no_pdl}
    assert all(spec.archs == (90,) and spec.name.endswith(",PDL]") for spec in pdl)
    assert all(spec.archs == ARCHS for spec in specs if not spec.constexprs.get("PDL"))


# The start of a PDL build as Triton writes it: directives, a label, comments, parameter loads and moves,
# then the wait.
_PDL_PTX = (".version 8.7\n.target sm_90a\n.address_size 64\n\n.visible .entry k(\n\t.param .u64 .ptr .global .align 1 "
            "k_param_0\n)\n.reqntid 128\n{\n\t.reg .b32 \t%r<9>;\n$L__func_begin0:\n\t.loc\t1 8 0 // k.py:8:0\n"
            "\tld.param.b64 \t%rd1, [k_param_0];\n\tmov.u32 \t%r1, %tid.x;\n\t// begin inline asm\n"
            "\tgriddepcontrol.wait ;\n\t// end inline asm\n\tgriddepcontrol.launch_dependents ;\n"
            "\tsetp.lt.s32 \t%p1, %r1, 4;\n\t@%p1 ld.global.b32 \t%r2, [ %rd1 + 0 ];\n\t@!%p1 bra \t$L__BB0_2;\n}\n")


def _pdl_report(ptx):
    spec = CompileSpec(name="k[PDL]", fn=None, signature={}, constexprs={"PDL": True})
    return CompileReport(spec, 90, 0, 4, 64, 0, ptx)


def test_a_pdl_build_must_wait_before_it_touches_memory_or_branches():
    assert problems(_pdl_report(_PDL_PTX)) == []
    wait = "\tgriddepcontrol.wait ;\n"
    # what the wait must precede -- memory in any form, a branch, a call -- and what need not, but is not
    # foreseen (an allow-list: anything but parameter loads and moves fails)
    for early in ("\t@%p1 ld.global.b32 \t%r2, [ %rd1 + 0 ];\n", "\tst.shared.b32 \t[%r1], %r2;\n",
                  "\tcp.async.ca.shared.global [ %r1 + 0 ], [ %rd1 + 0 ], 0x4, %r2;\n",
                  "\tatom.global.gpu.relaxed.add.u32 %r4, [ %rd8 + 0 ], %r5;\n", "\tbra.uni \t$L__BB0_1;\n",
                  "\tldu.global.u32 \t%r3, [%rd1];\n", "\t{ ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];\n",
                  "\tcall.uni \tvprintf, (param0, param1);\n", "\t@!%p2 mov.u32 \t%r5, 0;\n",
                  "\tsetp.lt.s32 \t%p1, %r1, 4;\n"):
        (problem,) = problems(_pdl_report(_PDL_PTX.replace(wait, early + wait)))
        assert "before griddepcontrol.wait" in problem, early
    for ptx in (_PDL_PTX.replace(wait, ""), _PDL_PTX.replace(wait, wait * 2),
                _PDL_PTX.replace("\tgriddepcontrol.launch_dependents ;\n", "")):
        (problem,) = problems(_pdl_report(ptx))
        assert "expected 1 each" in problem
    no_pdl = CompileReport(CompileSpec(name="k", fn=None, signature={}, constexprs={}), 90, 0, 4, 64, 0, "")
    assert problems(no_pdl) == []
