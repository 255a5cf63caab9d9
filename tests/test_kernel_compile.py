"""Every Triton kernel compiles to machine code for the GPUs edge-awq targets: the H100 (sm_90) and
Jetson Orin (sm_87), with the PTX assembler that ships inside Triton — no GPU needed. The
interpreter that runs the kernel tests on the CPU executes no PTX and checks no types, so this
catches what only a real compilation would."""

import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") == "1" and __name__ != "__main__":
    ops = tw = None  # kernels built for the interpreter cannot be compiled: a fresh process does it
else:
    from edge_awq.kernels import triton_ops as ops
    from edge_awq.kernels import triton_w4a16 as tw


def kernels(pdl: bool):
    """name → (kernel, signature, constexprs, warps): one configuration of each, as launched;
    ``pdl``: programmatic dependent launch (sm_90 only)."""
    SHIFTS = {f"S{j}": tw._SHIFTS[j] for j in range(8)}
    W = {"x_ptr": "*fp16", "qk_ptr": "*i32", "qz_ptr": "*i32", "s_ptr": "*fp16", "b_ptr": "*fp16", "y_ptr": "*fp16",
         "ws_ptr": "*fp32", "cnt_ptr": "*i32"}
    ATTN = {"qkv_ptr": "*fp32", "inv_ptr": "*fp32", "pos_ptr": "*i64", "k_ptr": "*fp16", "v_ptr": "*fp16",
            "out_ptr": "*fp16", "part_ptr": "*fp32", "ml_ptr": "*fp32", "cnt_ptr": "*i32", "scale": "fp32",
            "stride_kh": "i32", "stride_kt": "i32", "H": "i32", "HKV": "i32"}
    return {
        "row-h2": (tw._gemv_row_kernel, {**W, "N": "i32", "K": "i32", "k8": "i32", "split_k": "i32", "m12": "i32",
                                         "m16": "i32"},
                   dict(GROUP=128, BLOCK_N=32, CHUNK_K=256, H2=True, SPLIT=2, HAS_BIAS=True, ASM=True, PDL=pdl,
                        GATED=True, MMA=1, **SHIFTS), 1),
        "row-f32": (tw._gemv_row_kernel, {**W, "N": "i32", "K": "i32", "k8": "i32", "split_k": "i32", "m12": "i32",
                                          "m16": "i32"},
                    dict(GROUP=64, BLOCK_N=64, CHUNK_K=512, H2=False, SPLIT=1, HAS_BIAS=False, ASM=True,
                         PDL=False, GATED=False, MMA=0, **SHIFTS), 2),
        "dot-fp16": (tw._gemv_dot_kernel, {**W, "M": "i32", "N": "i32", "K": "i32", "k8": "i32", "stride_xm": "i32",
                                           "stride_ym": "i32", "groups_per_split": "i32", "split_k": "i32",
                                           "magic": "i32"},
                     dict(GROUP=128, BLOCK_M=16, BLOCK_N=64, SPLIT=2, HAS_BIAS=True, ASM=True, MMA=1, **SHIFTS), 4),
        "dot-bf16": (tw._gemv_dot_kernel, {**W, "x_ptr": "*bf16", "y_ptr": "*bf16", "M": "i32", "N": "i32", "K": "i32",
                                           "k8": "i32", "stride_xm": "i32", "stride_ym": "i32",
                                           "groups_per_split": "i32", "split_k": "i32", "magic": "i32"},
                     dict(GROUP=128, BLOCK_M=16, BLOCK_N=64, SPLIT=1, HAS_BIAS=False, ASM=True, MMA=0, **SHIFTS), 4),
        "dequant": (tw._dequant_kmajor_kernel, {"qk_ptr": "*i32", "qz_ptr": "*i32", "s_ptr": "*fp16", "w_ptr": "*bf16",
                                                "N": "i32", "K": "i32", "k8": "i32", "stride_g": "i32", "magic": "i32"},
                    dict(GROUP=128, BLOCK_N=64, BLOCK_K=128, ASM=True, MMA=1, **SHIFTS), 4),
        "add_rms_norm": (ops._add_rms_norm_kernel, {"x_ptr": "*fp32", "res_ptr": "*fp32", "w_ptr": "*fp16",
                                                    "y_ptr": "*fp16", "N": "i32", "eps": "fp32"},
                         dict(HAS_RES=True, BLOCK=4096, PDL=pdl), 4),
        "attn": (ops._attn_kernel, ATTN, dict(SPLITS=16, REP=4, REP_P=16, D=128, BLOCK_T=32, PDL=pdl), 4),
        "attn-one-split": (ops._attn_kernel, ATTN, dict(SPLITS=1, REP=1, REP_P=16, D=64, BLOCK_T=64, PDL=pdl), 4),
        "silu_mul": (ops._silu_mul_kernel, {"x_ptr": "*fp32", "y_ptr": "*fp16", "N": "i32"},
                     dict(BLOCK=1024, PDL=pdl), 4),
    }


def compile_all(arch: int) -> list[str]:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    done = []
    for name, (fn, sig, const, warps) in sorted(kernels(arch >= 90).items()):
        src = ASTSource(fn, {**sig, **{k: "constexpr" for k in const}}, const)
        k = compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, "num_stages": 2})
        assert k.asm["cubin"], name  # ptxas produced machine code
        done.append(name)
    return done


@pytest.mark.parametrize("arch", [90, 87])
def test_every_kernel_compiles(arch):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, __file__, str(arch)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["add_rms_norm", "attn", "attn-one-split", "dequant", "dot-bf16", "dot-fp16",
                                "row-f32", "row-h2", "silu_mul"]


if __name__ == "__main__":
    print("\n".join(compile_all(int(sys.argv[1]))))
