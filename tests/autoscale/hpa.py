"""The decisions of KEDA and the Kubernetes HPA for one ScaledObject, as pure functions of time.

A test tool, written from the published algorithms (Kubernetes docs "Horizontal Pod Autoscaling"
and the controller in pkg/controller/podautoscaler; KEDA's scale executor and fallback), not a
copy of either. Every method takes ``now`` (seconds, any monotonic origin), so the unit tests can
step through hand-computed cases and the emulator can feed it wall-clock time.

KEDA (every ``pollingInterval``): reads the trigger; *active* when the value exceeds the activation
target. Active with 0 replicas: scale to max(min, 1). Inactive with min 0: scale to 0 once
``cooldownPeriod`` has passed since the last active poll. Inactive below min: scale to min. In
between, the HPA owns the count. KEDA creates the HPA with minReplicas = max(min, 1).

HPA (every sync period, 15 s by default): with 0 replicas it does nothing (KEDA wakes the target).
Otherwise, for an External metric with an AverageValue target,
``usageRatio = value / (target * currentReplicas)``; inside the tolerance (|1 - ratio| <= 0.1) the
recommendation is the current count, else ``ceil(value / target)``. The recommendation is then
stabilized (the lowest of the scale-up window's recommendations, the highest of the scale-down
window's, the current count kept between them), limited by the scaling policies (the replicas at
the start of each policy's period, from the scale events within it; ``selectPolicy`` Max takes the
largest change) and clamped to min/max. KEDA's fallback: after more than ``failureThreshold``
failed reads the HPA is fed ``replicas * target`` instead of an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# The HPA controller's defaults (kube-controller-manager flags and the autoscaling/v2 defaults).
DEFAULT_TOLERANCE = 0.1
DEFAULT_SYNC_PERIOD = 15.0
DEFAULT_DOWNSCALE_STABILIZATION = 300
# KEDA's ScaledObject defaults.
KEDA_DEFAULT_POLLING_INTERVAL = 30
KEDA_DEFAULT_COOLDOWN = 300


@dataclass(frozen=True)
class Policy:
    type: str  # "Pods" or "Percent"
    value: int
    period: int  # periodSeconds


@dataclass(frozen=True)
class Rules:
    """One direction of ``behavior`` (HPAScalingRules)."""

    stabilization: int
    policies: tuple[Policy, ...]
    select: str = "Max"  # Max | Min | Disabled


DEFAULT_SCALE_UP = Rules(0, (Policy("Percent", 100, 15), Policy("Pods", 4, 15)), "Max")
DEFAULT_SCALE_DOWN = Rules(DEFAULT_DOWNSCALE_STABILIZATION, (Policy("Percent", 100, 15),), "Max")


def rules_from_spec(spec: Mapping[str, Any] | None, default: Rules) -> Rules:
    """HPAScalingRules as the API server defaults them: missing fields take the direction's defaults."""
    if spec is None:
        return default
    policies = spec.get("policies")
    return Rules(
        stabilization=int(spec.get("stabilizationWindowSeconds", default.stabilization)),
        policies=tuple(Policy(p["type"], int(p["value"]), int(p["periodSeconds"])) for p in policies)
        if policies is not None
        else default.policies,
        select=spec.get("selectPolicy", default.select),
    )


@dataclass(frozen=True)
class Behavior:
    up: Rules = DEFAULT_SCALE_UP
    down: Rules = DEFAULT_SCALE_DOWN

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> Behavior:
        spec = spec or {}
        return cls(rules_from_spec(spec.get("scaleUp"), DEFAULT_SCALE_UP),
                   rules_from_spec(spec.get("scaleDown"), DEFAULT_SCALE_DOWN))  # fmt: skip


def external_average_value_replicas(value: float, target: float, current: int, tolerance: float) -> int:
    """The replica calculator for an External metric with an AverageValue target."""
    if current > 0:
        ratio = value / (target * current)
        if 1.0 - tolerance <= ratio <= 1.0 + tolerance:
            return current
    return math.ceil(value / target)


