"""Ulysses context parallelism: sequence shards <-> head shards with one all-to-all each way.

The model knows nothing of it. `parallelize` (parallelize.py) applies two pieces from here:

- token shards: hooks on the model's `BlockStack` (`UlyssesGroup.shard_stream` /
  `gather_stream`) give each rank of a context-parallel (CP) group a contiguous slice of
  the token stream (whole latent frames in the parallel forward, a slice of one frame's
  tokens in a cached step) and hand the whole stream back after the last block;
- `UlyssesAttention`, the attention callable it injects into every block: an all-to-all turns

    q, k, v  (B, H, L/cp, d)   every head, this rank's tokens
          -> (B, h_r, L, d)    this rank's heads, every token

  so the forward's `Attend` (`ClipAttention` with its full `FrameLayout`, RoPE and sink
  copies, or `StepAttention` with this rank's KV cache) runs unchanged on the whole
  sequence, and a second all-to-all turns its output back into sequence shards.

Heads need not divide by the CP size (paper-8b has 21 heads on CP 8): rank r owns
`head_counts[r]` heads, the first `H % cp` ranks one more.

The collective is our own small autograd Function over `dist.all_to_all_single` (works
on gloo and NCCL): `torch.distributed.nn.functional.all_to_all_single` is deprecated, and
the functional-collectives replacement is a private module. The backward of an
all-to-all is the all-to-all with the split sizes swapped.

Gradient convention (what makes CP steps equal single-process steps): each rank's loss
covers its own tokens only, and FSDP averages gradients over every rank of the mesh
(data-parallel x context-parallel). Replicated -> sharded is a plain slice (no
communication; backward zero-fills), sharded -> replicated is an all-gather whose
backward sums the gradients of every rank (`gather`, `gather_heads`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from worldmodel.attention import QKV, Attend


class _AllToAll(torch.autograd.Function):
    """all_to_all_single along dim 0 with explicit (possibly uneven) split sizes."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, in_splits: list[int], out_splits: list[int], group) -> torch.Tensor:
        ctx.splits, ctx.group = (in_splits, out_splits), group
        x = x.contiguous()
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x, output_split_sizes=out_splits, input_split_sizes=in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        in_splits, out_splits = ctx.splits
        return _AllToAll.apply(grad, out_splits, in_splits, ctx.group), None, None, None


def all_to_all(x: torch.Tensor, in_splits: list[int], out_splits: list[int], group) -> torch.Tensor:
    """Autograd-aware all-to-all of dim-0 rows: send `in_splits[j]` rows to rank j, receive `out_splits[j]` from it."""
    return _AllToAll.apply(x, list(in_splits), list(out_splits), group)


