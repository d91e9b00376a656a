//! A self-contained HTML page for one result (inline CSS and script, no URL but the audio file
//! beside it): a speaker timeline drawn over the waveform with the overlaps, a player that jumps
//! to a clicked line or point of the timeline, the metrics in words, the analysis (or how to get
//! one) and the role-labelled transcript, in the session's language (Japanese or English).
//!
//! Transcript text, file names and model output are untrusted: everything that is not ours goes
//! through [`esc`], and the script reads numbers from `data-` attributes only.

use std::fmt::Write;

use super::Page;
use crate::analysis::metrics::{ConversationMetrics, RateUnit, SpeakerMetrics};
use crate::conversation::{Speaker, Turn};
use crate::pipeline::{AnalysisOutcome, JobResult};

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 120.0;

/// Renders the report.
pub fn render(result: &JobResult, page: &Page) -> String {
    let lang = Lang::of(&result.language);
    let mut html = String::with_capacity(64 * 1024);
    let title = title(result, page, lang);
    let _ = write!(
        html,
        "<!doctype html>\n<html lang=\"{}\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{}</title>\n\
         <style>{STYLE}</style></head><body>\n<h1>{}</h1>\n",
        lang.code(),
        esc(&title),
        esc(&title),
    );
    meta(&mut html, result);
    timeline(&mut html, result, lang);
    if let Some(url) = &page.audio_url {
        player(&mut html, url, lang);
    }
    metrics(&mut html, result, lang);
    analysis(&mut html, result, lang);
    transcript(&mut html, result, lang);
    if page.audio_url.is_some() {
        let _ = writeln!(html, "<script>{SCRIPT}</script>");
    }
    html.push_str("</body></html>\n");
    html
}

/// The languages the page speaks; every other session language gets English labels (its
/// transcript still carries its own `lang`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lang {
    En,
    Ja,
}

impl Lang {
    /// `ja`, `ja-JP`, `JA_jp` → Japanese.
    fn of(language: &str) -> Lang {
        let primary = language.split(['-', '_']).next().unwrap_or("");
        if primary.eq_ignore_ascii_case("ja") {
            Lang::Ja
        } else {
            Lang::En
        }
    }

    fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Ja => "ja",
        }
    }

    fn words(self) -> &'static Words {
        match self {
            Lang::En => &EN,
            Lang::Ja => &JA,
        }
    }

    fn role(self, s: Speaker) -> &'static str {
        let w = self.words();
        match s {
            Speaker::Coach => w.coach,
            Speaker::Client => w.client,
            Speaker::Unknown => w.unknown,
        }
    }
}

