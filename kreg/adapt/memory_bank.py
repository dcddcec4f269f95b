"""RoTTA's category-balanced memory bank with timeliness and uncertainty (CSTU).

A stream that is not shuffled (class-sorted, label-shifted) brings one or two
classes for a long time: statistics or gradients taken from the current batch
alone learn that the world holds those classes only. The bank keeps a sample of
the stream balanced over the predicted classes instead (Yuan et al., 2023,
`CSTU` in their reference code, github.com/BIT-DA/RoTTA `core/utils/memory.py`):

- `fill="rotta"` (RoTTA's CSTU): a class holds at most `capacity / classes`
  samples, from the start; a new sample of a class below its share replaces a
  sample of the classes that hold the most once the bank is full; one of a
  class at its share replaces one of its own;
- `fill="note"` (NOTE's prediction-balanced reservoir, Gong et al., 2022): the
  bank fills with whatever comes; once full, a sample of a class that does not
  hold the most replaces one of the classes that do, and one of those classes
  replaces one of its own. A model whose predictions a shift has collapsed to
  one class still gets a full bank to adapt from (RoTTA's bank then holds
  `capacity / classes` samples);
- the sample replaced is the one with the highest score,
  `1 / (1 + exp(-age / capacity)) + entropy / ln C` (old and uncertain first),
  and only if that score is higher than the new sample's;
- every sample ages by one per sample added; `contents()` gives the ages in
  units of `capacity` (RoTTA's `get_memory`), the scale of the timeliness
  weights, so a sample as old as the bank still counts `0.27`, not `e^-64`.

Everything is NumPy, outside the model: adding a sample costs no forward pass.
A sample's age is the number of samples added since it came (a clock less its
arrival), the ages RoTTA's code keeps by adding one to every held sample after
each new one, without that loop over the bank per sample.
"""

import math

import numpy as np


def timeliness_weights(ages):
    """RoTTA's time-aware reweighting, `exp(-age) / (1 + exp(-age))` of ages in
    units of the bank's capacity (as `MemoryBank.contents` gives them): the
    newest samples count most (1/2 at age 0), and old ones fade (0.27 at one
    bank's worth of samples)."""
    ages = np.asarray(ages, np.float64)
    return np.exp(-ages) / (1.0 + np.exp(-ages))


class MemoryBank:
    """A class-balanced sample of a stream, `capacity` samples at most.

    Args:
        capacity: The number of samples held.
        classes: The number of classes the model predicts.
        fill: `"rotta"` or `"note"`, how the bank fills (see the module).
    """

    def __init__(self, capacity, classes, fill="rotta"):
        self.capacity = capacity
        self.classes = classes
        self.fill = fill
        self.per_class = capacity / classes
        self.log_classes = math.log(max(classes, 2))  # the largest entropy
        self.reset()

    def reset(self):
        # One list per class of [sample, entropy, arrival]; `clock` counts the
        # samples added, so a sample's age is `clock - arrival`.
        self.items = [[] for _ in range(self.classes)]
        self.clock = 0
        self._count_held()

    def _count_held(self):
        # The occupancy, kept as samples come and go rather than summed over
        # the classes for every sample added (a batch of 64 asked for it a
        # thousand times).
        self.counts = [len(items) for items in self.items]
        self.size = sum(self.counts)

    def state(self):
        return self.clock, [[list(item) for item in items] for items in self.items]

    def set_state(self, state):
        self.clock, items = state
        self.items = [[list(item) for item in held] for held in items]
        self.classes = len(self.items)
        self.per_class = self.capacity / self.classes
        self.log_classes = math.log(max(self.classes, 2))
        self._count_held()

    def __len__(self):
        return self.size

    def _score(self, age, entropy):
        return 1.0 / (1.0 + math.exp(-age / self.capacity)) + entropy / self.log_classes

    def add(self, samples, predicted, entropies):
        """Adds each sample (a structure of arrays without the batch axis) with its
        predicted class and entropy, in order."""
        for sample, label, entropy in zip(samples, predicted, entropies):
            label, entropy = int(label), float(entropy)
            if self._make_room(label, self._score(0, entropy)):
                self.items[label].append([sample, entropy, self.clock])
                self.counts[label] += 1
                self.size += 1
            self.clock += 1  # every sample held, the new one too, is one sample older

    def _make_room(self, label, new_score):
        counts = self.counts
        if self.fill == "note":
            if self.size < self.capacity:
                return True
            most = max(counts)
            if counts[label] < most:
                return self._remove_worst(
                    [c for c, held in enumerate(counts) if held == most], new_score
                )
            return self._remove_worst([label], new_score)
        if counts[label] < self.per_class:
            if self.size < self.capacity:
                return True
            most = max(counts)
            return self._remove_worst(
                [c for c, held in enumerate(counts) if held == most], new_score
            )
        return self._remove_worst([label], new_score)

    def _remove_worst(self, classes, new_score):
        # `_score` written out: a call per held sample was most of the scan.
        worst, worst_label, worst_index = None, None, None
        clock, capacity, log_classes, exp = self.clock, self.capacity, self.log_classes, math.exp
        for label in classes:
            for index, (_, entropy, arrival) in enumerate(self.items[label]):
                score = 1.0 / (1.0 + exp(-(clock - arrival) / capacity)) + entropy / log_classes
                if worst is None or score >= worst:
                    worst, worst_label, worst_index = score, label, index
        if worst is None:
            return True
        if worst <= new_score:
            return False
        del self.items[worst_label][worst_index]
        self.counts[worst_label] -= 1
        self.size -= 1
        return True

    def drop_since(self, clock):
        """Removes the samples added at or after `clock` (a value of `self.clock`)."""
        self.items = [[item for item in items if item[2] < clock] for items in self.items]
        self._count_held()

    def contents(self):
        """`(samples, ages)`: the samples held, in class order, and their ages in
        units of `capacity` (the samples added since each, divided by `capacity`)."""
        held = [item for items in self.items for item in items]
        return [item[0] for item in held], np.array(
            [self.clock - item[2] for item in held], np.float64
        ) / self.capacity
