# SPDX-License-Identifier: Apache-2.0
"""The schedules count optimizer steps from 1, as the reference does (its counters advance before they are read)."""

import math

import pytest

from modeling_ijepa.training.schedules import Schedules


def schedules(**overrides) -> Schedules:
    values = dict(total_steps=12, warmup_steps=3, lr=1e-3, start_lr=2e-4, final_lr=1e-6, weight_decay=0.04,
                  final_weight_decay=0.4, ema_momentum=0.996, final_ema_momentum=1.0)
    return Schedules(**(values | overrides))


def test_the_first_step_trains_past_start_lr_and_the_warmup_ends_at_the_peak():
    s = schedules()
    assert s.learning_rate(1) == pytest.approx(2e-4 + (1 / 3) * (1e-3 - 2e-4))
    assert s.learning_rate(1) != s.start_lr
    assert s.learning_rate(3) == s.lr


def test_the_last_step_reaches_the_final_learning_rate_and_weight_decay():
    s = schedules()
    assert s.learning_rate(12) == s.final_lr
    assert s.weight_decay_at(12) == pytest.approx(s.final_weight_decay)


def test_weight_decay_has_no_warmup():
    s = schedules()
    expected = 0.4 + (0.04 - 0.4) * 0.5 * (1 + math.cos(math.pi * 1 / 12))
    assert s.weight_decay_at(1) == pytest.approx(expected)


def test_momentum_starts_at_its_first_value_and_stays_one_increment_short():
    s = schedules()
    assert s.momentum(1) == s.ema_momentum
    assert s.momentum(12) == pytest.approx(0.996 + 11 * 0.004 / 12)


def test_ipe_scale_stretches_the_schedules_past_the_end_of_training():
    s = schedules(ipe_scale=1.25, lr=6.25e-4, ema_momentum=0.998)
    assert s.schedule_steps == 15
    assert s.learning_rate(12) > s.final_lr and s.weight_decay_at(12) < s.final_weight_decay
    assert s.momentum(12) == pytest.approx(0.998 + 11 * 0.002 / 15)


def test_steps_count_from_one():
    with pytest.raises(ValueError, match="count from 1"):
        schedules().learning_rate(0)
