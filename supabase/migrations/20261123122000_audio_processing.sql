-- audio-worker: job progress and results (../shared/ARCHITECTURE.md, "Contracts").
--
-- audio_processing_jobs   one row per recorded session: status, stage, percent and the Japanese
--                         message the browser shows live (supabase_realtime), the error code.
-- audio_analysis_results  one row per session: the worker's result JSON (schemas/result.schema.json)
--                         column by column, plus user_id.
--
-- The worker writes with the service role (bypasses RLS). A signed-in user may only read their own
-- rows; anon and authenticated can never write. Safe to run twice.

-- ---------------------------------------------------------------------------------------------
-- Jobs
-- ---------------------------------------------------------------------------------------------
create table if not exists public.audio_processing_jobs (
    session_id    uuid primary key,
    user_id       uuid not null,
    job_id        text,
    status        text not null default 'queued'
        constraint audio_processing_jobs_status_check
        check (status in ('queued', 'processing', 'completed', 'error')),
    stage         text not null default 'queued'
        constraint audio_processing_jobs_stage_check
        check (stage in ('queued', 'downloading', 'preprocessing', 'transcribing', 'diarization',
                         'analyzing', 'saving', 'completed', 'error')),
    progress      smallint not null default 0
        constraint audio_processing_jobs_progress_check
        check (progress between 0 and 100),
    message       text,
    error_code    text,
    attempts      integer not null default 0
        constraint audio_processing_jobs_attempts_check
        check (attempts >= 0),
    audio_bucket  text,
    audio_key     text,
    created_at    timestamptz not null default now(),
    updated_at    timestamptz not null default now(),
    started_at    timestamptz,
    completed_at  timestamptz,
    -- The status is a function of the stage; a row can never say "completed" at "transcribing".
    constraint audio_processing_jobs_status_matches_stage check (
        case stage
            when 'queued' then status = 'queued'
            when 'completed' then status = 'completed'
            when 'error' then status = 'error'
            else status = 'processing'
        end
    ),
    -- A failure always names its code (AUDIO_NO_SPEECH, SUPABASE_WRITE_FAILED, ...).
    constraint audio_processing_jobs_error_has_code check (status <> 'error' or error_code is not null)
);

create index if not exists audio_processing_jobs_user_id_idx
    on public.audio_processing_jobs (user_id, created_at desc);

comment on table public.audio_processing_jobs is
    'audio-worker job progress, one row per session (written by the worker with the service role).';

-- updated_at on every write; started_at when processing begins; completed_at when it ends.
create or replace function public.audio_processing_jobs_touch()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    new.updated_at := now();
    if tg_op = 'INSERT' then
        if new.status = 'processing' and new.started_at is null then
            new.started_at := now();
        end if;
        if new.status in ('completed', 'error') and new.completed_at is null then
            new.completed_at := now();
        end if;
        return new;
    end if;
    if new.status = 'processing' and old.status is distinct from 'processing' then
        -- A new attempt (or a job put back in the queue) starts afresh.
        new.started_at := now();
        new.completed_at := null;
    elsif new.status = 'queued' then
        new.completed_at := null;
    elsif new.status in ('completed', 'error') and old.status is distinct from new.status then
        new.completed_at := now();
    end if;
    return new;
end;
$$;

drop trigger if exists audio_processing_jobs_touch on public.audio_processing_jobs;
create trigger audio_processing_jobs_touch
    before insert or update on public.audio_processing_jobs
    for each row execute function public.audio_processing_jobs_touch();

-- ---------------------------------------------------------------------------------------------
-- Results
-- ---------------------------------------------------------------------------------------------
create table if not exists public.audio_analysis_results (
    session_id      uuid primary key
        references public.audio_processing_jobs (session_id) on delete cascade,
    user_id         uuid not null,
    language        text,
    duration_s      double precision
        constraint audio_analysis_results_duration_check check (duration_s >= 0),
    source          jsonb,
    speech          jsonb,
    waveform        jsonb,
    turns           jsonb not null default '[]'::jsonb,
    transcript      jsonb,
    speakers_found  smallint,
    metrics         jsonb,
    analysis        jsonb,
    analysis_status text not null
        constraint audio_analysis_results_analysis_status_check
        check (analysis_status in ('ok', 'skipped', 'failed')),
    analysis_error  jsonb,
    versions        jsonb,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),
    constraint audio_analysis_results_turns_is_array check (jsonb_typeof(turns) = 'array'),
    -- Never a made-up analysis: an analysis object exists exactly when the analysis ran and passed.
    constraint audio_analysis_results_analysis_only_when_ok check (
        (analysis_status = 'ok') = (analysis is not null and jsonb_typeof(analysis) = 'object')
    ),
    -- A failed analysis says why.
    constraint audio_analysis_results_failure_has_error check (
        analysis_status <> 'failed' or analysis_error is not null
    )
);

create index if not exists audio_analysis_results_user_id_idx
    on public.audio_analysis_results (user_id);

comment on table public.audio_analysis_results is
    'audio-worker results (schemas/result.schema.json), one row per session, upserted by session_id.';

create or replace function public.audio_analysis_results_touch()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    new.updated_at := now();
    if tg_op = 'UPDATE' then
        new.created_at := old.created_at;
    end if;
    return new;
end;
$$;

drop trigger if exists audio_analysis_results_touch on public.audio_analysis_results;
create trigger audio_analysis_results_touch
    before insert or update on public.audio_analysis_results
    for each row execute function public.audio_analysis_results_touch();

-- ---------------------------------------------------------------------------------------------
-- Access: owners read, only the service role writes
-- ---------------------------------------------------------------------------------------------
alter table public.audio_processing_jobs enable row level security;
alter table public.audio_analysis_results enable row level security;

-- Supabase grants everything on new public tables to anon and authenticated by default; RLS alone
-- would already refuse writes without a policy, the revokes make it explicit.
revoke all on public.audio_processing_jobs, public.audio_analysis_results from anon, authenticated;
grant select on public.audio_processing_jobs, public.audio_analysis_results to authenticated;
grant all on public.audio_processing_jobs, public.audio_analysis_results to service_role;

drop policy if exists audio_processing_jobs_owner_select on public.audio_processing_jobs;
create policy audio_processing_jobs_owner_select on public.audio_processing_jobs
    for select to authenticated
    using ((select auth.uid()) = user_id);

drop policy if exists audio_analysis_results_owner_select on public.audio_analysis_results;
create policy audio_analysis_results_owner_select on public.audio_analysis_results
    for select to authenticated
    using ((select auth.uid()) = user_id);

-- ---------------------------------------------------------------------------------------------
-- Realtime: progress and results reach the browser live (RLS applies to subscribers too)
-- ---------------------------------------------------------------------------------------------
do $$
declare
    t text;
begin
    if not exists (select 1 from pg_publication where pubname = 'supabase_realtime') then
        raise notice 'publication supabase_realtime does not exist; skipping realtime';
        return;
    end if;
    foreach t in array array['audio_processing_jobs', 'audio_analysis_results'] loop
        if not exists (
            select 1 from pg_publication_tables
            where pubname = 'supabase_realtime' and schemaname = 'public' and tablename = t
        ) then
            execute format('alter publication supabase_realtime add table public.%I', t);
        end if;
    end loop;
end;
$$;
