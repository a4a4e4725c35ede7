"""Moderation rules (policy/moderation.py): who must watch, and when input flows."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policy.errors import InvalidInput
from policy.models import Criticality
from policy.moderation import (
    OBSERVER_RULES,
    input_allowed,
    observer_required,
    observer_rule,
    parse_observer_rule,
)

CRITICALITIES = st.sampled_from(list(Criticality))
FLAGS = st.sampled_from([None, True, False])


@pytest.mark.parametrize(
    ("criticality", "device", "grant", "setting", "required"),
    [
        (Criticality.LIFE_SUSTAINING, None, False, True, True),  # the default rule
        (Criticality.LIFE_SUSTAINING, None, False, False, False),  # the setting is off
        (Criticality.HIGH, None, False, True, False),
        (Criticality.LIFE_SUSTAINING, False, False, True, False),  # device says never
        (Criticality.LOW, True, False, False, True),  # device says always
        (Criticality.LOW, None, True, False, True),  # the grant adds it
        (Criticality.LIFE_SUSTAINING, False, True, True, True),  # grant adds over "never"
    ],
)
def test_examples(
    criticality: Criticality, device: bool | None, grant: bool, setting: bool, required: bool
) -> None:
    assert observer_required(criticality, device, grant, setting) is required


def test_criticality_as_stored_text() -> None:
    assert observer_required("life-sustaining", None, False, True) is True
    with pytest.raises(ValueError):
        observer_required("vital", None, False, True)


@given(CRITICALITIES, FLAGS, st.booleans())
def test_a_grant_can_only_add(c: Criticality, device: bool | None, setting: bool) -> None:
    assert observer_required(c, device, True, setting) is True
    assert observer_required(c, device, False, setting) <= observer_required(
        c, device, True, setting
    )


@given(CRITICALITIES, st.booleans(), st.booleans(), st.booleans())
def test_an_explicit_device_flag_overrides_criticality(
    c: Criticality, flag: bool, grant: bool, setting: bool
) -> None:
    assert observer_required(c, flag, grant, setting) is (flag or grant)


@given(CRITICALITIES, st.booleans())
def test_by_criticality_only_life_sustaining_and_only_when_on(
    c: Criticality, setting: bool
) -> None:
    expected = setting and c is Criticality.LIFE_SUSTAINING
    assert observer_required(c, None, False, setting) is expected


@given(st.booleans(), st.integers(min_value=0, max_value=1000))
def test_input_flows_unmoderated_or_watched(required: bool, observers: int) -> None:
    assert input_allowed(required, observers) is (not required or observers >= 1)
    assert input_allowed(False, observers)
    assert not input_allowed(True, 0)


@pytest.mark.parametrize(
    ("text", "flag"),
    [
        ("criticality", None),
        ("", None),
        (None, None),
        ("always", True),
        ("TRUE", True),
        (True, True),
        ("never", False),
        (" false ", False),
        (False, False),
    ],
)
def test_a_device_rule_from_words(text: str | bool | None, flag: bool | None) -> None:
    assert parse_observer_rule(text) is flag


def test_a_device_rule_round_trips_and_refuses_other_words() -> None:
    for word, flag in OBSERVER_RULES.items():
        assert observer_rule(flag) == word and parse_observer_rule(word) is flag
    with pytest.raises(InvalidInput) as refused:
        parse_observer_rule("sometimes")
    assert refused.value.code == "observer-invalid"


@pytest.mark.parametrize(
    ("roles", "may"),
    [(["security"], True), (["biomed"], True), (["admin"], False), ([], False),
     (["admin", "biomed"], True)],
)  # fmt: skip
def test_who_may_observe(roles: list[str], may: bool) -> None:
    from policy.moderation import may_observe

    assert may_observe(roles) is may
