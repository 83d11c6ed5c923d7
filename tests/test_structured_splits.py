"""Channel-dim splits: torch.split with sizes a module holds (rewritten by the surgery), torch.chunk
(equal counts per part), channel counts read as sizes, and timm's MixedConv2d (mixnet_s)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from secateur.analysis.metrics import count_params
from secateur.io.storage import load_model, save_model
from secateur.structured import analyse, current_plan, prune_channels, reach_plan
from secateur.structured.splits import parse_size_key
from secateur.zoo.models import build_model
from structured_helpers import assert_equivalent, equivalence, train_step


class Mixed(nn.Module):
    """A MixedConv2d-like block: uneven split sizes held by ``self.splits``, one conv per part, cat."""

    def __init__(self, splits: tuple[int, ...] = (3, 7)) -> None:
        super().__init__()
        c = sum(splits)
        self.pre = nn.Conv2d(3, c, 1)
        self.bn = nn.BatchNorm2d(c)
        self.splits = list(splits)
        self.convs = nn.ModuleList(nn.Conv2d(s, s + 1, 3, padding=1) for s in splits)
        self.post = nn.Conv2d(c + len(splits), 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(self.bn(self.pre(x)).relu(), self.splits, 1)
        return self.post(torch.cat([conv(parts[i]) for i, conv in enumerate(self.convs)], 1)).mean((2, 3))


class Passthrough(nn.Module):
    """Split parts that reach no layer of their own (one group, were it not for the parts)."""

    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Conv2d(3, 10, 1)
        self.sizes = (1, 9)
        self.post = nn.Conv2d(10, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.pre(x).split(self.sizes, dim=1)
        return self.post(torch.cat([a.relu(), b * 2], 1)).mean((2, 3))


class Chunked(nn.Module):
    """EdgeNeXt's pattern: ``x.chunk(n)``, depthwise convs on the parts, cat, a residual add."""

    def __init__(self, c: int, n: int) -> None:
        super().__init__()
        self.pre = nn.Conv2d(3, c, 1)
        self.parts = n
        width = -(-c // n)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1, groups=width) for _ in range(n - 1))
        self.post = nn.Conv2d(c, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre(x)
        spx = x.chunk(self.parts, dim=1)
        out = [conv(spx[i]) for i, conv in enumerate(self.convs)]
        return self.post(x + torch.cat([*out, spx[-1]], 1)).mean((2, 3))


class FewParts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Conv2d(3, 5, 1)
        self.post = nn.Conv2d(5, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = self.pre(x).chunk(4, 1)  # chunk(4) of 5 channels: parts 2, 2, 1
        return self.post(torch.cat([parts[2], parts[0], parts[1]], 1)).mean((2, 3))


class Res2(nn.Module):
    """Res2Net's pattern: ``torch.split(x, self.width, 1)`` (one size held by an int attribute)."""

    def __init__(self, width: int = 4, sizes: tuple[int, ...] = (4, 4, 4)) -> None:
        super().__init__()
        self.width = width
        self.pre = nn.Conv2d(3, sum(sizes), 1)
        self.convs = nn.ModuleList(nn.Conv2d(s, s, 3, padding=1) for s in sizes)
        self.post = nn.Conv2d(sum(sizes), 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spx = torch.split(self.pre(x), self.width, 1)
        return self.post(torch.cat([conv(spx[i]) for i, conv in enumerate(self.convs)], 1)).mean((2, 3))


class Literal(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Conv2d(3, 8, 1)
        self.post = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(self.pre(x), [2, 6], 1)
        return self.post(torch.cat([b, a], 1)).mean((2, 3))


class CountAsSize(nn.Module):
    """XCA's pattern: the channel count of one tensor sizes the reshape of another."""

    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Conv2d(3, 6, 1)
        self.head = nn.Conv2d(6, 4, 1)
        self.other = nn.Conv2d(3, 6, 1)
        self.post = nn.Conv2d(6, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pre(x)
        b, c, h, w = y.shape
        z = self.other(x).reshape(b, 2, 3, h, w).transpose(1, 2).reshape(b, c, h, w)  # z: no channels followed
        return (self.post(z) + self.head(y)).mean((2, 3))


def _images(n: int = 3, size: int = 8) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_uneven_split_parts_lose_channels_and_the_sizes_attribute_follows(tmp_path):
    torch.manual_seed(0)
    model = Mixed((3, 7)).eval()
    x = _images()
    graph = analyse(model, x[:1])
    assert graph.unfollowed == []
    pruned, plan, diff, scale = equivalence(model, x, ratio=0.5)
    assert_equivalent(diff, scale)
    assert pruned.splits == [len(plan.keep_in.get(f"convs.{i}", range(s))) for i, s in enumerate((3, 7))]
    assert pruned.splits != [3, 7] and all(s >= 1 for s in pruned.splits)
    assert sum(pruned.splits) == pruned.pre.out_channels
    assert [parse_size_key(k) for k in plan.keep_out if parse_size_key(k)] and type(pruned.splits) is list
    pruned.train()
    pruned(x).sum().backward()
    assert pruned.convs[1].weight.grad is not None

    save_model(pruned, tmp_path / "m", {"model": {"name": "mixed", "args": {}}})
    loaded, _ = load_model(tmp_path / "m", build=lambda name: Mixed((3, 7)))
    assert loaded.splits == pruned.splits  # the plan replay rewrites the sizes again
    pruned.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))


def test_every_part_keeps_a_channel_even_without_a_layer_of_its_own():
    torch.manual_seed(0)
    model = Passthrough().eval()
    pruned, _ = prune_channels(copy.deepcopy(model), _images()[:1], ratio=0.9)
    assert pruned.sizes == (1, 1) and isinstance(pruned.sizes, tuple)  # 9 * 0.9 go, the 1-channel part stays
    assert pruned(_images()).shape == (3, 4)


@pytest.mark.parametrize(("c", "n"), [(8, 2), (12, 3), (10, 3), (11, 4)])
def test_chunk_parts_keep_equal_counts_and_chunk_recomputes_them(c, n):
    """chunk(n) of C' channels gives parts of ceil(C'/n): every full part keeps the same count a,
    the last part c with 1 <= c <= a, and so the pruned model's own chunk gives the same parts."""
    torch.manual_seed(0)
    model = Chunked(c, n).eval()
    x = _images()
    graph = analyse(model, x[:1])
    assert not [u for u in graph.unfollowed if u.op == "chunk"]
    for seed in range(3):
        pruned, _, diff, scale = equivalence(copy.deepcopy(model), x, ratio=0.5, seed=seed)
        assert_equivalent(diff, scale)
        kept = pruned.pre.out_channels
        assert kept < c
        parts = [p.shape[1] for p in torch.zeros(1, kept).chunk(n, 1)]
        assert len(parts) == n and all(conv.in_channels == parts[0] for conv in pruned.convs)


@pytest.mark.parametrize(("sizes", "width", "kept"), [((4, 4, 4), 2, (2, 2, 2)), ((4, 4, 2), 3, (3, 3, 1))])
def test_a_single_size_attribute_is_rewritten_for_every_part(sizes, width, kept):
    """split(x, 4) of 10 channels gives 4, 4, 2: the two positions only the full parts have are kept."""
    torch.manual_seed(0)
    model = Res2(4, sizes).eval()
    x = _images()
    pruned, _, diff, scale = equivalence(model, x, ratio=0.5)
    assert_equivalent(diff, scale)
    assert pruned.width == width and pruned.pre.out_channels == sum(kept)
    assert tuple(conv.in_channels for conv in pruned.convs) == kept


def test_literal_split_sizes_keep_their_channels_and_say_why():
    graph = analyse(Literal().eval(), _images()[:1])
    [found] = [u for u in graph.unfollowed if u.op == "split"]
    assert found.channels == 8 and "no single attribute" in found.why
    assert not any(g.name == "pre" for g in graph.groups)


def test_chunk_giving_fewer_parts_than_asked_is_kept():
    graph = analyse(FewParts().eval(), _images()[:1])
    [found] = [u for u in graph.unfollowed if u.op == "chunk"]
    assert "returns 3 parts" in found.why


def test_a_channel_count_read_as_a_size_keeps_the_channels():
    model = CountAsSize().eval()
    graph = analyse(model, _images()[:1])
    assert {u.op for u in graph.unfollowed} == {"reshape"}
    assert any("count sizes" in note for note in graph.notes)
    assert not any("pre" in g.modules() for g in graph.groups)
    pruned, _ = prune_channels(copy.deepcopy(model), _images()[:1], ratio=0.5)
    assert pruned.pre.out_channels == 6 and pruned(_images()).shape == (3, 4)


def test_timm_mixnet_prunes_its_mixed_convs_exactly_saves_and_trains(tmp_path):
    pytest.importorskip("timm")
    torch.manual_seed(0)
    shape = (3, 32, 32)
    model = build_model("timm:mixnet_s", input_shape=shape, num_classes=10)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    graph = analyse(model.eval(), x[:1])
    assert not [u for u in graph.unfollowed if u.op in ("split", "chunk")], graph.unfollowed
    params = count_params(model)
    pruned, _, diff, scale = equivalence(model, x, ratio=0.5)
    assert_equivalent(diff, scale)
    assert count_params(pruned) < 0.5 * params
    mixed = {p: m.splits for p, m in pruned.named_modules() if type(m).__name__ == "MixedConv2d"}
    before = {p: m.splits for p, m in model.named_modules() if type(m).__name__ == "MixedConv2d"}
    assert all(sum(mixed[p]) < sum(s) for p, s in before.items())
    for path, splits in mixed.items():
        assert [c.in_channels for c in pruned.get_submodule(path).values()] == splits

    save_model(pruned, tmp_path / "m")
    loaded, _ = load_model(tmp_path / "m")  # rebuilt from the factory and the plan alone
    assert {p: m.splits for p, m in loaded.named_modules() if type(m).__name__ == "MixedConv2d"} == mixed
    pruned.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
    train_step(loaded, x)


def test_a_second_cut_composes_with_the_first():
    """Pruning a pruned model again: one plan over the original rebuilds the same sizes."""
    torch.manual_seed(0)
    x = _images()[:1]
    original = Mixed((4, 8)).eval()
    once, _ = prune_channels(copy.deepcopy(original), x, ratio=0.5)
    assert once.splits == [2, 4]
    twice, _ = prune_channels(once, x, ratio=0.5)
    assert twice.splits == [1, 2] and twice.pre.out_channels == 3
    rebuilt = reach_plan(original, current_plan(twice))
    assert rebuilt.splits == [1, 2]
    with torch.no_grad():
        assert torch.equal(rebuilt(x), twice(x))


class DtypeReader(nn.Module):
    """EdgeNeXt's positional encoding: a layer's weight read for its dtype and device only."""

    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Conv2d(3, 6, 1)
        self.post = nn.Conv2d(6, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(device=self.pre.weight.device, dtype=self.pre.weight.dtype)
        return self.post(self.pre(x)).mean((2, 3))


def test_a_weight_read_for_its_dtype_keeps_its_channels_prunable():
    graph = analyse(DtypeReader().eval(), _images()[:1])
    assert graph.unfollowed == [] and [g.name for g in graph.groups] == ["pre"]


def test_timm_edgenext_chunks_and_channel_attention_prune_exactly_and_save(tmp_path):
    """EdgeNeXt: x.chunk(n) of uneven parts, cross-covariance attention (whole heads and the
    channels around it), a positional encoding: nothing unfollowed, exact, saved and rebuilt."""
    pytest.importorskip("timm")
    torch.manual_seed(0)
    shape = (3, 64, 64)
    model = build_model("timm:edgenext_xx_small", input_shape=shape, num_classes=10)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    assert analyse(model.eval(), x[:1]).unfollowed == []
    params = count_params(model)
    pruned, _, diff, scale = equivalence(model, x, ratio=0.5)
    assert_equivalent(diff, scale)
    assert count_params(pruned) < 0.5 * params
    heads = {p: m.num_heads for p, m in pruned.named_modules() if type(m).__name__.endswith("CrossCovarianceAttn")}
    assert heads and all(h < 4 for h in heads.values())
    save_model(pruned, tmp_path / "m")
    loaded, _ = load_model(tmp_path / "m")
    pruned.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
    train_step(loaded, x)
