"""Pruning inside the user's own world: their model class, their PyTorch loop and DataLoaders, their images.

- the retraining contract: a ``train=`` / ``polish=`` that leaves the model it is given unchanged
  (an optimizer built once from the original) stops the run with one line;
- ``secateur.Loaders``: DataLoaders / torch Datasets in fit, evaluate, correctness and prune;
- secateur's own splits are torch Datasets (normalised float images, int labels, a short repr);
- API runs are named (report title, ``secateur info RUN``, ``load_model``) without ``meta=``;
- ``imagefolder:PATH`` datasets, end to end through the CLI.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import secateur
from secateur.app.cli import main
from secateur.errors import CheckpointError, ConfigError
from secateur.zoo.data import batches, load_dataset


class SmallCNN(nn.Module):
    """A user's own CNN: two conv layers and two linear ones, built without arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3)
        self.conv2 = nn.Conv2d(8, 16, 3)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16 * 5 * 5, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def my_loop(model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, epochs: int = 1) -> None:
    """The plain PyTorch loop a user writes."""
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()


@pytest.fixture(scope="module")
def loaders(small) -> secateur.Loaders:
    """MNIST 2k / 500 / 500 as the user's own DataLoaders."""
    train = DataLoader(small.train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    return secateur.Loaders(train=train, val=DataLoader(small.val, batch_size=250), test=small.test,
                            num_classes=10, name="mnist-2k")


@pytest.fixture(scope="module")
def user_cnn(loaders) -> SmallCNN:
    """SmallCNN after 2 epochs of the plain loop (shared: copy it before changing it)."""
    torch.manual_seed(0)
    model = SmallCNN()
    my_loop(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), loaders.train, epochs=2)
    return model


def one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


# --------------------------------------------------------------------------------------
# the retraining contract


@pytest.mark.parametrize("granularity", ["weight", "channel"])
def test_an_optimizer_built_from_the_original_model_stops_the_run_with_one_line(user_cnn, loaders, granularity):
    model = copy.deepcopy(user_cnn)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)  # built once, from the original
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match=r"^train= left every trainable parameter") as caught:
        secateur.prune(model, train=lambda m: my_loop(m, optimizer, loaders.train),
                       evaluate=lambda m: secateur.correctness(m, loaders), input_shape=(1, 28, 28),
                       granularity=granularity, max_drop=1.0, rounds=2)
    assert "optimizer" in one_line(caught) and "param_groups" in one_line(caught)
    # the optimizer steps the original, whose gradients are empty: nothing at all was trained
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_polish_that_trains_another_model_is_refused_too(user_cnn, loaders):
    model = copy.deepcopy(user_cnn)
    outer = torch.optim.SGD(model.parameters(), lr=0.01)

    def train(m: nn.Module) -> None:
        my_loop(m, torch.optim.SGD(m.parameters(), lr=0.01), loaders.train)

    with pytest.raises(ConfigError, match=r"^polish= left every trainable parameter") as caught:
        secateur.prune(model, data=loaders, train=train, polish=lambda m: my_loop(m, outer, loaders.train),
                       max_drop=5.0, rounds=1)
    one_line(caught)


def test_an_optimizer_kept_across_rounds_on_purpose_works_when_re_pointed(user_cnn, loaders):
    model = copy.deepcopy(user_cnn)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def train(m: nn.Module) -> None:
        optimizer.param_groups[0]["params"] = [p for p in m.parameters() if p.requires_grad]
        optimizer.state.clear()  # momentum buffers belong to the previous model's tensors
        my_loop(m, optimizer, loaders.train)

    result = secateur.prune(model, data=loaders, train=train, method="magnitude", max_drop=0.5, rounds=2)
    assert result.compression > 1.5
    assert result.results["drop"]["val"] <= 0.5
    assert all(row["drop"] <= 0.5 for row in result.history if row["feasible"])


# --------------------------------------------------------------------------------------
# Loaders in prune, fit and evaluate; named API runs


