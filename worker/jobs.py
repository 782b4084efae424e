"""Job records: what the API reports about a job (kind, state, progress, result, error, times).

They live next to the task results — in Redis (Redis mode) or in the embedded SQLite results database — so
they survive an API restart and are shared by the API and every worker. Records expire after
``GENROBUST_RESULT_EXPIRES`` seconds. A job's state only moves forward: once succeeded, failed or cancelled
it is never changed again (a cancelled job whose task still finishes stays cancelled).
"""

from __future__ import annotations

import json
import time
import uuid
from abc import ABC, abstractmethod
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, Field

from worker.settings import ServiceSettings as Settings, get_service_settings as get_settings

State = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINAL = ("succeeded", "failed", "cancelled")
PREFIX = "genrobust:job:"
INDEX = "genrobust:jobs"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JobRecord(BaseModel):
    id: str = Field(description="Job id (32 hex digits).")
    kind: Literal["train", "sweep", "study", "attack"] = Field(description="What the job does.")
    state: State = Field(description="queued, running, succeeded, failed or cancelled.")
    progress: float = Field(ge=0, le=1, description="Fraction done: epochs for training, chunks for sweeps.")
    created_at: str = Field(description="ISO 8601 UTC.")
    updated_at: str = Field(description="ISO 8601 UTC.")
    request: dict[str, Any] = Field(description="The validated request that created the job.")
    result: Any | None = Field(None, description="The result once succeeded.")
    error: str | None = Field(None, description="What went wrong, once failed.")


def _record(row: dict[str, Any]) -> JobRecord:
    done, total = float(row.get("done") or 0), float(row.get("total") or 0)
    progress = 1.0 if row["state"] == "succeeded" else (min(done / total, 1.0) if total > 0 else 0.0)
    load = lambda v: json.loads(v) if v not in (None, "") else None  # noqa: E731
    return JobRecord(id=row["id"], kind=row["kind"], state=row["state"], progress=progress,
                     created_at=_iso(float(row["created_at"])), updated_at=_iso(float(row["updated_at"])),
                     request=load(row.get("request")) or {}, result=load(row.get("result")),
                     error=row.get("error") or None)


