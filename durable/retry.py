"""Retry policies for steps and workflows."""

from __future__ import annotations

from dataclasses import dataclass

from durable.errors import NonRetryableError
from durable.validation import (
    check_at_least,
    check_exception_types,
    check_non_negative_float,
    check_positive_int,
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often, and after how long, a failed attempt is tried again.

    The delay before attempt ``n + 1`` is ``initial_delay * backoff_rate ** (n - 1)``, capped at
    ``max_delay``; the first attempt runs at once. An exception that is an instance of
    ``non_retryable`` (or of :class:`~durable.errors.NonRetryableError`), or not of ``retry_on``,
    is not retried.
    """

    max_attempts: int = 1
    initial_delay: float = 1.0
    backoff_rate: float = 2.0
    max_delay: float = 3600.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    non_retryable: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        """:raises InvalidArgumentError: ``max_attempts`` is not an int from 1 up, a delay is
        negative or not finite (or ``max_delay`` is over 100 years), ``backoff_rate`` is below 1
        or not finite, or ``retry_on`` / ``non_retryable`` are not tuples of exception classes.
        """
        check_positive_int(self.max_attempts, "max_attempts")
        check_non_negative_float(self.initial_delay, "initial_delay")
        check_at_least(self.backoff_rate, "backoff_rate", 1)
        check_non_negative_float(self.max_delay, "max_delay")
        check_exception_types(self.retry_on, "retry_on")
        check_exception_types(self.non_retryable, "non_retryable")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        try:
            wait = float(self.initial_delay) * float(self.backoff_rate) ** (attempt - 1)
        except OverflowError:  # a large rate to a large power: the cap applies
            return float(self.max_delay)
        return float(min(wait, self.max_delay))

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Whether failed attempt number ``attempt`` that raised ``exc`` gets another try."""
        if attempt >= self.max_attempts:
            return False
        if isinstance(exc, (NonRetryableError, *self.non_retryable)):
            return False
        return isinstance(exc, self.retry_on)


#: Steps run once unless told otherwise.
NO_RETRY = RetryPolicy()

#: The default schedule for queued workflows: at once, then +1 minute, then +4 minutes.
WORKFLOW_RETRY = RetryPolicy(max_attempts=3, initial_delay=60.0, backoff_rate=4.0)
