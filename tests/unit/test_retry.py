"""The one retry policy: its waits, bounds and Retry-After, with an injected sleep and random."""

from __future__ import annotations

import email.utils

import pytest

from cib_core.retry import RetryPolicy, parse_retry_after


def test_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert parse_retry_after(date, now=1_000_000) == pytest.approx(30.0)
    assert parse_retry_after(date, now=2_000_000) == 0.0


def test_delays_are_full_jitter_exponential_and_capped() -> None:
    top = RetryPolicy(base=0.5, factor=2.0, max_delay=5.0, random=lambda: 1.0)
    assert [top.delay(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert top.delay(10_000) == 5.0  # no overflow however long a caller keeps counting
    bottom = RetryPolicy(random=lambda: 0.0)
    assert [bottom.delay(n) for n in range(4)] == [0.0] * 4
    half = RetryPolicy(base=1.0, random=lambda: 0.5)
    assert half.delay(2) == 2.0


def test_retry_after_raises_the_wait_but_is_capped() -> None:
    policy = RetryPolicy(random=lambda: 0.0, retry_after_max=60.0)
    assert policy.delay(0, retry_after=7.0) == 7.0
    assert policy.delay(0, retry_after=3600.0) == 60.0  # a server cannot park cib for an hour
    jittered = RetryPolicy(base=10.0, random=lambda: 1.0)
    assert jittered.delay(0, retry_after=1.0) == 10.0  # the longer of the two


def test_run_retries_what_is_retryable_a_bounded_number_of_times() -> None:
    slept: list[float] = []
    heard: list[tuple[str, int]] = []
    policy = RetryPolicy(retries=3, base=1.0, random=lambda: 1.0, sleep=slept.append)
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("not yet")
        return "done"

    assert policy.run(flaky, retryable=lambda e: isinstance(e, ConnectionError),
                      on_retry=lambda e, n, s: heard.append((str(e), n))) == "done"
    assert slept == [1.0, 2.0] and heard == [("not yet", 1), ("not yet", 2)]

    calls.clear()
    slept.clear()

    def always() -> str:
        calls.append(1)
        raise ConnectionError("never")

    with pytest.raises(ConnectionError, match="never"):
        policy.run(always, retryable=lambda e: True)
    assert len(calls) == 4 and len(slept) == 3  # the first attempt and three retries

    calls.clear()

    def fatal() -> str:
        calls.append(1)
        raise ValueError("no")

    with pytest.raises(ValueError):
        policy.run(fatal, retryable=lambda e: isinstance(e, ConnectionError))
    assert len(calls) == 1


def test_wait_sleeps_through_the_injected_sleep() -> None:
    slept: list[float] = []
    policy = RetryPolicy(base=2.0, random=lambda: 0.25, sleep=slept.append)
    assert policy.wait(1) == 1.0 and slept == [1.0]
    fewer = policy.with_retries(1)
    assert fewer.retries == 1
    fewer.wait(0)
    assert slept == [1.0, 0.5]  # the same injected sleep and waits, another bound


@pytest.mark.parametrize("bad", [{"retries": -1}, {"base": -1.0}, {"factor": 0.5},
                                 {"max_delay": -1.0}, {"retry_after_max": -2.0}])
def test_impossible_policies_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="impossible retry policy"):
        RetryPolicy(**bad)  # type: ignore[arg-type]
