"""The report's first screen: a pass the warm-up already had is not credited to the rounds, a
pass in a middle round that is lost again is marked, ties are not passes."""
import pytest

from comd_jax.eval.race import first_screen, race

TEACHER = {"w/mean": 50.0, "w/colour": 40.0, "w/shape": 60.0, "w/count": 30.0, "w/exist": 50.0}


def _rounds(*students):
    out = {"baseline": {"student": students[0], "teacher": TEACHER}}
    out.update({str(i): {"student": s, "teacher": TEACHER} for i, s in enumerate(students[1:])})
    return out


def test_only_what_the_rounds_earned_counts_as_passed_during_the_rounds():
    by_round = _rounds(
        {"w/mean": 40.0, "w/colour": 30.0, "w/shape": 50.0, "w/count": 35.0, "w/exist": 45.0},  # count ahead at warm-up
        {"w/mean": 42.0, "w/colour": 41.0, "w/shape": 61.0, "w/count": 36.0, "w/exist": 50.0},
        {"w/mean": 44.0, "w/colour": 45.0, "w/shape": 55.0, "w/count": 37.0, "w/exist": 50.0})
    r = race(by_round, "w/mean")
    assert r["student"] == {"baseline": 40.0, "0": 42.0, "1": 44.0} and r["teacher"] == 50.0
    assert r["rises_every_round"]
    assert [p["skill"] for p in r["passes_teacher"]] == ["w/colour", "w/count"]  # exist ties: not a pass
    earned = {p["skill"]: p for p in r["passed_during_rounds"]}
    assert set(earned) == {"w/colour", "w/shape"}  # count was ahead already
    assert earned["w/colour"]["first_round"] == "0" and earned["w/colour"]["still_ahead"]
    assert earned["w/shape"]["first_round"] == "0" and not earned["w/shape"]["still_ahead"]  # lost again
    assert r["ahead_since_warm_up"] == ["w/count"]
    text = first_screen(r)
    assert "| student | 40.0 | 42.0 | 44.0 | 50.0 |" in text and "Rises in every round: yes" in text
    assert "w/shape (50.0 → 55.0, teacher 60.0; first in round 0, not held)" in text


def test_a_dip_is_not_a_rise_and_nothing_passed_says_so():
    low = {"w/mean": 40.0, "w/colour": 30.0, "w/shape": 50.0, "w/count": 20.0, "w/exist": 45.0}
    r = race(_rounds(low, {**low, "w/mean": 43.0}, {**low, "w/mean": 42.0}), "w/mean")
    assert not r["rises_every_round"] and r["passes_teacher"] == [] and r["passed_during_rounds"] == []
    assert "passes the teacher** (after the last round): nowhere" in first_screen(r)
    with pytest.raises(ValueError, match="baseline and at least one round"):
        race({"baseline": {"student": low, "teacher": TEACHER}}, "w/mean")
