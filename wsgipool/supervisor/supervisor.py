"""The supervision loop: keeps the right number of healthy workers, on the event loop.

It owns the template process(es) and every worker handle.  Workers leave for a
reason (crash, memory, max-requests, lifetime, timeout, reload, scale) and
`_reconcile` brings the count of serving workers back to the target: a crash
is replaced after the restart backoff, a planned recycle gets its replacement
ready before the old worker stops taking requests.  Nothing here blocks: memory
samples run in a thread, processes are started by the template.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import time
from collections import Counter, deque
from typing import Any, NamedTuple, Protocol

from wsgipool import children
from wsgipool import protocol as p
from wsgipool.cgi import EnvironOptions
from wsgipool.config import PoolConfig
from wsgipool.growth import GrowthTable
from wsgipool.loader import AppImportError
from wsgipool.logs.escape import escape
from wsgipool.logs.setup import LogSetup
from wsgipool.supervisor import policy
from wsgipool.supervisor.handle import WorkerHandle, WorkerState
from wsgipool.supervisor.monitor import RssMonitor
from wsgipool.supervisor.spawner import SpawnError, TemplateProcess
from wsgipool.worker.process import WorkerSettings

__all__ = ["Supervisor"]

logger = logging.getLogger("wsgipool.supervisor")

_EXIT_STATUS_WAIT = 1.0
#: How long past its grace a stopping worker (one that cannot exit: a thread holding the GIL
#: in C code) gets before SIGKILL; WorkerHandle's own kill timer uses the same second.
_KILL_AFTER = 1.0
#: How long a worker taken out of service waits for its replacement before it is stopped anyway.
_REPLACEMENT_WAIT = 10.0
#: Recycles that keep the worker serving until its replacement is ready.
_PLANNED = frozenset({"max-requests", "max-lifetime", "reload"})
_MIB = 1048576.0
#: How many past worker exits `Supervisor.recent_exits` remembers (for the status page).
_RECENT_EXITS = 50
#: Workers in a row that die before a first worker is ready, at start, after which the
#: server gives up instead of listening with a pool that cannot keep one worker alive
#: (a post_fork hook or an import that fails in every worker): gunicorn stops on a
#: worker's boot error too.
_BOOT_DEATHS = 5
#: Request paths whose RSS growth the pool-wide table keeps by name (the rest: "other").
POOL_PATHS = 50


class WorkerExit(NamedTuple):
    """One worker that left, for observers: when (wall clock), who, why, with what figures."""

    at: float
    number: int
    pid: int
    reason: str  # a recycle reason, "shutdown", "signal" or "crash"
    rss: int
    served: int
    age: float
    detail: str  # "exit code 3", "killed by SIGKILL", "exit status unknown"


class Pool(Protocol):
    """Where ready workers are offered to requests (the dispatcher)."""

    def add(self, worker: WorkerHandle) -> None: ...

    def remove(self, worker: WorkerHandle) -> None: ...

    def on_slot_free(self, worker: WorkerHandle) -> None: ...


class Supervisor:
    def __init__(
        self,
        app_ref: str | bytes,
        config: PoolConfig,
        pool: Pool,
        *,
        log_level: str = "info",
        log_setup: LogSetup | None = None,
        environ: EnvironOptions | None = None,
        request_rss: bool = False,
    ) -> None:
        self.app_ref = app_ref
        self.config = config
        self.pool = pool
        self.settings = WorkerSettings(
            threads=config.threads,
            max_rss=config.max_rss,
            max_rss_hard=config.max_rss_hard,
            log_level=log_level,
            environ=environ or EnvironOptions(),
            preload=config.preload,
            post_fork=config.post_fork,
            worker_exit=config.worker_exit,
            app_name=app_ref if isinstance(app_ref, str) else "",
            user=config.user,
            group=config.group,
            logs=log_setup or LogSetup(level=log_level),
            # Which requests grew a worker: for the log line of a memory recycle, and
            # for observers (request_rss: --metrics-bind).
            request_rss=request_rss
            or config.max_rss is not None
            or config.max_rss_hard is not None,
        )
        self.target = config.workers
        self.workers: list[WorkerHandle] = []
        self.template: TemplateProcess | None = None
        self.retired_templates: list[TemplateProcess] = []
        # A template still importing the app (a reload, a restart): no workers yet.
        self._starting: TemplateProcess | None = None
        self.backoff = policy.RestartBackoff()
        self.stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rng = random.Random()
        self._numbers = 0
        self._generation = 0
        self._scheduled = 0  # spawns decided but not yet started (backoff delays)
        self._tasks: set[asyncio.Future[Any]] = set()
        # Workers that leave once a replacement is ready, oldest first.
        self._awaiting: deque[WorkerHandle] = deque()
        self._exits: dict[int, tuple[int, int]] = {}  # exit statuses that came before the death
        self._awaiting_exit: dict[int, tuple[WorkerHandle, str, asyncio.TimerHandle]] = {}
        self._monitor = RssMonitor()
        self._template_task: asyncio.Future[None] | None = None
        self._template_failures = 0
        self._retiring: set[asyncio.Task[None]] = set()  # old templates being stopped
        # Read-only for observers (wsgipool.metrics): exits by reason, and the latest few.
        self.exits: Counter[str] = Counter()
        self.recent_exits: deque[WorkerExit] = deque(maxlen=_RECENT_EXITS)
        # RSS growth by request path over the whole pool (the leak finder, docs/operations.md).
        self.path_growth = GrowthTable(POOL_PATHS)

    @property
    def spawned(self) -> int:
        """Workers started since the server started (replacements included)."""
        return self._numbers

    @property
    def pending_spawns(self) -> int:
        """Replacements decided but not started yet: most of them wait out a crash backoff."""
        return self._scheduled

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Import the app in a template and start the workers; AppImportError if it fails."""
        self._loop = asyncio.get_running_loop()
        self.template = await self._new_template()
        self._reconcile()
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline:
            ready = sum(1 for w in self.workers if w.state is WorkerState.READY)
            if ready >= self.target:
                break
            if ready == 0 and self.backoff.failures >= _BOOT_DEATHS:
                await self.shutdown(0.0)
                raise AppImportError(
                    f"no worker could start: {self.backoff.failures} in a row died before "
                    "answering (the log lines above say why: a post_fork hook, the app's "
                    "import in the worker, a crash)"
                )
            await asyncio.sleep(0.005)
        self._keep(self._loop.create_task(self._monitor_loop()))
        if self.config.timeout is not None:
            self._keep(self._loop.create_task(self._timeout_loop(self.config.timeout)))

    async def shutdown(self, grace: float) -> None:
        """Let every worker finish within `grace` seconds, then kill what remains."""
        self.stopping = True
        for task in list(self._tasks):
            task.cancel()
        self._abandon_starting()
        for worker in list(self.workers):
            self.pool.remove(worker)
            worker.stop(grace)
        deadline = time.monotonic() + grace + _KILL_AFTER
        while any(w.alive for w in self.workers) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for worker in self.workers:
            if worker.alive:
                worker.kill(signal.SIGKILL)
        await asyncio.sleep(0)
        templates = [t for t in [self.template, *self.retired_templates] if t is not None]
        await asyncio.gather(*(template.stop() for template in templates), *self._retiring)
        for _pid, (_worker, _text, timer) in self._awaiting_exit.items():
            timer.cancel()
        self._flush_exit_logs()

    def kill_all(self) -> None:
        """SIGQUIT: stop at once, no grace."""
        self.stopping = True
        for task in list(self._tasks):
            task.cancel()
        self._abandon_starting()
        for worker in self.workers:
            worker.kill(signal.SIGKILL)
        for template in [self.template, *self.retired_templates]:
            if template is not None:
                template.kill()

    def signal_processes(self, sig: int) -> None:
        """Send `sig` to the templates and the live workers (they reopen their logs on USR1)."""
        for template in [self.template, *self.retired_templates]:
            if template is not None and template.pid:
                try:
                    os.kill(template.pid, sig)
                except ProcessLookupError:
                    pass
        for worker in self.workers:
            if worker.alive:
                worker.kill(sig)

    # -- spawning ------------------------------------------------------------------

    async def _new_template(self) -> TemplateProcess:
        self._generation += 1
        template = TemplateProcess(
            self.app_ref, self.settings, self._on_exited, self._on_template_lost, self._generation
        )
        started = time.monotonic()
        self._starting = template
        try:
            await template.start()
        finally:
            self._starting = None
        if self.stopping:  # it finished importing as the server began to stop
            await template.stop()
            raise AppImportError("the server is stopping")
        logger.info(
            "template %d imported the app in %.0f ms (generation %d%s)",
            template.pid,
            (time.monotonic() - started) * 1000,
            template.generation,
            "" if self.config.preload else "; checked in a child: each worker imports it",
        )
        return template

    def _abandon_starting(self) -> None:
        """Stopping: a template still importing the app (a reload's) has nothing to lose;
        left alone it would outlive the server until its import ends."""
        starting = self._starting
        if starting is not None:
            logger.info(
                "reload abandoned: the server is stopping (template %d was importing the app)",
                starting.process_pid,
            )
            starting.abandon()

    def _serving(self) -> list[WorkerHandle]:
        """Workers that count towards the target: alive and not on their way out."""
        return [w for w in self.workers if w.alive and w.recycle_reason is None]

    def _reconcile(self, delay: float = 0.0) -> None:
        """Spawn or drain until the serving workers (and those on their way) match the target."""
        if self.stopping or self._loop is None:
            return
        missing = self.target - len(self._serving()) - self._scheduled
        for _ in range(max(0, missing)):
            self._scheduled += 1
            self._keep(self._loop.create_task(self._spawn(delay)))
        while len(self._serving()) > self.target:
            ready = [w for w in self._serving() if w.state is WorkerState.READY]
            if not ready:
                break
            leaving = min(ready, key=lambda w: w.busy)
            leaving.recycle_reason = "scale"
            self._drain(leaving)

    async def _spawn(self, delay: float) -> None:
        try:
            if delay > 0:
                await asyncio.sleep(delay)
            template = await self._wait_template()
            if self.stopping:
                return
            self._numbers += 1
            number = self._numbers
            pid, sock = await template.spawn(number)
        except SpawnError as exc:
            self._scheduled -= 1
            logger.error("could not spawn a worker: %s", exc)
            self._reconcile(self.backoff.on_death(0.0, 0))
            return
        except BaseException:
            self._scheduled -= 1
            raise
        self._scheduled -= 1
        assert self._loop is not None
        worker = WorkerHandle(
            self._loop, number, pid, sock, template, self, self.config.threads, "spawn"
        )
        worker.pool_growth = self.path_growth
        worker.request_limit = policy.jittered_request_limit(
            self.config.max_requests, self.config.max_requests_jitter, self._rng
        )
        worker.lifetime_limit = policy.jittered_lifetime(
            self.config.max_lifetime, self.config.lifetime_jitter, self._rng
        )
        self.workers.append(worker)
        try:
            await asyncio.wait_for(asyncio.shield(worker.ready_future), 60.0)
        except TimeoutError:
            logger.error("worker %d did not become ready within 60s; killing it", pid)
            worker.kill()
        except RuntimeError:
            pass  # it died while starting: on_death has dealt with it

    async def _wait_template(self) -> TemplateProcess:
        while True:
            template = self.template
            if template is not None and template.alive:
                return template
            if self._template_task is None:
                raise SpawnError("no template process")
            await asyncio.shield(self._template_task)

    # -- worker events (WorkerEvents) ---------------------------------------------

    def on_ready(self, worker: WorkerHandle) -> None:
        started = (worker.ready_at or time.monotonic()) - worker.spawned_at
        logger.info(
            "worker %d ready in %.1f ms (%d threads, generation %d)",
            worker.pid,
            started * 1000,
            worker.threads,
            worker.template.generation,
        )
        if self.stopping:
            worker.stop(self.config.graceful_timeout)
            return
        self.pool.add(worker)
        # A replacement is serving: the oldest worker waiting for one may go now.
        while self._awaiting:
            old = self._awaiting.popleft()
            if old.alive and not old.stop_requested:
                self._drain(old)
                break
        self._check_planned()

    def on_slot_free(self, worker: WorkerHandle) -> None:
        if worker.completed == 1:
            self.backoff.on_success()
        self.pool.on_slot_free(worker)
        if worker.timed_out and worker.stop_requested:
            self._stop_if_only_stuck(worker)

    def on_dispatched(self, worker: WorkerHandle) -> None:
        """A request went to `worker`: is this the one that reaches its max-requests?"""
        limit = worker.request_limit
        if (
            limit is not None
            and worker.dispatched >= limit
            and worker.recycle_reason is None
            and self._planned_room()
        ):
            self._replace(worker, "max-requests", keep_serving=True)

    def on_status(self, worker: WorkerHandle, rss: int, flags: int) -> None:
        if flags & p.FLAG_OVER_RSS_HARD:
            self._kill_for_memory(worker, rss)
        elif flags & p.FLAG_OVER_RSS:
            self._over_soft_limit(worker, rss, "reported by the worker after a request")
        elif flags & p.FLAG_STOP_ASKED and not self.stopping:
            # SIGTERM sent to the worker from outside: a planned recycle, so that what
            # it runs finishes and its queue goes on elsewhere (a stop, if one is under
            # way, stops it anyway).
            self._replace(worker, "sigterm", keep_serving=True)

    def on_stack(self, worker: WorkerHandle, rid: int, text: str) -> None:
        logger.error(
            "stack of the timed-out request %d on worker %d:\n%s", rid, worker.pid, text.rstrip()
        )
        worker.stacks_pending.discard(rid)
        self._stop_if_only_stuck(worker)

    def on_death(self, worker: WorkerHandle, reason: str) -> None:
        self.pool.remove(worker)
        try:
            self.workers.remove(worker)
        except ValueError:
            pass
        if worker in self._awaiting:
            self._awaiting.remove(worker)
        expected = self._expected(worker)
        delay = 0.0
        if expected:
            text = f"worker {worker.pid} stopped ({worker.recycle_reason or 'shutdown'})"
        else:
            age = time.monotonic() - (worker.ready_at or worker.spawned_at)
            delay = self.backoff.on_death(age, worker.completed)
            text = f"worker {worker.pid} died ({reason})"
            if not self.stopping:
                if delay > 0.1:
                    text_tail = (
                        f"; restarting in {delay:.1f}s (crash backoff: "
                        f"{self.backoff.failures} early deaths in a row)"
                    )
                else:
                    text_tail = "; restarting"
                text += text_tail
        self._log_exit_when_known(worker, text, error=not expected)
        self._reconcile(delay)
        self._check_planned()
        self._retire_idle_templates()

    def _on_exited(self, pid: int, kind: int, code: int) -> None:
        pending = self._awaiting_exit.pop(pid, None)
        if pending is None:
            self._exits[pid] = (kind, code)
            if len(self._exits) > 1024:  # pids of workers we never knew
                self._exits.pop(next(iter(self._exits)))
            return
        worker, text, timer = pending
        timer.cancel()
        worker.exit_status = (kind, code)
        self._log_exit(worker, text, error=not self._expected(worker))
        self._retire_idle_templates()

    def _log_exit_when_known(self, worker: WorkerHandle, text: str, error: bool) -> None:
        status = self._exits.pop(worker.pid, None) or _reap_adopted(worker.pid)
        if status is not None or self._loop is None:
            worker.exit_status = status
            self._log_exit(worker, text, error)
            return
        timer = self._loop.call_later(_EXIT_STATUS_WAIT, self._exit_status_overdue, worker.pid)
        self._awaiting_exit[worker.pid] = (worker, text, timer)

    def _exit_status_overdue(self, pid: int) -> None:
        pending = self._awaiting_exit.pop(pid, None)
        if pending is not None:
            worker, text, _timer = pending
            worker.exit_status = worker.exit_status or _reap_adopted(pid)
            self._log_exit(worker, text, error=not self._expected(worker))
            self._retire_idle_templates()

    def _flush_exit_logs(self) -> None:
        for pid in list(self._awaiting_exit):
            self._exit_status_overdue(pid)

    def _expected(self, worker: WorkerHandle) -> bool:
        """Whether the supervisor meant this worker to go (a recycle, a shutdown)."""
        return self.stopping or worker.stop_requested or worker.recycle_reason == "max-rss-hard"

    def _log_exit(self, worker: WorkerHandle, text: str, error: bool) -> None:
        self._count_exit(worker)
        head, sep, tail = text.partition("; ")
        line = f"{head}: {worker.describe_exit()}; {worker.describe()}{sep}{tail}"
        (logger.error if error else logger.info)(line)

    def _count_exit(self, worker: WorkerHandle) -> None:
        """Once per worker, when its exit is logged (with its exit status, if it came)."""
        if worker.recycle_reason is not None:
            reason = worker.recycle_reason
        elif self.stopping or worker.stop_requested:
            reason = "shutdown"
        elif worker.exit_status is not None and worker.exit_status[0] == p.EXIT_SIGNAL:
            reason = "signal"
        else:
            reason = "crash"
        self.exits[reason] += 1
        self.recent_exits.append(
            WorkerExit(
                time.time(),
                worker.number,
                worker.pid,
                reason,
                worker.rss,
                worker.completed,
                worker.age,
                worker.describe_exit(),
            )
        )

    # -- recycling -------------------------------------------------------------------

    def _replace(self, worker: WorkerHandle, reason: str, *, keep_serving: bool) -> None:
        """Recycle `worker`: it is told to stop only once its replacement is ready.

        A planned recycle (max-requests, lifetime, reload) keeps serving until
        then, so capacity never dips.  A worker over its memory limit or with a
        stuck request takes no new requests from now on; if no replacement is
        ready within `_REPLACEMENT_WAIT`, it is stopped anyway.
        """
        if not worker.alive or worker.stop_requested:
            return
        if worker in self._awaiting:  # already leaving; a more urgent reason stops its serving
            if not keep_serving and worker.recycle_reason in _PLANNED:
                worker.recycle_reason = reason
                self._take_out_of_service(worker)
            return
        worker.recycle_reason = reason
        self._awaiting.append(worker)
        if keep_serving:
            logger.info(
                "worker %d recycling (%s): %s", worker.pid, reason, self._limit_text(worker, reason)
            )
        else:
            self._take_out_of_service(worker)
        self._reconcile()

    def _take_out_of_service(self, worker: WorkerHandle) -> None:
        self.pool.remove(worker)
        assert self._loop is not None
        self._loop.call_later(_REPLACEMENT_WAIT, self._stop_if_still_waiting, worker)

    def _stop_if_still_waiting(self, worker: WorkerHandle) -> None:
        if worker in self._awaiting and worker.alive:
            logger.warning(
                "worker %d: no replacement ready within %.0fs; stopping it anyway",
                worker.pid,
                _REPLACEMENT_WAIT,
            )
            self._awaiting.remove(worker)
            self._drain(worker)

    def _drain(self, worker: WorkerHandle) -> None:
        """Stop giving `worker` requests; it exits when its requests are done."""
        self.pool.remove(worker)
        worker.stop(self.config.graceful_timeout)
        self._stop_if_only_stuck(worker)

    def _stop_if_only_stuck(self, worker: WorkerHandle) -> None:
        """Kill a draining worker whose only requests left are timed-out ones.

        They have had their 504 and their stack is logged: waiting out the
        graceful timeout for them would only keep a process (and its memory)
        around, and under a steady trickle of stuck requests, many of them.
        """
        if not worker.alive or not worker.stop_requested or worker.stacks_pending:
            return
        left = worker.inflight
        if not left or any(rid not in worker.timed_out for rid in left):
            return
        logger.warning(
            "worker %d: only its %d timed-out request(s) left; killing it", worker.pid, len(left)
        )
        worker.kill(signal.SIGKILL)

    def _over_soft_limit(self, worker: WorkerHandle, rss: int, how: str) -> None:
        if worker.recycle_reason is not None or not worker.alive:
            return
        limit = self.config.max_rss or 0
        logger.warning(
            "worker %d over the memory limit (%s): rss %.1f MiB > %.1f MiB; %s; recycling it; %s",
            worker.pid,
            how,
            rss / _MIB,
            limit / _MIB,
            worker.describe(),
            memory_culprits(worker),
        )
        self._replace(worker, "max-rss", keep_serving=False)

    def _kill_for_memory(self, worker: WorkerHandle, rss: int) -> None:
        if not worker.alive or worker.recycle_reason == "max-rss-hard":
            return
        limit = self.config.max_rss_hard or 0
        logger.error(
            "worker %d over the hard memory limit: rss %.1f MiB > %.1f MiB; "
            "killing it (%d request(s) in flight); %s",
            worker.pid,
            rss / _MIB,
            limit / _MIB,
            len(worker.inflight),
            memory_culprits(worker),
        )
        worker.recycle_reason = "max-rss-hard"
        self.pool.remove(worker)
        worker.kill(signal.SIGKILL)
        self._reconcile()

    def _limit_text(self, worker: WorkerHandle, reason: str) -> str:
        if reason == "max-requests":
            limit = worker.request_limit
            return f"{worker.dispatched} requests dispatched, limit {limit}; {worker.describe()}"
        if reason == "max-lifetime":
            return f"lifetime limit {worker.lifetime_limit:.1f}s; {worker.describe()}"
        return worker.describe()

    # -- periodic checks ---------------------------------------------------------------

    async def _monitor_loop(self) -> None:
        limits = self.config.max_rss is not None or self.config.max_rss_hard is not None
        interval = 0.5 if limits else 2.0
        while not self.stopping:
            await asyncio.sleep(interval)
            workers = [w for w in self.workers if w.alive and w.state is not WorkerState.STARTING]
            try:
                samples = await self._monitor.sample(w.pid for w in workers)
            except (OSError, RuntimeError) as exc:  # no thread or descriptor to spare now
                logger.warning("could not sample worker memory: %s; trying again", exc)
                samples = {}
            for worker in workers:
                rss = samples.get(worker.pid)
                if rss is None or not worker.alive:
                    continue
                worker.rss = rss
                verdict = policy.rss_verdict(
                    rss, self.config.max_rss, self.config.max_rss_hard, worker.rss_over
                )
                worker.rss_over = verdict.over_count
                if verdict.action == "kill":
                    self._kill_for_memory(worker, rss)
                elif verdict.action == "recycle":
                    self._over_soft_limit(worker, rss, f"{verdict.over_count} samples in a row")
            self._check_planned()

    def _check_planned(self) -> None:
        """Start the planned recycles that are due, as many as may run at once."""
        for worker in self._serving():
            if worker.state is not WorkerState.READY:
                continue
            facts = policy.WorkerFacts(
                dispatched=worker.dispatched,
                request_limit=worker.request_limit,
                age=worker.age,
                lifetime_limit=worker.lifetime_limit,
            )
            reason = policy.planned_recycle_reason(facts)
            if reason is not None:
                if not self._planned_room():
                    return
                self._replace(worker, reason, keep_serving=True)

    def _planned_room(self) -> bool:
        """At most a quarter of the workers (at least one) are in a planned recycle at once."""
        planned = sum(1 for w in self._awaiting if w.recycle_reason in _PLANNED)
        return planned < max(1, self.target // 4)

    async def _timeout_loop(self, timeout: float) -> None:
        assert self._loop is not None
        interval = min(1.0, timeout / 4)
        while not self.stopping:
            await asyncio.sleep(interval)
            now = self._loop.time()
            for worker in list(self.workers):
                for rid, exchange in list(worker.inflight.items()):
                    if exchange.finished or not exchange.waiting:
                        continue
                    if now - exchange.last_progress > timeout:
                        label = _request_line(exchange.facts)
                        self._timed_out(worker, rid, label, now - exchange.started)
                        exchange.abort(504, f"no response within {timeout:g}s")

    def _timed_out(self, worker: WorkerHandle, rid: int, label: str, elapsed: float) -> None:
        logger.error(
            "request %s on worker %d timed out after %.1fs; asking for its stack, "
            "recycling the worker",
            label,
            worker.pid,
            elapsed,
        )
        worker.timed_out.add(rid)
        worker.stacks_pending.add(rid)
        worker.dump(rid)
        self._replace(worker, "timeout", keep_serving=False)
        self._stop_if_only_stuck(worker)

    # -- reload and scale ---------------------------------------------------------------

    async def reload(self) -> bool:
        """Re-import the app in a new template and replace the workers one at a time."""
        if self.stopping:
            return False
        try:
            template = await self._new_template()
        except Exception as exc:
            if not self.stopping:  # else shutdown() said it abandoned the import
                logger.error("reload failed, the running workers keep serving: %s", exc)
            return False
        old = self.template
        self.template = template
        if old is not None:
            self.retired_templates.append(old)
        old_workers = [w for w in self._serving() if w.template is not template]
        logger.info("reloading: replacing %d worker(s) one at a time", len(old_workers))
        self._keep(asyncio.get_running_loop().create_task(self._roll(old_workers)))
        return True

    async def _roll(self, old_workers: list[WorkerHandle]) -> None:
        for worker in old_workers:
            if self.stopping:
                return
            if not worker.alive or worker.recycle_reason is not None:
                continue
            self._replace(worker, "reload", keep_serving=True)
            while worker.alive and not worker.stop_requested and not self.stopping:
                await asyncio.sleep(0.01)

    def scale(self, delta: int) -> int:
        """SIGTTIN/SIGTTOU: one worker more or less (never fewer than one)."""
        self.target = max(1, self.target + delta)
        logger.info("scaling to %d worker(s)", self.target)
        self._reconcile()
        return self.target

    # -- templates -------------------------------------------------------------------------

    def _on_template_lost(self, template: TemplateProcess) -> None:
        if self.stopping or template is not self.template:
            return
        if self._template_task is None or self._template_task.done():
            assert self._loop is not None
            self._template_task = self._loop.create_task(self._restart_template())
            self._keep(self._template_task)

    async def _restart_template(self) -> None:
        while not self.stopping:
            delay = min(30.0, 0.5 * 2**self._template_failures)
            await asyncio.sleep(delay)
            try:
                self.template = await self._new_template()
                self._template_failures = 0
                return
            except Exception as exc:
                if self.stopping:
                    return
                self._template_failures += 1
                logger.error("could not restart the template process: %s", exc)

    def _retire_idle_templates(self) -> None:
        """Stop the templates of past generations once their workers are gone and reported."""
        if self.stopping:
            return  # shutdown() stops every template itself
        for template in list(self.retired_templates):
            if any(w.template is template for w in self.workers):
                continue
            if any(w.template is template for w, _, _ in self._awaiting_exit.values()):
                continue  # it reaps them: stopped now, it could not tell how they exited
            self.retired_templates.remove(template)
            assert self._loop is not None
            task = self._loop.create_task(template.stop())
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    # -- helpers --------------------------------------------------------------------------

    def _keep(self, task: asyncio.Future[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("supervisor task failed", exc_info=task.exception())


def _request_line(facts: object) -> str:
    """ "METHOD /target" of a request, for log lines."""
    line = getattr(facts, "request_line", None)
    return escape(line()) if callable(line) else "(unknown request)"


#: In-flight requests named in a memory recycle's log line; more are counted.
_CULPRIT_REQUESTS = 5


def memory_culprits(worker: WorkerHandle) -> str:
    """For the log line of a memory recycle or kill: the requests in flight on `worker`
    and the request paths that grew it most (KiB, requests), escaped."""
    running = worker.inflight_requests()
    shown = ", ".join(escape(r) for r in running[:_CULPRIT_REQUESTS])
    if len(running) > _CULPRIT_REQUESTS:
        shown += f" and {len(running) - _CULPRIT_REQUESTS} more"
    top = worker.growth.top(3)
    grew = ", ".join(
        f"{escape(e.path)} +{e.grown_kib} KiB in {e.requests} request(s)"
        for e in top
        if e.grown_kib
    )
    return f"in flight: {shown or 'none'}; grew it most: {grew or 'no request measured'}"


def _reap_adopted(pid: int) -> tuple[int, int] | None:
    """Reap a worker that became this process's child, with its exit status.

    A worker's parent is the template; if the template died first, the kernel
    hands the worker to the nearest subreaper or to PID 1, which is this process
    when wsgipool runs as a container's PID 1.  Nobody else would wait() for it,
    so it would stay a zombie.  Only the pid of a worker known to be gone is
    waited for, never -1: the template's own status belongs to multiprocess.
    """
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None  # not ours: the template reaps it (the normal case)
    if reaped == 0:
        return None  # ours but still exiting: the overdue timer tries again
    return children.exit_status(status)
