"""Tied and parametrized weights under masks, and masked models that cannot be pickled."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

from secateur import load_model, prune, save_model
from secateur.errors import ConfigError, SecateurError
from secateur.unstructured.masks import apply_mask, apply_masks, make_permanent, masks_of, prunable_names


class TiedAutoencoder(nn.Module):
    """An autoencoder whose decoder reuses the encoder's weight (square, so no transpose)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Linear(8, 8)
        self.dec = nn.Linear(8, 8)
        self.dec.weight = self.enc.weight
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dec(torch.relu(self.enc(x))))


class TiedLanguageModel(nn.Module):
    """An embedding tied to the output projection, as in language models."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(10, 6)
        self.out = nn.Linear(6, 10)
        self.out.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.embed(tokens))).flatten(1)


def keep_half(shape: tuple[int, ...] = (8, 8)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(1)) > 0.5


def train_steps(model: nn.Module, optimizer: str = "sgd", steps: int = 5) -> None:
    """A few steps with momentum and weight decay, the optimizer made after masking."""
    make = {"sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
            "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)}[optimizer]
    opt = make(model.parameters())
    generator = torch.Generator().manual_seed(2)
    for _ in range(steps):
        if isinstance(model, TiedLanguageModel):
            x = torch.randint(0, 10, (16, 1), generator=generator)
        else:
            x = torch.randn(16, 8, generator=generator)
        loss = model(x).square().mean() - model(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def originals(model: nn.Module, *names: str) -> list[torch.Tensor]:
    return [model.get_submodule(n).parametrizations.weight.original for n in names]


def test_prunable_names_lists_a_tied_tensor_once():
    assert prunable_names(TiedAutoencoder()) == ["enc.weight", "head.weight"]
    assert prunable_names(TiedLanguageModel()) == ["out.weight"]  # the embedding is not a prunable type


@pytest.mark.parametrize("name", ["enc.weight", "dec.weight"])
def test_masking_either_name_masks_both_with_one_shared_mask(name):
    model = TiedAutoencoder()
    apply_masks(model, {name: keep_half()})
    masks = masks_of(model)
    assert sorted(masks) == ["dec.weight", "enc.weight"] and torch.equal(masks["enc.weight"], masks["dec.weight"])
    assert model.enc.parametrizations.weight[0] is model.dec.parametrizations.weight[0]
    enc, dec = originals(model, "enc", "dec")
    assert enc is dec and len(list(model.parameters())) == 5  # still one parameter for optimizers


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("name", ["enc.weight", "dec.weight"])
def test_pruned_entries_stay_exactly_zero_under_both_names_through_training(name, optimizer):
    model, keep = TiedAutoencoder(), keep_half()
    apply_masks(model, {name: keep})
    before = model.enc.weight.detach().clone()
    train_steps(model, optimizer)
    for tensor in (model.enc.weight, model.dec.weight, *originals(model, "enc", "dec")):
        assert (tensor[~keep] == 0).all()
    assert torch.equal(model.enc.weight, model.dec.weight) and not torch.equal(model.enc.weight, before)


def test_an_embedding_tied_to_the_output_layer_is_masked_with_it():
    model, keep = TiedLanguageModel(), keep_half((10, 6))
    apply_masks(model, {"out.weight": keep})
    train_steps(model)
    assert sorted(masks_of(model)) == ["embed.weight", "out.weight"]
    assert (model.embed.weight[~keep] == 0).all() and (model.out.weight[~keep] == 0).all()
    embedded = model.embed(torch.arange(10))
    assert (embedded[~keep] == 0).all()


def test_masks_given_through_each_name_combine_by_and():
    model = TiedAutoencoder()
    first, second = keep_half(), torch.rand(8, 8, generator=torch.Generator().manual_seed(3)) > 0.3
    apply_mask(model.enc, "weight", first)  # only the encoder is seen: the decoder is another module
    apply_masks(model, {"dec.weight": second})
    masks = masks_of(model)
    assert torch.equal(masks["enc.weight"], first & second) and torch.equal(masks["dec.weight"], first & second)
    apply_masks(model, {"enc.weight": torch.zeros(8, 8, dtype=torch.bool)})
    assert not model.dec.weight.any()


def test_a_checkpoint_of_a_tied_model_reloads_tied_and_masked(tmp_path):
    model = TiedAutoencoder()
    apply_masks(model, {"enc.weight": keep_half()})
    train_steps(model)
    save_model(model, tmp_path / "model", {"model": {"name": "tied"}})
    loaded, _ = load_model(tmp_path / "model", TiedAutoencoder())
    assert {k: v.tolist() for k, v in masks_of(loaded).items()} == {k: v.tolist() for k, v in masks_of(model).items()}
    assert torch.equal(loaded.dec.weight, model.dec.weight) and torch.equal(loaded.enc.weight, model.enc.weight)
    enc, dec = originals(loaded, "enc", "dec")
    assert enc is dec and loaded.enc.parametrizations.weight[0] is loaded.dec.parametrizations.weight[0]


def test_a_deep_copy_keeps_the_tie_and_its_own_masks():
    model = TiedAutoencoder()
    apply_masks(model, {"enc.weight": keep_half()})
    clone = copy.deepcopy(model)
    apply_masks(clone, {"dec.weight": torch.zeros(8, 8, dtype=torch.bool)})
    assert not clone.enc.weight.any() and not clone.dec.weight.any()
    assert int(masks_of(model)["dec.weight"].sum()) == int(keep_half().sum())  # the original is untouched


def test_make_permanent_keeps_the_tie_the_zeros_and_the_function():
    model, keep, x = TiedAutoencoder(), keep_half(), torch.randn(4, 8)
    apply_masks(model, {"dec.weight": keep})
    train_steps(model)
    before = model(x).detach()
    make_permanent(model)
    assert model.enc.weight is model.dec.weight and (model.enc.weight[~keep] == 0).all()
    assert not masks_of(model) and torch.equal(model(x), before)


@pytest.mark.parametrize("targets", [None, ("dec.weight", "head.weight")], ids=["default", "decoder named"])
def test_a_search_on_a_tied_model_prunes_both_names_and_keeps_them_zero_through_retraining(targets):
    result = prune(TiedAutoencoder(), train=train_steps, evaluate=lambda m: 1.0, method="magnitude",
                   rounds=2, input_shape=(8,), targets=targets)
    masks, model = masks_of(result.model), result.model
    assert len(result.results["layers"]) == 2  # the tied tensor is reported (and ranked) once
    assert sorted(masks) == ["dec.weight", "enc.weight", "head.weight"] and result.compression > 1.0
    assert torch.equal(masks["enc.weight"], masks["dec.weight"]) and not masks["enc.weight"].all()
    keep = masks["enc.weight"]
    assert (model.enc.weight[~keep] == 0).all() and (model.dec.weight[~keep] == 0).all()
    assert torch.equal(model.enc.weight, model.dec.weight)


# --------------------------------------------------------------------------------------
# other parametrizations


FOREIGN = {
    "weight_norm": lambda layer: parametrizations.weight_norm(layer),
    "spectral_norm": lambda layer: parametrizations.spectral_norm(layer),
}


@pytest.mark.parametrize("wrap", list(FOREIGN.values()), ids=list(FOREIGN))
def test_a_weight_under_another_parametrization_is_refused_with_what_to_do(wrap):
    model = nn.Sequential(nn.Flatten(), wrap(nn.Linear(4, 8)), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ConfigError, match=r"^1\.weight is computed by a .* parametrization.*remove_parametrizations"
                                          r".*leave 1\.weight out of the targets") as caught:
        apply_masks(model, {"1.weight": torch.ones(8, 4, dtype=torch.bool)})
    assert "\n" not in str(caught.value) and not masks_of(model)
    assert prunable_names(model) == ["3.weight"]  # left out of the default targets
    with pytest.raises(ConfigError, match="remove_parametrizations"):
        prune(model, train=lambda m: None, evaluate=lambda m: 1.0, targets=("1.weight",), input_shape=(1, 2, 2))
    parametrize.remove_parametrizations(model[1], "weight")  # what the message says to do
    apply_masks(model, {"1.weight": keep_half((8, 4))})
    assert sorted(masks_of(model)) == ["1.weight"]


# --------------------------------------------------------------------------------------
# pickling


def _pickle(model: nn.Module) -> None:
    pickle.dumps(model)


def _torch_save(model: nn.Module) -> None:
    torch.save(model, io.BytesIO())


@pytest.mark.parametrize("dump", [_pickle, _torch_save], ids=["pickle", "torch.save"])
@pytest.mark.parametrize("tied", [False, True], ids=["plain", "tied"])
def test_pickling_a_masked_model_says_how_to_save_it(dump, tied):
    model = TiedAutoencoder() if tied else nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    apply_masks(model, {prunable_names(model)[0]: keep_half()})
    with pytest.raises(SecateurError, match=r"cannot be pickled.*secateur\.save_model.*make_permanent") as caught:
        dump(model)
    assert "\n" not in str(caught.value)
    copy.deepcopy(model)  # the search relies on deep copies of masked models
    make_permanent(model)
    dump(model)
