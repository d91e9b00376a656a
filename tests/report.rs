//! The replay report as a browser sees it: headless Chromium opens the page `audio-worker replay`
//! wrote, runs its script, and the test reads the DOM back (`--dump-dom`): the turns, the labels,
//! an audio element that loads the WAV beside the report, click-to-seek, the legend's colours;
//! and a screenshot (kept under `target/tmp/report/`) that must not be blank.
//!
//! Chromium is required, not optional: without it these tests fail (scripts/test.sh installs the
//! Debian package `chromium`; `CHROMIUM=/path/to/chrome` picks another binary).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use audio_worker::pipeline::JobResult;
use audio_worker::report::{Page, html};
use serde_json::Value;

/// The fixture with a timing-only (empty) turn among its twelve.
fn dialogue() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/dialogues/overlap.flac")
}

fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "CHROMIUM={} is not a file", path.display());
        return path;
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|dir| dir.join(name))
            .find(|p| p.is_file());
        if let Some(path) = found {
            return path;
        }
    }
    panic!(
        "headless Chromium is needed to check the HTML report: run scripts/test.sh (it installs \
         the Debian package chromium), or `apt-get install chromium`, or set CHROMIUM"
    );
}

/// Runs Chromium headless with its own profile; killed after a minute so CI cannot hang.
fn headless(profile: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--autoplay-policy=no-user-gesture-required",
            "--window-size=1200,1800",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "chromium {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The DOM after the page's scripts ran; the virtual time budget lets the audio's metadata load
/// and the probe finish before the dump.
fn dump_dom(profile: &Path, page: &Path) -> String {
    let url = format!("file://{}", page.display());
    let out = headless(
        profile,
        &["--virtual-time-budget=10000", "--dump-dom", &url],
    );
    String::from_utf8(out.stdout).unwrap()
}

fn screenshot(profile: &Path, page: &Path, png: &Path) -> u64 {
    let url = format!("file://{}", page.display());
    headless(profile, &[&format!("--screenshot={}", png.display()), &url]);
    std::fs::metadata(png).expect("screenshot written").len()
}

/// `audio-worker replay` on the fixture, into `dir`: the result and the report's path.
fn replay(dir: &Path) -> (JobResult, PathBuf) {
    let out = Command::new(env!("CARGO_BIN_EXE_audio-worker"))
        .current_dir(dir)
        .env_remove("OPENAI_API_KEY")
        .env_remove("GOOGLE_API_KEY")
        .env("TMPDIR", dir)
        .arg("replay")
        .arg(dialogue())
        .args(["--language", "en", "--out", "result.json"])
        .args(["--report", "report.html"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result = serde_json::from_slice(&std::fs::read(dir.join("result.json")).unwrap()).unwrap();
    (result, dir.join("report.html"))
}

/// Clicks a transcript line and the middle of the timeline, reads the colours the browser
/// computed, and leaves what it saw as JSON in `<pre id=probe>`.
const PROBE: &str = r#"<script>(async () => {
  const a = document.getElementById('audio'), out = {};
  out.metadata = await new Promise(done => {
    if (a.readyState >= 1) return done('loaded');
    a.addEventListener('loadedmetadata', () => done('loaded'));
    a.addEventListener('error', () => done('error ' + (a.error && a.error.code)));
    setTimeout(() => done('timeout'), 8000);
  });
  out.audio_duration = a.duration;
  const rows = [...document.querySelectorAll('tr[data-t]')];
  rows[2].querySelector('td:last-child').click();
  out.row_t = +rows[2].dataset.t;
  out.after_row_click = a.currentTime;
  const svg = document.getElementById('timeline'), b = svg.getBoundingClientRect();
  svg.dispatchEvent(new MouseEvent('click', {bubbles: true,
    clientX: b.left + b.width / 2, clientY: b.top + b.height / 2}));
  out.after_timeline_click = a.currentTime;
  out.colours = {};
  for (const role of ['coach', 'client']) {
    out.colours[role] = [
      getComputedStyle(document.querySelector('rect.turn.' + role)).fill,
      getComputedStyle(document.querySelector('.swatch.' + role)).backgroundColor,
    ];
  }
  out.timeline_px = [b.width, b.height];
  const pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify(out);
  document.body.append(pre);
})();</script>"#;

fn probe(dom: &str) -> Value {
    let start = dom.find("<pre id=\"probe\">").expect("the probe ran") + "<pre id=\"probe\">".len();
    let end = start + dom[start..].find("</pre>").unwrap();
    let json = dom[start..end]
        .replace("&quot;", "\"")
        .replace("&amp;", "&");
    serde_json::from_str(&json).unwrap()
}

#[test]
fn chromium_shows_the_turns_labels_and_a_player_that_seeks() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("profile");
    let (result, report) = replay(dir.path());
    let audio = dir.path().join("report.audio.wav");
    assert!(audio.is_file(), "the 16 kHz audio beside the report");

    // Rows are the turns with words. This fixture's backchannel is folded into the turn it
    // interrupts, so every turn here has words; timing-only turns are checked in
    // `report::html`'s `timing_only_turns_leave_no_blank_rows_and_are_counted`.
    let spoken: Vec<_> = result
        .turns
        .iter()
        .filter(|t| !t.text.trim().is_empty())
        .collect();
    assert!(spoken.len() >= 3, "{:?}", result.turns);

    let html = std::fs::read_to_string(&report).unwrap();
    let probed = dir.path().join("probed.html");
    std::fs::write(&probed, html.replace("</body>", &format!("{PROBE}</body>"))).unwrap();
    let dom = dump_dom(&profile, &probed);

    assert!(dom.contains("<html lang=\"en\">"), "{dom}");
    assert!(dom.contains("<title>overlap.flac — coaching session report</title>"));
    // one row per turn with words, in order, labelled in English
    assert_eq!(dom.matches(" data-t=\"").count(), spoken.len(), "{dom}");
    let mut at = 0;
    for turn in &spoken {
        let text = turn.text.trim().replace('&', "&amp;");
        at += dom[at..]
            .find(&text)
            .unwrap_or_else(|| panic!("{text:?} in order"));
    }
    assert!(dom.contains("<th>Coach</th>") && dom.contains("<th>Client</th>"));
    assert!(!dom.contains("コーチ"));
    assert!(
        dom.contains(
            "<audio id=\"audio\" controls=\"\" preload=\"metadata\" src=\"report.audio.wav\">"
        ),
        "{dom}"
    );

    let p = probe(&dom);
    assert_eq!(p["metadata"], "loaded", "{p}");
    let audio_s = p["audio_duration"].as_f64().unwrap();
    assert!((audio_s - result.duration_s).abs() < 0.1, "{p}");
    let row_t = p["row_t"].as_f64().unwrap();
    assert!((row_t - spoken[2].start_s).abs() < 0.01);
    assert!(
        (p["after_row_click"].as_f64().unwrap() - row_t).abs() < 0.05,
        "{p}"
    );
    let middle = p["after_timeline_click"].as_f64().unwrap();
    assert!((middle - result.duration_s / 2.0).abs() < 0.5, "{p}");
    for role in ["coach", "client"] {
        let [span, swatch] = [&p["colours"][role][0], &p["colours"][role][1]];
        assert_eq!(span, swatch, "legend = timeline for {role}: {p}");
    }
    assert!(p["timeline_px"][0].as_f64().unwrap() > 500.0, "{p}");
    assert!(p["timeline_px"][1].as_f64().unwrap() > 50.0, "{p}");

    // The screenshot, kept for people to look at; a blank page compresses to a fraction of it.
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report");
    std::fs::create_dir_all(&shots).unwrap();
    let blank = dir.path().join("blank.html");
    std::fs::write(&blank, "<!doctype html><title>blank</title>").unwrap();
    let blank_bytes = screenshot(&profile, &blank, &shots.join("blank.png"));
    let png = shots.join("report.png");
    let bytes = screenshot(&profile, &report, &png);
    println!("screenshot of the report: {}", png.display());
    assert!(
        bytes > 4 * blank_bytes,
        "{bytes} vs blank {blank_bytes}: {}",
        png.display()
    );
}

