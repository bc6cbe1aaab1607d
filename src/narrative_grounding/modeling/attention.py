"""Attention blocks of the grounding heads.

`LocalityPerceptiveAttention` is EPNG's LPA (eqs. 3-7): multi-head self-attention over the pixels of a
feature map whose scaled scores are multiplied by a per-head learnable multiple of the clamped grid
distance. Two implementations compute the same thing:

- "flex": `torch.nn.attention.flex_attention` (compiled) with a score modifier that applies the prior on
  the fly, so the (N x N) score and prior matrices are never materialised. Forward only on CPU (torch has
  no CPU backward for flex attention); forward and backward on CUDA.
- "direct": the equation as written, materialising B x Hd x N x N scores. Used for training on CPU.

`"auto"` picks flex whenever it can run (no gradient needed, or CUDA) on grids of at least
`FLEX_MIN_TOKENS` pixels, and direct otherwise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

try:  # flex_attention appeared in torch 2.5; older torch keeps the direct path.
    from torch.nn.attention.flex_attention import BlockMask
    from torch.nn.attention.flex_attention import flex_attention as _flex_attention
except ImportError:  # pragma: no cover - exercised only on old torch
    BlockMask = _flex_attention = None


def grid_distance(
    height: int, width: int, *, clamp: float, form: str, device: torch.device | None = None
) -> torch.Tensor:
    """Clamped distance between every pair of cells of a height x width grid (EPNG eq. 3).

    Returns N x N float32 with N = height * width, cells in row-major order. `form` is "squared"
    (dy^2 + dx^2, EPNG's released code) or "euclidean" (sqrt of it, the paper).
    """
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
    )
    ys, xs = ys.flatten().float(), xs.flatten().float()  # N
    squared = (ys[:, None] - ys[None, :]) ** 2 + (xs[:, None] - xs[None, :]) ** 2  # N x N
    distance = squared if form == "squared" else squared.sqrt()
    return distance.clamp(max=clamp)


# Below this many pixels (32 x 32) the direct form is cheap (<= 32 MB of scores per sample for 8 heads) and
# flex attention's compilation for every new input shape would cost more than it saves.
FLEX_MIN_TOKENS = 1024


# torch 2.14's compiled CPU kernel returns wrong scores, even NaN, for sequences shorter than 128 tokens on
# some CPUs (seen on an AVX2-only AMD EPYC: grids of 8-120 pixels, with or without a block mask, and from 128
# pixels on every grid tried was exact); such grids, which the "auto" choice never sends to flex, take the
# direct form even under lpa_implementation="flex".
FLEX_CPU_MIN_TOKENS = 128

_COMPILED_FLEX_ATTENTION = None


def _compiled_flex_attention():
    # One compiled kernel per process, made on first use (a functools.cache here makes dynamo warn whenever
    # a model holding LPA is compiled). dynamic=None: the first grid size gets a kernel specialised to it
    # (the fastest, and all a fixed-size resize ever needs); from the second size on dynamo compiles one
    # dynamic-shape kernel for every size (~10-35% slower at 40 x 40). With dynamic=False every size would
    # recompile, and after torch's recompile limit (8) flex attention would silently run unfused.
    global _COMPILED_FLEX_ATTENTION
    if _COMPILED_FLEX_ATTENTION is None:
        _COMPILED_FLEX_ATTENTION = torch.compile(_flex_attention, dynamic=None)
    return _COMPILED_FLEX_ATTENTION


# Every pair of pixels attends (the prior scales scores, it masks none), so the block mask only tiles the work.
# Without one the CPU kernel takes the whole N x N score matrix of a head as one tile (10 MB at 40 x 40, out of
# cache); tiles of 128 x 128 ran 13% faster at 40 x 40 than none, 7-8% faster than 64 x 512 or 128 x 512
# (benchmarks/lpa_block_size.py).
DENSE_BLOCK_SIZE = (128, 128)


def dense_block_mask(
    num_tokens: int, device: torch.device | str = "cpu", block_size: tuple[int, int] = DENSE_BLOCK_SIZE
) -> BlockMask:
    """A flex-attention BlockMask over num_tokens x num_tokens whose tiles are all full (no mask evaluated)."""
    q_block, kv_block = block_size
    q_blocks, kv_blocks = -(-num_tokens // q_block), -(-num_tokens // kv_block)
    kv_indices = torch.arange(kv_blocks, device=device, dtype=torch.int32).expand(1, 1, q_blocks, kv_blocks)
    return BlockMask.from_kv_blocks(
        kv_num_blocks=torch.zeros(1, 1, q_blocks, device=device, dtype=torch.int32),  # no partial tiles
        kv_indices=torch.zeros_like(kv_indices),
        full_kv_num_blocks=torch.full((1, 1, q_blocks), kv_blocks, device=device, dtype=torch.int32),
        full_kv_indices=kv_indices.contiguous(),
        BLOCK_SIZE=block_size,
        seq_lengths=(num_tokens, num_tokens),
    )


def locality_prior_score_mod(prior_scale: torch.Tensor, width: int, *, clamp: float, form: str):
    """EPNG's LPA prior (eqs. 3-5) as a flex-attention score modifier for pixels in row-major order on a grid
    `width` pixels wide: score * prior_scale[head] * clamped distance ("squared" or "euclidean")."""
    squared_form = form == "squared"
    # The width as a tensor the kernel reads, not a constant baked into it: one dynamic kernel serves
    # every grid size (see _compiled_flex_attention).
    width = torch.tensor(float(width), device=prior_scale.device)
    inverse_width = 1.0 / width

    def multiply_by_locality_prior(score, batch, head, q_idx, kv_idx):
        # Grid row and column of both pixels in float arithmetic: a row is floor((index + 0.5) / width),
        # exact for grids below 2^24 pixels because (index + 0.5) / width is at least 0.5 / width away from an
        # integer. Inside the fused loop, integer division and modulo cost ~1.5x the whole kernel on CPU and
        # row/column lookup tables (gathers) ~12% of it.
        q_pos, kv_pos = q_idx.to(torch.float32), kv_idx.to(torch.float32)
        q_row = torch.floor((q_pos + 0.5) * inverse_width)
        kv_row = torch.floor((kv_pos + 0.5) * inverse_width)
        dy = q_row - kv_row
        dx = (q_pos - q_row * width) - (kv_pos - kv_row * width)
        squared = dy * dy + dx * dx
        distance = squared if squared_form else squared.sqrt()
        return score * (prior_scale[head] * distance.clamp(max=clamp).to(score.dtype))

    return multiply_by_locality_prior


def flex_attention_available() -> bool:
    return _flex_attention is not None


class LocalityPerceptiveAttention(nn.Module):
    """EPNG's Locality-Perceptive Attention over a B x N x D pixel sequence laid out on an H x W grid."""

    def __init__(
        self,
        *,
        d_model: int,
        num_heads: int,
        distance_clamp: float,
        distance_form: str,
        implementation: str = "auto",
        attention_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.distance_clamp = distance_clamp
        self.distance_form = distance_form
        self.implementation = implementation
        # Dropout on the attention weights (EPNG's released code: 0.1). Flex attention has none, so training
        # with it takes the direct path; at 0 (our default) the communicator's output dropout is the only one.
        self.attention_dropout = attention_dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)  # W_O of eq. 7
        # W_j of eq. 4, one learnable scalar per head, initialised to 1 (by the model's _init_weights).
        self.prior_scale = nn.Parameter(torch.ones(num_heads))

    def resolve_implementation(self, query: torch.Tensor) -> str:
        """The path `forward` takes for this B x N x D input: "flex" or "direct"."""
        drops_weights = self.training and self.attention_dropout > 0
        if drops_weights and self.implementation == "flex":
            raise RuntimeError(
                "lpa_implementation='flex' cannot drop attention weights: set epng_attention_dropout=0 or use "
                "lpa_implementation='direct' / 'auto' for training"
            )
        if self.implementation != "auto":
            if self.implementation == "flex" and not flex_attention_available():
                raise RuntimeError(
                    "lpa_implementation='flex' needs torch >= 2.5 (torch.nn.attention.flex_attention)"
                )
            if query.device.type == "cpu" and query.shape[1] < FLEX_CPU_MIN_TOKENS:
                return "direct"  # see FLEX_CPU_MIN_TOKENS
            return self.implementation
        needs_backward = torch.is_grad_enabled() and (
            query.requires_grad or any(p.requires_grad for p in self.parameters())
        )
        if not flex_attention_available() or query.shape[1] < FLEX_MIN_TOKENS or drops_weights:
            return "direct"
        if needs_backward and query.device.type == "cpu":
            return "direct"  # "FlexAttention does not support backward on CPU" (torch 2.15)
        return "flex"

    def project_heads(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query, key and value of a B x N x D sequence, each B x Hd x N x Dh (views of one projection)."""
        batch, num_pixels, _ = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch, num_pixels, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return query, key, value

    def forward(self, hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """hidden_states: B x N x D with N = height * width (row-major). Returns B x N x D."""
        batch, num_pixels, d_model = hidden_states.shape
        query, key, value = self.project_heads(hidden_states)  # each B x Hd x N x Dh
        if self.resolve_implementation(hidden_states) == "flex":
            attended = self._flex(query, key, value, height, width)
        else:
            attended = self._direct(query, key, value, height, width)
        attended = attended.transpose(1, 2).reshape(batch, num_pixels, d_model)  # B x N x D
        return self.out_proj(attended)

    def _direct(self, query, key, value, height: int, width: int) -> torch.Tensor:
        distance = grid_distance(
            height, width, clamp=self.distance_clamp, form=self.distance_form, device=query.device
        ).to(query.dtype)  # N x N
        prior = self.prior_scale.view(-1, 1, 1) * distance  # Hd x N x N, R^j of eq. 4
        scores = (query @ key.transpose(-1, -2)) / math.sqrt(self.head_dim) * prior  # B x Hd x N x N, eq. 5
        weights = F.dropout(scores.softmax(dim=-1), self.attention_dropout, self.training)  # B x Hd x N x N
        return weights @ value  # B x Hd x N x Dh, eq. 6

    def _flex(
        self,
        query,
        key,
        value,
        height: int,
        width: int,
        block_size: tuple[int, int] | None = DENSE_BLOCK_SIZE,
    ) -> torch.Tensor:
        """block_size: the CPU kernel's Q x KV tiles (None: one tile per head); benchmarks/lpa_block_size.py
        compares settings."""
        score_mod = locality_prior_score_mod(
            self.prior_scale.to(query.dtype), width, clamp=self.distance_clamp, form=self.distance_form
        )
        # The CPU kernel is ~1.5x slower on the strided views that unbind() of the fused qkv leaves.
        query, key, value = query.contiguous(), key.contiguous(), value.contiguous()
        # On CUDA flex attention picks its own tiling.
        block_mask = None
        if query.device.type == "cpu" and block_size is not None:
            block_mask = dense_block_mask(query.shape[-2], query.device, block_size)
        return _compiled_flex_attention()(query, key, value, score_mod=score_mod, block_mask=block_mask)


class CrossAttention(nn.Module):
    """Multi-head attention of B x N x D queries over B x P x D keys with a key mask: B x P (padding, the same
    for every query) or B x N x P (which keys each query may read).

    Masked keys get no weight; a query row without any key to read (a narrative without a real phrase) attends
    to nothing: its attended values are zeros (the output is the output projection's bias) instead of the NaN a
    plain softmax over -inf would give.
    """

    def __init__(
        self, *, d_model: int, num_heads: int, key_dim: int | None = None, attention_dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attention_dropout = attention_dropout  # on the attention weights, in training only
        self.head_dim = d_model // num_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(key_dim or d_model, d_model)
        self.v_proj = nn.Linear(key_dim or d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """queries: B x N x D, keys: B x P x Dk, key_mask: B x P or B x N x P bool (True = may be read).
        Returns B x N x D."""
        batch, num_queries, d_model = queries.shape
        num_keys = keys.shape[1]
        q = self.q_proj(queries).view(batch, num_queries, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(keys).view(batch, num_keys, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(keys).view(batch, num_keys, self.num_heads, self.head_dim).transpose(1, 2)
        # q, k, v: B x Hd x {N, P} x Dh
        key_mask = key_mask.bool()
        per_query = key_mask.dim() == 3
        if not per_query:
            key_mask = key_mask[:, None, :]  # B x 1 x P: the same keys for every query
        has_keys = key_mask.any(dim=-1, keepdim=True)  # B x {1, N} x 1
        # Rows without any key attend to everything (a finite softmax) and read zeros: with one mask for all
        # queries the P values are zeroed (cheaper than the N outputs), with a mask per query the outputs.
        attend = (key_mask | ~has_keys)[:, None]  # B x 1 x {1, N} x P
        if not per_query:
            v = v * has_keys[:, None].to(v.dtype)
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attend, dropout_p=self.attention_dropout if self.training else 0.0
        )  # B x Hd x N x Dh
        if per_query:
            attended = attended * has_keys[:, None].to(attended.dtype)
        attended = attended.transpose(1, 2).reshape(batch, num_queries, d_model)  # B x N x D
        return self.out_proj(attended)


__all__ = [
    "DENSE_BLOCK_SIZE",
    "FLEX_MIN_TOKENS",
    "CrossAttention",
    "LocalityPerceptiveAttention",
    "dense_block_mask",
    "flex_attention_available",
    "grid_distance",
    "locality_prior_score_mod",
]
