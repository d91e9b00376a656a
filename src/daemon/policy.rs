//! What happens to a delivery, decided from facts alone: no Redis, no Supabase, no clock. The
//! worker ([`super::worker`]) gathers the facts, asks here, and carries the action out, so every
//! row of its table ("What happens to a delivery") is a unit test below, and the daemon and chaos
//! tests prove the same table end to end.

use crate::error::ErrorCode;

/// What the worker knows about this delivery when it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// This is attempt N of the job, counting every delivery.
    pub attempt: u32,
    /// JOB_MAX_ATTEMPTS.
    pub max_attempts: u32,
    /// Another worker reclaimed the entry (the heartbeat or a confirmation said so).
    pub claim_lost: bool,
}

impl Delivery {
    /// A retryable failure now is final.
    pub fn last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }

    /// Delivered more often than the attempts allow: the workers running it died each time.
    pub fn exhausted(&self) -> bool {
        self.attempt > self.max_attempts
    }
}

/// What just happened to the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The job is not authenticated (bad or expired signature): nothing in it is trusted.
    BadSignature,
    /// Its session's row says completed already (a redelivery after the result was stored).
    AlreadyCompleted,
    /// Claimed and about to run.
    Claimed,
    /// A step failed with this code (row lookup, download, pipeline, a write).
    Failed(ErrorCode),
    /// The pipeline finished; `Some(code)` when its analysis failed.
    Finished { analysis_failed: Option<ErrorCode> },
    /// Shutdown's grace ran out before the job finished.
    Interrupted,
}

/// What the worker does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing more: another worker holds the entry.
    Abandon,
    /// Acknowledge the entry without running it (the duplicate of a completed session).
    AckDuplicate,
    /// Go on: run the job.
    Run,
    /// Leave the entry pending for the next attempt; the row goes back to queued.
    RetryLater,
    /// Mark the row failed (only when the job is trusted) and dead-letter the entry.
    Fail { mark_row: bool },
    /// Store the result; the row says completed; acknowledge.
    StoreAndAck,
    /// Store the partial result; the row says error; dead-letter (a failed analysis is final).
    StoreAndDeadLetter,
    /// Put the row back to queued and the job back on the stream as a new entry.
    Requeue,
}

/// The delivery table (src/daemon/worker.rs, "What happens to a delivery").
pub fn next_action(event: Event, delivery: Delivery) -> Action {
    // Only the worker holding the claim writes anything.
    if delivery.claim_lost {
        return Action::Abandon;
    }
    let retry_or_fail = |code: ErrorCode| {
        if code.is_retryable() && !delivery.last_attempt() {
            Action::RetryLater
        } else {
            Action::Fail { mark_row: true }
        }
    };
    match event {
        Event::BadSignature => Action::Fail { mark_row: false },
        // Before "exhausted": a worker that died between the completed write and the
        // acknowledgement leaves a finished job, whatever its count.
        Event::AlreadyCompleted => Action::AckDuplicate,
        Event::Claimed if delivery.exhausted() => Action::Fail { mark_row: true },
        Event::Claimed => Action::Run,
        Event::Failed(code) => retry_or_fail(code),
        Event::Finished {
            analysis_failed: None,
        } => Action::StoreAndAck,
        Event::Finished {
            analysis_failed: Some(code),
        } => match retry_or_fail(code) {
            Action::RetryLater => Action::RetryLater,
            _ => Action::StoreAndDeadLetter,
        },
        Event::Interrupted => Action::Requeue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETRYABLE: ErrorCode = ErrorCode::WhisperFailed;
    const PERMANENT: ErrorCode = ErrorCode::AudioNoSpeech;

    fn attempt(n: u32) -> Delivery {
        Delivery {
            attempt: n,
            max_attempts: 3,
            claim_lost: false,
        }
    }

    /// One row per line of the table in worker.rs, in its order.
    #[test]
    fn the_delivery_table_row_by_row() {
        assert!(RETRYABLE.is_retryable() && !PERMANENT.is_retryable());
        let rows: [(&str, Event, Delivery, Action); 14] = [
            (
                "result stored",
                Event::Finished {
                    analysis_failed: None,
                },
                attempt(1),
                Action::StoreAndAck,
            ),
            (
                "a duplicate of a completed session",
                Event::AlreadyCompleted,
                attempt(1),
                Action::AckDuplicate,
            ),
            (
                "a duplicate, even past the attempts",
                Event::AlreadyCompleted,
                attempt(9),
                Action::AckDuplicate,
            ),
            (
                "permanent error",
                Event::Failed(PERMANENT),
                attempt(1),
                Action::Fail { mark_row: true },
            ),
            (
                "invalid or badly signed job: no row written",
                Event::BadSignature,
                attempt(1),
                Action::Fail { mark_row: false },
            ),
            (
                "retryable error, attempts left",
                Event::Failed(RETRYABLE),
                attempt(2),
                Action::RetryLater,
            ),
            (
                "retryable error on the last attempt",
                Event::Failed(RETRYABLE),
                attempt(3),
                Action::Fail { mark_row: true },
            ),
            (
                "delivered more often than the attempts allow",
                Event::Claimed,
                attempt(4),
                Action::Fail { mark_row: true },
            ),
            (
                "within the attempts: run it",
                Event::Claimed,
                attempt(3),
                Action::Run,
            ),
            (
                "the claim was lost",
                Event::Failed(PERMANENT),
                Delivery {
                    claim_lost: true,
                    ..attempt(1)
                },
                Action::Abandon,
            ),
            (
                "shutdown grace ran out",
                Event::Interrupted,
                attempt(1),
                Action::Requeue,
            ),
            (
                "retryable analysis failure, attempts left",
                Event::Finished {
                    analysis_failed: Some(ErrorCode::GeminiFailed),
                },
                attempt(1),
                Action::RetryLater,
            ),
            (
                "retryable analysis failure on the last attempt",
                Event::Finished {
                    analysis_failed: Some(ErrorCode::GeminiFailed),
                },
                attempt(3),
                Action::StoreAndDeadLetter,
            ),
            (
                "permanent analysis failure",
                Event::Finished {
                    analysis_failed: Some(ErrorCode::GeminiInvalidResponse),
                },
                attempt(1),
                Action::StoreAndDeadLetter,
            ),
        ];
        for (row, event, delivery, expected) in rows {
            assert_eq!(next_action(event, delivery), expected, "{row}");
        }
    }

    #[test]
    fn a_lost_claim_writes_nothing_whatever_happened() {
        let lost = Delivery {
            claim_lost: true,
            ..attempt(1)
        };
        for event in [
            Event::BadSignature,
            Event::AlreadyCompleted,
            Event::Claimed,
            Event::Failed(RETRYABLE),
            Event::Finished {
                analysis_failed: None,
            },
            Event::Interrupted,
        ] {
            assert_eq!(next_action(event, lost), Action::Abandon, "{event:?}");
        }
    }
}
