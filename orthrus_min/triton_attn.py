"""Block attention in Triton: K new queries over a KV cache, causal or bidirectional inside the block.

This is the one attention that Orthrus (arXiv 2605.12825, §3) needs. Both views of the
model run a block of T <= MAX_BLOCK (64) new tokens at positions L … L+T-1 against the same cache:

    keys 0 … L-1        the cached prefix, visible to every query of the block
    keys L … L+T-1      the block's own keys, written into the cache right after the prefix;
                        causal inside the block for the AR view (verify: query i sees block
                        keys <= i), all visible for the diffusion view (draft: bidirectional)

so one kernel reads one contiguous key range and applies that in-block rule.

The kernel is flash attention (Dao et al., 2022, "FlashAttention"; Triton's fused-attention
tutorial) specialised for decoding:
  * online softmax in fp32: running max `m_i`, running sum `l_i`, unnormalised output `acc`,
    with exp2 and the softmax scale folded together with 1/ln 2;
  * grouped-query attention: the H/Hkv query heads that share a KV head are packed into the
    rows of one tile (row r = g * T + i), so each K/V tile is read from memory once per KV head;
  * flash-decoding (Dao et al., 2023, "Flash-Decoding for long-context inference"): the key
    range is split across programs, each writes a partial output and its log-sum-exp, and a
    second small kernel combines them;
  * batch invariance (docs/ARCHITECTURE.md, "What exact means"): a query's arithmetic does not
    depend on the block size T, the batch or the cache capacity — every split holds the same
    KEYS_PER_SPLIT keys (never a function of T, of the number of row tiles or of the GPU's SM
    count), the tile shapes are fixed per dtype and head_dim, and the combine adds the splits
    one after another in key order, so a query alone (AR decoding) and inside a verify block
    gives the same bits.

Read in order: the PyTorch reference -> the kernels -> the launcher -> `block_attention`, the
public function (the model calls it when its attention backend is "triton", see `model.plan_attention`).

On the CPU, Triton runs kernels only in its interpreter, and it decides when this module is
imported: set the environment variable TRITON_INTERPRET=1 *before* `orthrus_min.triton_attn`
is first imported (the tests do it at the top of their module). The interpreter is slow and
computes `tl.dot` on bf16 inputs wrongly, so use it with fp32 tensors (teaching and tests).

Shape vocabulary: B batch, H query heads, Hkv KV heads, G = H / Hkv, T queries in the block,
L cached prefix length, S = keys in the K/V views (L + T, or more with per-row `lengths`), D head_dim.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import triton
import triton.language as tl

from .errors import OrthrusError

MAX_BLOCK = 64  # the most queries (T) per kernel launch; `block_attention` runs a longer causal block in pieces of this
KEYS_PER_SPLIT = 256  # flash-decoding: keys per split, fixed, so that a query's reduction order never depends on T or the GPU
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# --------------------------------------------------------------------------- reference


def reference_block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                              lengths: torch.Tensor | None = None) -> torch.Tensor:
    """The same function as `block_attention`, in plain PyTorch (fp32 math); the tests' yardstick.

    q (B, H, T, D); k, v (B, Hkv, S, D); lengths (B,) prefix length per row, or None for L = S - T.
    Returns (B, H, T, D) in q's dtype.
    """
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    prefix = torch.full((B,), S - T, device=q.device) if lengths is None else lengths.to(q.device, torch.long)  # (B,)
    key = torch.arange(S, device=q.device)  # (S,)
    query_pos = prefix[:, None] + torch.arange(T, device=q.device)  # (B, T): absolute position of each query
    visible = (key < (prefix + T)[:, None])[:, None, :].expand(B, T, S)  # (B, T, S): keys that exist for this row
    if causal:
        visible = visible & (key <= query_pos[:, :, None])  # (B, T, S): ... and are not in the future
    k = k.float().repeat_interleave(H // Hkv, dim=1)  # (B, H, S, D): query head h uses KV head h // G
    v = v.float().repeat_interleave(H // Hkv, dim=1)  # (B, H, S, D)
    scores = q.float() @ k.transpose(-1, -2) * D**-0.5  # (B, H, T, S)
    scores = scores.masked_fill(~visible[:, None], float("-inf"))  # (B, H, T, S)
    return (scores.softmax(dim=-1) @ v).to(q.dtype)  # (B, H, T, D)


# --------------------------------------------------------------------------- kernels


@triton.jit
def _attend_to_tile(
    acc, l_i, m_i, q, k_base, v_base, start_n, end, q_pos, stride_ks, stride_vs, qk_scale,
    CAUSAL: tl.constexpr, MASKED: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr, ROWWISE: tl.constexpr,
):
    """One online-softmax step: folds keys start_n … start_n+BLOCK_N-1 into (acc, l_i, m_i).

    MASKED=False is for tiles that lie wholly in the cached prefix: every key exists and every
    query sees it, so no mask is built. MASKED=True handles the last tiles: keys at or past
    `end` do not exist, and with CAUSAL a query at position q_pos sees keys <= q_pos only.
    ROWWISE (the interpreter only): products summed explicitly instead of `tl.dot` (see `_launch`).
    """
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k_ptrs = k_base + offs_n[:, None] * stride_ks + offs_d[None, :]  # the last dim has stride 1 (checked by the launcher)
    v_ptrs = v_base + offs_n[:, None] * stride_vs + offs_d[None, :]
    if MASKED:
        in_range = offs_n < end
        k = tl.load(k_ptrs, mask=in_range[:, None], other=0.0)  # [BLOCK_N, BLOCK_D]
    else:
        k = tl.load(k_ptrs)  # [BLOCK_N, BLOCK_D]

    # [BLOCK_M, BLOCK_N]: scores in log2 units (qk_scale = D**-0.5 / ln 2, so exp2 gives exp)
    if ROWWISE:
        s = tl.sum(q[:, None, :] * k[None, :, :], 2) * qk_scale
    else:
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    if MASKED:
        if CAUSAL:
            visible = in_range[None, :] & (offs_n[None, :] <= q_pos[:, None])
        else:
            visible = in_range[None, :]
        s = tl.where(visible, s, float("-inf"))

    m_new = tl.maximum(m_i, tl.max(s, 1))
    # A row may see no key at all in this tile and before it (causal, inside one split):
    # subtract 0 instead of -inf then, so exp2 gives 0 rather than NaN.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.math.exp2(m_i - m_safe)  # rescales what was summed under the old max
    p = tl.math.exp2(s - m_safe[:, None])  # [BLOCK_M, BLOCK_N]
    l_i = l_i * alpha + tl.sum(p, 1)

    if MASKED:
        v = tl.load(v_ptrs, mask=in_range[:, None], other=0.0)  # [BLOCK_N, BLOCK_D]
    else:
        v = tl.load(v_ptrs)  # [BLOCK_N, BLOCK_D]
    if ROWWISE:
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :].to(tl.float32), 1)
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, l_i, m_new


@triton.jit
def _block_attention_kernel(
    Q, K, V, Out, OPart, LsePart, Lengths,
    stride_qb, stride_qh, stride_qt,  # strides of the first three dims; every last dim has stride 1
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_ob, stride_oh, stride_ot,
    stride_pb, stride_ph, stride_pt, stride_ps,
    stride_lb, stride_lh, stride_lt, stride_ls,
    num_kv_heads, T, S, keys_per_split, qk_scale,
    GROUP: tl.constexpr, HAS_LENGTHS: tl.constexpr, CAUSAL: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ROWWISE: tl.constexpr,
):
    """One program: (batch row b, KV head, tile of packed query rows, split of the key range)."""
    pid_bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_s = tl.program_id(2)
    # int64: b * stride_kb can pass 2**31 elements on a large cache
    b = (pid_bh // num_kv_heads).to(tl.int64)
    kv_head = (pid_bh % num_kv_heads).to(tl.int64)

    # The GROUP query heads that share this KV head, packed as rows r = g * T + i.
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    g = rows // T  # which head of the group
    i = rows % T  # which query of the block
    row_ok = rows < GROUP * T  # the tile is padded to a power of two
    h = kv_head * GROUP + g
    offs_d = tl.arange(0, BLOCK_D)

    # This row's prefix length L: its keys are 0 … L+T-1, its block queries sit at L … L+T-1.
    if HAS_LENGTHS:
        L = tl.load(Lengths + b).to(tl.int32)
    else:
        L = S - T
    L = tl.minimum(tl.maximum(L, 0), S - T)  # a bad length can never read outside k, v
    q_pos = L + i

    q_ptrs = Q + b * stride_qb + h[:, None] * stride_qh + i[:, None] * stride_qt + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)  # [BLOCK_M, BLOCK_D]

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # This program's keys: [start, end). Tiles before prefix_end are prefix-only: no mask needed.
    start = pid_s * keys_per_split
    end = tl.minimum(start + keys_per_split, L + T)
    prefix_end = start + tl.maximum(tl.minimum(end, L) - start, 0) // BLOCK_N * BLOCK_N
    k_base = K + b * stride_kb + kv_head * stride_kh
    v_base = V + b * stride_vb + kv_head * stride_vh
    for start_n in range(start, prefix_end, BLOCK_N):  # MASKED=False
        acc, l_i, m_i = _attend_to_tile(acc, l_i, m_i, q, k_base, v_base, start_n, end, q_pos, stride_ks, stride_vs,
                                        qk_scale, CAUSAL, False, BLOCK_N, BLOCK_D, DOT_PRECISION, ROWWISE)
    for start_n in range(prefix_end, end, BLOCK_N):  # MASKED=True
        acc, l_i, m_i = _attend_to_tile(acc, l_i, m_i, q, k_base, v_base, start_n, end, q_pos, stride_ks, stride_vs,
                                        qk_scale, CAUSAL, True, BLOCK_N, BLOCK_D, DOT_PRECISION, ROWWISE)

    if SPLIT:
        # Partial result of this split: normalised output and log-sum-exp (log2 units). A split
        # in which a row saw no key (l_i == 0) writes lse = -inf: weight 0 in the combine.
        seen = l_i > 0
        l_safe = tl.where(seen, l_i, 1.0)
        lse = tl.where(seen, m_i + tl.math.log2(l_safe), float("-inf"))
        part = b * stride_pb + h * stride_ph + i * stride_pt + pid_s * stride_ps
        tl.store(OPart + part[:, None] + offs_d[None, :], acc / l_safe[:, None], mask=row_ok[:, None])
        lse_ptrs = LsePart + b * stride_lb + h * stride_lh + i * stride_lt + pid_s * stride_ls
        tl.store(lse_ptrs, lse, mask=row_ok)
    else:
        out = acc / l_i[:, None]  # every row saw at least its own key, so l_i > 0
        out_ptrs = Out + b * stride_ob + h[:, None] * stride_oh + i[:, None] * stride_ot + offs_d[None, :]
        tl.store(out_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _combine_splits_kernel(
    OPart, LsePart, Out,
    stride_pb, stride_ph, stride_pt, stride_ps,  # every last dim has stride 1
    stride_lb, stride_lh, stride_lt, stride_ls,
    stride_ob, stride_oh, stride_ot,
    H, T, num_splits,
    BLOCK_D: tl.constexpr,
):
    """One program per query row (b, h, i): out = sum_s w_s * o_s / sum_s w_s, w_s = 2**(lse_s - max lse).

    The sums run over the splits one after another, in key order: a split past the row's keys
    (lse = -inf, o = 0) adds exact zeros, so the result does not depend on how many splits the
    cache's capacity makes (a parallel tree sum over a power-of-two vector would regroup them).
    """
    row = tl.program_id(0).to(tl.int64)
    b = row // (H * T)
    h = (row // T) % H
    i = row % T
    offs_d = tl.arange(0, BLOCK_D)
    lse_ptr = LsePart + b * stride_lb + h * stride_lh + i * stride_lt
    part_ptr = OPart + b * stride_pb + h * stride_ph + i * stride_pt + offs_d

    lse_max = tl.load(lse_ptr)  # split 0 holds the row's first keys, so this is finite from the start
    for s in range(1, num_splits):
        lse_max = tl.maximum(lse_max, tl.load(lse_ptr + s * stride_ls))
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    total = tl.sum(tl.zeros([1], dtype=tl.float32), 0)  # a float32 scalar
    for s in range(num_splits):
        w = tl.math.exp2(tl.load(lse_ptr + s * stride_ls) - lse_max)
        acc += w * tl.load(part_ptr + s * stride_ps)  # [BLOCK_D]
        total += w
    tl.store(Out + b * stride_ob + h * stride_oh + i * stride_ot + offs_d, (acc / total).to(Out.dtype.element_ty))


def _kernel_is_interpreted() -> bool:
    """True when this module was imported with TRITON_INTERPRET=1 (kernels then run on the CPU, in numpy)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_block_attention_kernel, InterpretedFunction)


