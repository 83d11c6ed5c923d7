"""The drop-bound search's bookkeeping: raise, roll back, bisect, stop."""

from __future__ import annotations

import pytest

from secateur.errors import ConfigError
from secateur.search.bracket import (
    SearchSettings,
    SearchState,
    initial_state,
    next_strength,
    record,
)


def drive(feasible_below: float, settings: SearchSettings) -> tuple[SearchState, list[float]]:
    """Run the search against an oracle: strengths below a threshold are feasible."""
    state, tried = initial_state(settings), []
    while (x := next_strength(state, settings)) is not None:
        tried.append(x)
        state = record(state, x, x < feasible_below, settings)
    return state, tried


def test_search_converges_to_the_feasibility_edge_within_resolution():
    settings = SearchSettings(rounds=50, start=1.0, step=0.5, growth=1.25, resolution=0.05)
    state, tried = drive(3.3, settings)
    assert state.best_strength < 3.3 <= state.failed
    assert state.failed - state.best_strength <= 0.05
    assert len(tried) < 20


def test_accepted_strength_never_decreases_and_failed_never_increases():
    settings = SearchSettings(rounds=30, resolution=0.01)
    state, accepted, failed = initial_state(settings), [], []
    while (x := next_strength(state, settings)) is not None:
        state = record(state, x, x < 2.2, settings)
        accepted.append(state.best_strength)
        if state.failed is not None:
            failed.append(state.failed)
    assert accepted == sorted(accepted)
    assert failed == sorted(failed, reverse=True)


def test_round_budget_is_respected():
    settings = SearchSettings(rounds=3)
    state, tried = drive(100.0, settings)
    assert len(tried) == 3 and state.round == 3


def test_nothing_feasible_keeps_the_dense_model():
    state, tried = drive(0.0, SearchSettings(rounds=20, resolution=0.1))
    assert state.best_strength == 0.0 and state.best_round is None
    assert all(x > 0 for x in tried)


def test_state_round_trips_through_json_form():
    state = record(initial_state(SearchSettings()), 1.0, True, SearchSettings())
    assert SearchState.from_dict(state.to_dict()) == state


@pytest.mark.parametrize("kwargs", [{"rounds": 0}, {"step": 0}, {"resolution": -1}, {"growth": 0.5}])
def test_invalid_settings_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        SearchSettings(**kwargs).validate()


def test_a_collapsed_bracket_reopens_when_retraining_makes_progress_possible():
    """Iterative schedules keep retraining the accepted model, so the edge can move."""
    settings = SearchSettings(rounds=40, start=1.0, step=0.5, resolution=0.1, patience=2)
    state, edge = initial_state(settings), 2.0
    while (x := next_strength(state, settings)) is not None:
        feasible = x < edge
        state = record(state, x, feasible, settings)
        if feasible:
            edge += 0.15  # each accepted round's retraining lets the model go a bit further
    assert state.best_strength > 3.0  # well past the first failure at about 2


def test_patience_zero_stops_at_the_first_collapse():
    settings = SearchSettings(rounds=40, resolution=0.1, patience=0)
    state, _tried = drive(2.0, settings)
    assert state.failed is not None and state.failed - state.best_strength <= 0.1 + 1e-9


def test_each_stall_after_a_collapse_costs_one_round():
    """A reopened step of exactly `resolution` that fails counts as collapsed (float rounding aside)."""
    settings = SearchSettings(rounds=40, start=1.0, step=0.5, resolution=0.1, patience=2)
    state = SearchState(round=10, best_strength=2.689, failed=2.739, step=0.1, best_round=8, stalls=0)
    tried = []
    state = record(state, 2.739, False, settings)  # collapse: reopen with a step of one resolution
    while (x := next_strength(state, settings)) is not None:
        tried.append(x)
        state = record(state, x, False, settings)
    assert tried == [pytest.approx(2.789)] * 2  # one retry per stall, no bisection in between


def test_by_default_a_failure_that_closes_the_bracket_ends_the_search():
    """Retrying an unchanged accepted model would only draw another seed: no lottery tickets."""
    settings = SearchSettings(rounds=40, resolution=0.1)
    state = SearchState(round=10, best_strength=2.689, failed=2.789, step=0.1, best_round=8)
    state = record(state, 2.739, False, settings)
    assert next_strength(state, settings) is None
    reopened = record(SearchState(round=10, best_strength=2.6, failed=2.739, step=0.1), 2.689, True, settings)
    assert next_strength(reopened, settings) == pytest.approx(2.789)  # progress: reopen after a success


def test_a_passed_round_that_removed_nothing_more_ends_the_search():
    from secateur.search.orchestrator import saturated

    rows = [{"feasible": True, "params_nonzero": 100}, {"feasible": False, "params_nonzero": 50},
            {"feasible": True, "params_nonzero": 80}]
    assert not saturated(rows)
    assert saturated([*rows, {"feasible": True, "params_nonzero": 80}])
    assert not saturated([*rows, {"feasible": False, "params_nonzero": 80}])
    assert not saturated([{"feasible": True, "params_nonzero": 80}])
