//! Any bytes → `Job::parse`: never panics; a job that parses survives the wire (serialise, parse
//! again, equal) and signature checks with a fixed secret never panic.

#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use audio_worker::job::{self, Job};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzz-secret";

fuzz_target!(|data: &[u8]| {
    let Ok(job) = Job::parse(data) else {
        return;
    };
    let again = Job::parse(&job.to_json()).expect("a parsed job serialises to a valid job");
    assert_eq!(again, job, "the wire round trip changes the job");
    let _ = job.canonical_string();
    let _ = job.enqueued_time();
    let _ = job.base_language();
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let day = Duration::from_secs(86_400);
    let _ = job::verify(&job, SECRET, now, day);
    let _ = job.check_signature(Some(SECRET), SystemTime::now(), day);
    let _ = job.check_signature(None, now, day);
    // A job we sign ourselves verifies, unless its date is out of range.
    let mut signed = job.clone();
    job::sign(&mut signed, SECRET);
    let Some(enqueued) = signed.enqueued_time() else {
        panic!("a valid job has a valid enqueued_at");
    };
    let at = enqueued + Duration::from_secs(1);
    job::verify(&signed, SECRET, at, day).expect("our own signature verifies");
    let reparsed = Job::parse(&signed.to_json()).expect("a signed job parses");
    job::verify(&reparsed, SECRET, at, day).expect("our signature survives the wire");
});
