"""Compile a W4A16 Triton kernel for a GPU architecture without a GPU and count its SASS.

    python tools/kernel_sass.py row --arch 90 --block-n 32 --chunk-k 512 --warps 2
    python tools/kernel_sass.py dot --arch 87 --block-n 64 --warps 4
    python tools/kernel_sass.py gluon-row --arch 90 --rpt 8 --wpt 4 --tk 8 --warps 1 [--int-dot]

Uses Triton's bundled ptxas and nvdisasm, so it runs on the CPU machine: registers, spills,
shared memory, and an instruction histogram (opcode without modifiers) per weight handled by one
program. The instruction counts are what the roofline arithmetic needs (how many issue slots per
weight) and cost no device time; timings still come from tools/bench_kernels.py on the GPU.
"""

from __future__ import annotations

import argparse
import collections
import math
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile

from edge_awq.kernels import triton_w4a16 as tw

SHIFTS = {f"S{j}": tw._SHIFTS[j] for j in range(8)}
PTRS = ("x_ptr", "qk_ptr", "qz_ptr", "s_ptr", "b_ptr", "y_ptr", "ws_ptr", "cnt_ptr")


def _source(fn, sig: dict, const: dict, aligned: tuple[str, ...]) -> ASTSource:
    """As the JIT specialises a launch: pointers 16-byte aligned, integers that are multiples of 16
    (true of every Llama shape) marked so."""
    names = list(sig) + list(const)
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    return ASTSource(fn, {**sig, **{k: "constexpr" for k in const}}, const, attrs)


def build(kind: str, a) -> tuple[ASTSource, int]:
    """(source, weights one program handles)."""
    types = {"x_ptr": "*fp16", "qk_ptr": "*i32", "qz_ptr": "*i32", "s_ptr": "*fp16", "b_ptr": "*fp16",
             "y_ptr": "*fp16", "ws_ptr": "*fp32", "cnt_ptr": "*i32"}
    if kind == "row":
        sig = {**types, "N": "i32", "K": "i32", "k8": "i32", "split_k": "i32", "m12": "i32", "m16": "i32"}
        const = dict(GROUP=a.group, BLOCK_N=a.block_n, CHUNK_K=a.chunk_k, H2=a.h2, SPLIT=2, HAS_BIAS=False,
                     ASM=True, PDL=False, GATED=False, MMA=1, **SHIFTS)
        return _source(tw._gemv_row_kernel, sig, const, aligned=(*PTRS, "N", "K", "k8")), a.block_n * a.chunk_k
    if kind == "dot":
        sig = {**types, "M": "i32", "N": "i32", "K": "i32", "k8": "i32", "stride_xm": "i32", "stride_ym": "i32",
               "groups_per_split": "i32", "split_k": "i32", "magic": "i32"}
        const = dict(GROUP=a.group, BLOCK_M=16, BLOCK_N=a.block_n, SPLIT=2, HAS_BIAS=False, ASM=True, MMA=1, **SHIFTS)
        return (_source(tw._gemv_dot_kernel, sig, const, aligned=(*PTRS, "N", "K", "k8", "stride_xm", "stride_ym")),
                a.block_n * a.group)
    raise SystemExit(f"unknown kernel kind {kind!r}")


def registers(cubin: bytes) -> str:
    """Registers and spill stores of a cubin, from the bundled cuobjdump."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+).*?STACK:(\d+)", out)
    return f"{m.group(1)} registers, stack {m.group(2)} B" if m else "registers ?"


def loop_body(sass: str) -> list[str]:
    """Instructions of the largest backward-branching loop (label … BRA label)."""
    lines = [ln for ln in sass.splitlines() if ln.strip()]
    labels = {ln.strip().rstrip(":"): i for i, ln in enumerate(lines) if re.match(r"^\.?L\w+:$", ln.strip())}
    best: list[str] = []
    for i, ln in enumerate(lines):
        m = re.search(r"BRA\s+`?\(?\.?(L\w+)", ln)
        if m and m.group(1) in labels and labels[m.group(1)] < i and i - labels[m.group(1)] > len(best):
            best = [x for x in lines[labels[m.group(1)] + 1: i + 1] if not x.strip().endswith(":")]
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["row", "dot", "gluon-row"])
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--block-n", type=int, default=32)
    ap.add_argument("--chunk-k", type=int, default=512)
    ap.add_argument("--warps", type=int, default=2)
    ap.add_argument("--stages", type=int, default=1)
    ap.add_argument("--h2", action="store_true", help="row kernel: half2 products")
    ap.add_argument("--rpt", type=int, default=8, help="gluon-row: columns per thread")
    ap.add_argument("--wpt", type=int, default=4, help="gluon-row: words per thread")
    ap.add_argument("--tk", type=int, default=8, help="gluon-row: threads along k")
    ap.add_argument("--int-dot", action="store_true", help="gluon-row: integer products (dp2a)")
    ap.add_argument("--tsum", action="store_true", help="gluon-row: sum over k through shared memory")
    ap.add_argument("--xs", action="store_true", help="gluon-row: x rounded once per warp (with --int-dot)")
    ap.add_argument("--dump", action="store_true", help="print the SASS")
    a = ap.parse_args()
    if a.kind == "gluon-row":  # the Gluon one-row kernel, mma order, group 128
        from edge_awq.kernels import gluon_w4a16 as gk
        k = gk.compile_row_for(a.arch, rpt=a.rpt, tk=a.tk, warps=a.warps, wpt=a.wpt, int_dot=a.int_dot, tsum=a.tsum,
                               x_shared=a.xs)
        weights = math.prod(gk.row_tile(a.rpt, a.tk, a.warps, a.wpt))
    else:
        src, weights = build(a.kind, a)
        k = compile(src, target=GPUTarget("cuda", a.arch, 32), options={"num_warps": a.warps, "num_stages": a.stages})
    sass = k.asm["sass"]
    if a.dump:
        print(sass)
    ops = collections.Counter()
    for line in sass.splitlines():
        m = re.match(r"\s*(?:/\*[0-9a-f]+\*/)?\s*(?:[-0-9a-fY:]+\t)?\s*(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)[.\s;]", line)
        if m:
            ops[m.group(1)] += 1
    threads = 32 * a.warps
    total = sum(ops.values())
    loop = loop_body(sass)
    if loop:  # the K loop: one group of K per iteration
        print(f"K loop: {len(loop)} instructions per iteration, {len(loop) * threads / (a.block_n * a.group):.2f} "
              "per weight")
    meta = k.metadata
    opts = f"{' int' * a.int_dot}{' tsum' * a.tsum}{' xs' * a.xs}"
    tile = (f"rpt={a.rpt} wpt={a.wpt} tk={a.tk}{opts}" if a.kind == "gluon-row"
            else f"block_n={a.block_n} chunk_k={a.chunk_k}")
    print(f"{a.kind} sm_{a.arch} {tile} warps={a.warps}: {registers(k.asm['cubin'])}, "
          f"shared {meta.shared} B, {total} SASS instructions (static), weights/program {weights}, "
          f"instructions per weight per thread-slot {total * threads / weights:.2f}")
    for op, c in ops.most_common(25):
        print(f"  {op:10s} {c:5d}  {c * threads / weights:.3f}/weight")


if __name__ == "__main__":
    main()
