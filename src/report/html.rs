//! A self-contained HTML page for one result (no CDN, no scripts): a speaker timeline drawn over
//! the waveform, the metrics, the analysis (or why there is none) and the role-labelled
//! transcript.

use std::fmt::Write;

use crate::conversation::Speaker;
use crate::pipeline::{AnalysisStatus, JobResult};

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 120.0;

/// Renders the report.
pub fn render(result: &JobResult) -> String {
    let mut page = String::with_capacity(64 * 1024);
    let title = format!("Session {}", result.session_id);
    let _ = write!(
        page,
        "<!doctype html>\n<html lang=\"ja\"><head><meta charset=\"utf-8\"><title>{}</title>\n<style>{}</style></head><body>\n",
        esc(&title),
        STYLE
    );
    let _ = write!(
        page,
        "<h1>{}</h1>\n<p class=meta>{} · {} / {} · {} Hz · {} ch · transcriber {} · diarizer {}</p>\n",
        esc(&title),
        clock(result.duration_s),
        esc(&result.source.container),
        esc(&result.source.codec),
        result.source.sample_rate,
        result.source.channels,
        esc(&result.versions.transcriber),
        esc(&result.versions.diarizer),
    );
    timeline(&mut page, result);
    metrics(&mut page, result);
    analysis(&mut page, result);
    transcript(&mut page, result);
    page.push_str("</body></html>\n");
    page
}

fn timeline(page: &mut String, r: &JobResult) {
    let dur = r.duration_s.max(1e-6);
    let x = |t: f64| t / dur * WIDTH;
    let _ = write!(
        page,
        "<h2>Timeline</h2>\n<svg viewBox=\"0 0 {WIDTH} {}\" role=img aria-label=\"speaker timeline\">\n",
        HEIGHT + 20.0
    );
    for turn in &r.turns {
        let _ = writeln!(
            page,
            "<rect class=\"{}\" x=\"{:.2}\" y=\"0\" width=\"{:.2}\" height=\"{HEIGHT}\"><title>{} {}–{}</title></rect>",
            class(turn.speaker),
            x(turn.start_s),
            (x(turn.end_s) - x(turn.start_s)).max(0.5),
            role(turn.speaker),
            clock(turn.start_s),
            clock(turn.end_s)
        );
    }
    if !r.waveform.is_empty() {
        let n = r.waveform.len() as f64;
        let mid = HEIGHT / 2.0;
        let mut points = String::new();
        for (i, p) in r.waveform.iter().enumerate() {
            let _ = write!(
                points,
                "{:.1},{:.1} ",
                i as f64 / n * WIDTH,
                mid - f64::from(*p) * mid
            );
        }
        for (i, p) in r.waveform.iter().enumerate().rev() {
            let _ = write!(
                points,
                "{:.1},{:.1} ",
                i as f64 / n * WIDTH,
                mid + f64::from(*p) * mid
            );
        }
        let _ = writeln!(
            page,
            "<polygon class=wave points=\"{}\"/>",
            points.trim_end()
        );
    }
    let step = tick_step(dur);
    let mut t = 0.0;
    while t <= dur {
        let _ = writeln!(
            page,
            "<text x=\"{:.1}\" y=\"{}\">{}</text>",
            x(t),
            HEIGHT + 15.0,
            clock(t)
        );
        t += step;
    }
    page.push_str("</svg>\n<p class=legend><span class=coach>■</span> コーチ <span class=client>■</span> クライアント <span class=unknown>■</span> 不明</p>\n");
}

fn metrics(page: &mut String, r: &JobResult) {
    let m = &r.metrics;
    page.push_str(
        "<h2>Metrics</h2>\n<table><tr><th></th><th>コーチ</th><th>クライアント</th></tr>\n",
    );
    let rows: [(&str, SpeakerCell); 5] = [
        ("speaking time", |s| clock(s.speaking_s)),
        ("share of talk", |s| {
            format!("{:.0} %", s.speaking_ratio * 100.0)
        }),
        ("turns", |s| s.turns.to_string()),
        ("questions", |s| s.questions.to_string()),
        ("interruptions", |s| s.interruptions.to_string()),
    ];
    for (name, f) in rows {
        let _ = writeln!(
            page,
            "<tr><th>{name}</th><td>{}</td><td>{}</td></tr>",
            esc(&f(&m.speakers.coach)),
            esc(&f(&m.speakers.client))
        );
    }
    let _ = writeln!(
        page,
        "</table>\n<p>Gini of speaking time {:.2} · {} turns, mean {:.1} s · {} overlaps ({:.1} s) · {} silences ≥ {} s ({:.0} s) · speakers found: {}</p>",
        m.gini_speaking_time,
        m.turns.count,
        m.turns.mean_s,
        m.overlaps.count,
        m.overlaps.total_s,
        m.silences.count,
        m.silences.min_s,
        m.silences.total_s,
        r.speakers_found
    );
}