# --------------------------------------------------------------------------- launcher


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor | None,
                 keys_per_split: int | None) -> None:
    """What the kernel assumes of its inputs (a wrong one would read out of bounds or give a wrong result), and the
    one thing a user can get wrong: asking for the kernel on the CPU without its interpreter."""
    (B, H, T, D), (Hkv, S) = q.shape, k.shape[1:3]
    assert k.shape == v.shape == (B, Hkv, S, D), \
        f"k {tuple(k.shape)} and v {tuple(v.shape)} must be (B, Hkv, S, D) for q {tuple(q.shape)}"
    assert H % Hkv == 0, f"{H} query heads is not a multiple of {Hkv} KV heads"
    assert 1 <= T <= min(S, MAX_BLOCK), f"T={T} queries: the kernel takes 1 to {MAX_BLOCK}, at most S={S}"
    assert D in (16, 32, 64, 128, 256), f"head_dim D={D}: the kernel takes a power of two from 16 to 256"
    assert q.dtype in DTYPES and k.dtype == v.dtype == q.dtype, f"dtypes {q.dtype}, {k.dtype}, {v.dtype}: one of {DTYPES}"
    assert k.device == v.device == q.device, f"q, k, v on {q.device}, {k.device}, {v.device}"
    assert q.stride(-1) == k.stride(-1) == v.stride(-1) == 1, "q, k, v must have stride 1 in their last dim"
    assert lengths is None or (lengths.shape == (B,) and lengths.dtype in (torch.int32, torch.int64)
                               and lengths.device == q.device), f"lengths must be a ({B},) int32/int64 tensor on {q.device}"
    # A length's value is not checked (on a GPU that would stall for a sync): the kernel clamps it into 0 … S-T.
    assert keys_per_split is None or keys_per_split >= 1, f"keys_per_split must be >= 1, got {keys_per_split}"
    if q.device.type == "cpu" and not _kernel_is_interpreted():
        raise OrthrusError("block_attention: the tensors are on the CPU, where Triton runs only in its interpreter; "
                           "set TRITON_INTERPRET=1 before orthrus_min.triton_attn is imported, or use attn='torch'")


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """Tile sizes and work split of one kernel launch (what `choose_config` picks; benchmarks may sweep it)."""

    block_m: int  # packed query rows per program
    block_n: int  # keys per tile
    num_warps: int
    num_stages: int  # K/V tiles in flight (software pipelining on the GPU)
    keys_per_split: int  # keys per program along a row's key range (flash-decoding)


