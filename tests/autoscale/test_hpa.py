"""The emulator's KEDA and HPA decisions against cases computed by hand from the published algorithms."""

from __future__ import annotations

import pytest

from tests.autoscale.hpa import (
    HPA,
    Behavior,
    Keda,
    Policy,
    Rules,
    external_average_value_replicas,
)

NO_WINDOWS = Behavior(up=Rules(0, (Policy("Pods", 100, 15),)), down=Rules(0, (Policy("Percent", 100, 15),)))


@pytest.mark.parametrize(
    ("value", "current", "expected"),
    [
        (21, 10, 10),  # ratio 21 / (2 * 10) = 1.05: within 10 %, keep 10
        (19, 10, 10),  # 0.95: within
        (22, 10, 10),  # exactly 1.10: still within (the bound is inclusive)
        (23, 10, 12),  # 1.15: ceil(23 / 2) = 12
        (17, 10, 9),  # 0.85: ceil(8.5) = 9
        (200, 1, 100),  # a burst seen by one replica
        (0, 4, 0),  # nothing left: 0 (the minimum clamps it later)
        (3, 0, 2),  # no replicas: no ratio, straight ceil(3 / 2)
    ],
)
def test_replica_calculator_tolerance(value, current, expected):
    assert external_average_value_replicas(value, 2, current, 0.1) == expected


def test_min_max_clamp_and_zero_replicas_disable_the_hpa():
    hpa = HPA(min_replicas=2, max_replicas=5, target=1, behavior=NO_WINDOWS)
    assert hpa.sync(0, 3, 100) == 5  # ceil(100) clamped to max
    assert hpa.sync(20, 5, 0) == 2  # 0 clamped to min
    assert hpa.sync(40, 0, 100) == 0  # 0 replicas: the HPA does nothing, KEDA activates
    assert hpa.sync(60, 7, 7) == 5  # above max (e.g. scaled by hand): back to max at once
    assert hpa.sync(80, 1, 1) == 2  # below min: up to min at once
    assert hpa.sync(100, 3, None) == 3  # metric unavailable: keep the count


def test_scale_up_policies_pods_and_percent_select_max_and_min():
    up = Rules(0, (Policy("Percent", 100, 15), Policy("Pods", 4, 15)), "Max")
    hpa = HPA(1, 50, 1, Behavior(up=up, down=NO_WINDOWS.down))
    # From 1: Percent allows ceil(1 * 2) = 2, Pods allows 1 + 4 = 5; Max takes 5.
    assert hpa.sync(0, 1, 100) == 5
    # 5 s later the +4 is inside both 15 s periods: the period started at 5 - 4 = 1 replica,
    # so the limits are still 2 and 5: no change.
    assert hpa.sync(5, 5, 100) == 5
    # 16 s later the event has left the period: from 5, Percent gives 10, Pods 9; Max takes 10.
    assert hpa.sync(16, 5, 100) == 10
    assert hpa.sync(32, 10, 100) == 20
    hpa = HPA(1, 50, 1, Behavior(up=Rules(0, up.policies, "Min"), down=NO_WINDOWS.down))
    assert hpa.sync(0, 1, 100) == 2  # Min: the smaller change (Percent's 2)
    hpa = HPA(1, 50, 1, Behavior(up=Rules(0, up.policies, "Disabled"), down=NO_WINDOWS.down))
    assert hpa.sync(0, 1, 100) == 1


def test_scale_down_stabilization_takes_the_highest_recommendation_of_the_window():
    hpa = HPA(1, 20, 1, Behavior(up=NO_WINDOWS.up, down=Rules(60, (Policy("Percent", 100, 15),))))
    assert hpa.sync(0, 10, 10) == 10  # recommendation 10 recorded at t=0
    assert hpa.sync(15, 10, 2) == 10  # 2 now, but 10 is within the last 60 s
    assert hpa.sync(59, 10, 2) == 10  # t=0 still inside (59 - 60 < 0)
    assert hpa.sync(61, 10, 2) == 2  # window (1, 61]: only 2s left
    assert hpa.sync(120, 2, 0) == 2  # 0 wanted, but 2 was recommended at t=61
    assert hpa.sync(122, 2, 0) == 1  # window (62, 122]: 0, clamped to min 1


