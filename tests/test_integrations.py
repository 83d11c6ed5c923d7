"""The drop-bound search driven from outside: a plain loop (PruningSession), Lightning, the HF Trainer.

Each trainer test prunes a user model through the real package's trainer on the CPU (no
downloads) and checks what a user relies on: the answer is within the bound *as re-measured*
(the best state was restored, not the last one tried), the compression is real (masked entries
are 0 in the weights the model computes with) and the trainer was stopped when the search ended.
"""

from __future__ import annotations

import copy
import importlib
import logging
import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import secateur
from secateur.errors import ConfigError
from secateur.search.acceptance import TOLERANCE
from secateur.train import TrainConfig, correctness, fit
from secateur.unstructured.masks import effective, masks_of

MAX_DROP = 1.0  # points; a 1,000-image validation split, so 10 images


class SmallCNN(nn.Module):
    """A user's own CNN for 28x28 digits (not from secateur's zoo)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 5), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 5), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@pytest.fixture(scope="module")
def digits(mnist):
    """2,000 training and 1,000 validation images."""
    return mnist.subset(train=2000, val=1000, test=0)


@pytest.fixture(scope="module")
def trained_cnn(digits) -> SmallCNN:
    """The user's CNN after 3 epochs (shared: copy it before changing it)."""
    torch.manual_seed(0)
    model = SmallCNN()
    fit(model, digits, TrainConfig(epochs=3, lr=0.05), progress=False)
    return model


def tensors(data, split: str) -> TensorDataset:
    """A split as normalised float images and labels (what a user's DataLoader would yield)."""
    part = getattr(data, split)
    mean, std = torch.tensor(data.mean).view(1, -1, 1, 1), torch.tensor(data.std).view(1, -1, 1, 1)
    return TensorDataset((part.images.float() / 255 - mean) / std, part.labels)


def assert_pruned_within(result, model: nn.Module, remeasured: float) -> None:
    """Within the bound as re-measured on the model left in place, compressed, masked entries 0."""
    assert result.model is model
    baseline = result.results["baseline"]["val"]["accuracy"]
    assert 100 * (baseline - remeasured) <= MAX_DROP + TOLERANCE
    assert remeasured == pytest.approx(result.results["pruned"]["val"]["accuracy"])
    assert result.compression > 1.5
    assert result.results["chosen_round"] is not None
    masks = masks_of(model)
    assert masks and any(not bool(mask.all()) for mask in masks.values())
    for name, mask in masks.items():
        assert bool((effective(model, name)[~mask] == 0).all()), name


# ---------------------------------------------------------------------------------------------- plain loop


def test_session_runs_the_same_search_as_prune(trained_lenet300, small) -> None:
    """A loop that retrains as prune's train= callable gives the same rounds and the same answer."""

    def train(model: nn.Module) -> None:
        fit(model, small, TrainConfig(epochs=1, lr=0.02), progress=False)

    def evaluate(model: nn.Module) -> torch.Tensor:
        return correctness(model, small, "val")

    options = {"max_drop": 0.5, "rounds": 4, "method": "magnitude"}
    expected = secateur.prune(copy.deepcopy(trained_lenet300), train=train, evaluate=evaluate, **options)
    model = copy.deepcopy(trained_lenet300)
    session = secateur.PruningSession(model, evaluate, **options)
    for candidate in session:
        assert candidate is model  # masks: the same object every round, pruned in place
        train(candidate)
    result = session.result
    assert result is not None and result.model is model
    assert [(r["strength"], r["feasible"], r["val_accuracy"], r["recovery_passes"]) for r in result.history] == \
           [(r["strength"], r["feasible"], r["val_accuracy"], r["recovery_passes"]) for r in expected.history]
    assert result.compression == expected.compression
    assert any(not row["feasible"] for row in result.history)  # a roll-back happened, and was undone
    assert evaluate(model).float().mean().item() == pytest.approx(expected.results["pruned"]["val"]["accuracy"])


def test_session_keeps_parameter_objects_for_an_optimizer_built_before(trained_lenet300, small) -> None:
    """Masks keep every nn.Parameter, so one optimizer built before the search trains every round."""
    model = copy.deepcopy(trained_lenet300)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    before = {id(p) for group in optimizer.param_groups for p in group["params"]}
    session = secateur.PruningSession(model, lambda m: correctness(m, small, "val"), max_drop=2.0, rounds=2)
    for candidate in session:
        assert {id(p) for p in candidate.parameters()} == before
        x, y = small.train.images[:64].float() / 255, small.train.labels[:64]
        optimizer.zero_grad()
        nn.functional.cross_entropy(candidate(x), y).backward()
        optimizer.step()
        for name, mask in masks_of(candidate).items():
            assert bool((effective(candidate, name)[~mask] == 0).all())
    assert session.result is not None and session.result.compression > 1


