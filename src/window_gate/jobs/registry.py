"""What features declare: tasks (run when enqueued) and schedules (run on a cron), by name."""

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar, cast

from croniter import croniter
from pgqueuer.errors import RetryRequested as Retry
from sqlalchemy.ext.asyncio import AsyncEngine

from window_gate.config import Settings

Payload = Mapping[str, Any]
T = TypeVar("T")
__all__ = ["Context", "Payload", "Registry", "Retry", "Schedule", "Task"]


@dataclass(frozen=True)
class Context:
    """What a job runs with. `engine`'s statements may take minutes (a purge), unlike the requests'."""

    settings: Settings
    engine: AsyncEngine
    attempt: int = 0  # 0 the first time; retries count up
    # What the entry point shares with the jobs, by type (the app's Gate: a release sends as a request
    # does); jobs never names a feature's types.
    parts: Mapping[type, object] = field(default_factory=dict)

    def part(self, kind: type[T]) -> T:
        """The one `kind` the entry point provided; a KeyError names a part it forgot."""
        return cast(T, self.parts[kind])


TaskHandler = Callable[[Context, Payload], Awaitable[None]]
ScheduleHandler = Callable[[Context], Awaitable[None]]


@dataclass(frozen=True)
class Task:
    name: str
    run: TaskHandler
    concurrency: int  # across all workers; 0: unlimited
    retries: int
    backoff: timedelta
    max_backoff: timedelta


@dataclass(frozen=True)
class Schedule:
    name: str
    cron: str
    run: ScheduleHandler


@dataclass
class Registry:
    """The tasks and schedules of one feature, or of all of them once `include`d together."""

    tasks: dict[str, Task] = field(default_factory=dict)
    schedules: dict[str, Schedule] = field(default_factory=dict)

    def task(
        self,
        name: str,
        *,
        concurrency: int = 0,
        retries: int = 0,
        backoff: timedelta = timedelta(seconds=1),
        max_backoff: timedelta = timedelta(hours=1),
    ) -> Callable[[TaskHandler], TaskHandler]:
        """A handler for jobs enqueued under `name`. A failure is retried `retries` times, `backoff`
        doubling each time up to `max_backoff`; past that the job stays, dead, with status `failed`."""
        if concurrency < 0 or retries < 0:
            raise ValueError(f"{name}: concurrency and retries are counts (≥ 0)")

        def register(run: TaskHandler) -> TaskHandler:
            self._claim(name)
            self.tasks[name] = Task(name, run, concurrency, retries, backoff, max_backoff)
            return run

        return register

    def every(self, name: str, cron: str) -> Callable[[ScheduleHandler], ScheduleHandler]:
        """Run on this cron (five fields, or six: the sixth is seconds), once per tick across every
        replica and worker, not once per process."""
        if not croniter.is_valid(cron):
            raise ValueError(f"{name}: not a cron expression: {cron!r}")

        def register(run: ScheduleHandler) -> ScheduleHandler:
            self._claim(name)
            self.schedules[name] = Schedule(name, cron, run)
            return run

        return register

    def include(self, *others: "Registry") -> "Registry":
        for other in others:
            for name in [*other.tasks, *other.schedules]:
                self._claim(name)
            self.tasks.update(other.tasks)
            self.schedules.update(other.schedules)
        return self

    def _claim(self, name: str) -> None:
        if name in self.tasks or name in self.schedules:
            raise ValueError(f"job {name!r} is registered twice")
