"""Verifiers: answer extraction, exact numeric matching and math-verify rewards on tricky inputs."""

import threading
from fractions import Fraction

import pytest
from nft_trainer.verifiers import (
    completion_text,
    extract_final_answer,
    math_verify_reward,
    numeric_match_reward,
    parse_number,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("46", Fraction(46)),
        (" -46 ", Fraction(-46)),
        ("+46", Fraction(46)),
        ("\u221246", Fraction(-46)),
        ("1,234,567", Fraction(1234567)),
        ("0.5", Fraction(1, 2)),
        (".50", Fraction(1, 2)),
        ("46.", Fraction(46)),
        ("1e3", Fraction(1000)),
        ("2.5E-1", Fraction(1, 4)),
        ("3/4", Fraction(3, 4)),
        ("-3 / 4", Fraction(-3, 4)),
        ("1.5/3", Fraction(1, 2)),
        (r"\frac{3}{4}", Fraction(3, 4)),
        (r"\dfrac{-3}{4}", Fraction(-3, 4)),
        ("$46$", Fraction(46)),
        (r"\$46", Fraction(46)),
        ("46%", Fraction(46)),
        (r"1{,}000", Fraction(1000)),
        (r"\text{46}", Fraction(46)),
    ],
)
def test_parse_number_accepts(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize(
    "text", ["", "abc", "1/0", "1,5", "12+34", "4 6", "1,2345", "--3", "3/", "x/2", "1e99999"]
)
def test_parse_number_rejects(text):
    assert parse_number(text) is None


@pytest.mark.parametrize(
    ("text", "last", "first"),
    [
        ("46", "46", "46"),
        ("12+34=46", "46", "12"),
        ("46 7+8=15", "15", "46"),
        ("5-3", "3", "5"),  # a minus after a digit is an operator, not a sign
        ("x = -3", "-3", "-3"),
        ("46. Done!", "46", "46"),
        ("no digits here", None, None),
        ("", None, None),
        # Markers win over the strategy.
        ("first 3 then the answer is 46 apples, not 5", "46", "46"),
        ("Answer: -7/2 since 1 2 3", "-7/2", "-7/2"),
        ("The answer is $-7$.", "-7", "-7"),
        ("the answer is forty-six. 12", "forty-six", "forty-six"),
        ("steps 1 2\n#### 1,234\nmore 9", "1,234", "1,234"),
        (r"so \boxed{\frac{1}{2}} and 3", r"\frac{1}{2}", r"\frac{1}{2}"),
        (r"\boxed{1} then \boxed{{2}+1}", "{2}+1", "{2}+1"),  # last box, nested braces
        (r"\boxed{2 unbalanced", "2", "2"),  # unbalanced box is ignored
    ],
)
def test_extract_final_answer(text, last, first):
    assert extract_final_answer(text) == last
    assert extract_final_answer(text, strategy="last") == last
    assert extract_final_answer(text, strategy="first") == first


def test_extract_final_answer_full():
    assert extract_final_answer("  46\n", strategy="full") == "46"
    assert extract_final_answer("46 apples", strategy="full") == "46 apples"
    assert extract_final_answer("   ", strategy="full") is None
    assert extract_final_answer(r"junk \boxed{7}", strategy="full") == "7"


def test_numeric_match_reward_tricky_cases():
    completions = [
        "46",
        "0.5",
        r"We get \boxed{\dfrac{1}{2}}.",
        "so the total is 1,000",
        "12",
        "-0",
        "The answer is -3/4.",
        "46 7+8=15",  # last number is 15
        "",
        "x",
        "  +7  ",
        "2.50",
    ]
    answer = ["46", "1/2", "0.5", "1000", "13", "0", "-0.75", "46", "0", "x", "7", "5/2"]
    assert numeric_match_reward(completions, answer) == [1, 1, 1, 1, 0, 1, 1, 0, 0, 0, 1, 1]
    # Strategy "first" takes the answer that starts the completion and ignores what follows.
    assert numeric_match_reward(["46 7+8=15", "46"], ["46", "46"], strategy="first") == [1.0, 1.0]
    # Strategy "full" needs the whole text to be the answer; covers non-numeric answers too.
    assert numeric_match_reward(["46 7+8=15", " 46 ", "x", "X"], ["46", "46", "x", "x"], strategy="full") == [
        0.0,
        1.0,
        1.0,
        0.0,
    ]


def test_numeric_match_reward_exact_not_approximate():
    assert numeric_match_reward(["0.333", "0.3333333333", "1/3"], ["1/3"] * 3) == [0.0, 0.0, 1.0]


def test_numeric_match_reward_gold_forms():
    # Numbers in the dataset column, and full reference solutions with #### or \boxed.
    assert (
        numeric_match_reward(["46", "2.5", "8", "8"], [46, 2.5, "so 4+4 #### 8", r"\boxed{8}"]) == [1.0] * 4
    )


def test_numeric_match_reward_conversational_and_ignores_trl_kwargs():
    completions = [
        [{"role": "assistant", "content": "It is 46"}],
        [
            {
                "role": "assistant",
                "content": [{"type": "text", "text": "It is "}, {"type": "text", "text": "5"}],
            }
        ],
        [{"role": "assistant", "content": "3"}, {"role": "tool", "content": "46"}],
        [{"role": "assistant", "content": None}],
    ]
    out = numeric_match_reward(
        completions,
        ["46", "5", "3", "1"],
        prompts=["p"] * 4,
        completion_ids=[[1]] * 4,
        trainer_state=None,
        log_extra=None,
        log_metric=None,
    )
    assert out == [1.0, 1.0, 1.0, 0.0]
    assert all(isinstance(x, float) for x in out)


def test_completion_text():
    assert completion_text("a") == "a"
    assert completion_text({"role": "assistant", "content": "b"}) == "b"
    assert completion_text([{"role": "user", "content": "q"}]) == ""
    with pytest.raises(TypeError, match=r"completions\[3\]"):
        completion_text(5, index=3)
    with pytest.raises(TypeError, match="message dicts"):
        completion_text(["a", "b"])


@pytest.mark.parametrize("reward", [numeric_match_reward, math_verify_reward])
def test_reward_bad_inputs(reward):
    with pytest.raises(ValueError, match="answer has 1 entries but completions has 2"):
        reward(["1", "2"], ["1"])
    with pytest.raises(TypeError, match="completions must be a list"):
        reward("1", ["1"])
    with pytest.raises(TypeError, match="answer must be a list"):
        reward(["1"], "1")
    with pytest.raises(TypeError, match=r"answer\[0\] must be a str or a number"):
        reward(["1"], [None])
    with pytest.raises(TypeError, match=r"completions\[1\]"):
        reward(["1", 2], ["1", "2"])
    assert reward([], []) == []


def test_bad_strategy_and_types():
    with pytest.raises(ValueError, match="strategy must be one of"):
        numeric_match_reward(["1"], ["1"], strategy="middle")
    with pytest.raises(ValueError, match="strategy must be one of"):
        extract_final_answer("1", strategy="middle")
    with pytest.raises(TypeError, match="text must be a str"):
        extract_final_answer(1)
    with pytest.raises(TypeError, match="text must be a str"):
        parse_number(1)
    with pytest.raises(ValueError, match="timeout_seconds"):
        math_verify_reward(["1"], ["1"], timeout_seconds=0)


def test_inputs_not_mutated():
    completions = [[{"role": "assistant", "content": " 46 "}]]
    answer = ["46"]
    numeric_match_reward(completions, answer)
    math_verify_reward(completions, answer)
    assert completions == [[{"role": "assistant", "content": " 46 "}]]
    assert answer == ["46"]


def test_math_verify_reward_latex():
    completions = [
        r"thus $\boxed{\frac{1}{2}}$",
        r"It is $0.5$",
        r"We find $x^2 + 1$ and so \boxed{x^2+1}",
        r"\boxed{3}",
        r"\boxed{\{1, 2\}}",
        "no answer at all",
        r"\boxed{\sqrt{2}/2}",
    ]
    answer = ["0.5", r"\frac12", r"$x^2+1$", "4", r"$\{2, 1\}$", "1", r"\frac{\sqrt{2}}{2}"]
    assert math_verify_reward(completions, answer) == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0]