/// The page's fixed words in one language; sentences with numbers are functions below.
struct Words {
    coach: &'static str,
    client: &'static str,
    unknown: &'static str,
    report: &'static str,
    timeline: &'static str,
    overlap: &'static str,
    metrics: &'static str,
    analysis: &'static str,
    transcript: &'static str,
    share: &'static str,
    rows: [&'static str; 7],
    words_per_min: &'static str,
    chars_per_min: &'static str,
    player_hint: &'static str,
}

const EN: Words = Words {
    coach: "Coach",
    client: "Client",
    unknown: "Unknown",
    report: "coaching session report",
    timeline: "Timeline",
    overlap: "overlap",
    metrics: "Metrics",
    analysis: "Analysis",
    transcript: "Transcript",
    share: "Share of talk",
    rows: [
        "speaking time",
        "share of talk",
        "turns",
        "mean turn length",
        "speech rate",
        "questions",
        "interruptions",
    ],
    words_per_min: "words/min",
    chars_per_min: "characters/min",
    player_hint: "Click a line of the transcript or a point on the timeline to hear that moment.",
};

const JA: Words = Words {
    coach: "コーチ",
    client: "クライアント",
    unknown: "不明",
    report: "コーチングセッションのレポート",
    timeline: "タイムライン",
    overlap: "重なり",
    metrics: "指標",
    analysis: "分析",
    transcript: "文字起こし",
    share: "発話の割合",
    rows: [
        "発話時間",
        "発話の割合",
        "ターン数",
        "平均ターン長",
        "話速",
        "質問",
        "割り込み",
    ],
    words_per_min: "語/分",
    chars_per_min: "字/分",
    player_hint: "文字起こしの行やタイムライン上の点をクリックすると、その時点から再生します。",
};

/// "talk.flac — coaching session report"; the session id when the recording has no name.
fn title(r: &JobResult, page: &Page, lang: Lang) -> String {
    let name = page
        .recording
        .clone()
        .unwrap_or_else(|| format!("Session {}", r.session_id));
    format!("{name} — {}", lang.words().report)
}

fn meta(html: &mut String, r: &JobResult) {
    let _ = writeln!(
        html,
        "<p class=meta>{} · {} / {} · {} Hz · {} ch · session {} · transcriber {} · diarizer {}</p>",
        clock(r.duration_s),
        esc(&r.source.container),
        esc(&r.source.codec),
        r.source.sample_rate,
        r.source.channels,
        esc(&r.session_id),
        esc(&r.versions.transcriber),
        esc(&r.versions.diarizer),
    );
}

/// The turns as coloured spans over the waveform, the overlaps in red on top, a time axis and a
/// playhead; `data-duration` lets the script map a click to a time.
fn timeline(html: &mut String, r: &JobResult, lang: Lang) {
    let dur = r.duration_s.max(1e-6);
    let x = |t: f64| t / dur * WIDTH;
    let _ = writeln!(
        html,
        "<h2>{}</h2>\n<svg id=timeline viewBox=\"0 0 {WIDTH} {}\" data-duration=\"{dur:.3}\" \
         role=img aria-label=\"{}\">",
        lang.words().timeline,
        HEIGHT + 20.0,
        lang.words().timeline,
    );
    for turn in &r.turns {
        let _ = writeln!(
            html,
            "<rect class=\"turn {}\" x=\"{:.2}\" y=\"0\" width=\"{:.2}\" height=\"{HEIGHT}\">\
             <title>{} {}–{}</title></rect>",
            class(turn.speaker),
            x(turn.start_s),
            (x(turn.end_s) - x(turn.start_s)).max(0.5),
            lang.role(turn.speaker),
            clock(turn.start_s),
            clock(turn.end_s)
        );
    }
    waveform(html, &r.waveform);
    for o in &r.metrics.overlaps.events {
        let _ = writeln!(
            html,
            "<rect class=overlap x=\"{:.2}\" y=\"0\" width=\"{:.2}\" height=\"{HEIGHT}\">\
             <title>{} {}–{}: {} + {}</title></rect>",
            x(o.start_s),
            (x(o.end_s) - x(o.start_s)).max(1.0),
            lang.words().overlap,
            clock(o.start_s),
            clock(o.end_s),
            lang.role(o.first),
            lang.role(o.second),
        );
    }
    ticks(html, dur, x);
    let _ = writeln!(
        html,
        "<line id=playhead x1=\"0\" x2=\"0\" y1=\"0\" y2=\"{HEIGHT}\"/></svg>"
    );
    legend(html, r, lang);
}

fn waveform(html: &mut String, peaks: &[f32]) {
    if peaks.is_empty() {
        return;
    }
    let n = peaks.len() as f64;
    let mid = HEIGHT / 2.0;
    let mut points = String::new();
    let top = peaks.iter().enumerate().map(|(i, p)| (i, -f64::from(*p)));
    let bottom = peaks
        .iter()
        .enumerate()
        .rev()
        .map(|(i, p)| (i, f64::from(*p)));
    for (i, level) in top.chain(bottom) {
        let _ = write!(
            points,
            "{:.1},{:.1} ",
            i as f64 / n * WIDTH,
            mid + level * mid
        );
    }
    let _ = writeln!(
        html,
        "<polygon class=wave points=\"{}\"/>",
        points.trim_end()
    );
}

fn ticks(html: &mut String, dur: f64, x: impl Fn(f64) -> f64) {
    let step = tick_step(dur);
    let mut t = 0.0;
    while t <= dur {
        let _ = writeln!(
            html,
            "<text x=\"{:.1}\" y=\"{}\">{}</text>",
            x(t),
            HEIGHT + 15.0,
            clock(t)
        );
        t += step;
    }
}

/// Swatches are styled by the very classes the timeline's spans carry, so their colours cannot
/// drift apart.
fn legend(html: &mut String, r: &JobResult, lang: Lang) {
    html.push_str("<p class=legend>");
    for s in [Speaker::Coach, Speaker::Client, Speaker::Unknown] {
        let _ = write!(
            html,
            "<span class=\"swatch {}\"></span> {} ",
            class(s),
            lang.role(s)
        );
    }
    if !r.metrics.overlaps.events.is_empty() {
        let _ = write!(
            html,
            "<span class=\"swatch overlap\"></span> {}",
            lang.words().overlap
        );
    }
    html.push_str("</p>\n");
}

/// The recording, played from the copy beside the report.
fn player(html: &mut String, url: &str, lang: Lang) {
    let _ = writeln!(
        html,
        "<p class=player><audio id=audio controls preload=metadata src=\"{}\"></audio> \
         <span class=hint>{}</span></p>",
        esc(url),
        lang.words().player_hint
    );
}

fn metrics(html: &mut String, r: &JobResult, lang: Lang) {
    let m = &r.metrics;
    let w = lang.words();
    let _ = writeln!(html, "<h2>{}</h2>", w.metrics);
    share_bar(html, m, lang);
    metrics_table(html, m, lang);
    let _ = writeln!(
        html,
        "<p class=gini>{}</p>\n<p>{}</p>\n<p>{}</p>",
        gini_text(m, lang),
        turns_text(m, lang),
        events_text(m, r.speakers_found, lang),
    );
}

/// One bar, one segment per speaker who spoke, as wide as their share.
fn share_bar(html: &mut String, m: &ConversationMetrics, lang: Lang) {
    let _ = write!(html, "<div class=share title=\"{}\">", lang.words().share);
    for s in [Speaker::Coach, Speaker::Client, Speaker::Unknown] {
        let ratio = m.speakers.get(s).speaking_ratio;
        if ratio > 0.0 {
            let _ = write!(
                html,
                "<span class=\"{}\" style=\"width:{:.2}%\">{} {:.0} %</span>",
                class(s),
                ratio * 100.0,
                lang.role(s),
                ratio * 100.0
            );
        }
    }
    html.push_str("</div>\n");
}

/// Coach and client always; unknown only when some speech is unattributed.
fn metrics_table(html: &mut String, m: &ConversationMetrics, lang: Lang) {
    let mut speakers = vec![Speaker::Coach, Speaker::Client];
    if m.speakers.unknown.turns > 0 {
        speakers.push(Speaker::Unknown);
    }
    html.push_str("<table class=metrics><tr><th></th>");
    for s in &speakers {
        let _ = write!(html, "<th class={}>{}</th>", class(*s), lang.role(*s));
    }
    html.push_str("</tr>\n");
    let rate_unit = match m.speech_rate_unit {
        RateUnit::WordsPerMinute => lang.words().words_per_min,
        RateUnit::CharsPerMinute => lang.words().chars_per_min,
    };
    let cells: [&dyn Fn(&SpeakerMetrics) -> String; 7] = [
        &|s| clock(s.speaking_s),
        &|s| format!("{:.0} %", s.speaking_ratio * 100.0),
        &|s| s.turns.to_string(),
        &|s| format!("{:.1} s", s.mean_turn_s),
        &|s| match s.speech_rate {
            Some(rate) => format!("{rate:.0} {rate_unit}"),
            None => "—".into(),
        },
        &|s| s.questions.to_string(),
        &|s| s.interruptions.to_string(),
    ];
    for (name, cell) in lang.words().rows.iter().zip(cells) {
        let _ = write!(html, "<tr><th>{name}</th>");
        for s in &speakers {
            let _ = write!(html, "<td>{}</td>", cell(m.speakers.get(*s)));
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</table>\n");
}

/// The Gini coefficient with what it means and what it says about this session.
fn gini_text(m: &ConversationMetrics, lang: Lang) -> String {
    let (coach, client) = (m.speakers.coach.speaking_s, m.speakers.client.speaking_s);
    let (more, less, long, short) = if coach >= client {
        (Speaker::Coach, Speaker::Client, coach, client)
    } else {
        (Speaker::Client, Speaker::Coach, client, coach)
    };
    let g = m.gini_speaking_time;
    let (more, less) = (lang.role(more), lang.role(less));
    match lang {
        Lang::En => {
            let verdict = if long <= 0.0 {
                "Neither of them spoke.".to_string()
            } else if short <= 0.0 {
                format!("Only the {} spoke.", more.to_lowercase())
            } else if long / short < 1.1 {
                "They spoke about equally long.".to_string()
            } else {
                format!(
                    "The {} spoke {:.1} times as long as the {}.",
                    more.to_lowercase(),
                    long / short,
                    less.to_lowercase()
                )
            };
            format!(
                "Balance of speaking time between coach and client (Gini coefficient): {g:.2}, \
                 where 0 means both spoke equally long and 1 means only one of them spoke. {verdict}"
            )
        }
        Lang::Ja => {
            let verdict = if long <= 0.0 {
                "どちらも話していません。".to_string()
            } else if short <= 0.0 {
                format!("{more}だけが話しました。")
            } else if long / short < 1.1 {
                "二人はほぼ同じ長さ話しました。".to_string()
            } else {
                format!("{more}は{less}の {:.1} 倍の時間話しました。", long / short)
            };
            format!(
                "コーチとクライアントの発話時間の偏り(ジニ係数):{g:.2}。0 は二人が同じ長さ話したこと、\
                 1 は一方だけが話したことを表します。{verdict}"
            )
        }
    }
}

/// Turn count and length, and the longest monologue.
fn turns_text(m: &ConversationMetrics, lang: Lang) -> String {
    let (n, mean, gap) = (m.turns.count, m.turns.mean_s, m.turns.merge_gap_s);
    let longest = m.longest_monologue.as_ref();
    match lang {
        Lang::En => {
            let mut s = format!(
                "{n} turns (one speaker's speech with pauses under {gap} s is one turn), \
                 mean {mean:.1} s."
            );
            if let Some(l) = longest {
                let _ = write!(
                    s,
                    " Longest monologue: {}, {:.1} s from {}.",
                    lang.role(l.speaker),
                    l.duration_s,
                    clock(l.start_s)
                );
            }
            s
        }
        Lang::Ja => {
            let mut s = format!(
                "ターン数 {n}(同じ話者の {gap} 秒未満の間は 1 ターン)、平均 {mean:.1} 秒。"
            );
            if let Some(l) = longest {
                let _ = write!(
                    s,
                    "最長の独白:{}、{} から {:.1} 秒。",
                    lang.role(l.speaker),
                    clock(l.start_s),
                    l.duration_s
                );
            }
            s
        }
    }
}

/// Overlaps, silences and how many voices the diariser found.
fn events_text(m: &ConversationMetrics, speakers_found: usize, lang: Lang) -> String {
    let (o, s) = (&m.overlaps, &m.silences);
    match lang {
        Lang::En => format!(
            "{} overlaps ({:.1} s, red on the timeline) · {} silences of {} s or more ({:.0} s) · \
             voices found: {speakers_found}",
            o.count, o.total_s, s.count, s.min_s, s.total_s
        ),
        Lang::Ja => format!(
            "重なり {} 回({:.1} 秒、タイムラインの赤)· {} 秒以上の沈黙 {} 回({:.0} 秒)· \
             検出した声 {speakers_found} 人",
            o.count, o.total_s, s.min_s, s.count, s.total_s
        ),
    }
}

fn analysis(html: &mut String, r: &JobResult, lang: Lang) {
    let _ = writeln!(html, "<h2>{}</h2>", lang.words().analysis);
    match &r.analysis {
        AnalysisOutcome::Ok { analysis: a, .. } => {
            let _ = writeln!(
                html,
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
                    html,
                    "<tr><th>{}</th><td>{} / 5</td><td>{}<br><q>{}</q></td></tr>",
                    esc(name),
                    skill.score,
                    esc(&skill.comment),
                    esc(quote)
                );
            }
            html.push_str("</table>\n<ol>");
            for p in &a.prescriptions {
                let _ = write!(html, "<li><b>{}</b> {}</li>", esc(&p.title), esc(&p.detail));
            }
            html.push_str("</ol>\n");
        }
        AnalysisOutcome::Failed(e) => {
            let failed = match lang {
                Lang::En => "The analysis failed:",
                Lang::Ja => "分析に失敗しました:",
            };
            let _ = writeln!(
                html,
                "<p class=error>{failed} {} ({})</p>",
                esc(&e.message),
                e.code
            );
        }
        _ => {
            let _ = writeln!(html, "<p class=skipped>{}</p>", skipped_text(lang));
        }
    }
}

/// Why there is no analysis and how to get one (the variable `GeminiConfig::from_env` reads).
fn skipped_text(lang: Lang) -> &'static str {
    match lang {
        Lang::En => {
            "The analysis was skipped: no analysis model was configured. To get one, set \
             <code>GOOGLE_API_KEY</code> (a Gemini API key) and run <code>audio-worker replay</code> \
             again without <code>--no-analysis</code>."
        }
        Lang::Ja => {
            "分析は実行されていません(分析モデルが未設定)。<code>GOOGLE_API_KEY</code>(Gemini の API \
             キー)を設定し、<code>--no-analysis</code> を付けずに <code>audio-worker replay</code> \
             を再実行すると分析されます。"
        }
    }
}

/// One clickable row per turn with words; timing-only turns (too short to transcribe) stay on
/// the timeline and are counted under the table instead of leaving blank rows.
fn transcript(html: &mut String, r: &JobResult, lang: Lang) {
    let _ = writeln!(
        html,
        "<h2>{}</h2>\n<table class=transcript>",
        lang.words().transcript
    );
    let (spoken, silent): (Vec<&Turn>, Vec<&Turn>) =
        r.turns.iter().partition(|t| !t.text.trim().is_empty());
    for turn in spoken {
        let _ = writeln!(
            html,
            "<tr class=\"{}\" data-t=\"{:.2}\" data-end=\"{:.2}\" tabindex=0>\
             <td class=time>{}–{}</td><th>{}</th><td lang=\"{}\">{}</td></tr>",
            class(turn.speaker),
            turn.start_s,
            turn.end_s,
            clock(turn.start_s),
            clock(turn.end_s),
            lang.role(turn.speaker),
            esc(&r.language),
            esc(turn.text.trim())
        );
    }
    html.push_str("</table>\n");
    if !silent.is_empty() {
        let note = match lang {
            Lang::En if silent.len() == 1 => {
                "1 short turn too brief to transcribe is shown on the timeline only.".to_string()
            }
            Lang::En => format!(
                "{} short turns too brief to transcribe are shown on the timeline only.",
                silent.len()
            ),
            Lang::Ja => format!(
                "文字起こしするには短すぎる {} 件の発話は、タイムラインにのみ表示しています。",
                silent.len()
            ),
        };
        let _ = writeln!(html, "<p class=note>{note}</p>");
    }
}

fn class(s: Speaker) -> &'static str {
    match s {
        Speaker::Coach => "coach",
        Speaker::Client => "client",
        Speaker::Unknown => "unknown",
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

/// HTML-escapes text (for element content and quoted attributes alike).
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

/// One colour per role, set once as `--role` and used by the timeline's spans, the legend's
/// swatches and the share bar alike. The font stack reaches a CJK face on every desktop system
/// (macOS Hiragino, Windows Yu Gothic/Meiryo, Linux Noto CJK) instead of tofu.
const STYLE: &str = "\
body{font-family:system-ui,-apple-system,\"Segoe UI\",\"Hiragino Sans\",\"Hiragino Kaku Gothic ProN\",\
\"Noto Sans CJK JP\",\"Noto Sans JP\",\"Yu Gothic UI\",\"Yu Gothic\",Meiryo,sans-serif;\
max-width:1040px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}\
.coach{--role:#6fa8f5}.client{--role:#f5a55c}.unknown{--role:#bdbdbd}.overlap{--role:#d62728}\
svg{width:100%;height:auto;background:#fafafa;border:1px solid #ddd;cursor:pointer}\
svg text{font-size:10px;fill:#555}rect.turn{fill:var(--role)}\
rect.overlap{fill:var(--role);fill-opacity:.35;stroke:var(--role);stroke-width:1}\
.wave{fill:#333;opacity:.5}#playhead{stroke:#000;stroke-width:1.5}\
.swatch{display:inline-block;width:.9em;height:.9em;vertical-align:-.1em;background:var(--role)}\
.swatch.overlap{opacity:.6}\
.share{display:flex;height:1.6em;border-radius:3px;overflow:hidden;margin:.5em 0;max-width:600px}\
.share span{background:var(--role);white-space:nowrap;overflow:hidden;padding:0 .4em;font-size:.85em;line-height:1.6em}\
table{border-collapse:collapse;margin:.5em 0}\
td,th{padding:.25em .6em;text-align:left;vertical-align:top;border-bottom:1px solid #eee}\
.metrics td{font-variant-numeric:tabular-nums}\
.transcript tr{border-left:4px solid var(--role)}.transcript tr[data-t]{cursor:pointer}\
.transcript tr:hover,.transcript tr.now{background:#f3f6fb}\
.transcript th{color:color-mix(in srgb,var(--role) 55%,#000);white-space:nowrap}\
.time{color:#888;font-variant-numeric:tabular-nums;white-space:nowrap}\
.player audio{width:100%;max-width:600px;display:block}\
.hint,.note,.meta{color:#666}.error{color:#b00}code{white-space:nowrap}";

/// Seeks the player to a clicked transcript row (`data-t`) or timeline point (via
/// `data-duration`), moves the playhead and marks the row being heard. Reads no page text.
const SCRIPT: &str = "(()=>{\
const a=document.getElementById('audio'),svg=document.getElementById('timeline'),\
head=document.getElementById('playhead'),dur=+svg.dataset.duration,w=svg.viewBox.baseVal.width,\
rows=[...document.querySelectorAll('tr[data-t]')];\
const seek=t=>{a.currentTime=t;a.play().catch(()=>{});};\
const row=e=>e.target.closest&&e.target.closest('tr[data-t]');\
document.addEventListener('click',e=>{const r=row(e);if(r)seek(+r.dataset.t);});\
document.addEventListener('keydown',e=>{const r=row(e);\
if(r&&(e.key==='Enter'||e.key===' ')){e.preventDefault();seek(+r.dataset.t);}});\
svg.addEventListener('click',e=>{const b=svg.getBoundingClientRect();\
seek(Math.min(dur,Math.max(0,(e.clientX-b.left)/b.width*dur)));});\
a.addEventListener('timeupdate',()=>{const t=a.currentTime,x=t/dur*w;\
head.setAttribute('x1',x);head.setAttribute('x2',x);\
rows.forEach(r=>r.classList.toggle('now',+r.dataset.t<=t&&t<+r.dataset.end));});\
})();";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::metrics;
    use crate::audio::decode::SourceInfo;
    use crate::conversation::Transcript;
    use crate::pipeline::Versions;

    fn turn(start_s: f64, end_s: f64, speaker: Speaker, text: &str) -> Turn {
        Turn {
            start_s,
            end_s,
            speaker,
            text: text.into(),
            confidence: 0.9,
        }
    }

    /// A result with the given turns, as the pipeline would build it.
    fn result(language: &str, turns: Vec<Turn>) -> JobResult {
        let duration_s = 60.0;
        JobResult {
            session_id: "s-1".into(),
            source: SourceInfo {
                container: "flac".into(),
                codec: "flac".into(),
                sample_rate: 16_000,
                channels: 1,
                duration_s,
                bytes: 1,
            },
            duration_s,
            language: language.into(),
            speech: Vec::new(),
            waveform: vec![0.5; 10],
            metrics: metrics::compute(&turns, duration_s),
            turns,
            transcript: Transcript {
                language: language.into(),
                segments: Vec::new(),
                source: "test".into(),
            },
            speakers_found: 2,
            analysis: AnalysisOutcome::Skipped,
            versions: Versions {
                worker: "0".into(),
                libopus: "0".into(),
                transcriber: "test".into(),
                diarizer: "test".into(),
                analyzer: None,
            },
        }
    }

    fn dialogue(language: &str) -> JobResult {
        result(
            language,
            vec![
                turn(1.0, 4.0, Speaker::Coach, "What brings you here?"),
                turn(5.0, 20.0, Speaker::Client, "My report is late."),
                turn(20.0, 20.2, Speaker::Coach, ""),
                // starts while the client is still talking: an overlap
                turn(19.0, 25.0, Speaker::Coach, "And then?"),
            ],
        )
    }

    fn page() -> Page {
        Page {
            recording: Some("talk.flac".into()),
            audio_url: Some("report.audio.wav".into()),
        }
    }

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

    #[test]
    fn labels_and_lang_follow_the_session_language() {
        let en = render(&dialogue("en"), &page());
        assert!(en.contains("<html lang=\"en\">"), "{en}");
        assert!(en.contains("<th>Coach</th>") && en.contains("<th>Client</th>"));
        assert!(!en.contains("コーチ") && !en.contains("クライアント"));
        let ja = render(&dialogue("ja-JP"), &page());
        assert!(ja.contains("<html lang=\"ja\">"));
        assert!(ja.contains("<th>コーチ</th>") && ja.contains("<th>クライアント</th>"));
        assert!(ja.contains("<h2>文字起こし</h2>"));
        // Any other language: English labels, the transcript keeps its own language.
        let de = render(&dialogue("de"), &page());
        assert!(de.contains("<html lang=\"en\">") && de.contains("<td lang=\"de\">"));
        assert!(STYLE.contains("\"Noto Sans CJK JP\"") && STYLE.contains("\"Hiragino Sans\""));
    }

    #[test]
    fn untrusted_text_is_escaped_and_cannot_inject_script() {
        let evil = "</td><script>alert(1)</script><img src=x onerror=alert(2)> & \"q\"";
        let mut r = result(
            "en\"><script>alert(3)</script>",
            vec![turn(1.0, 3.0, Speaker::Client, evil)],
        );
        r.session_id = "<script>alert(4)</script>".into();
        r.versions.transcriber = "<b>t</b>".into();
        let page = Page {
            recording: Some("<img src=x onerror=alert(5)>.flac".into()),
            audio_url: Some("\"><script>alert(6)</script>".into()),
        };
        let html = render(&r, &page);
        assert_eq!(html.matches("<script").count(), 1, "only ours: {html}");
        assert!(!html.contains("<img") && !html.contains("<b>t</b>"));
        assert!(html.contains(
            "&lt;/td&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt; \
             &amp; &quot;q&quot;"
        ));
        assert!(!SCRIPT.contains("innerHTML") && !SCRIPT.contains("textContent"));
    }

    #[test]
    fn timing_only_turns_leave_no_blank_rows_and_are_counted() {
        let html = render(&dialogue("en"), &page());
        assert_eq!(html.matches("<tr class=\"coach\" data-t=").count(), 2);
        assert_eq!(html.matches("<tr class=\"client\" data-t=").count(), 1);
        assert!(!html.contains("\"></td></tr>"), "{html}");
        assert!(html.contains("1 short turn too brief to transcribe is shown"));
        // ... but the timeline still shows it
        assert_eq!(html.matches("<rect class=\"turn coach\"").count(), 3);
    }

    #[test]
    fn the_player_and_seekable_rows_come_with_the_audio() {
        let html = render(&dialogue("en"), &page());
        assert!(
            html.contains("<audio id=audio controls preload=metadata src=\"report.audio.wav\">")
        );
        assert!(html.contains("data-t=\"5.00\" data-end=\"20.00\""));
        assert!(html.contains("<td class=time>0:05–0:20</td>"), "end times");
        assert!(html.contains("data-duration=\"60.000\""));
        assert!(html.contains("<script>"));
        let without = render(&dialogue("en"), &Page::default());
        assert!(!without.contains("<audio") && !without.contains("<script"));
        assert!(without.contains("<title>Session s-1 — coaching session report</title>"));
        for text in [&html, &without] {
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
    }

    #[test]
    fn the_page_shows_the_metrics_the_result_has() {
        let r = dialogue("en");
        let html = render(&r, &page());
        assert!(html.contains("<title>talk.flac — coaching session report</title>"));
        assert!(html.contains("<tr><th>speech rate</th><td>"));
        assert!(html.contains("words/min</td>"), "{html}");
        assert!(html.contains("<tr><th>mean turn length</th><td>"));
        assert!(html.contains("Longest monologue: Client, 15.0 s from 0:05."));
        assert!(html.contains("where 0 means both spoke equally long"));
        assert!(html.contains("The client spoke"));
        // the share bar: one segment per speaker who spoke
        assert!(html.contains("<div class=share"));
        assert!(html.contains("<span class=\"client\" style=\"width:"));
        // the overlap on the timeline and in the legend
        assert_eq!(r.metrics.overlaps.count, 1);
        assert!(html.contains("<rect class=overlap x=\"316.67\""), "{html}");
        assert!(html.contains("<span class=\"swatch overlap\"></span> overlap"));
        assert!(
            html.contains("GOOGLE_API_KEY"),
            "how to enable the analysis"
        );
    }

    #[test]
    fn legend_swatches_and_timeline_spans_share_one_colour_per_role() {
        let html = render(&dialogue("en"), &page());
        for role in ["coach", "client", "unknown"] {
            assert!(html.contains(&format!("<span class=\"swatch {role}\">")));
            assert_eq!(STYLE.matches(&format!(".{role}{{--role:")).count(), 1);
        }
        assert!(STYLE.contains("rect.turn{fill:var(--role)}"));
        assert!(STYLE.contains(".swatch{") && STYLE.contains("background:var(--role)}"));
    }

    #[test]
    fn japanese_sentences() {
        let html = render(&dialogue("ja"), &page());
        assert!(html.contains("ジニ係数"));
        assert!(html.contains("最長の独白:クライアント"));
        assert!(html.contains("字/分") || html.contains("語/分"));
        assert!(html.contains("分析は実行されていません"));
    }
}
