"""ThreadChoice: which instance of a model (by thread count) runs next, from measured costs.

The "models" here are plain strings (named stand-ins): the choice never calls them.
"""

from __future__ import annotations

import pytest

from npc_engine.pipeline.threads import PROBE_EVERY, ThreadChoice, thread_counts


def test_untried_instances_run_first_most_threads_first() -> None:
    choice = ThreadChoice([(1, "one"), (2, "two")])
    assert choice.pick() == (2, "two")
    choice.record(2, 0.4, 1.0)
    assert choice.pick() == (1, "one")  # not measured yet
    assert choice.costs() == {2: 0.4, 1: None}


def test_the_cheaper_instance_runs_and_the_other_is_probed_now_and_then() -> None:
    choice = ThreadChoice([(1, "one"), (2, "two")])
    choice.record(2, 0.4, 1.0)  # seconds per unit: two threads 0.4, one 0.7
    choice.record(1, 1.4, 2.0)
    picks = [choice.pick()[0] for _ in range(4 * PROBE_EVERY)]
    assert picks.count(1) == 4, picks  # one probe in PROBE_EVERY runs
    assert picks.count(2) == 4 * PROBE_EVERY - 4


def test_a_machine_that_gets_busy_moves_the_choice_within_a_few_runs() -> None:
    choice = ThreadChoice([(1, "one"), (2, "two")], probe_every=1000)
    choice.record(2, 0.4, 1.0)
    choice.record(1, 0.7, 1.0)
    runs = 0
    # Other programs load the machine: two threads now take 1.5 s a unit, one still 0.7.
    while choice.pick()[0] == 2:
        choice.record(2, 1.5, 1.0)
        runs += 1
        assert runs < 10, choice.costs()
    assert runs >= 1
    # ...and when the load goes, a probe of the two-thread instance brings it back.
    probing = ThreadChoice([(1, "one"), (2, "two")], probe_every=2)
    probing.record(2, 1.5, 1.0)
    probing.record(1, 0.7, 1.0)
    for _ in range(20):
        threads, _model = probing.pick()
        probing.record(threads, 0.4 if threads == 2 else 0.7, 1.0)
    costs = probing.costs()
    assert costs[2] is not None and costs[1] is not None and costs[2] < costs[1], costs  # the favourite again


def test_runs_without_work_or_of_unknown_counts_are_ignored() -> None:
    choice = ThreadChoice([(1, "one")])
    choice.record(1, 0.5, 0.0)
    choice.record(3, 0.5, 1.0)
    assert choice.costs() == {1: None}
    assert choice.pick() == (1, "one")


def test_thread_counts_and_an_empty_choice() -> None:
    assert thread_counts(1) == [1]
    assert thread_counts(0) == [1]
    assert thread_counts(2) == [1, 2]
    with pytest.raises(ValueError):
        ThreadChoice([])


def test_run_calls_the_picked_instance_and_records_its_cost_per_unit_of_work() -> None:
    choice = ThreadChoice([(1, "one"), (2, "two")])
    assert choice.run(lambda model: model.upper(), lambda result: 4.0) == "TWO"  # untried, most threads
    cost = choice.costs()[2]
    assert cost is not None and 0 <= cost < 1.0  # seconds per unit: a quick call over 4 units
    assert choice.costs()[1] is None


def test_an_urgent_run_takes_the_favourite_and_the_probe_waits_for_the_next_run() -> None:
    # A reply's first words must not be the run that tries the slower thread count.
    choice = ThreadChoice([(1, "one"), (2, "two")], probe_every=4)
    choice.record(2, 0.4, 1.0)
    choice.record(1, 0.7, 1.0)
    picks = [choice.pick(urgent=True)[0] for _ in range(12)]
    assert picks == [2] * 12, picks
    assert choice.pick()[0] == 1, "the probe that fell due during urgent runs comes on the next one"
    assert [choice.pick()[0] for _ in range(2)] == [2, 2]


def test_a_spare_run_takes_the_fewest_threads_and_leaves_the_costs_alone() -> None:
    # A later sentence rendered while a player waits on the LLM leaves it the other core; its
    # time measures the machine shared, not the choice for a run alone.
    choice = ThreadChoice([(1, "one"), (2, "two")])
    choice.record(2, 0.4, 1.0)
    choice.record(1, 0.7, 1.0)
    before = choice.costs()
    assert choice.run(lambda model: model, lambda result: 1.0, spare=True) == "one"
    assert choice.costs() == before
    assert choice.run(lambda model: model, lambda result: 1.0) == "two", "not spare: the favourite"
    assert choice.costs() != before, "and that run is recorded"
