"""3D RoPE: resolution stretching, unbounded temporal positions, relative-only scores."""

import numpy as np
import torch

from worldmodel.rope import PositionPlan, Rope3D, apply_rotary, cos_sin, sink_frame, split_dims

rope = Rope3D(head_dim=32, ref_grid=(26, 46))


def test_dims_split_into_three_axes():
    t, h, w = split_dims(32, 0.25)
    assert (t, h, w) == (4, 6, 6)
    assert t + h + w == 16


def test_spatial_positions_stretch_to_the_reference_grid():
    full = rope.spatial_angles((26, 46)).view(26, 46, -1)
    half = rope.spatial_angles((13, 23)).view(13, 23, -1)
    # both grids span the same stretched extent
    assert torch.allclose(full.amax(dim=(0, 1)), half.amax(dim=(0, 1)), rtol=0.05)
    # the same relative location maps to the same position: centre cell of any odd grid
    # sits at the centre of the reference grid; a 2x finer grid's cell pair straddles it
    c1 = rope.spatial_angles((13, 23)).view(13, 23, -1)[6, 11]
    c2 = rope.spatial_angles((1, 1))[0]
    torch.testing.assert_close(c1, c2)
    torch.testing.assert_close((full[12, 22] + full[13, 23]) / 2, c2)


def _score(pq: float, pk: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 32, generator=g, dtype=torch.float64), torch.randn(1, 32, generator=g, dtype=torch.float64)
    aq = rope.temporal_angles(torch.tensor([pq], dtype=torch.float64))
    ak = rope.temporal_angles(torch.tensor([pk], dtype=torch.float64))
    return (apply_rotary(q, *cos_sin(aq, torch.float32)) * apply_rotary(k, *cos_sin(ak, torch.float32))).sum()


def test_scores_depend_only_on_distance_even_far_out():
    near = _score(7.0, 2.0)
    for offset in (1e3, 1e6, 1e9):  # no table to run out; float64 angles keep precision
        torch.testing.assert_close(_score(7.0 + offset, 2.0 + offset), near, rtol=1e-4, atol=1e-4)


def test_tables_do_not_follow_the_default_device():
    # paper_world builds models under `with torch.device("cuda")`; the frequency tables then went to the
    # GPU while the spatial grid was built on the host, and the first step failed with a device mismatch.
    with torch.device("meta"):
        built_elsewhere = Rope3D(head_dim=32, ref_grid=(26, 46))
    torch.testing.assert_close(built_elsewhere.spatial_angles((13, 23)), rope.spatial_angles((13, 23)))
    frames = torch.arange(3, dtype=torch.float64)
    torch.testing.assert_close(built_elsewhere.temporal_angles(frames), rope.temporal_angles(frames))


def test_both_paths_get_the_same_angles_from_one_plan():
    """A clip's plan and a cached step's plan agree frame by frame: query/key angles at the frame,
    and the sink turned to `sink_frame`, never more than window + 1 behind the query."""
    W, F, grid = 2, 8, (3, 4)
    N = grid[0] * grid[1]
    clip = PositionPlan.clip(rope, F, grid, W, 0, torch.float64, torch.device("cpu"))
    for n in range(F):
        pos = np.array([n], dtype=np.float64)
        step = PositionPlan.step(rope, grid, torch.from_numpy(pos), torch.from_numpy(sink_frame(pos, W)),
                                 torch.float64, torch.float64)
        for a, b in zip(step.qk, clip.qk, strict=True):
            torch.testing.assert_close(a[0, 0], b[n * N : (n + 1) * N])
        for a, b in zip(step.sink, clip.sink, strict=True):
            torch.testing.assert_close(a[0, 0], b[n])
        assert 0 <= n - sink_frame(pos, W)[0] <= W + 1
