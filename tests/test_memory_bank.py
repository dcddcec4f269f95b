"""RoTTA's category-balanced memory bank, and the "robust" method built on it."""

import numpy as np

from kreg.adapt.memory_bank import MemoryBank
from kreg.adapt.memory_bank import timeliness_weights


def test_a_class_sorted_stream_leaves_every_class_seen_in_the_bank():
    bank = MemoryBank(capacity=12, classes=4)
    for label in range(4):  # 30 samples of each class, one class after another
        bank.add([np.full(2, label)] * 30, [label] * 30, [0.1] * 30)
    held = [len(items) for items in bank.items]
    assert len(bank) == 12
    assert held == [3, 3, 3, 3], held


def test_a_class_holds_its_share_at_most_and_keeps_its_newest_samples():
    bank = MemoryBank(capacity=4, classes=2)
    bank.add([np.array([i]) for i in range(4)], [0, 0, 0, 0], [0.5] * 4)
    assert [len(items) for items in bank.items] == [2, 0]  # capacity / classes
    bank.add([np.array([9])], [1], [0.5])
    samples, ages = bank.contents()
    # The oldest samples of class 0 went; ages count the samples added since,
    # in units of the capacity (RoTTA's `CSTU.get_memory`).
    assert [int(s[0]) for s in samples] == [2, 3, 9]
    np.testing.assert_array_equal(ages, np.array([3, 2, 1]) / 4)


def test_an_uncertain_sample_does_not_replace_a_confident_recent_one():
    bank = MemoryBank(capacity=2, classes=2)
    bank.add([np.array([0]), np.array([1])], [0, 0], [0.0, 0.0])
    assert [int(s[0]) for s in bank.contents()[0]] == [1]  # the older one gave way
    bank.add([np.array([2])], [0], [np.log(2)])  # maximal entropy: kept out
    assert [int(s[0]) for s in bank.contents()[0]] == [1]


def test_a_restored_state_resumes_with_the_same_ages_and_replacements():
    # Ages are a clock less each arrival: the clock is part of the state, or a
    # restored bank would score its samples as of another age.
    bank = MemoryBank(capacity=4, classes=2)
    bank.add([np.array([i]) for i in range(6)], [0, 1, 0, 1, 0, 1], [0.1, 0.6, 0.3] * 2)
    state, ages = bank.state(), bank.contents()[1]
    later = ([np.array([10 + i]) for i in range(5)], [0, 0, 1, 0, 1], [0.2, 0.5, 0.1, 0.4, 0.0])
    bank.add(*later)
    expected = bank.contents()
    bank.reset()
    bank.add([np.array([9])] * 3, [1] * 3, [0.0] * 3)  # another stream in between
    bank.set_state(state)
    np.testing.assert_array_equal(bank.contents()[1], ages)
    bank.add(*later)
    samples, ages = bank.contents()
    assert [int(s[0]) for s in samples] == [int(s[0]) for s in expected[0]]
    np.testing.assert_array_equal(ages, expected[1])


def test_timeliness_weights_fade_with_age():
    weights = timeliness_weights([0, 1, 5])
    np.testing.assert_allclose(weights[0], 0.5)
    assert weights[0] > weights[1] > weights[2] > 0


def test_notes_fill_takes_a_collapsed_stream_whole_then_balances():
    bank = MemoryBank(capacity=4, classes=2, fill="note")
    bank.add([np.array([i]) for i in range(4)], [0] * 4, [0.5] * 4)
    assert [len(items) for items in bank.items] == [4, 0]  # filled by one class
    bank.add([np.array([8]), np.array([9])], [1, 1], [0.5, 0.5])
    assert [len(items) for items in bank.items] == [2, 2]  # the majority gave way


def test_a_full_bank_weighs_its_oldest_sample_on_the_capacity_scale():
    # RoTTA reweights by exp(-a) / (1 + exp(-a)) with a = age / capacity: the
    # oldest of 64 samples still counts about half as much as the newest, where
    # raw ages would give it exp(-64) and leave the newest few samples alone.
    bank = MemoryBank(capacity=64, classes=4)
    bank.add([np.zeros(1)] * 64, [i % 4 for i in range(64)], [0.0] * 64)
    weights = timeliness_weights(bank.contents()[1])
    assert len(weights) == 64
    np.testing.assert_allclose(weights.min(), np.exp(-1.0) / (1.0 + np.exp(-1.0)))
    assert weights.min() / weights.max() > 0.5


def test_drop_since_removes_exactly_the_samples_added_from_that_clock_on():
    bank = MemoryBank(capacity=8, classes=2, fill="note")
    bank.add([np.array([i]) for i in range(3)], [0, 1, 0], [0.5] * 3)
    clock = bank.clock
    bank.add([np.array([i]) for i in range(3, 6)], [1, 0, 1], [0.5] * 3)
    bank.drop_since(clock)
    samples, ages = bank.contents()
    assert sorted(int(s[0]) for s in samples) == [0, 1, 2]
    assert bank.clock == 6 and ages.min() == 4 / 8  # the clock still counts them
    assert len(bank) == 3 and bank.counts == [2, 1]  # the kept counts follow the drop


def test_the_size_follows_the_samples_through_replacements_resets_and_restores():
    # The bank counts its samples as they come and go rather than summing its
    # lists per sample added: the count must stay the lists' size whatever
    # happened to them (a replacement, a reset, a state restored from a bank
    # holding more or fewer samples).
    rng = np.random.default_rng(0)
    for fill in ("rotta", "note"):
        bank = MemoryBank(capacity=8, classes=3, fill=fill)
        states = []
        for step in range(60):
            n = int(rng.integers(1, 5))
            bank.add([np.zeros(1)] * n, rng.integers(0, 3, n), rng.uniform(0, 1, n))
            assert len(bank) == sum(len(items) for items in bank.items) <= 8
            states.append(bank.state())
            if step % 17 == 16:
                bank.reset()
                assert len(bank) == 0
            if step % 11 == 10:
                bank.set_state(states[int(rng.integers(0, len(states)))])
                assert len(bank) == sum(len(items) for items in bank.items)
        assert len(bank) == 8