def test_math_verify_reward_unparseable_gold_warns():
    with pytest.warns(RuntimeWarning, match=r"answer\[1\]"):
        assert math_verify_reward(["1", "1"], ["1", ""]) == [1.0, 0.0]


def test_math_verify_reward_exception_gives_zero(monkeypatch):
    import math_verify
    from math_verify.errors import TimeoutException

    def boom(*args, **kwargs):
        raise TimeoutException("slow")

    monkeypatch.setattr(math_verify, "verify", boom)
    assert math_verify_reward([r"\boxed{1}"], ["1"]) == [0.0]

    def boom2(*args, **kwargs):
        raise RuntimeError("sympy failed")

    monkeypatch.setattr(math_verify, "verify", boom2)
    assert math_verify_reward([r"\boxed{1}"], ["1"]) == [0.0]


def test_math_verify_reward_in_worker_thread():
    # math-verify's signal-based timeout raises outside the main thread; the reward disables it there.
    result = {}

    def work():
        result["r"] = math_verify_reward([r"\boxed{2}", r"\boxed{3}"], ["2", "2"])

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert result["r"] == [1.0, 0.0]


def test_long_adversarial_inputs_are_fast():
    # Unclosed \boxed{ repeated: answer extraction is linear (a quadratic scan took minutes at this size).
    import time

    texts = [
        "\\boxed{" * 20000 + "\\boxed{7}",
        "\\boxed{" * 20000,
        "1," * 20000,
        "-" * 50000 + "5",
        "1e1" * 20000,
    ]
    start = time.perf_counter()
    out = numeric_match_reward(texts, ["7", "7", "1", "5", "1"])
    assert time.perf_counter() - start < 10.0
    assert out[:2] == [1.0, 0.0]