def test_scale_up_stabilization_takes_the_lowest_recommendation_of_the_window():
    hpa = HPA(1, 20, 1, Behavior(up=Rules(30, (Policy("Pods", 100, 15),)), down=NO_WINDOWS.down))
    assert hpa.sync(0, 2, 2) == 2  # recommendation 2 recorded
    assert hpa.sync(10, 2, 5) == 2  # 5 wanted, but 2 was recommended within 30 s
    assert hpa.sync(31, 2, 5) == 5  # window (1, 31]: only 5s


def test_scale_down_policies_periods_and_select():
    down = Rules(0, (Policy("Percent", 50, 30),), "Max")
    hpa = HPA(1, 20, 1, Behavior(up=NO_WINDOWS.up, down=down))
    assert hpa.sync(0, 10, 1) == 5  # at most 50 % of 10 removed per 30 s
    assert hpa.sync(10, 5, 1) == 5  # the period began at 5 + 5 = 10: 5 is its limit already
    assert hpa.sync(31, 5, 1) == 2  # new period from 5: int(5 * 0.5) = 2
    two = (Policy("Pods", 1, 60), Policy("Percent", 50, 60))
    assert HPA(1, 20, 1, Behavior(NO_WINDOWS.up, Rules(0, two, "Max"))).sync(0, 10, 1) == 5  # the larger change
    assert HPA(1, 20, 1, Behavior(NO_WINDOWS.up, Rules(0, two, "Min"))).sync(0, 10, 1) == 9  # the smaller change


def test_behavior_defaults_are_the_apis():
    b = Behavior.from_spec(None)
    assert b.up == Rules(0, (Policy("Percent", 100, 15), Policy("Pods", 4, 15)), "Max")
    assert b.down == Rules(300, (Policy("Percent", 100, 15),), "Max")
    partial = Behavior.from_spec({"scaleDown": {"stabilizationWindowSeconds": 60}})
    assert partial.down == Rules(60, (Policy("Percent", 100, 15),), "Max")
    assert partial.up == b.up


def test_keda_activation_and_cooldown():
    keda = Keda(min_replicas=0, activation=0, cooldown=10)
    assert keda.poll(0, 0, 0) == 0  # no work: stays at 0
    assert keda.poll(2, 0, 5) == 1  # work: 0 -> 1, the HPA takes it from there
    assert keda.poll(4, 6, 3) == 6  # active with replicas: leaves the count to the HPA
    assert keda.poll(6, 6, 0) == 6  # inactive, but active 2 s ago: cooling down
    assert keda.poll(14, 6, 0) == 6  # 4 + 10 = 14 is not past yet
    assert keda.poll(14.5, 6, 0) == 0  # cooldown over: to zero whatever the HPA holds
    keda = Keda(min_replicas=0, activation=3, cooldown=10)
    assert keda.poll(0, 0, 3) == 0  # 3 is not above the activation value
    assert keda.poll(2, 0, 4) == 1
    keda = Keda(min_replicas=2, activation=0, cooldown=10)
    assert keda.poll(0, 0, 4) == 2  # from 0 to min, not 1
    assert keda.poll(2, 1, 0) == 2  # below min while inactive: back to min
    assert keda.poll(4, 5, 0) == 5  # above min while inactive: the HPA scales it down


def test_keda_fallback_after_the_failure_threshold():
    keda = Keda(min_replicas=1, activation=0, cooldown=10, fallback_threshold=3, fallback_replicas=2)
    hpa = HPA(1, 10, 4, NO_WINDOWS)
    assert [keda.metric_for_hpa(None, 4) for _ in range(3)] == [None, None, None]  # 3 failures: no value
    assert keda.metric_for_hpa(None, 4) == 8  # the 4th: replicas x target
    assert hpa.sync(0, 6, 8) == 2  # ceil(8 / 4): the fallback count
    assert keda.metric_for_hpa(12, 4) == 12 and keda.failures == 0  # a good read resets it
    assert keda.poll(0, 3, None) == 3  # a failing trigger does not scale to zero with a fallback set
