-- What each analysis cost and dropped (issue 15, item 13): the result JSON's `analysis_report`
-- ({requests, dropped_examples, usage: {prompt_tokens, output_tokens, thinking_tokens}}), null
-- unless the analysis succeeded. Readable by the row's owner like the rest of the row (the
-- existing RLS policy covers every column). Safe to run twice.
alter table public.audio_analysis_results
    add column if not exists analysis_report jsonb;