def split_heads(heads: int, size: int) -> list[int]:
    """Heads per CP rank: as even as possible, the first `heads % size` ranks one more."""
    return [heads // size + (1 if r < heads % size else 0) for r in range(size)]


@dataclass
class UlyssesGroup:
    """One context-parallel group: its ranks, head split and the collectives between token and head shards."""

    group: dist.ProcessGroup
    """Process group of the ranks that share one sample's tokens."""
    heads: int
    """Attention heads of the model."""
    rank: int = field(init=False)
    """This process's rank inside `group`."""
    size: int = field(init=False)
    """Number of ranks in `group` (the CP degree)."""
    head_counts: list[int] = field(init=False)
    """Heads owned by each CP rank."""

    def __post_init__(self) -> None:
        self.rank, self.size = dist.get_rank(self.group), dist.get_world_size(self.group)
        if self.heads < self.size:
            raise ValueError(
                f"context parallelism {self.size} needs at least that many attention heads, the model has {self.heads}; "
                "lower cp or use more heads"
            )
        self.head_counts = split_heads(self.heads, self.size)

    @property
    def local_heads(self) -> int:
        """Heads this rank attends over."""
        return self.head_counts[self.rank]

    @property
    def head_offset(self) -> int:
        """Index of this rank's first head."""
        return sum(self.head_counts[: self.rank])

    # ---- sequence <-> heads ------------------------------------------------------------

    def seq_to_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, L/cp, d) this rank's tokens -> (B, h_r, L, d) this rank's heads, full sequence in rank order."""
        B, H, Ll, d = x.shape
        if H != self.heads:
            raise ValueError(f"seq_to_heads got {H} heads, the group was built for {self.heads}")
        y = all_to_all(x.transpose(0, 1), self.head_counts, [self.local_heads] * self.size, self.group)  # (cp*h_r, B, Ll, d)
        y = y.view(self.size, self.local_heads, B, Ll, d).permute(2, 1, 0, 3, 4)  # (B, h_r, cp, Ll, d)
        return y.reshape(B, self.local_heads, self.size * Ll, d)

    def heads_to_seq(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of `seq_to_heads`: (B, h_r, L, d) -> (B, H, L/cp, d)."""
        B, h, L, d = x.shape
        Ll = L // self.size
        y = x.view(B, h, self.size, Ll, d).permute(2, 1, 0, 3, 4).reshape(self.size * h, B, Ll, d)  # (cp*h_r, B, Ll, d)
        y = all_to_all(y, [h] * self.size, self.head_counts, self.group)  # (H, B, Ll, d)
        return y.transpose(0, 1)

    def head_slice(self, x: torch.Tensor) -> torch.Tensor:
        """Replicated (B, H, C, d) -> this rank's heads (B, h_r, C, d); no communication."""
        return x[:, self.head_offset : self.head_offset + self.local_heads]

    def gather_heads(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's heads (B, h_r, C, d) -> every head (B, H, C, d) on every rank; backward sums over ranks."""
        B, h, C, d = x.shape
        # An all-gather of uneven pieces, as an all-to-all of `size` copies (gloo has no uneven all-gather).
        y = all_to_all(x.transpose(0, 1).repeat(self.size, 1, 1, 1), [h] * self.size, self.head_counts, self.group)
        return y.transpose(0, 1)  # (B, H, C, d)

    # ---- sequence shards ---------------------------------------------------------------

    def shard(self, x: torch.Tensor, dim: int, what: str = "entries", fix: str = "make it divisible by cp") -> torch.Tensor:
        """Replicated tensor -> this rank's contiguous slice along `dim`; no communication.

        `what` names dim's entries and `fix` the remedy in the error when they do not divide."""
        n = x.shape[dim]
        if n % self.size:
            raise ValueError(
                f"context parallelism {self.size} splits dim {dim} of shape {tuple(x.shape)} evenly, but {n} {what} "
                f"do not divide by {self.size}; {fix}"
            )
        return x.narrow(dim, self.rank * (n // self.size), n // self.size)

    def gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's slice along `dim` -> the full tensor on every rank; backward sums over ranks then slices."""
        xt = x.movedim(dim, 0)  # (n, ...)
        n = xt.shape[0]
        y = all_to_all(xt.repeat(self.size, *[1] * (xt.ndim - 1)), [n] * self.size, [n] * self.size, self.group)
        return y.movedim(0, dim)

    # ---- the token stream at the block stack's entry and exit -----------------------------

    def shard_stream(self, module: nn.Module, args: tuple) -> tuple:
        """Forward pre-hook of the `BlockStack`: (x (B, L, D), temb (B, F, D), ...) -> this rank's share.

        Whole frames when there are several (F must divide by the group size); a single frame
        (a cached step) is split by tokens, which all share its one temb row.
        """
        x, temb, *rest = args
        if temb.shape[1] > 1:
            temb = self.shard(temb, 1, "latent frames", "use a clip length (latent frames) divisible by cp")
        x = self.shard(x, 1, "tokens", "use a latent grid whose token count divides by cp")
        return (x, temb, *rest)

    def gather_stream(self, module: nn.Module, args: tuple, out: tuple) -> tuple:
        """Forward hook of the `BlockStack`: every rank gets the whole token stream (B, L, D) back."""
        x, c = out
        return self.gather(x, 1), c


class UlyssesAttention:
    """The attention callable `parallelize` injects into every block: all-to-alls around the forward's `Attend`."""

    def __init__(self, group: UlyssesGroup) -> None:
        self.group = group

    def __call__(self, attend: Attend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: QKV | None,
                 layer: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """q, k, v (B, H, L/cp, d) this rank's tokens -> output (B, H, L/cp, d), context output (B, H, C, d)."""
        g = self.group
        q, k, v = g.seq_to_heads(torch.cat([q, k, v])).chunk(3)  # (B, h_r, L, d) each
        if ctx is not None:  # the context is replicated: keep this rank's heads
            ctx = tuple(g.head_slice(z) for z in ctx)
        o, oc = attend(q, k, v, ctx, layer)
        return g.heads_to_seq(o), (None if oc is None else g.gather_heads(oc))

    def local_heads(self, heads: int) -> int:
        """Heads this rank attends over (and its KV cache holds)."""
        if heads != self.group.heads:
            raise ValueError(f"the model has {heads} heads, the context-parallel group was built for {self.group.heads}")
        return self.group.local_heads

    def cache_heads(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """This rank's heads of replicated (B, H, C, d) tensors (the context), for its KV cache."""
        return tuple(self.group.head_slice(x) for x in xs)
