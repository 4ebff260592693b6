"""Ulysses context parallelism: sequence shards <-> head shards with one all-to-all each way.

Each rank of a context-parallel (CP) group holds a contiguous slice of every sample's
video tokens (whole latent frames in the parallel forward, a slice of one frame's
tokens in `forward_step`). Around attention an all-to-all turns

    q, k, v  (B, H, L/cp, d)   every head, this rank's tokens
          -> (B, h_r, L, d)    this rank's heads, every token

so the block-causal attention (`block_causal_attention` with its full `FrameLayout`,
RoPE tables and re-rotated sink copies) runs unchanged on the full sequence, and a
second all-to-all turns the attention output back into sequence shards. Heads need not
divide by the CP size (paper-8b has 21 heads on CP 8): rank r owns `head_counts[r]`
heads, the first `H % cp` ranks one more.

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
    """The context-parallel hook the transformer calls (`WorldDiT.cp`, `MMDiTBlock.cp`)."""

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

    def shard(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """Replicated tensor -> this rank's contiguous slice along `dim`; no communication."""
        n = x.shape[dim]
        if n % self.size:
            what = "frames" if dim == 1 and x.ndim in (3, 5) else "tokens"
            raise ValueError(
                f"context parallelism {self.size} splits dim {dim} of shape {tuple(x.shape)} evenly, but {n} {what} "
                f"do not divide by {self.size}; use a clip length (latent frames) divisible by cp"
            )
        return x.narrow(dim, self.rank * (n // self.size), n // self.size)

    def gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's slice along `dim` -> the full tensor on every rank; backward sums over ranks then slices."""
        xt = x.movedim(dim, 0)  # (n, ...)
        n = xt.shape[0]
        y = all_to_all(xt.repeat(self.size, *[1] * (xt.ndim - 1)), [n] * self.size, [n] * self.size, self.group)
        return y.movedim(0, dim)


def set_context_parallel(model: torch.nn.Module, cp: UlyssesGroup | None) -> None:
    """Install (or remove, with None) the CP hook on every module that has a `cp` slot (WorldDiT and its blocks)."""
    for m in model.modules():
        if hasattr(type(m), "cp"):
            m.cp = cp