def test_a_user_cnn_on_dataloaders_is_pruned_within_the_bound_and_the_run_is_named(user_cnn, loaders, small,
                                                                                   tmp_path, capsys):
    out = tmp_path / "run"
    result = secateur.prune(copy.deepcopy(user_cnn), data=loaders, max_drop=0.5, out=out, rounds=2,
                            retrain_epochs=1, polish_epochs=1)
    results = result.results
    assert result.compression > 2.0 and results["drop"]["val"] <= 0.5
    assert results["macs"]["baseline"] > 0 and results["pruned"]["test"]["accuracy"] > 0.8  # shape inferred
    assert results["model"] == {"name": f"{__name__}:SmallCNN", "args": {"input_shape": [1, 28, 28],
                                                                           "num_classes": 10}}
    assert results["dataset"] == "mnist-2k"
    title = (out / "report.md").read_text().splitlines()[0]
    assert title == f"# secateur report: {__name__}:SmallCNN on mnist-2k"
    assert main(["info", str(out)]) == 0 and "MACs for one 1x28x28 input" in capsys.readouterr().out
    loaded, _ = secateur.load_model(out / "model.safetensors")
    x = next(batches(small.val, 32, mean=small.mean, std=small.std))[0]
    assert isinstance(loaded, SmallCNN) and torch.equal(loaded(x), result.model.eval()(x))


def test_a_class_that_cannot_be_rebuilt_is_named_and_load_model_asks_for_a_template(small, tmp_path):
    class Local(nn.Module):  # defined in a function: not importable, so no record
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(784, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1))

    out = tmp_path / "local"
    result = secateur.prune(Local(), data=small.subset(200, 100, 100), out=out, rounds=1, retrain_epochs=1,
                            polish_epochs=0, max_drop=100.0)
    assert result.results["model"] == "Local"
    assert (out / "report.md").read_text().startswith("# secateur report: Local on mnist")
    with pytest.raises(CheckpointError, match="pass model=") as caught:
        secateur.load_model(out / "model.safetensors")
    one_line(caught)
    loaded, _ = secateur.load_model(out / "model.safetensors", model=Local())  # with a template it loads
    assert torch.equal(loaded.fc.weight, result.model.fc.weight)


def test_a_zoo_model_run_without_meta_is_titled_by_its_record(small, tmp_path):
    out = tmp_path / "zoo"
    secateur.prune(secateur.build_model("lenet300"), data=small.subset(300, 100, 100), out=out, rounds=1,
                   retrain_epochs=1, polish_epochs=0, max_drop=100.0)
    assert (out / "report.md").read_text().startswith("# secateur report: lenet300 on mnist\n")
    assert secateur.load_model(out)[1]["dataset"] == "mnist"


def synthetic(n: int = 64, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 4, 4, generator=generator)
    return TensorDataset(x, (x.sum(dim=(1, 2, 3)) > 0).long())


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))


def test_fit_on_plain_torch_datasets_is_seeded_and_uses_the_batch_size():
    data = secateur.Loaders(train=synthetic(), val=synthetic(32, 1))
    config = secateur.TrainConfig(epochs=2, batch_size=16, lr=0.1)
    first, second, other = tiny(), tiny(), tiny()
    secateur.fit(first, data, config, progress=False)
    secateur.fit(second, data, config, progress=False)
    secateur.fit(other, data, config.replace(seed=1), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(first.parameters(), other.parameters()))
    seen = []
    secateur.fit(tiny(), data, config.replace(epochs=1), step=lambda m, x, y: (seen.append(len(y)),
                                                                               F.cross_entropy(m(x), y))[1],
                 progress=False)
    assert seen == [16, 16, 16, 16]
    hits = secateur.correctness(first, data)
    assert hits.dtype == torch.bool and hits.shape == (32,)
    assert secateur.evaluate(first, data) == pytest.approx(float(hits.float().mean()))


def test_loaders_refuse_what_would_break_paired_results_with_one_line():
    with pytest.raises(ConfigError, match=r"^Loaders val= shuffles") as caught:
        secateur.Loaders(train=synthetic(), val=DataLoader(synthetic(), shuffle=True))
    one_line(caught)
    with pytest.raises(ConfigError, match=r"^Loaders train= must be a torch\.utils\.data DataLoader"):
        secateur.Loaders(train=[(1, 2)], val=synthetic())
    data = secateur.Loaders(train=synthetic(), val=synthetic())
    with pytest.raises(ConfigError, match=r"^augment=1 shifts secateur's own datasets only"):
        secateur.fit(tiny(), data, secateur.TrainConfig(epochs=1, augment=1), progress=False)
    with pytest.raises(ConfigError, match="no test data"):
        secateur.evaluate(tiny(), data, "test")
    with pytest.raises(ConfigError, match=r"yield \(x, y\) pairs"):
        secateur.evaluate(tiny(), secateur.Loaders(train=synthetic(), val=TensorDataset(torch.zeros(3, 16))))
    result = secateur.prune(tiny(), data=data, rounds=1, retrain_epochs=1, max_drop=100.0)
    assert result.results["dataset"] == "custom" and result.results["pruned"]["test"]["accuracy"] is None