@dataclass
class HPA:
    """One HorizontalPodAutoscaler's state: its recommendations and scale events."""

    min_replicas: int
    max_replicas: int
    target: float
    behavior: Behavior = field(default_factory=Behavior)
    tolerance: float = DEFAULT_TOLERANCE
    recommendations: list[tuple[float, int]] = field(default_factory=list)
    up_events: list[tuple[float, int]] = field(default_factory=list)
    down_events: list[tuple[float, int]] = field(default_factory=list)

    def sync(self, now: float, current: int, value: float | None) -> int:
        """One reconcile: the replica count the HPA sets (``current`` when it changes nothing).

        ``value`` None: the metric could not be read (and no fallback): the HPA keeps the count.
        """
        if current == 0 and self.min_replicas != 0:
            return current  # scaling disabled at 0 replicas: KEDA activates the target
        if current > self.max_replicas:
            desired = self.max_replicas
        elif current < self.min_replicas:
            desired = self.min_replicas
        elif value is None:
            return current
        else:
            raw = external_average_value_replicas(value, self.target, current, self.tolerance)
            desired = self.normalize(now, current, raw)
        if desired != current:
            self.record_event(now, current, desired)
        return desired

    # -- normalizeDesiredReplicasWithBehaviors ---------------------------------------------------

    def normalize(self, now: float, current: int, raw: int) -> int:
        stabilized = self.stabilize(now, current, raw)
        return self.rate_limit(now, current, stabilized)

    def stabilize(self, now: float, current: int, raw: int) -> int:
        """Keep ``current`` between the lowest scale-up-window and highest scale-down-window recommendation."""
        up_cut = now - self.behavior.up.stabilization
        down_cut = now - self.behavior.down.stabilization
        up_rec = down_rec = raw
        for t, rec in self.recommendations:
            if t > up_cut:
                up_rec = min(up_rec, rec)
            if t > down_cut:
                down_rec = max(down_rec, rec)
        # Forget what is older than both windows, then record the unstabilized recommendation.
        self.recommendations = [(t, r) for t, r in self.recommendations if t >= min(up_cut, down_cut)]
        self.recommendations.append((now, raw))
        return min(max(current, up_rec), down_rec)

    def _changed_within(self, events: list[tuple[float, int]], now: float, period: int) -> int:
        return sum(change for t, change in events if t > now - period)

    def _period_start(self, now: float, current: int, period: int) -> int:
        """The replicas at the start of a policy's period: now, less the changes made within it."""
        return (
            current
            - self._changed_within(self.up_events, now, period)
            + self._changed_within(self.down_events, now, period)
        )

    def scale_up_limit(self, now: float, current: int) -> int:
        return self._policy_limit(self.behavior.up, now, current, up=True)

    def scale_down_limit(self, now: float, current: int) -> int:
        return self._policy_limit(self.behavior.down, now, current, up=False)

    def _policy_limit(self, rules, now: float, current: int, up: bool) -> int:
        """The replica count the scaling policies allow from ``current``, up or down."""
        if rules.select == "Disabled":
            return current
        proposals = []
        for p in rules.policies:
            start = self._period_start(now, current, p.period)
            if p.type == "Pods":
                proposals.append(start + p.value if up else start - p.value)
            elif up:
                proposals.append(math.ceil(start * (1 + p.value / 100)))
            else:
                proposals.append(int(start * (1 - p.value / 100)))  # truncated, as the controller does
        # "Min" takes the smallest change: the lowest count up, the highest count down; "Max" the largest.
        smallest, largest = (min, max) if up else (max, min)
        return smallest(proposals) if rules.select == "Min" else largest(proposals)

    def rate_limit(self, now: float, current: int, desired: int) -> int:
        if desired > current:
            limit = max(self.scale_up_limit(now, current), current)
            return min(desired, self.max_replicas, limit)
        if desired < current:
            limit = min(self.scale_down_limit(now, current), current)
            return max(desired, self.min_replicas, limit)
        return desired

    def record_event(self, now: float, before: int, after: int) -> None:
        if after > before:
            longest = max((p.period for p in self.behavior.up.policies), default=0)
            self.up_events = [e for e in self.up_events if e[0] >= now - longest]
            self.up_events.append((now, after - before))
        else:
            longest = max((p.period for p in self.behavior.down.policies), default=0)
            self.down_events = [e for e in self.down_events if e[0] >= now - longest]
            self.down_events.append((now, before - after))


@dataclass
class Keda:
    """The ScaledObject's own loop: activation (0 <-> 1), cooldown, minimum, fallback."""

    min_replicas: int
    activation: float
    cooldown: int
    fallback_threshold: int | None = None  # None: no fallback configured
    fallback_replicas: int = 0
    last_active: float | None = None
    failures: int = 0  # consecutive failed reads (the ScaledObject's health status)

    def poll(self, now: float, current: int, value: float | None) -> int:
        """One polling interval's decision: the count KEDA sets (``current`` when it leaves it to the HPA)."""
        if value is None:
            # A trigger error: nothing is active. With a fallback configured KEDA does not scale to
            # zero (the HPA is to hold the fallback count), otherwise the cases below apply.
            if self.fallback_threshold is not None and self.fallback_replicas:
                return current
            active = False
        else:
            active = value > self.activation
        if active:
            self.last_active = now
            if current == 0:
                return max(self.min_replicas, 1)
            return current
        if current > 0 and self.min_replicas == 0:
            if self.last_active is None or now > self.last_active + self.cooldown:
                return 0
            return current
        if current < self.min_replicas:
            return self.min_replicas
        return current

    def metric_for_hpa(self, value: float | None, target: float) -> float | None:
        """What KEDA's metrics server answers the HPA: the value, or the fallback after too many failures."""
        if value is not None:
            self.failures = 0
            return value
        self.failures += 1
        if self.fallback_threshold is not None and self.failures > self.fallback_threshold:
            return self.fallback_replicas * target
        return None