def choose_config(q: torch.Tensor, k: torch.Tensor, keys_per_split: int | None = None) -> LaunchConfig:
    """The launch configuration for q (B, H, T, D) over k (B, Hkv, S, D): a function of the dtype and head_dim
    only — never of T, B, S or the GPU — so that a query's arithmetic is the same in every call (batch invariance)."""
    D = q.shape[3]
    # Tile sizes: the q tile plus num_stages K/V tiles must fit in shared memory (~160 KB, an A100's),
    # so wide rows (fp32, or D = 256) get fewer rows and keys per tile. The q tile has BLOCK_M rows
    # whatever G * T is (a lone query's tile is mostly padding): another tile shape could be compiled
    # to another order of operations, and the query would not give the same bits alone and in a block.
    row_bytes = D * q.element_size()  # one query or key row: 256 for bf16 with D = 128
    block_m = 128 if row_bytes <= 512 else 64  # packed query rows
    block_n = 64 if row_bytes <= 256 else 32 if row_bytes <= 512 else 16  # keys per tile
    num_stages = 3 if row_bytes <= 256 else 2
    return LaunchConfig(block_m, block_n, 8 if block_m >= 128 else 4, num_stages, keys_per_split or KEYS_PER_SPLIT)


def _launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, lengths: torch.Tensor | None,
            config: LaunchConfig) -> torch.Tensor:
    """Allocates the output (and the per-split partials), runs the kernel and, when split, the combine."""
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    G = H // Hkv
    keys_per_split = config.keys_per_split
    num_splits = triton.cdiv(S, keys_per_split)  # splits past a row's keys find nothing and add exact zeros
    # The output is laid out (B, T, H, D) in memory, so the model's out.transpose(1, 2).reshape(B, T, H*D) is free.
    out = torch.empty(B, T, H, D, dtype=q.dtype, device=q.device).transpose(1, 2)  # (B, H, T, D)
    if num_splits > 1:
        o_part = torch.empty(B, H, T, num_splits, D, dtype=torch.float32, device=q.device)  # per-split outputs
        lse_part = torch.empty(B, H, T, num_splits, dtype=torch.float32, device=q.device)  # per-split log2-sum-exp
    else:
        o_part = lse_part = out.new_empty(0, 0, 0, 0, 0)  # unused: the kernel writes `out` directly

    grid = (B * Hkv, triton.cdiv(G * T, config.block_m), num_splits)
    _block_attention_kernel[grid](
        q, k, v, out, o_part, lse_part, lengths if lengths is not None else q,  # q: a placeholder, never read
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],  # last dims: stride 1
        *(o_part.stride()[:4] if num_splits > 1 else (0,) * 4),
        *(lse_part.stride() if num_splits > 1 else (0,) * 4),
        Hkv, T, S, keys_per_split, D**-0.5 / math.log(2),
        GROUP=G, HAS_LENGTHS=lengths is not None, CAUSAL=causal, SPLIT=num_splits > 1,
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_D=D,
        DOT_PRECISION="ieee",  # fp32 inputs: exact fp32 products, not TF32 (ignored for bf16/fp16)
        # The interpreter's tl.dot (numpy's BLAS) gives a row other bits depending on where it sits in the tile
        # (OpenBLAS: rows 0-5 one way, 6-11 another, …): there the products are summed row by row, so the tests check
        # the kernel's own invariance. A GPU's tl.dot computes every row alike (`bench gpu` tests bf16 there).
        ROWWISE=_kernel_is_interpreted(),
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    if num_splits > 1:
        _combine_splits_kernel[(B * H * T,)](
            o_part, lse_part, out, *o_part.stride()[:4], *lse_part.stride(), *out.stride()[:3],
            H, T, num_splits, BLOCK_D=D,
        )
    return out


