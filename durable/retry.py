"""Retry policies for steps and workflows."""

from __future__ import annotations

from dataclasses import dataclass

from durable.errors import InvalidArgumentError, NonRetryableError


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
        if self.max_attempts < 1:
            raise InvalidArgumentError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.initial_delay < 0 or self.max_delay < 0:
            raise InvalidArgumentError("retry delays must not be negative")
        if self.backoff_rate < 1:
            raise InvalidArgumentError(f"backoff_rate must be >= 1, got {self.backoff_rate}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return float(min(self.initial_delay * self.backoff_rate ** (attempt - 1), self.max_delay))

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