def test_session_with_physical_pruning_trains_copies(trained_lenet300, small) -> None:
    """Neurons removed: every round is a smaller copy; the model given is left as it was."""
    model = copy.deepcopy(trained_lenet300)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    session = secateur.PruningSession(model, lambda m: correctness(m, small, "val"), granularity="neuron",
                                      max_drop=2.0, rounds=2, input_shape=(1, 28, 28))
    assert not session.in_place
    for candidate in session:
        assert candidate is not model
        fit(candidate, small, TrainConfig(epochs=1, lr=0.02), progress=False)
    result = session.result
    assert result is not None and result.model is not model and result.compression > 1
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_session_finish_discards_an_untrained_round(trained_lenet300, small) -> None:
    model = copy.deepcopy(trained_lenet300)
    session = secateur.PruningSession(model, lambda m: correctness(m, small, "val"), max_drop=0.5)
    assert session.next_round() is model and masks_of(model)  # pruned to the first strength
    result = session.finish()
    assert result.history == [] and result.compression == pytest.approx(1.0)
    assert all(bool(mask.all()) for mask in masks_of(model).values())  # back to the baseline
    assert session.next_round() is None and session.finish() is result


@pytest.mark.parametrize(("options", "message"), [
    ({"distill": 0.5}, "option distill configures secateur's own retraining"),
    ({"retrain_epochs": 5}, "option retrain_epochs configures secateur's own retraining"),
    ({"schedule": "gradual"}, "gradual schedule prunes inside secateur's own training loop"),
    ({"max_drop": -1.0}, "max drop must be >= 0"),
    ({"speed": 3}, "unknown prune option"),
    ({"method": "l1"}, "does not apply to granularity 'weight'"),
])
def test_session_refuses_options_in_one_line(trained_lenet300, small, options, message) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        secateur.PruningSession(copy.deepcopy(trained_lenet300), lambda m: 1.0, **options)
    assert "\n" not in str(error.value)


def test_session_needs_an_evaluate_function(trained_lenet300) -> None:
    with pytest.raises(ConfigError, match="evaluate= is required"):
        secateur.PruningSession(copy.deepcopy(trained_lenet300), None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="evaluate= must be a function"):
        secateur.PruningSession(copy.deepcopy(trained_lenet300), 0.9)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- Lightning


def lightning_module(package: str, net: nn.Module, *, validation: bool = True) -> nn.Module:
    """A plain LightningModule around the user's net (SGD, cross-entropy)."""
    base = importlib.import_module("lightning.pytorch" if package == "lightning" else package).LightningModule

    class Classifier(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: tuple, _index: int) -> torch.Tensor:
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.02, momentum=0.9)

    if validation:
        Classifier.validation_step = lambda self, batch, _index: None  # type: ignore[attr-defined]
    return Classifier()


def lightning_trainer(package: str, callback: object, max_epochs: int, strategy: str = "auto") -> object:
    logging.getLogger(package).setLevel(logging.ERROR)
    return importlib.import_module(package).Trainer(
        max_epochs=max_epochs, callbacks=[callback], accelerator="cpu", devices=1, strategy=strategy, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)


@pytest.fixture
def own_process_group():
    """Lightning's DDP launcher leaves a process group, environment and thread count behind: undo them."""
    environment, threads = dict(os.environ), torch.get_num_threads()
    os.environ["OMP_NUM_THREADS"] = str(threads)  # else the launcher sets one thread per core (slow on shared cores)
    yield
    torch.set_num_threads(threads)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    os.environ.clear()
    os.environ.update(environment)


@pytest.mark.parametrize(("package", "strategy"), [("lightning", "ddp"), ("pytorch_lightning", "auto")])
def test_lightning_callback_prunes_a_user_cnn_within_the_bound(package, strategy, trained_cnn, digits,
                                                              own_process_group) -> None:
    """Under DDP too (one process): the masks go on before the strategy wraps the module."""
    callbacks = importlib.import_module(f"secateur.integrations.{package}")
    module = lightning_module(package, copy.deepcopy(trained_cnn))
    callback = callbacks.PruningCallback(max_drop=MAX_DROP, method="magnitude", rounds=4, retrain_epochs=1)
    trainer = lightning_trainer(package, callback, max_epochs=20, strategy=strategy)
    train = DataLoader(tensors(digits, "train"), batch_size=64, shuffle=True)
    trainer.fit(module, train, DataLoader(tensors(digits, "val"), batch_size=500))  # type: ignore[attr-defined]
    result = callback.result
    assert result is not None and trainer.current_epoch < 20  # type: ignore[attr-defined]  # stopped by the search
    assert len(result.history) >= 2
    remeasured = correctness(module.net, digits, "val").float().mean().item()
    assert_pruned_within(result, module, remeasured)


