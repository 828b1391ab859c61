"""Option-letter extraction: what counts as choosing a letter, and what stays unparseable."""
import pytest

from comd_jax.eval.letters import extract_letter

CHOICES = ["red", "blue", "green", "yellow"]


@pytest.mark.parametrize("reply, letter", [
    ("B", "B"), ("B.", "B"), ("  (B)  ", "B"), ("B)", "B"), ("[C]", "C"), ("B. blue", "B"), ("B: blue", "B"),
    ("B - blue", "B"), ("The answer is B.", "B"), ("The answer is (D).", "D"), ("Answer: C", "C"),
    ("the answer is c.", "C"), ("The correct option is A", "A"), ("I think (D) is right.", "D"),
    ("blue", "B"), ("Yellow.", "D"),                        # the text of exactly one option
    ("The answer is A. (B) is wrong.", "A"),                 # the stated answer wins over a mention
])
def test_parseable(reply, letter):
    assert extract_letter(reply, 4, CHOICES) == letter


@pytest.mark.parametrize("reply", [
    "", "I am not sure.", "A red circle.",                   # "A" as an article is prose, not option A
    "The answer is a red circle.", "A or B", "(A) or (B)",   # no single committed letter
    "E", "The answer is E.",                                 # out of range for 4 options
    "purple", "It could be blue or green.",
])
def test_unparseable(reply):
    assert extract_letter(reply, 4, CHOICES) is None


def test_range_follows_the_number_of_options():
    assert extract_letter("C", 2) is None
    assert extract_letter("C", 3) == "C"
