"""The training loop: learns, is deterministic, keeps masks, validates its config."""

from __future__ import annotations

import pytest
import torch

from secateur.errors import ConfigError
from secateur.train import (
    TrainConfig,
    distill_step,
    evaluate,
    fit,
    frozen_teacher,
    lr_factor,
    random_shift,
)
from secateur.unstructured.masks import apply_masks, effective
from secateur.zoo.models import build_model


@pytest.fixture(scope="module")
def small(mnist):
    return mnist.subset(train=3000, val=1000, test=1000)


def test_fit_learns_and_evaluate_reports_a_fraction(small):
    torch.manual_seed(0)
    model = build_model("lenet300")
    before = evaluate(model, small, "val")
    result = fit(model, small, TrainConfig(epochs=2, lr=0.05), progress=False)
    after = evaluate(model, small, "val")
    assert 0.0 <= before <= 1.0 and after > 0.85 > before
    assert len(result.history) == 2 and result.val_accuracy == pytest.approx(after)


def test_same_seed_gives_bitwise_the_same_weights(small):
    def run() -> dict:
        torch.manual_seed(1)
        model = build_model("lenet5")
        fit(model, small.subset(train=600), TrainConfig(epochs=1, augment=2, seed=7), progress=False)
        return model.state_dict()

    first, second = run(), run()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_masked_weights_stay_zero_through_fit(small):
    torch.manual_seed(0)
    model = build_model("lenet300")
    mask = torch.rand(300, 784) > 0.5
    name = "fc1.weight"
    apply_masks(model, {name: mask})
    fit(model, small.subset(train=1000), TrainConfig(epochs=1, optimizer="adam", lr=1e-3), progress=False)
    assert bool((effective(model, name)[~mask] == 0).all())
    assert bool((effective(model, name)[mask] != 0).any())


def test_random_shift_moves_content_and_fills_background():
    x = torch.zeros(4, 1, 6, 6)
    x[:, :, 2:4, 2:4] = 1.0
    shifted = random_shift(x, 2, torch.tensor([-1.0]), torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape
    assert torch.equal((shifted == 1.0).sum(dim=(1, 2, 3)), torch.full((4,), 4))
    assert random_shift(x, 0, torch.tensor([0.0]), torch.Generator()) is x


def test_learning_rate_schedules():
    assert lr_factor("constant", 50, 100) == 1.0
    assert lr_factor("cosine", 0, 100) == 1.0 and lr_factor("cosine", 100, 100) == pytest.approx(0.0)
    assert lr_factor("step", 60, 100) == pytest.approx(0.1) and lr_factor("step", 80, 100) == pytest.approx(0.01)
    assert lr_factor("linear", 0, 100) == 1.0 and lr_factor("linear", 25, 100) == pytest.approx(0.75)


@pytest.mark.parametrize("changes", [
    {"epochs": -1}, {"lr": 0.0}, {"lr": -0.1}, {"batch_size": 0}, {"optimizer": "lbfgs"},
    {"lr_schedule": "exponential"}, {"momentum": 1.5}, {"device": "tpu"},
])
def test_invalid_config_is_one_line_config_error(changes):
    with pytest.raises(ConfigError) as info:
        TrainConfig().replace(**changes).validate()
    assert "\n" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_is_a_config_error():
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        TrainConfig(device="cuda").validate()


def test_custom_step_is_used(small):
    calls = []

    def step(model, x, y):
        calls.append(len(y))
        return torch.nn.functional.cross_entropy(model(x), y)

    model = build_model("lenet300")
    fit(model, small.subset(train=256), TrainConfig(epochs=1, batch_size=64), step=step, progress=False)
    assert calls == [64, 64, 64, 64]


def test_distillation_from_an_identical_teacher_is_plain_cross_entropy_scaled():
    torch.manual_seed(0)
    model = build_model("lenet300")
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    teacher = frozen_teacher(model)
    ce = torch.nn.functional.cross_entropy(model(x), y)
    blended = distill_step(model, x, y, teacher=teacher, weight=0.25, temperature=3.0)
    assert torch.allclose(blended, 0.75 * ce, atol=1e-5)  # KL(model || itself) is 0
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_distillation_pulls_the_student_towards_the_teacher():
    torch.manual_seed(0)
    student, teacher = build_model("lenet300"), frozen_teacher(build_model("lenet300"))
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    pure_kd = distill_step(student, x, y, teacher=teacher, weight=1.0, temperature=2.0)
    assert pure_kd > 0
    pure_kd.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