#[test]
fn chromium_runs_no_script_from_the_transcript_and_speaks_japanese() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("profile");
    let (mut result, _) = replay(dir.path());
    result.language = "ja".into();
    let evil = "<img src=x onerror=\"document.body.dataset.pwned=1\"><script>document.body.dataset.pwned=2</script>";
    result.turns[0].text = evil.into();
    let page = Page {
        recording: Some("<b onclick=x>talk</b>.flac".into()),
        audio_url: Some("report.audio.wav".into()),
    };
    let path = dir.path().join("evil.html");
    std::fs::write(&path, html::render(&result, &page)).unwrap();
    let dom = dump_dom(&profile, &path);

    assert!(
        !dom.contains("pwned=\"") && !dom.contains("<img") && !dom.contains("<b onclick"),
        "{dom}"
    );
    assert_eq!(
        dom.matches("<script").count(),
        1,
        "only the page's own script: {dom}"
    );
    assert!(
        dom.contains("&lt;img src=x onerror=\"document.body.dataset.pwned=1\"&gt;"),
        "shown as text: {dom}"
    );
    assert!(dom.contains("<html lang=\"ja\">"));
    assert!(dom.contains("<th>コーチ</th>") && dom.contains("<th>クライアント</th>"));
    assert!(!dom.contains("<th>Coach</th>"));
}