/// How one row of the metrics table shows a speaker's numbers.
type SpeakerCell = fn(&crate::analysis::metrics::SpeakerMetrics) -> String;

fn analysis(page: &mut String, r: &JobResult) {
    page.push_str("<h2>Analysis</h2>\n");
    match (&r.analysis_status, &r.analysis, &r.analysis_error) {
        (AnalysisStatus::Ok, Some(a), _) => {
            let _ = writeln!(
                page,
                "<p class=diagnosis>{} <b>{}</b> — {}</p>\n<table>",
                esc(&a.diagnosis.icon),
                esc(&a.diagnosis.name),
                esc(&a.diagnosis.description)
            );
            for (name, skill) in a.skills.iter() {
                let quote = skill
                    .examples
                    .first()
                    .map(|e| e.quote.as_str())
                    .unwrap_or("");
                let _ = writeln!(
                    page,
                    "<tr><th>{name}</th><td>{} / 5</td><td>{}<br><q>{}</q></td></tr>",
                    skill.score,
                    esc(&skill.comment),
                    esc(quote)
                );
            }
            page.push_str("</table>\n<ol>");
            for p in &a.prescriptions {
                let _ = write!(page, "<li><b>{}</b> {}</li>", esc(&p.title), esc(&p.detail));
            }
            page.push_str("</ol>\n");
        }
        (AnalysisStatus::Failed, _, Some(e)) => {
            let _ = writeln!(
                page,
                "<p class=error>The analysis failed: {} ({})</p>",
                esc(&e.message),
                e.code
            );
        }
        _ => page.push_str("<p>The analysis was skipped (no analysis model configured).</p>\n"),
    }
}

fn transcript(page: &mut String, r: &JobResult) {
    page.push_str("<h2>Transcript</h2>\n<table class=transcript>\n");
    for turn in &r.turns {
        let _ = writeln!(
            page,
            "<tr class=\"{}\"><td>{}</td><th>{}</th><td>{}</td></tr>",
            class(turn.speaker),
            clock(turn.start_s),
            role(turn.speaker),
            esc(&turn.text)
        );
    }
    page.push_str("</table>\n");
}

fn class(s: Speaker) -> &'static str {
    match s {
        Speaker::Coach => "coach",
        Speaker::Client => "client",
        Speaker::Unknown => "unknown",
    }
}

fn role(s: Speaker) -> &'static str {
    match s {
        Speaker::Coach => "コーチ",
        Speaker::Client => "クライアント",
        Speaker::Unknown => "不明",
    }
}

/// `m:ss`, or `h:mm:ss` past an hour.
fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// A round tick spacing giving 5–12 ticks.
fn tick_step(duration: f64) -> f64 {
    [
        1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0,
    ]
    .into_iter()
    .find(|s| duration / s <= 12.0)
    .unwrap_or(7200.0)
}

/// HTML-escapes text.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:1040px;margin:2em auto;color:#222}\
svg{width:100%;height:auto;background:#fafafa;border:1px solid #ddd}svg text{font-size:10px;fill:#555}\
rect.coach,tr.coach th{fill:#cfe3ff;color:#1d5fbf}rect.client,tr.client th{fill:#ffe0c2;color:#b35900}\
rect.unknown,tr.unknown th{fill:#e6e6e6;color:#666}.wave{fill:#333;opacity:.55}\
span.coach{color:#6aa6ff}span.client{color:#ffab5c}span.unknown{color:#bbb}\
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.25em .6em;text-align:left;vertical-align:top;border-bottom:1px solid #eee}\
.transcript td:first-child{color:#888;font-variant-numeric:tabular-nums}.error{color:#b00}.meta{color:#666}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_and_escape() {
        assert_eq!(clock(65.4), "1:05");
        assert_eq!(clock(3725.0), "1:02:05");
        assert_eq!(
            esc("<b>\"a\" & 'b'</b>"),
            "&lt;b&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/b&gt;"
        );
        assert_eq!(tick_step(60.0), 5.0);
        assert_eq!(tick_step(3600.0), 300.0);
    }
}
