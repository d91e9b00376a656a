//! The session's language when nobody named it (`audio-worker replay` without `--language`
//! and without a transcript that names one): the transcriber is asked without a language, and
//! the language is then what the model reported (whisper-1's `verbose_json`) or, for text-only
//! models, what the transcribed text is written in.

/// Whisper's `verbose_json` names the language in English ("japanese"); the result, the
/// analysis prompt and the transcription requests use ISO-639-1 codes. A two-letter code is
/// taken as it is.
pub fn iso_639_1(name: &str) -> Option<String> {
    const NAMES: [(&str, &str); 17] = [
        ("english", "en"),
        ("japanese", "ja"),
        ("chinese", "zh"),
        ("mandarin", "zh"),
        ("korean", "ko"),
        ("spanish", "es"),
        ("french", "fr"),
        ("german", "de"),
        ("italian", "it"),
        ("portuguese", "pt"),
        ("russian", "ru"),
        ("dutch", "nl"),
        ("vietnamese", "vi"),
        ("thai", "th"),
        ("indonesian", "id"),
        ("hindi", "hi"),
        ("arabic", "ar"),
    ];
    let name = name.trim().to_ascii_lowercase();
    if name.len() == 2 && name.bytes().all(|b| b.is_ascii_lowercase()) {
        return Some(name);
    }
    NAMES
        .iter()
        .find(|(full, _)| *full == name)
        .map(|(_, code)| code.to_string())
}

/// The language most of the text is written in: its ISO-639-1 code, or the ISO-639-3 code
/// (also a valid language tag) for a language outside [`iso_639_1`]'s list; `None` when there is
/// too little text to tell.
pub fn detect(text: &str) -> Option<String> {
    let info = whatlang::detect(text).filter(|i| i.is_reliable())?;
    let lang = info.lang();
    Some(iso_639_1(lang.eng_name()).unwrap_or_else(|| lang.code().to_string()))
}

/// The session's language from the pieces: what the model reported for most of them, else what
/// their text is written in.
pub fn of_pieces<'a>(
    reported: impl Iterator<Item = Option<&'a str>>,
    texts: impl Iterator<Item = &'a str>,
) -> Option<String> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for code in reported.flatten().filter_map(iso_639_1) {
        match counts.iter_mut().find(|c| c.0 == code) {
            Some(c) => c.1 += 1,
            None => counts.push((code, 1)),
        }
    }
    if let Some((code, _)) = counts.into_iter().max_by_key(|c| c.1) {
        return Some(code);
    }
    let text: Vec<&str> = texts.collect();
    detect(&text.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whisper_language_names_become_iso_codes() {
        assert_eq!(iso_639_1("english").as_deref(), Some("en"));
        assert_eq!(iso_639_1("Japanese").as_deref(), Some("ja"));
        assert_eq!(iso_639_1("ja").as_deref(), Some("ja"));
        assert_eq!(iso_639_1("klingon"), None);
    }

    #[test]
    fn the_text_says_what_language_it_is_in() {
        let en = "The deadline for the product launch moved forward by two weeks, and now \
                  everything feels urgent at the same time.";
        let ja = "今日はどんなことについて話したいですか。締め切りが二週間早まりました。";
        assert_eq!(detect(en).as_deref(), Some("en"));
        assert_eq!(detect(ja).as_deref(), Some("ja"));
        assert_eq!(detect("ok"), None, "too little text to tell");
    }

    #[test]
    fn the_model_s_report_comes_before_the_text() {
        let texts = ["The deadline moved forward by two weeks and everything feels urgent now."];
        let from_text = of_pieces([None, None].into_iter(), texts.into_iter());
        assert_eq!(from_text.as_deref(), Some("en"));
        let reported = of_pieces(
            [Some("japanese"), Some("japanese"), Some("english")].into_iter(),
            texts.into_iter(),
        );
        assert_eq!(reported.as_deref(), Some("ja"));
    }
}
