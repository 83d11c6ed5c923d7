"""Following channel labels through flatten / view / reshape.

A reshape is split into independent dim groups whose sizes multiply to the same number on
both sides. Inside the group holding the labelled dim, the tag of every element is laid out
row-major; the output keeps labels if the tags vary along exactly one output dim (flatten
``[N, C, H, W] -> [N, C*H*W]`` repeats each channel's tag ``H*W`` times, so a following Linear
learns which of its inputs belong to which channel).
"""

from __future__ import annotations

import math

import torch

from secateur.structured.tracker import Labels


def dim_groups(a: tuple[int, ...], b: tuple[int, ...]) -> list[tuple[range, range]]:
    """Pairs of (input dims, output dims) whose sizes have equal products, in order."""
    i = j = 0
    groups = []
    while i < len(a) or j < len(b):
        i0, j0, pa, pb = i, j, 1, 1
        if i < len(a):
            pa, i = a[i], i + 1
        if j < len(b):
            pb, j = b[j], j + 1
        while pa != pb:
            if pa < pb:
                pa, i = pa * a[i], i + 1
            else:
                pb, j = pb * b[j], j + 1
        groups.append((range(i0, i), range(j0, j)))
    return groups


def _dims_of(in_shape: tuple[int, ...], out_shape: tuple[int, ...], d: int) -> tuple[range, range] | None:
    """The (input dims, output dims) group of the reshape holding input dim ``d``; None if unknown."""
    try:
        groups = dim_groups(in_shape, out_shape)
    except IndexError:
        return None
    return next(((ins, outs) for ins, outs in groups if d in ins), None)


def reshape_labels(in_shape: tuple[int, ...], out_shape: tuple[int, ...], lab: Labels,
                   literal: set[int]) -> Labels | None:
    """Labels after reshaping ``in_shape`` to ``out_shape``; None when channels get mixed.

    ``literal`` holds output dims whose size was hard-coded: the channels may not land on one
    (their count could not change). A hard-coded dim they do not vary along (the patch size of
    ``[B, C, H, W] -> [B*C*H/p, p, W]``) keeps its size when channels go, so it is no obstacle.
    """
    d, tags = lab
    found = _dims_of(in_shape, out_shape, d)
    if found is None:
        return None
    ins, outs = found
    sub_in = [in_shape[k] for k in ins]
    inner = math.prod(in_shape[d + 1:ins.stop])
    flat = (torch.arange(math.prod(sub_in)) // inner) % in_shape[d]
    grid = tags[flat].reshape([out_shape[k] for k in outs]) if outs else tags[flat]
    varying = [k for k, size in zip(outs, grid.shape) if size > 1 and not _constant_except(grid, k - outs.start)]
    if not varying and len(outs) == 1:
        return None if outs.start in literal else (outs.start, grid.reshape(-1))
    if len(varying) != 1 or varying[0] in literal:
        return None
    k = varying[0]
    line = _line(grid, k - outs.start)
    if not torch.equal(grid, _broadcast_line(line, grid.shape, k - outs.start)):
        return None
    return (k, line)


def _constant_except(grid: torch.Tensor, axis: int) -> bool:
    """True when ``grid`` does not vary along ``axis``."""
    first = grid.narrow(axis, 0, 1)
    return bool((grid == first).all())


def _line(grid: torch.Tensor, axis: int) -> torch.Tensor:
    index: list[int | slice] = [0] * grid.dim()
    index[axis] = slice(None)
    return grid[tuple(index)]


def _broadcast_line(line: torch.Tensor, shape: torch.Size, axis: int) -> torch.Tensor:
    view = [1] * len(shape)
    view[axis] = len(line)
    return line.reshape(view).expand(shape)


def grouped_split(in_shape: tuple[int, ...], out_shape: tuple[int, ...], lab: Labels,
                  literal: set[int]) -> tuple[Labels, torch.Tensor] | None:
    """A labelled dim split into two, one of them a hard-coded number of groups (a channel shuffle).

    Returns the labels on the other (per-group) dim and the rows of tags that must go together
    (the same position in every group); None for any other reshape. The group count stays fixed
    when channels are removed, so each group must lose the same positions.
    """
    d, tags = lab
    found = _dims_of(in_shape, out_shape, d)
    if found is None or list(found[0]) != [d] or len(found[1]) != 2:
        return None
    a, b = found[1]
    fixed = [k for k in (a, b) if k in literal]
    if len(fixed) != 1:
        return None
    grid = tags.reshape(out_shape[a], out_shape[b])
    if fixed[0] == a:  # (groups, per group): a column is one position in every group
        return (b, grid[0]), grid.T
    return (a, grid[:, 0]), grid