def test_lightning_callback_refuses_physical_pruning_and_missing_validation(trained_cnn) -> None:
    from secateur.integrations.lightning import PruningCallback

    with pytest.raises(ConfigError, match="granularity 'channel' removes parts of the model physically"):
        PruningCallback(granularity="channel")
    with pytest.raises(ConfigError, match=r"retrain epochs \(the trainer's epochs per round\) must be >= 1"):
        PruningCallback(retrain_epochs=0)
    module = lightning_module("lightning", copy.deepcopy(trained_cnn), validation=False)
    trainer = lightning_trainer("lightning", PruningCallback(), max_epochs=1)
    data = TensorDataset(torch.randn(8, 1, 28, 28), torch.zeros(8, dtype=torch.long))
    with pytest.raises(ConfigError, match="evaluates on the trainer's validation data"):
        trainer.fit(module, DataLoader(data, batch_size=4))  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------- Hugging Face


class PixelDataset(Dataset):
    """Image/label pairs as the dicts a Hugging Face collator stacks."""

    def __init__(self, pairs: TensorDataset) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        x, y = self.pairs[index]
        return {"pixel_values": x, "labels": y}


class HFWrapped(nn.Module):
    """The user's CNN with the forward a Trainer calls: keyword inputs, a loss when given labels."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.net(pixel_values)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


def hf_trainer(model: nn.Module, train: Dataset, val: Dataset, tmp_path, epochs: int, lr: float):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=epochs, per_device_train_batch_size=64,
                             per_device_eval_batch_size=500, learning_rate=lr, save_strategy="no",
                             eval_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
                             logging_strategy="no", dataloader_num_workers=0, seed=0)
    return Trainer(model=model, args=args, train_dataset=train, eval_dataset=val)


def test_hf_callback_prunes_a_user_cnn_within_the_bound(trained_cnn, digits, tmp_path) -> None:
    from secateur.integrations.huggingface import PruningCallback

    model = HFWrapped(copy.deepcopy(trained_cnn))
    trainer = hf_trainer(model, PixelDataset(tensors(digits, "train")), PixelDataset(tensors(digits, "val")),
                         tmp_path, epochs=20, lr=0.005)
    callback = PruningCallback(trainer, max_drop=MAX_DROP, method="magnitude", rounds=4, retrain_epochs=1)
    trainer.add_callback(callback)
    trainer.train()
    result = callback.result
    assert result is not None and trainer.state.epoch < 20  # stopped by the search
    remeasured = correctness(model.net, digits, "val").float().mean().item()
    assert_pruned_within(result, model, remeasured)


def test_hf_callback_prunes_a_tiny_bert_built_from_a_config(tmp_path) -> None:
    """A BertForSequenceClassification from a config (no download) on separable token data."""
    from transformers import BertConfig, BertForSequenceClassification

    from secateur.integrations.huggingface import PruningCallback

    torch.manual_seed(0)
    config = BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=16, num_labels=2)
    model = BertForSequenceClassification(config)
    tokens = torch.randint(0, 40, (1200, 8))
    labels = (tokens[:, 1] < 20).long()  # the second token decides: separable
    rows = [{"input_ids": t, "attention_mask": torch.ones_like(t), "labels": y} for t, y in zip(tokens, labels)]
    train, val = rows[:800], rows[800:]
    hf_trainer(model, train, val, tmp_path, epochs=8, lr=3e-3).train()  # the baseline
    trainer = hf_trainer(model, train, val, tmp_path, epochs=20, lr=1e-3)
    callback = PruningCallback(trainer, max_drop=MAX_DROP, rounds=3, retrain_epochs=1)
    trainer.add_callback(callback)
    trainer.train()
    result = callback.result
    assert result is not None and result.results["baseline"]["val"]["accuracy"] > 0.9
    assert any(name.startswith("bert.encoder") for name in masks_of(model))
    outcome = callback.session.history if callback.session else []
    assert outcome and result.compression > 1.5
    assert result.results["drop"]["val"] <= MAX_DROP + TOLERANCE


def test_hf_callback_needs_its_trainer_and_an_eval_dataset(trained_cnn, digits, tmp_path) -> None:
    from secateur.integrations.huggingface import PruningCallback

    with pytest.raises(ConfigError, match="needs the transformers Trainer it runs in"):
        PruningCallback(None, max_drop=0.5)  # type: ignore[arg-type]
    model = HFWrapped(copy.deepcopy(trained_cnn))
    trainer = hf_trainer(model, PixelDataset(tensors(digits, "train")), None, tmp_path, epochs=1, lr=0.005)
    with pytest.raises(ConfigError, match="granularity 'neuron' removes parts"):
        PruningCallback(trainer, granularity="neuron")
    trainer.add_callback(PruningCallback(trainer))
    with pytest.raises(ConfigError, match="evaluates on the Trainer's eval_dataset"):
        trainer.train()
