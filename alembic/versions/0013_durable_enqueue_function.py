"""durable_enqueue(): record an execution from SQL, for producers in any language (PostgreSQL)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 14:30:00.000000

The function is the versioned SQL contract of an enqueue (v1). It writes exactly the rows
``durable.Client.enqueue`` writes (the workflow, its task) and sends the same NOTIFY, in the
caller's transaction, with the same idempotency: an existing id or idempotency key creates
nothing and the existing execution's id is returned. Arguments are stored as JSON (durable's
default serializer). PostgreSQL only: other databases get no function.
"""
from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SIGNATURE = (
    "durable_enqueue(text, jsonb, text, text, integer, integer, timestamptz, text, jsonb)"
)

CREATE = r"""
CREATE OR REPLACE FUNCTION durable_enqueue(
    name text,
    args jsonb DEFAULT '[]'::jsonb,
    idempotency_key text DEFAULT NULL,
    queue text DEFAULT 'default',
    priority integer DEFAULT 0,
    max_attempts integer DEFAULT 3,
    run_after timestamptz DEFAULT NULL,
    workflow_id text DEFAULT NULL,
    kwargs jsonb DEFAULT '{}'::jsonb
) RETURNS text
LANGUAGE plpgsql
VOLATILE
AS $fn$
DECLARE
    v_id text := coalesce(durable_enqueue.workflow_id, gen_random_uuid()::text);
    v_now timestamptz := clock_timestamp();
    v_found record;
BEGIN
    IF durable_enqueue.name IS NULL OR length(durable_enqueue.name) = 0
       OR length(durable_enqueue.name) > 255 THEN
        RAISE EXCEPTION 'durable_enqueue: name must be a non-empty text of at most 255 characters'
            USING ERRCODE = '22023';
    END IF;
    IF length(v_id) = 0 OR length(v_id) > 255 THEN
        RAISE EXCEPTION 'durable_enqueue: workflow_id must be a non-empty text of at most 255 characters'
            USING ERRCODE = '22023';
    END IF;
    IF durable_enqueue.idempotency_key IS NOT NULL AND (length(durable_enqueue.idempotency_key) = 0
       OR length(durable_enqueue.idempotency_key) > 255) THEN
        RAISE EXCEPTION 'durable_enqueue: idempotency_key must be NULL or a non-empty text of at most 255 characters'
            USING ERRCODE = '22023';
    END IF;
    IF durable_enqueue.queue IS NULL OR length(durable_enqueue.queue) = 0
       OR length(durable_enqueue.queue) > 255 THEN
        RAISE EXCEPTION 'durable_enqueue: queue must be a non-empty text of at most 255 characters'
            USING ERRCODE = '22023';
    END IF;
    IF jsonb_typeof(coalesce(durable_enqueue.args, '[]'::jsonb)) <> 'array' THEN
        RAISE EXCEPTION 'durable_enqueue: args must be a JSON array (the positional arguments), got %',
            jsonb_typeof(durable_enqueue.args) USING ERRCODE = '22023';
    END IF;
    IF jsonb_typeof(coalesce(durable_enqueue.kwargs, '{}'::jsonb)) <> 'object' THEN
        RAISE EXCEPTION 'durable_enqueue: kwargs must be a JSON object (the keyword arguments), got %',
            jsonb_typeof(durable_enqueue.kwargs) USING ERRCODE = '22023';
    END IF;
    IF durable_enqueue.priority IS NULL THEN
        RAISE EXCEPTION 'durable_enqueue: priority must not be NULL' USING ERRCODE = '22023';
    END IF;
    IF durable_enqueue.max_attempts IS NULL OR durable_enqueue.max_attempts < 1 THEN
        RAISE EXCEPTION 'durable_enqueue: max_attempts must be at least 1' USING ERRCODE = '22023';
    END IF;

    INSERT INTO durable_workflows (
        id, name, status, input, queue, priority, idempotency_key, attempts, max_attempts,
        interruptions, version, created_at, updated_at, continuations
    ) VALUES (
        v_id, durable_enqueue.name, 'pending',
        jsonb_build_object(
            'args', coalesce(durable_enqueue.args, '[]'::jsonb),
            'kwargs', coalesce(durable_enqueue.kwargs, '{}'::jsonb)
        )::text,
        durable_enqueue.queue, durable_enqueue.priority, durable_enqueue.idempotency_key, 0,
        durable_enqueue.max_attempts, 0, 1, v_now, v_now, 0
    ) ON CONFLICT DO NOTHING;
    IF FOUND THEN
        INSERT INTO durable_tasks (
            instance_id, task_id, name, queue, priority, run_after, attempts, created_at
        ) VALUES (
            v_id, 'workflow', durable_enqueue.name, durable_enqueue.queue,
            durable_enqueue.priority, coalesce(durable_enqueue.run_after, now()), 0, v_now
        );
        PERFORM pg_notify('durable_work', '');
        RETURN v_id;
    END IF;
    -- it exists: the same id, else the holder of the key (as enqueue finds it)
    SELECT w.id, w.name INTO v_found FROM durable_workflows AS w
     WHERE w.id = v_id
        OR (durable_enqueue.idempotency_key IS NOT NULL
            AND w.idempotency_key = durable_enqueue.idempotency_key)
     ORDER BY (w.id = v_id) DESC
     LIMIT 1;
    IF v_found.id IS NULL THEN
        RAISE EXCEPTION 'durable_enqueue: workflow % clashed with one deleted meanwhile: call again', v_id
            USING ERRCODE = '40001';
    END IF;
    IF v_found.name <> durable_enqueue.name THEN
        RAISE EXCEPTION 'durable_enqueue: workflow id or idempotency key of % belongs to workflow % (id %), not %',
            v_id, v_found.name, v_found.id, durable_enqueue.name USING ERRCODE = '22023';
    END IF;
    RETURN v_found.id;
END
$fn$;
COMMENT ON FUNCTION durable_enqueue(text, jsonb, text, text, integer, integer, timestamptz, text, jsonb) IS
    'durable enqueue contract v1: record an execution of workflow NAME with ARGS (a JSON array) and '
    'KWARGS (a JSON object) for durable workers; returns its id. Idempotent by workflow_id and '
    'idempotency_key. Runs in the caller''s transaction; workers are notified on commit.';
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite (and other databases) have no stored functions: nothing to create
    op.execute(CREATE)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"DROP FUNCTION IF EXISTS {SIGNATURE}")
