"""The isolation policy, property-tested: pure functions, no processes."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from quarantine.policy import (
    CRASHES,
    Batch,
    Decision,
    Ending,
    Hunts,
    Lane,
    Costs,
    Outcome,
    decide,
    split_parts,
    suspect_slots,
)

ids_st = st.lists(st.from_regex(r"[A-Z][0-9]{1,4}", fullmatch=True), min_size=1, max_size=40, unique=True)
crash_st = st.sampled_from(sorted(CRASHES - {Ending.LOST}))


def accounted(batch: Batch, d: Decision) -> list[str]:
    out = list(d.deliver) + list(d.requeue) + list(d.quarantine)
    for b in d.retry:
        out += list(b.ids)
    return out


@given(ids=ids_st, ending=st.sampled_from(list(Ending)), data=st.data())
def test_every_id_goes_exactly_one_way(ids, ending, data):
    batch = Batch(ids=tuple(ids))
    done = data.draw(st.sets(st.sampled_from(ids)))
    begun = data.draw(st.lists(st.sampled_from(ids), max_size=len(ids)))
    d = decide(batch, Outcome(ending, tuple(begun), frozenset(done)), {}, 2, "h")
    assert sorted(accounted(batch, d)) == sorted(ids)
    assert set(d.strike) <= set(ids) and len(d.strike) <= 1


@given(ids=ids_st, ending=crash_st)
def test_blind_crash_splits_in_two_halves_in_the_suspect_lane(ids, ending):
    d = decide(Batch(ids=tuple(ids)), Outcome(ending), {}, 2, "h")
    if len(ids) == 1:
        assert d.strike == tuple(ids)
        return
    assert [len(b.ids) for b in d.retry] == [math.ceil(len(ids) / 2), len(ids) // 2]
    assert all(b.lane is Lane.SUSPECT and b.hunt == "h" for b in d.retry)
    assert not d.deliver and not d.strike and not d.quarantine


@given(ids=ids_st, ending=crash_st, data=st.data())
def test_progress_blames_the_begun_message_alone(ids, ending, data):
    cut = data.draw(st.integers(0, len(ids) - 1))
    done, culprit = ids[:cut], ids[cut]
    outcome = Outcome(ending, tuple(ids[: cut + 1]), frozenset(done))
    d = decide(Batch(ids=tuple(ids)), outcome, {}, 2, "h")
    assert set(d.deliver) == set(done)
    assert d.strike == (culprit,)
    assert set(d.requeue) == set(ids[cut + 1 :])  # never begun: back to the normal queue
    assert [b.ids for b in d.retry] == [(culprit,)]


@given(k=st.integers(1, 6), ending=crash_st)
def test_quarantine_at_k_solo_strikes(k, ending):
    strikes = {"A": 0}
    for n in range(1, k + 1):
        d = decide(Batch(ids=("A",), lane=Lane.SUSPECT), Outcome(ending), strikes, k, "h")
        assert d.strike == ("A",)
        if n < k:
            assert [b.ids for b in d.retry] == [("A",)] and not d.quarantine
        else:
            assert d.quarantine == ("A",) and not d.retry
        strikes["A"] = n


def simulate(n: int, poison: set[int], k: int, progress: bool, split=2) -> tuple[dict, set, set]:
    """Run the policy to the end against a fake scanner that crashes on poison;
    *split* is a number of parts or a function of the crashed batch that gives one."""
    ids = tuple(f"M{i}" for i in range(n))
    bad = {f"M{i}" for i in poison}
    queue, strikes, crashes = [Batch(ids=ids)], {}, {}
    delivered, quarantined = set(), set()
    while queue:
        batch = queue.pop(0)
        first_bad = next((i for i in batch.ids if i in bad), None)
        if first_bad is None:
            outcome = Outcome(Ending.OK)
        else:
            crashes[first_bad] = crashes.get(first_bad, 0) + 1
            upto = batch.ids.index(first_bad)
            outcome = Outcome(Ending.SIGNAL, batch.ids[: upto + 1], frozenset(batch.ids[:upto])) if progress \
                else Outcome(Ending.SIGNAL)
        parts = split(batch) if callable(split) else split
        d = decide(batch, outcome, strikes, k, hunt="h", split=parts)
        for q in d.strike:
            strikes[q] = strikes.get(q, 0) + 1
        delivered |= set(d.deliver)
        quarantined |= set(d.quarantine)
        queue += list(d.retry)
        if d.requeue:
            queue.append(Batch(ids=d.requeue))
    return crashes, delivered, quarantined


@settings(max_examples=300)
@given(n=st.integers(1, 60), data=st.data(), k=st.integers(1, 4), progress=st.booleans(),
       solo=st.booleans())
def test_innocents_delivered_poison_quarantined_within_the_crash_bound(n, data, k, progress, solo):
    poison = data.draw(st.sets(st.integers(0, n - 1), max_size=3))
    split = n if solo else 2
    crashes, delivered, quarantined = simulate(n, poison, k, progress, split)
    bad = {f"M{i}" for i in poison}
    assert quarantined == bad
    assert delivered == {f"M{i}" for i in range(n)} - bad
    if len(poison) == 1:  # docs/reference.md §5.5, for one poison message in a batch
        total = sum(crashes.values())
        bound = k if progress else math.ceil(math.log2(n)) + k if n > 1 else k
        assert total <= bound
        if solo and not progress:  # every suspect alone: the batch's crash, then k alone
            assert total <= 1 + k if n > 1 else total <= k


@given(ids=ids_st, ending=crash_st, parts=st.integers(2, 40))
def test_a_split_keeps_order_and_sizes_near_equal(ids, ending, parts):
    d = decide(Batch(ids=tuple(ids)), Outcome(ending), {}, 2, "h", split=parts)
    if len(ids) == 1:
        assert d.strike == tuple(ids)
        return
    sizes = [len(b.ids) for b in d.retry]
    assert len(sizes) == min(parts, len(ids)) and max(sizes) - min(sizes) <= 1
    assert sum((b.ids for b in d.retry), ()) == tuple(ids)
    assert all(b.lane is Lane.SUSPECT and b.hunt == "h" for b in d.retry)


@given(ids=ids_st, ending=st.sampled_from([Ending.STOPPED, Ending.SPAWN]), lane=st.sampled_from(list(Lane)))
def test_planned_stops_and_spawn_failures_never_strike(ids, ending, lane):
    d = decide(Batch(ids=tuple(ids), lane=lane), Outcome(ending), {}, 1, "h")
    assert not d.strike and not d.quarantine
    assert d.systemic == (ending is Ending.SPAWN)
    if lane is Lane.SUSPECT:  # suspects keep their state
        assert [b.ids for b in d.retry] == [tuple(ids)] and d.retry[0].lane is Lane.SUSPECT


def test_recovered_batches_are_bisected_without_strikes():
    d = decide(Batch(ids=("A",)), Outcome(Ending.LOST), {}, 1, "h")
    assert not d.strike and [b.ids for b in d.retry] == [("A",)]


@given(total=st.integers(1, 64), waiting=st.booleans())
def test_suspect_lane_gets_half_while_clean_traffic_waits(total, waiting):
    slots = suspect_slots(total, waiting)
    assert slots == (max(1, total // 2) if waiting else total)


costs_st = st.builds(Costs, group=st.floats(0, 5), solo=st.floats(0, 5), scan=st.floats(0, 0.1),
                     crash=st.floats(0, 5))


@settings(max_examples=300)
@given(n=st.integers(1, 200), costs=costs_st, free=st.integers(0, 64), waiting=st.booleans())
def test_an_adaptive_split_is_a_real_split(n, costs, free, waiting):
    parts = split_parts(n, costs, free, waiting)
    assert 2 <= parts and (parts <= n or n < 2)


@settings(max_examples=300)
@given(n=st.integers(1, 120), data=st.data(), k=st.integers(1, 3), costs=costs_st)
def test_any_adaptive_split_keeps_the_crash_bound(n, data, k, costs):
    """Whatever the costs, the free workers and the traffic at each crash, one poison
    message costs at most ⌈log₂ n⌉ + K crashes (contract §5.5), innocents are
    delivered and the poison quarantined."""
    at = data.draw(st.integers(0, n - 1))

    def split(batch):
        return split_parts(len(batch.ids), costs, data.draw(st.integers(0, 64)), data.draw(st.booleans()))

    crashes, delivered, quarantined = simulate(n, {at}, k, False, split)
    assert quarantined == {f"M{at}"}
    assert delivered == {f"M{i}" for i in range(n)} - {f"M{at}"}
    assert sum(crashes.values()) <= (math.ceil(math.log2(n)) + k if n > 1 else k)


def test_the_tail_sends_every_suspect_alone_when_workers_are_free():
    for costs in (Costs(), Costs(group=0.0), Costs(group=2.0, solo=2.0, crash=0.0)):
        assert split_parts(30, costs, free=30, clean_waiting=False) == 30
        assert split_parts(30, costs, free=8, clean_waiting=False) < 30  # not more rounds than groups


def test_a_busy_one_shot_pool_finds_poison_in_two_rounds_of_groups():
    """A process start per run (0.5 s) against 5 ms a message: √n groups then singles,
    1 + 1 + K crashes per poison message instead of bisection's ⌈log₂ 30⌉ + K."""
    start = Costs(group=0.5, solo=0.5, scan=0.005, crash=0.5)
    assert split_parts(30, start, free=0, clean_waiting=True) == 6
    for at in range(30):
        crashes, _, _ = simulate(30, {at}, 2, False, lambda b: split_parts(len(b.ids), start, 0, True))
        assert sum(crashes.values()) <= 4
    halves, _, _ = simulate(30, {7}, 2, False, 2)
    assert sum(halves.values()) == 7


