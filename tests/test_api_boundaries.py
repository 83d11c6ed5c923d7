"""Wrong arguments to secateur.prune / fit / evaluate: one-line ConfigErrors, before any work starts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from retraining import nudge
from secateur import PruneConfig, TrainConfig, evaluate, fit, prune
from secateur.errors import ConfigError
from secateur.zoo.data import Dataset, Split

SHAPE = (1, 2, 2)
RETURNED = "expected a fraction in [0, 1] or a 1-D bool tensor of per-example correctness"


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def tiny_data(n: int = 16) -> Dataset:
    generator = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (n, *SHAPE), dtype=torch.uint8, generator=generator),
                  torch.randint(0, 2, (n,), generator=generator))
    return Dataset("tiny", split, split, split, 2, (0.5,), (0.25,))


class Spy:
    """An evaluator that replays ``values`` (the last one repeats) and counts its calls."""

    def __init__(self, *values: object) -> None:
        self.values, self.calls = list(values), 0

    def __call__(self, model: nn.Module) -> object:
        self.calls += 1
        return self.values[min(self.calls, len(self.values)) - 1]


def one_line_error(match: str, call, *args, **kwargs) -> ConfigError:
    """Run ``call`` and return the ConfigError it raised, checking that its message is one line."""
    with pytest.raises(ConfigError, match=match) as caught:
        call(*args, **kwargs)
    assert "\n" not in str(caught.value)
    return caught.value


def run(**kwargs: object):
    options = {"train": nudge, "evaluate": Spy(0.9), "input_shape": SHAPE, "rounds": 2,
               "method": "magnitude", **kwargs}
    return prune(tiny(), **options)


# --------------------------------------------------------------------------------------
# callables


@pytest.mark.parametrize("value", [5, "fit", [print]], ids=["int", "str", "list"])
@pytest.mark.parametrize("name", ["train", "evaluate", "test_evaluate", "polish", "on_round"])
def test_a_callable_argument_that_is_not_callable_is_refused_before_any_work(name, value):
    spy = Spy(0.9)
    options = {"evaluate": spy, name: value}
    one_line_error(rf"^{name}= must be a function taking .*, got ", run, **options)
    assert spy.calls == 0


# --------------------------------------------------------------------------------------
# what evaluate returns


BAD_RETURNS = {
    "percentage": 97.5, "negative": -0.1, "nan": math.nan, "inf": math.inf, "str": "0.9", "none": None,
    "list": [0.9], "float vector": torch.rand(5), "int vector": torch.tensor([1, 0, 1]),
    "2-d bool": torch.ones(2, 3, dtype=torch.bool), "empty bool": torch.zeros(0, dtype=torch.bool),
    "numpy vector": np.array([0.9]),
}


@pytest.mark.parametrize("value", list(BAD_RETURNS.values()), ids=list(BAD_RETURNS))
def test_a_bad_baseline_evaluation_is_refused_before_any_round(value):
    trained = []
    error = one_line_error("^evaluate returned ", run, evaluate=Spy(value),
                           train=lambda m: (trained.append(m), nudge(m)))
    assert RETURNED in str(error) and not trained


def test_a_percentage_is_named_as_one():
    assert "97.5 (a percentage?)" in str(one_line_error("returned", run, evaluate=Spy(97.5)))


GOOD = {"numpy bool": np.bool_(True), "numpy int": np.int64(1), "numpy float": np.float32(0.9),
        "0-d tensor": torch.tensor(0.9), "int": 1, "bool": True}


@pytest.mark.parametrize("value", list(GOOD.values()), ids=list(GOOD))
def test_scalar_accuracies_of_any_kind_pass_and_a_later_bad_one_is_refused(value):
    assert run(evaluate=Spy(value), rounds=1).results["baseline"]["val"]["accuracy"] == float(value)
    one_line_error("^evaluate returned 97.5", run, evaluate=Spy(value, 97.5))


@pytest.mark.parametrize("value", [97.5, math.nan, "x", torch.rand(4)], ids=["percentage", "nan", "str", "vector"])
@pytest.mark.parametrize("call", [2, 3], ids=["round", "recovery pass"])
def test_a_bad_evaluation_after_the_baseline_is_refused(value, call):
    over_bound = 0.0  # a round this far below the baseline gets a recovery pass, evaluated again
    values = (0.9, value) if call == 2 else (0.9, over_bound, value)
    one_line_error("^evaluate returned ", run, evaluate=Spy(*values), recovery=1)


def test_a_bad_evaluation_of_the_polished_model_is_refused():
    spy = Spy(0.9, 0.9, 0.9, 2.0)  # baseline, two rounds, then the polish
    one_line_error("^evaluate returned 2.0", run, evaluate=spy, polish=nudge)
    assert spy.calls == 4


CHANGING = {
    "shorter": ((torch.ones(10, dtype=torch.bool), torch.ones(9, dtype=torch.bool)), "9 per-example results, but 10"),
    "to a float": ((torch.ones(10, dtype=torch.bool), 0.9), "an accuracy, but 10 per-example"),
    "to a vector": ((0.9, torch.ones(10, dtype=torch.bool)), "10 per-example results, but an accuracy"),
}


@pytest.mark.parametrize("values, words", list(CHANGING.values()), ids=list(CHANGING))
def test_per_example_results_must_keep_the_baselines_kind_and_length(values, words):
    one_line_error(words, run, evaluate=Spy(*values))


def test_a_bad_test_evaluation_is_refused_and_a_vector_one_reported_as_its_accuracy():
    one_line_error("^test_evaluate returned 95.0", run, test_evaluate=Spy(95.0), rounds=1)
    hits = torch.tensor([True, True, False, True])
    result = run(test_evaluate=Spy(hits), rounds=1)
    assert result.results["baseline"]["test"]["accuracy"] == 0.75 and result.results["drop"]["test"] == 0.0


# --------------------------------------------------------------------------------------
# other arguments of prune


BAD_ARGUMENTS = {
    "model int": ({"model": 5}, "^model must be a torch.nn.Module"),
    "model function": ({"model": tiny}, "^model must be a torch.nn.Module"),
    "data int": ({"data": 5}, "^data= must be a secateur Dataset"),
    "data list": ({"data": [(torch.zeros(1), 0)]}, "^data= must be a secateur Dataset"),
    "shape zero": ({"input_shape": (0, 2, 2)}, "^input_shape= must be a tuple of positive ints"),
    "shape negative": ({"input_shape": (1, -2)}, "^input_shape= must be a tuple of positive ints"),
    "shape str": ({"input_shape": "1x2x2"}, "^input_shape= must be a tuple of positive ints"),
    "shape float": ({"input_shape": (1.5, 2)}, "^input_shape= must be a tuple of positive ints"),
    "shape bool": ({"input_shape": (True, 2, 2)}, "^input_shape= must be a tuple of positive ints"),
    "shape int": ({"input_shape": 4}, "^input_shape= must be a tuple of positive ints"),
    "out int": ({"out": 5}, "^out= must be a folder path"),
    "out list": ({"out": ["runs"]}, "^out= must be a folder path"),
    "meta pairs": ({"meta": [("note", 1)]}, "^meta= must be a mapping"),
    "meta str": ({"meta": "note"}, "^meta= must be a mapping"),
    "config dict": ({"config": {"max_drop": 0.1}}, "^config= must be a PruneConfig"),
    "train_config dict": ({"train_config": {"lr": 0.1}}, "^train_config= must be a TrainConfig"),
    "train_config lr str": ({"train_config": TrainConfig(lr="0.1")}, "^training option lr must be a number"),
}


@pytest.mark.parametrize("arguments, match", list(BAD_ARGUMENTS.values()), ids=list(BAD_ARGUMENTS))
def test_an_argument_of_the_wrong_kind_is_refused_before_any_work(arguments, match):
    spy = Spy(0.9)
    model = arguments.pop("model", tiny())
    options = {"train": lambda m: None, "evaluate": spy, "input_shape": SHAPE, **arguments}
    one_line_error(match, prune, model, **options)
    assert spy.calls == 0


BAD_OPTIONS = {
    "max_drop str": ({"max_drop": "0.1"}, "max_drop must be a number, got str '0.1'"),
    "max_drop none": ({"max_drop": None}, "max_drop must be a number, got NoneType"),
    "rounds float": ({"rounds": 2.5}, "rounds must be an integer, got float 2.5"),
    "seed str": ({"seed": "0"}, "seed must be an integer"),
    "targets str": ({"targets": "1.weight"}, "targets must be a list of names or None"),
    "factors str values": ({"factors": {"1.weight": "2"}}, "factors must be a mapping of name to number"),
    "include_bias int": ({"include_bias": 1}, "include_bias must be True or False"),
    "granularity int": ({"granularity": 5}, "granularity must be a string"),
    "method int": ({"method": 3}, "method must be a string or None"),
    "config field": ({"config": PruneConfig(confidence="high")}, "confidence must be a number"),
}


@pytest.mark.parametrize("options, words", list(BAD_OPTIONS.values()), ids=list(BAD_OPTIONS))
def test_an_option_of_the_wrong_type_is_a_one_line_config_error(options, words):
    spy = Spy(0.9)
    one_line_error(f"^prune option {words}", run, evaluate=spy, **options)
    assert spy.calls == 0


def test_numpy_numbers_and_lists_pass_where_their_strings_do_not():
    result = run(input_shape=[1, 2, 2], meta={"note": "x"}, max_drop=np.float64(0.5), rounds=np.int64(1),
                 targets=["1.weight"], factors=None)
    assert result.results["note"] == "x" and len(result.history) == 1
    one_line_error("^prune option max_drop must be a number, got str '0.5'", run, max_drop="0.5")


# --------------------------------------------------------------------------------------
# fit and evaluate


BAD_FIT = {
    "model": ((5, "data"), {}, "^model must be a torch.nn.Module"),
    "dataset name": (("model", "mnist"), {}, r"^data must be a secateur Dataset \(load it with"),
    "config dict": (("model", "data", {"epochs": 1}), {}, "^config= must be a TrainConfig"),
    "config field": (("model", "data", TrainConfig(epochs="1")), {}, "^training option epochs must be an integer"),
    "step": (("model", "data"), {"step": 5}, "^step= must be a function"),
    "on_epoch": (("model", "data"), {"on_epoch": "print"}, "^on_epoch= must be a function"),
}


def _fill(args: tuple) -> list:
    return [tiny() if a == "model" else tiny_data() if a == "data" else a for a in args]


@pytest.mark.parametrize("args, kwargs, match", list(BAD_FIT.values()), ids=list(BAD_FIT))
def test_fit_refuses_arguments_of_the_wrong_kind(args, kwargs, match):
    one_line_error(match, fit, *_fill(args), progress=False, **kwargs)


BAD_EVALUATE = {
    "model": ((5, "data"), {}, "^model must be a torch.nn.Module"),
    "data": (("model", [1, 2]), {}, "^data must be a secateur Dataset, got list"),
    "split": (("model", "data", "validation"), {}, "^split must be one of train, val, test"),
    "batch size": (("model", "data"), {"batch_size": 0}, "^batch_size must be a positive int"),
    "device": (("model", "data"), {"device": "tpu"}, "device 'tpu'"),
}


@pytest.mark.parametrize("args, kwargs, match", list(BAD_EVALUATE.values()), ids=list(BAD_EVALUATE))
def test_evaluate_refuses_arguments_of_the_wrong_kind(args, kwargs, match):
    one_line_error(match, evaluate, *_fill(args), **kwargs)


def test_fit_and_evaluate_run_on_a_tiny_dataset_and_refuse_a_string_epoch_count():
    model, data = tiny(), tiny_data()
    assert len(fit(model, data, TrainConfig(epochs=1, batch_size=8), progress=False).history) == 1
    assert 0.0 <= evaluate(model, data, "test", batch_size=5) <= 1.0
    one_line_error("^training option batch_size must be an integer", fit, model, data, TrainConfig(batch_size="8"))
