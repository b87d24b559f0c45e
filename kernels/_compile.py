"""Ahead-of-time compilation of the shipped kernel configurations for real GPUs.

``triton.compile`` lowers a kernel to PTX and cubin for a chosen architecture without a GPU,
so a CPU-only machine can prove every configuration we ship builds for sm_80 and sm_90 and
read what the compiler reports (registers, local-memory spills, shared memory). Each kernel module lists
its shipped configurations as ``CompileSpec``s in ``compile_specs()``.

Run ``python -m kernels._compile`` for the report. It must run with ``TRITON_INTERPRET``
unset: under the interpreter ``@triton.jit`` yields interpreted functions that cannot be
lowered.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
from typing import Any, Callable

import torch

ARCHS = (80, 90)
# a tensor dtype as a CompileSpec signature names its pointer element type
SIGNATURE_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclasses.dataclass(frozen=True)
class CompileSpec:
    name: str  # human-readable, e.g. "attention_fwd[D=64,BLOCK_M=64,fp16]"
    fn: Callable  # the @triton.jit function
    signature: dict[str, Any]  # argument -> Triton type ("*fp32", "i32", "constexpr", ...; a tuple of them)
    constexprs: dict[str, Any]
    num_warps: int = 4
    num_stages: int = 2
    tensor_cores: bool = False  # the PTX must contain mma/wgmma instructions
    ptx_counts: tuple[tuple[str, int], ...] = ()  # (regex, exactly how many times it must match the PTX)
    archs: tuple[int, ...] = ARCHS  # the architectures it is built for


@dataclasses.dataclass
class CompileReport:
    spec: CompileSpec
    arch: int
    shared_bytes: int
    num_warps: int
    registers: int | None
    spill_bytes: int | None
    ptx: str

    def line(self) -> str:
        regs = "?" if self.registers is None else self.registers
        spill = "?" if self.spill_bytes is None else self.spill_bytes
        allowed = allowed_spill(self)
        return (f"sm_{self.arch} {self.spec.name}: warps={self.num_warps} shared={self.shared_bytes} B "
                f"registers={regs} spills={spill} B" + (f" (allowed: {allowed})" if allowed else ""))


def triton_version() -> tuple[int, int]:
    import triton

    major, minor = re.match(r"(\d+)\.(\d+)", triton.__version__).groups()
    return int(major), int(minor)


# The one known stack use that is not a register spill, allowed by name and in exactly its shape.
# scaled_init draws tl.randn, whose Box-Muller step takes cos(2*pi*u) with u in [0, 1). libdevice's
# cosf has a Payne-Hanek slow path for |x| >= 105615 that builds x * 2/pi in a 28-byte array of 7 words
# (from the __cudart_i2opi_f table) in local memory: the PTX declares it as ``__local_depot0[28]``, and
# ptxas -v reports "32 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads" -- no register
# spilled, and the path is never taken (|2*pi*u| < 6.3). Triton 3.6 and 3.8 emit PTX whose array stays
# in local memory (under ptxas 12.8, 12.9 and 13.4 alike); Triton 3.9's PTX lets ptxas keep it in
# registers (stack 0), so before 3.9 only.
_LIBDEVICE_TRIG_DEPOT = re.compile(r"^\s*\.local\s+\.align\s+4\s+\.b8\s+__local_depot0\[28\];\s*$", re.M)


def allowed_spill(report: CompileReport) -> str | None:
    """Why the stack bytes of ``report`` are allowed, or None: only scaled_init's libdevice cosf array
    (see above), on Triton < 3.9, exactly 32 B, and a PTX whose only local memory is that array."""
    if not report.spill_bytes or not report.spec.name.startswith("scaled_init[") or triton_version() >= (3, 9):
        return None
    locals_ = re.findall(r"^\s*\.local\b.*$", report.ptx, re.M)
    if (report.spill_bytes != 32 or len(locals_) != 1 or not _LIBDEVICE_TRIG_DEPOT.match(locals_[0])
            or "__cudart_i2opi_f" not in report.ptx):
        return None
    return "libdevice cosf's Payne-Hanek array, unreachable from Box-Muller; Triton < 3.9"


def _resource_usage(cubin: bytes) -> tuple[int | None, int | None]:
    """Registers per thread and stack + local-memory (spill) bytes, read from the cubin by ``cuobjdump``."""
    import os
    import tempfile

    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):  # pragma: no cover - layout differs between Triton builds
        return None, None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    regs = re.search(r"REG:(\d+)", text)
    # ptxas puts register spills in the stack frame (STACK) or local memory (LOCAL): count both.
    spilled = [int(v) for v in re.findall(r"(?:STACK|LOCAL):(\d+)", text)]
    return (int(regs.group(1)) if regs else None, sum(spilled) if spilled else None)


def compile_spec(spec: CompileSpec, arch: int) -> CompileReport:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, constexprs = spec.signature, spec.constexprs
    if "PDL" in spec.fn.arg_names and "PDL" not in signature:  # the launch-time default, off
        signature, constexprs = {**signature, "PDL": "constexpr"}, {**constexprs, "PDL": False}
    src = ASTSource(fn=spec.fn, signature=signature, constexprs=constexprs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})
    ptx = compiled.asm["ptx"]
    regs, spill = _resource_usage(compiled.asm["cubin"])
    return CompileReport(spec, arch, compiled.metadata.shared, compiled.metadata.num_warps, regs, spill, ptx)


def all_specs(pdl_every: bool = False) -> list[CompileSpec]:
    """Every shipped configuration of every kernel in the package, and its PDL builds (``pdl_specs``: each
    kernel's first and last configuration, or with ``pdl_every`` all of them)."""
    import importlib

    specs: list[CompileSpec] = []
    for module in ("fused_attention", "adamw", "init", "fused_layer_norm", "fused_embedding",
                   "fused_cross_entropy", "batch_draw", "weight_grads", "token_embedding", "matmul", "readout_attention"):
        mod = importlib.import_module(f"kernels.{module}")
        if hasattr(mod, "compile_specs"):
            specs.extend(mod.compile_specs())
    return specs + pdl_specs(specs, every=pdl_every)


def pdl_specs(specs: list[CompileSpec], every: bool = False) -> list[CompileSpec]:
    """Each kernel's first and last configuration (``every``: all of them) built with ``PDL`` (programmatic
    dependent launch, ``kernels._pdl``), for sm_90 only: the instructions need it. ``problems`` checks that
    their PTX waits before anything else it does. (Not scaled_init: it runs once per tensor at a model's
    start, in no step, and Triton 3.6 sets up its stack frame before any first statement.)"""
    picked = [spec for spec in specs if "PDL" in spec.fn.arg_names]
    if not every:
        firsts: dict[Callable, CompileSpec] = {}
        lasts: dict[Callable, CompileSpec] = {}
        for spec in picked:
            firsts.setdefault(spec.fn, spec)
            lasts[spec.fn] = spec
        picked = list({spec.name: spec for spec in [*firsts.values(), *lasts.values()]}.values())
    return [dataclasses.replace(spec, name=spec.name[:-1] + ",PDL]", archs=(90,),
                                signature={**spec.signature, "PDL": "constexpr"},
                                constexprs={**spec.constexprs, "PDL": True}) for spec in picked]


# With PDL a kernel's griddepcontrol.wait must come first: before it, the entry block may hold only what
# touches no memory and decides nothing -- parameter loads and register moves (and directives, labels,
# comments, braces). An allow-list, so that an instruction form not foreseen here fails the check.
_BEFORE_WAIT_OK = re.compile(r"^(?:ld\.param|mov)\b")


def _pdl_problems(ptx: str) -> list[str]:
    waits = re.findall(r"\bgriddepcontrol\.wait\b", ptx)
    signals = re.findall(r"\bgriddepcontrol\.launch_dependents\b", ptx)
    if len(waits) != 1 or len(signals) != 1:
        return [f"PDL build with {len(waits)} griddepcontrol.wait and {len(signals)} launch_dependents, "
                "expected 1 each"]
    for line in ptx[:ptx.index("griddepcontrol.wait")].splitlines():
        code = line.split("//")[0].strip(" \t{}();")
        if not code or code.startswith((".", "$")):  # directives (.entry, .param, .reg, .loc ...), labels
            continue
        if not _BEFORE_WAIT_OK.match(code):  # (a predicated instruction, "@%p1 ...", is not allowed either)
            return [f"PDL build runs {code.split()[0]!r} before griddepcontrol.wait"]
    return []


def problems(report: CompileReport) -> list[str]:
    """What is wrong with a compiled configuration: spills (but the one allowed above), no tensor-core
    instructions where expected, a PTX instruction count other than the spec's ``ptx_counts``, or a PDL
    build that may touch memory before its wait."""
    out = []
    if report.spill_bytes and not allowed_spill(report):
        out.append(f"{report.spill_bytes} B spilled")
    if report.spec.tensor_cores and not re.search(r"\b(w?gmma|mma)\.", report.ptx):
        out.append("no mma/wgmma instruction in the PTX")
    for pattern, want in report.spec.ptx_counts:
        got = len(re.findall(pattern, report.ptx))
        if got != want:
            out.append(f"{got} matches of {pattern!r} in the PTX, expected {want}")
    if report.spec.constexprs.get("PDL"):
        out.extend(_pdl_problems(report.ptx))
    return out


def main(argv: list[str] | None = None) -> int:
    """Compile every shipped configuration, print the compiler's report, fail on spills or missing mma."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m kernels._compile")
    parser.add_argument("--arch", type=int, action="append", choices=ARCHS,
                        help="compute capability x10 (default: all of 80, 90)")
    parser.add_argument("--pdl-all", action="store_true",
                        help="build every configuration with PDL too (sm_90), not each kernel's first and last")
    args = parser.parse_args(argv)
    failed = 0
    for spec in all_specs(pdl_every=args.pdl_all):
        for arch in args.arch or ARCHS:
            if arch not in spec.archs:
                continue
            report = compile_spec(spec, arch)
            issues = problems(report)
            failed += bool(issues)
            print(report.line() + ("" if not issues else "  FAIL: " + "; ".join(issues)), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
