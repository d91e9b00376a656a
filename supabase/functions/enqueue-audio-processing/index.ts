// Supabase Edge Function entry point: the real environment bound to the testable handler.
// Deploy: supabase functions deploy enqueue-audio-processing (see README.md).
import { envFromDeno, handler } from "./handler.ts";

Deno.serve((req) => handler(req, envFromDeno()));