class JobStore(ABC):
    """Writes take plain values; ``result`` is JSON-encoded here, once."""

    def __init__(self, expires: int):
        self.expires = expires

    def create(self, kind: str, request: dict[str, Any], total: float = 1.0) -> JobRecord:
        now = time.time()
        row = {"id": uuid.uuid4().hex, "kind": kind, "state": "queued", "created_at": now, "updated_at": now,
               "request": json.dumps(request), "result": "", "error": "", "task_ids": "[]", "done": 0.0,
               "total": float(total)}
        self._insert(row)
        return _record(row)

    def get(self, job_id: str) -> JobRecord | None:
        row = self._row(job_id)
        return _record(row) if row else None

    def task_ids(self, job_id: str) -> list[str]:
        row = self._row(job_id)
        return json.loads(row.get("task_ids") or "[]") if row else []

    def update(self, job_id: str, *, state: str | None = None, result: Any = None, error: str | None = None,
               task_ids: list[str] | None = None, done: float | None = None, total: float | None = None,
               force: bool = False) -> bool:
        """Set the given fields unless the job is final (``force``: even then). False if not changed."""
        fields: dict[str, Any] = {"updated_at": time.time()}
        for key, value in (("state", state), ("error", error), ("done", done), ("total", total)):
            if value is not None:
                fields[key] = value
        if result is not None:
            fields["result"] = json.dumps(result)
        if task_ids is not None:
            fields["task_ids"] = json.dumps(task_ids)
        return self._update(job_id, fields, force)

    def start(self, job_id: str) -> bool:
        """Mark running; False when the job is cancelled (or gone), so the task must not run."""
        row = self._row(job_id)
        if row is None or row["state"] in FINAL:
            return False
        return self._update(job_id, {"state": "running", "updated_at": time.time()}, False)

    def cancelled(self, job_id: str) -> bool:
        row = self._row(job_id)
        return row is None or row["state"] == "cancelled"

    @abstractmethod
    def _insert(self, row: dict[str, Any]) -> None: ...

    @abstractmethod
    def _row(self, job_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def _update(self, job_id: str, fields: dict[str, Any], force: bool) -> bool: ...

    @abstractmethod
    def advance(self, job_id: str, amount: float = 1.0) -> None:
        """done += amount (atomic: chunks finish on many workers at once)."""

    @abstractmethod
    def recent(self, limit: int) -> list[JobRecord]: ...

    @abstractmethod
    def ping(self) -> None:
        """Raise if the storage is unreachable."""


# Both scripts refuse to touch a final record (unless forced), atomically.
_UPDATE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local s = redis.call('HGET', KEYS[1], 'state')
if ARGV[2] ~= '1' and (s == 'succeeded' or s == 'failed' or s == 'cancelled') then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""
_ADVANCE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local s = redis.call('HGET', KEYS[1], 'state')
if s == 'succeeded' or s == 'failed' or s == 'cancelled' then return 0 end
redis.call('HINCRBYFLOAT', KEYS[1], 'done', ARGV[1])
redis.call('HSET', KEYS[1], 'updated_at', ARGV[2])
return 1
"""


class RedisJobStore(JobStore):
    def __init__(self, url: str, expires: int, retry_s: float = 0.0):
        """``retry_s``: how long a command is retried while Redis is unreachable (0: fail at once)."""
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        super().__init__(expires)
        retry = {}
        if retry_s > 0:  # backoff capped at 1 s, so about retry_s seconds in all
            retry = {"retry": Retry(ExponentialBackoff(cap=1.0, base=0.1), retries=max(1, round(retry_s))),
                     "retry_on_error": [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]}
        self.r = redis.Redis.from_url(url, decode_responses=True, socket_timeout=10, socket_connect_timeout=3,
                                      **retry)
        self._update_script = self.r.register_script(_UPDATE_LUA)
        self._advance_script = self.r.register_script(_ADVANCE_LUA)

    def _insert(self, row):
        now = row["created_at"]
        with self.r.pipeline() as p:
            p.hset(PREFIX + row["id"], mapping=row)
            p.expire(PREFIX + row["id"], self.expires)
            p.zadd(INDEX, {row["id"]: now})
            p.zremrangebyscore(INDEX, "-inf", now - self.expires)
            p.execute()

    def _row(self, job_id):
        row = self.r.hgetall(PREFIX + job_id)
        return row or None

    def _update(self, job_id, fields, force):
        args = [self.expires, "1" if force else "0"] + [v for kv in fields.items() for v in kv]
        return bool(self._update_script(keys=[PREFIX + job_id], args=args))

    def advance(self, job_id, amount=1.0):
        self._advance_script(keys=[PREFIX + job_id], args=[amount, time.time()])

    def recent(self, limit):
        ids = self.r.zrevrange(INDEX, 0, limit - 1)
        with self.r.pipeline() as p:
            for i in ids:
                p.hgetall(PREFIX + i)
            rows = p.execute()
        return [_record(r) for r in rows if r]

    def ping(self):
        self.r.ping()


class SqlJobStore(JobStore):
    """A table in the embedded SQLite results database (any SQLAlchemy URL works)."""

    def __init__(self, url: str, expires: int):
        import sqlalchemy as sa

        super().__init__(expires)
        self.sa = sa
        # SQLite serialises writers; wait for a lock instead of failing at once
        self.engine = sa.create_engine(url, connect_args={"timeout": 30} if url.startswith("sqlite") else {})
        meta = sa.MetaData()
        self.t = sa.Table(
            "genrobust_jobs", meta,
            sa.Column("id", sa.String(32), primary_key=True), sa.Column("kind", sa.String(16)),
            sa.Column("state", sa.String(16)), sa.Column("created_at", sa.Float, index=True),
            sa.Column("updated_at", sa.Float), sa.Column("request", sa.Text), sa.Column("result", sa.Text),
            sa.Column("error", sa.Text), sa.Column("task_ids", sa.Text), sa.Column("done", sa.Float),
            sa.Column("total", sa.Float))
        meta.create_all(self.engine)

    def _insert(self, row):
        with self.engine.begin() as c:
            c.execute(self.t.delete().where(self.t.c.updated_at < row["created_at"] - self.expires))
            c.execute(self.t.insert().values(**row))

    def _row(self, job_id):
        with self.engine.connect() as c:
            row = c.execute(self.t.select().where(self.t.c.id == job_id)).mappings().first()
        return dict(row) if row else None

    def _update(self, job_id, fields, force):
        q = self.t.update().where(self.t.c.id == job_id)
        if not force:
            q = q.where(self.t.c.state.not_in(FINAL))
        with self.engine.begin() as c:
            return c.execute(q.values(**fields)).rowcount > 0

    def advance(self, job_id, amount=1.0):
        q = (self.t.update().where(self.t.c.id == job_id, self.t.c.state.not_in(FINAL))
             .values(done=self.t.c.done + amount, updated_at=time.time()))
        with self.engine.begin() as c:
            c.execute(q)

    def running(self) -> list[JobRecord]:
        """Jobs whose state is running (used at start-up of the embedded service, see worker.embedded)."""
        with self.engine.connect() as c:
            rows = c.execute(self.t.select().where(self.t.c.state == "running")).mappings().all()
        return [_record(dict(r)) for r in rows]

    def recent(self, limit):
        with self.engine.connect() as c:
            rows = c.execute(self.t.select().where(self.t.c.updated_at >= time.time() - self.expires)
                             .order_by(self.t.c.created_at.desc()).limit(limit)).mappings().all()
        return [_record(dict(r)) for r in rows]

    def ping(self):
        with self.engine.connect() as c:
            c.execute(self.sa.text("SELECT 1"))


# Inside a task, a Redis outage is waited out (a finished chunk must still record its progress and result,
# or its job would never finish); the API instead answers 503 at once (see app.errors).
TASK_RETRY_S = 60.0


@lru_cache
def _store(redis_url: str | None, sql_url: str, expires: int, retry_s: float = 0.0) -> JobStore:
    return RedisJobStore(redis_url, expires, retry_s) if redis_url else SqlJobStore(sql_url, expires)


def _in_task() -> bool:
    from celery import current_task

    return bool(current_task) and current_task.request.id is not None


def job_store(settings: Settings | None = None) -> JobStore:
    """The job store of the configured mode (one per process, configuration and role)."""
    from worker.celery import embedded_urls

    s = settings or get_settings()
    sql_url = "" if s.redis_url else embedded_urls(s)[1].removeprefix("db+")
    return _store(s.redis_url, sql_url, s.result_expires, TASK_RETRY_S if s.redis_url and _in_task() else 0.0)
