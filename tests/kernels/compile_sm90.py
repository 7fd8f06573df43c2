"""Compile every kernel for sm_90 (H100/H200) without a GPU: catches errors the interpreter cannot
(type-checking of runtime branches, dot shapes, layouts). Run by test_kernel_compile.py in a fresh
process, since TRITON_INTERPRET must be unset when the kernels are defined."""

from __future__ import annotations

import inspect
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from diffill_kernels import attention as A
from diffill_kernels import lm_head as L
from diffill_kernels import rmsnorm as N
from diffill_kernels import rope as R
from diffill_kernels import swiglu as S

TARGET = GPUTarget("cuda", 90, 32)


def compile_one(fn, ptrs: dict[str, str], consts: dict, floats: tuple[str, ...] = ()) -> None:  # noqa: ANN001
    names = list(inspect.signature(fn.fn).parameters)
    sig = {n: "constexpr" if n in consts else "*" + ptrs[n] if n in ptrs else "fp32" if n in floats else "i32"
           for n in names}  # fmt: skip
    constexprs = {(names.index(k),): v for k, v in consts.items()}
    triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs), target=TARGET)


@triton.jit
def _probe(X):
    pass


def main() -> int:
    try:
        compile_one(_probe, {"X": "fp32"}, {})
    except Exception as e:  # noqa: BLE001
        import torch

        if torch.cuda.is_available():  # a GPU machine must be able to compile: a broken toolchain fails
            print(f"FAIL the sm_90 probe did not compile on a machine with a GPU: {type(e).__name__}: {e}")
            return 1
        print(f"SKIP no sm_90 toolchain (and no GPU): {type(e).__name__}: {e}")
        return 0
    bf = "bf16"
    f32 = "fp32"
    attn_ptrs = dict(Q=bf, K=bf, V=bf, Out=bf, KM="u8", PO=f32, PM=f32, PL=f32)
    attn32_ptrs = dict(Q=f32, K=f32, V=f32, Out=f32, KM="u8", PO=f32, PM=f32, PL=f32)
    rope_ptrs = dict(QKV=bf, COS=f32, SIN=f32, QW=bf, KW=bf, QO=bf, KC=bf, VC=bf, START="i32", WM="u8")
    head_ptrs = dict(H=bf, W=bf, ROWS="i64", BIAS=f32, PM=f32, PS=f32, PT=f32, PI="i32", P2=f32)
    comb_ptrs = dict(PM=f32, PS=f32, PT=f32, PI="i32", P2=f32, TOK="i64", PROB=f32, ENT=f32, MARGIN=f32)
    cases = [
        ("attention split", A._attn_split_kernel, attn_ptrs,
         dict(GROUPS=7, BLOCK_M=64, BLOCK_N=64, BLOCK_D=128, HAS_MASK=True, SPLIT=True, DOT_PREC="tf32",
              UPCAST=False), ("scale_log2",)),
        ("attention fp32 prefill", A._attn_split_kernel, attn32_ptrs,
         dict(GROUPS=1, BLOCK_M=64, BLOCK_N=64, BLOCK_D=64, HAS_MASK=False, SPLIT=False, DOT_PREC="ieee",
              UPCAST=False), ("scale_log2",)),
        ("attention combine", A._attn_combine_kernel, dict(PO=f32, PM=f32, PL=f32, Out=bf),
         dict(BLOCK_R=16, BLOCK_S=16, BLOCK_D=128), ()),
        ("add_rmsnorm", N._add_rmsnorm_kernel, dict(X=bf, R=bf, W=bf, Y=bf, RO=bf),
         dict(HAS_RES=True, BLOCK_R=2, BLOCK=4096), ("eps",)),
        ("rope", R._rope_qkv_kernel, rope_ptrs,
         dict(START_FROM_PTR=True, QK_NORM=True, HAS_WM=True, BLOCK_T=64, BLOCK_H=64), ("eps",)),
        ("swiglu", S._swiglu_kernel, dict(X=bf, Y=bf), dict(BLOCK=4096), ()),
        ("lm_head partial", L._lm_head_partial_kernel, head_ptrs,
         dict(HAS_ROWS=True, HAS_BIAS=True, BLOCK_M=64, BLOCK_V=128, BLOCK_K=64, DOT_PREC="tf32",
              UPCAST=False), ()),
        ("lm_head combine", L._lm_head_combine_kernel, comb_ptrs, dict(BLOCK_R=16, BLOCK_S=64), ()),
    ]  # fmt: skip
    failed = 0
    for label, fn, ptrs, consts, floats in cases:
        try:
            compile_one(fn, ptrs, consts, floats)
            print(f"OK {label}")
        except Exception as e:  # noqa: BLE001 - report every kernel, then fail
            failed += 1
            print(f"FAIL {label}: {type(e).__name__}: {e}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
