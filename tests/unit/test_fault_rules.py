"""Which fault a request draws (service/faults.py): sequences per rule and key, first match, globs,
seeded probabilities, and the header's grammar."""

from __future__ import annotations

import pytest

from openvertex.errors import InvalidArgumentError
from openvertex.service.faults import Fault, Faults, end_request_fault, parse_header, request_fault
from openvertex.settings import FaultRule

FLASH = "google/gemini-2.5-flash"


def _kinds(faults: Faults, count: int, *, model: str = FLASH, key: str | None = None) -> list[str]:
    return [(fault.kind if (fault := faults.draw(model, key)) else "ok") for _ in range(count)]


def test_a_sequence_then_answers() -> None:
    faults = Faults([FaultRule(sequence=["429", "stream_error", "ok", "cut"])])
    assert _kinds(faults, 6) == ["429", "stream_error", "ok", "cut", "ok", "ok"]


def test_a_repeated_sequence_cycles() -> None:
    assert _kinds(Faults([FaultRule(sequence=["503", "ok"], repeat=True)]), 5) == ["503", "ok", "503", "ok", "503"]


def test_each_key_has_its_own_place_in_a_sequence() -> None:
    faults = Faults([FaultRule(sequence=["429", "ok"])])
    assert _kinds(faults, 1, key="a") == ["429"]
    assert _kinds(faults, 1, key="b") == ["429"]
    assert _kinds(faults, 1, key="a") == ["ok"]


def test_the_first_matching_rule_decides() -> None:
    faults = Faults(
        [
            FaultRule(model="gemini-2.5-pro*", fault="503"),
            FaultRule(key="ci", sequence=["500"]),
            FaultRule(model="google/*", fault="429"),
        ]
    )
    assert _kinds(faults, 1, model="google/gemini-2.5-pro-preview") == ["503"]  # by the bare name
    assert _kinds(faults, 2, key="ci") == ["500", "ok"]  # the sequence ended: no later rule applies
    assert _kinds(faults, 1, key="other") == ["429"]
    assert _kinds(faults, 1, model="smollm2") == ["ok"]


def test_rule_options_travel_with_the_fault() -> None:
    faults = Faults([FaultRule(fault="slow_chunks", delay_s=0.25, after_chunks=3, retry_after_s=0)])
    assert faults.draw(FLASH, None) == Fault("slow_chunks", after_chunks=3, delay_s=0.25, retry_after_s=0)


def test_a_seed_draws_alike() -> None:
    rule = FaultRule(fault="503", probability=0.3, seed=5)
    first, second = _kinds(Faults([rule]), 50), _kinds(Faults([rule]), 50)
    assert first == second
    assert 5 < first.count("503") < 25


def test_a_seeded_rule_draws_for_each_key_alone() -> None:
    """One client's requests do not move another's draws: each key sees the same faults on every run."""
    rule = FaultRule(fault="503", probability=0.5, seed=7)
    alone = Faults([rule])
    expected = [alone.draw(FLASH, "a") for _ in range(20)]
    together = Faults([rule])
    drawn = []
    for _ in range(20):
        together.draw(FLASH, "b")  # another client, in between
        drawn.append(together.draw(FLASH, "a"))
    assert drawn == expected
    assert _kinds(Faults([rule]), 20, key="a") != _kinds(Faults([rule]), 20, key="b")  # each key its own draws


def test_the_header_wins_over_the_rules() -> None:
    faults = Faults([FaultRule(sequence=["429"])])
    token = request_fault(parse_header("cut;after_chunks=2"))
    try:
        assert faults.draw(FLASH, None) == Fault("cut", after_chunks=2)
    finally:
        end_request_fault(token)
    assert _kinds(faults, 1) == ["429"]  # the rule's sequence did not move


@pytest.mark.parametrize(
    ("value", "fault"),
    [
        ("429", Fault("429")),
        (" 503 ; retry_after_s=2.5 ", Fault("503", retry_after_s=2.5)),
        ("stream_error;after_chunks=0", Fault("stream_error", after_chunks=0)),
        ("slow_first_byte;delay_s=0.1;after_chunks=4", Fault("slow_first_byte", after_chunks=4, delay_s=0.1)),
    ],
)
def test_the_header(value: str, fault: Fault) -> None:
    assert parse_header(value) == fault


@pytest.mark.parametrize(
    "value",
    ["", "404", "429;", "429;retry_after_s", "cut;after_chunks=-1", "cut;after_chunks=2.0", "deadline;delay_s=601"],
)
def test_a_malformed_header(value: str) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        parse_header(value)
    assert refused.value.param == "x-openvertex-fault"