# --------------------------------------------------------------------------- public function


def block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                    lengths: torch.Tensor | None = None, keys_per_split: int | None = None) -> torch.Tensor:
    """Attention of a block of T new queries over a cached prefix followed by the block's own keys.

    Args:
        q: (B, H, T, D) queries of the block; fp32, bf16 or fp16. T <= MAX_BLOCK, or a causal block of any
            length (run as blocks of MAX_BLOCK queries).
        k, v: (B, Hkv, S, D) keys and values, H a multiple of Hkv, D a power of two in 16 … 256;
            may be strided views of a larger cache (only the last dim must have stride 1).
            Row b holds its prefix in slots 0 … L_b-1 and the block's own keys in L_b … L_b+T-1;
            slots past L_b+T-1 are ignored.
        causal: True for the AR view (query i sees block keys <= i), False for the diffusion
            view (every query sees the whole block). The prefix is always fully visible.
        lengths: (B,) int tensor of prefix lengths L_b, for a batch whose rows have cached
            different amounts; None means L_b = S - T for every row.
        keys_per_split: keys per program along a row's key range (flash-decoding); None: KEYS_PER_SPLIT.
            Fixed for a whole decode, it keeps the kernel batch-invariant: a query's result does
            not depend on T, on the batch or on S. Tests and benchmarks change it.

    Returns:
        (B, H, T, D) in q's dtype, laid out (B, T, H, D) in memory.

    On the CPU this runs only under TRITON_INTERPRET=1 (see the module docstring).
    """
    B, T, S = q.shape[0], q.shape[2], k.shape[2]
    if T > MAX_BLOCK and causal:
        # A long causal block as blocks of MAX_BLOCK queries: the one from query c on is a block after
        # L_b + c cached entries, and sees nothing of the queries after it.
        lengths = torch.full((B,), S - T, device=q.device) if lengths is None else lengths
        return torch.cat([block_attention(q[:, :, c : c + MAX_BLOCK], k, v, True, lengths + c, keys_per_split)
                          for c in range(0, T, MAX_BLOCK)], dim=2)  # (B, H, T, D)
    check_inputs(q, k, v, lengths, keys_per_split)
    return _block_attention_op(q, k, v, causal, lengths, keys_per_split)


# torch.compile sees the launch as one opaque operator (with the output's shape and layout below),
# rather than tracing the launcher's Python: a compiled decode step then calls the kernel as is,
# and on a GPU the launch is captured in the step's CUDA graph like any other kernel.
@torch.library.custom_op("orthrus_min::block_attention", mutates_args=())
def _block_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, lengths: torch.Tensor | None,
                        keys_per_split: int | None) -> torch.Tensor:
    return _launch(q, k, v, causal, lengths, choose_config(q, k, keys_per_split))


@_block_attention_op.register_fake
def _(q, k, v, causal, lengths, keys_per_split):
    B, H, T, D = q.shape
    return q.new_empty(B, T, H, D).transpose(1, 2)  # (B, H, T, D), laid out (B, T, H, D) like the real output


__all__ = ["block_attention", "reference_block_attention", "MAX_BLOCK", "KEYS_PER_SPLIT"]