# --------------------------------------------------------------------------------------
# secateur's own data as torch Datasets


def test_secateur_splits_are_torch_datasets_with_a_short_repr(small):
    image, label = small.train[0]
    expected = next(batches(small.train, 1, mean=small.mean, std=small.std))
    assert image.dtype == torch.float32 and image.shape == (1, 28, 28) and isinstance(label, int)
    assert torch.allclose(image, expected[0][0], atol=1e-6) and label == int(expected[1][0])
    x, y = next(iter(DataLoader(small.val, batch_size=8)))
    assert x.shape == (8, 1, 28, 28) and y.dtype == torch.int64 and len(small.val) == 500
    assert repr(small) == "Dataset('mnist': train=2000, val=500, test=500; 1x28x28 images, 10 classes)"
    assert repr(small.train) == "Split(2000 images of 1x28x28, uint8; 10 labels)"
    assert small.subset(train=10).train.mean == small.mean  # the statistics travel with the split


# --------------------------------------------------------------------------------------
# imagefolder:PATH


def write_images(folder: Path, per_class: int, seed: int = 0, mode: str = "RGB") -> None:
    """Classes red / green / blue of noisy 12x10 images (PIL), as torchvision's ImageFolder lays them out."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, colour in (("blue", (30, 30, 220)), ("green", (30, 220, 30)), ("red", (220, 30, 30))):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = (np.array(colour) + rng.integers(-25, 25, (10, 12, 3))).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).convert(mode).save(folder / name / f"{i}.png")


def test_an_image_folder_loads_with_seeded_splits_and_its_own_train_test_val(tmp_path):
    write_images(tmp_path / "flat", 10)
    flat = load_dataset(f"imagefolder:{tmp_path / 'flat'}")
    assert (len(flat.train), len(flat.val), len(flat.test)) == (22, 2, 6) and flat.num_classes == 3
    assert flat.input_shape == (3, 32, 32) and flat.train[0][0].shape == (3, 32, 32)
    assert torch.equal(load_dataset(f"imagefolder:{tmp_path / 'flat'}").val.images, flat.val.images)
    assert load_dataset(f"imagefolder:{tmp_path / 'flat'}@8").input_shape == (3, 8, 8)
    for part, count in (("train", 6), ("test", 2), ("val", 3)):
        write_images(tmp_path / "Split" / part, count, seed=len(part), mode="L")
    split = load_dataset(f"ImageFolder:{tmp_path / 'Split'}")  # the path keeps its case
    assert (len(split.train), len(split.val), len(split.test)) == (18, 9, 6) and split.input_shape == (1, 32, 32)
    assert split.name == f"imagefolder:{tmp_path / 'Split'}"
    with pytest.raises(secateur.SecateurError, match="is not a folder") as caught:
        load_dataset(f"imagefolder:{tmp_path / 'missing'}")
    one_line(caught)


def test_an_image_folder_trains_and_prunes_end_to_end_in_the_cli(tmp_path, capsys, monkeypatch):
    write_images(tmp_path / "images", 12)
    monkeypatch.chdir(tmp_path)
    dataset = "imagefolder:images"
    assert main(["train", "--model", "lenet5", "--dataset", dataset, "--epochs", "2", "--quiet",
                 "--out", "base"]) == 0
    (tmp_path / "recipe.yaml").write_text(f"dataset: {dataset}\ngranularity: channel\nmax_drop: 50\n")
    assert main(["prune", "--from", "base", "--out", "run", "--config", "recipe.yaml",  # the recipe names it too
                 "--rounds", "1", "--retrain-epochs", "1", "--polish-epochs", "0", "--quiet"]) == 0
    assert (tmp_path / "run" / "report.md").read_text().startswith(f"# secateur report: lenet5 on {dataset}\n")
    assert "channels" in json.loads((tmp_path / "run" / "results.json").read_text())
    assert main(["info", "run"]) == 0 and "MACs for one 3x32x32 input" in capsys.readouterr().out
    assert main(["train", "--model", "lenet5", "--dataset", "imagefolder:nowhere", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert "nowhere is not a folder" in err and len(err.strip().splitlines()) == 1