def test_unexplained_crash_when_both_halves_pass():
    hunts = Hunts()
    batch = Batch(ids=("A", "B", "C", "D"))
    d = decide(batch, Outcome(Ending.SIGNAL), {}, 2, "h1")
    hunts.start("h1", d, batch.ids)
    first, second = d.retry
    assert hunts.finish(first, crashed=False) is None
    assert hunts.finish(second, crashed=False) == batch.ids
    d2 = decide(batch, Outcome(Ending.SIGNAL), {}, 2, "h2")  # one half crashes: explained
    hunts.start("h2", d2, batch.ids)
    a, b = d2.retry
    assert hunts.finish(a, crashed=True) is None and hunts.finish(b, crashed=False) is None
    assert not hunts.open


@given(k=st.integers(2, 5), warm=st.booleans(), at=st.integers(0, 5))
def test_the_quarantining_strike_is_always_a_crash_alone_in_a_fresh_process(k, warm, at):
    """A crash blamed by progress lines on a warm worker, or on a message that was not
    the first its process began, is a strike but never the K-th: the message runs alone
    in a fresh process first (docs/reference.md §5.7)."""
    ids = tuple(f"M{i}" for i in range(6))
    culprit = ids[at]
    outcome = Outcome(Ending.SIGNAL, ids[: at + 1], frozenset(ids[:at]), fresh=not warm)
    d = decide(Batch(ids=ids), outcome, {culprit: k - 1}, k, "h")
    assert d.strike == (culprit,)
    if warm or at > 0:
        assert not d.quarantine and [b.ids for b in d.retry] == [(culprit,)]
    else:
        assert d.quarantine == (culprit,)
    solo = decide(Batch(ids=(culprit,), lane=Lane.SUSPECT), Outcome(Ending.SIGNAL, fresh=not warm),
                  {culprit: k - 1}, k, "h")
    assert bool(solo.quarantine) == (not warm)
