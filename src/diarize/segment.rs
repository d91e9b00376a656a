//! Block labels and text cuts: filling, smoothing of short flips, and where to split a text at a
//! fraction of its length.

use super::roles::is_cjk;

/// Gives unlabelled speech blocks (no voiced frame) the label of the nearest labelled block of
/// the same stretch of speech; blocks outside speech stay `None`.
pub fn fill_gaps(labels: &mut [Option<u8>], in_speech: &[bool]) {
    let n = labels.len();
    let mut i = 0;
    while i < n {
        if !in_speech[i] {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < n && in_speech[j] {
            j += 1;
        }
        // [i, j) is a stretch of speech blocks
        let known: Vec<usize> = (i..j).filter(|&k| labels[k].is_some()).collect();
        if !known.is_empty() {
            let mut p = 0;
            for k in i..j {
                while p + 1 < known.len() && known[p + 1] <= k {
                    p += 1;
                }
                if labels[k].is_none() {
                    let left = known[p];
                    let best = if left > k {
                        left
                    } else if p + 1 < known.len() && known[p + 1] - k < k - left {
                        known[p + 1]
                    } else {
                        left
                    };
                    labels[k] = labels[best];
                }
            }
        }
        i = j;
    }
}

/// Maximal runs of one label: (first, end_exclusive, label).
fn runs(labels: &[Option<u8>]) -> Vec<(usize, usize, Option<u8>)> {
    let mut out: Vec<(usize, usize, Option<u8>)> = Vec::new();
    for (i, &l) in labels.iter().enumerate() {
        match out.last_mut() {
            Some(r) if r.2 == l => r.1 = i + 1,
            _ => out.push((i, i + 1, l)),
        }
    }
    out
}

/// Flips runs shorter than `min_run` blocks that touch another speaker's run without a pause
/// (a pitch error or a cough, not a turn); an isolated short run between pauses is a real short
/// turn ("Yes.") and stays. Shortest runs go first; a run flips to its longer neighbour.
pub fn smooth_short_runs(labels: &mut [Option<u8>], min_run: usize) {
    // Length by length (1 block, then 2, ...), a few passes: linear time however long the
    // recording is.
    for _ in 0..4 {
        let mut changed = false;
        for len in 1..min_run {
            let rs = runs(labels);
            for (k, &(a, b, l)) in rs.iter().enumerate() {
                if l.is_none() || b - a != len {
                    continue;
                }
                let left = k.checked_sub(1).map(|p| rs[p]).filter(|r| r.2.is_some());
                let right = rs.get(k + 1).copied().filter(|r| r.2.is_some());
                let to = match (left, right) {
                    (Some(l), Some(r)) => {
                        if l.1 - l.0 >= r.1 - r.0 {
                            l.2
                        } else {
                            r.2
                        }
                    }
                    (Some(l), None) => l.2,
                    (None, Some(r)) => r.2,
                    (None, None) => continue, // between pauses: a real short turn
                };
                labels[a..b].iter_mut().for_each(|x| *x = to);
                changed = true;
            }
        }
        if !changed {
            return;
        }
    }
}

/// Where to cut `text` at the fraction `f` of its length (a char index, the cut goes before it):
/// the nearest sentence end, else clause mark, else word boundary, else (text without spaces)
/// the character at that fraction. The same fraction always gives the same cut.
pub fn cut_position(text: &str, f: f64) -> usize {
    let chars: Vec<char> = text.chars().collect();
    let target = (f.clamp(0.0, 1.0) * chars.len() as f64).round() as usize;
    best_cut(&chars, target, 0)
}

/// Splits `text` into `cuts.len() + 1` parts at the cumulative fractions `cuts` (0..1, rising),
/// moving each cut to the nearest sentence end (. ? ! 。 ？ ！), else clause mark (、 , ，),
/// else word boundary, else (text without spaces) the character at that fraction.
pub fn split_text(text: &str, cuts: &[f64]) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let n = chars.len();
    let mut positions = Vec::with_capacity(cuts.len());
    let mut prev = 0usize;
    for &f in cuts {
        let target = (f.clamp(0.0, 1.0) * n as f64).round() as usize;
        let pos = best_cut(&chars, target, prev).max(prev);
        positions.push(pos);
        prev = pos;
    }
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for p in positions.into_iter().chain(std::iter::once(n)) {
        out.push(
            chars[start..p]
                .iter()
                .collect::<String>()
                .trim()
                .to_string(),
        );
        start = p;
    }
    out
}

/// Best cut position (a char index: the cut goes before `chars[pos]`) near `target`.
fn best_cut(chars: &[char], target: usize, after: usize) -> usize {
    let n = chars.len();
    let nearest = |ok: &dyn Fn(usize) -> bool, window: usize| -> Option<usize> {
        (after + 1..n)
            .filter(|&p| ok(p) && p.abs_diff(target) <= window)
            .min_by_key(|&p| p.abs_diff(target))
    };
    let sentence_end = |p: usize| {
        matches!(chars[p - 1], '.' | '?' | '!' | '。' | '？' | '！')
            && (chars[p].is_whitespace() || is_cjk(chars[p]) || p == n)
    };
    let clause = |p: usize| matches!(chars[p - 1], '、' | ',' | '，' | ';' | '；');
    let word = |p: usize| chars[p].is_whitespace();
    if let Some(p) = nearest(&sentence_end, n / 4) {
        return p;
    }
    if let Some(p) = nearest(&clause, n / 6) {
        return p;
    }
    if let Some(p) = nearest(&word, n / 8) {
        return p;
    }
    target.clamp(after, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(s: &str) -> Vec<Option<u8>> {
        s.chars()
            .map(|c| match c {
                'a' => Some(0),
                'b' => Some(1),
                _ => None,
            })
            .collect()
    }

    fn show(l: &[Option<u8>]) -> String {
        l.iter()
            .map(|l| match l {
                Some(0) => 'a',
                Some(_) => 'b',
                None => '.',
            })
            .collect()
    }

    #[test]
    fn gaps_take_the_nearest_label_within_speech() {
        let mut l = labels("a??b..?b");
        let speech: Vec<bool> = "xxxx..xx".chars().map(|c| c == 'x').collect();
        l.iter_mut()
            .zip(&speech)
            .for_each(|(l, &s)| *l = if s { *l } else { None });
        fill_gaps(&mut l, &speech);
        assert_eq!(show(&l), "aabb..bb");
    }

    #[test]
    fn short_flips_are_smoothed_but_isolated_short_turns_stay() {
        let mut l = labels("aaaaabaaaaa..bb..aaaabbbbbbbb");
        smooth_short_runs(&mut l, 3);
        assert_eq!(show(&l), "aaaaaaaaaaa..bb..aaaabbbbbbbb");
    }

    #[test]
    fn text_splits_at_sentences_words_or_characters() {
        let t = "How would a first draft look? Probably just the main numbers and three comments.";
        assert_eq!(
            split_text(t, &[0.3]),
            vec![
                "How would a first draft look?",
                "Probably just the main numbers and three comments."
            ]
        );
        let t = "one two three four five six seven eight";
        assert_eq!(
            split_text(t, &[0.5]),
            vec!["one two three four", "five six seven eight"]
        );
        let t = "今日は何を話しますか。最近の仕事のことを話したいです";
        assert_eq!(
            split_text(t, &[0.4]),
            vec!["今日は何を話しますか。", "最近の仕事のことを話したいです"]
        );
        let t = "あいうえおかきくけこ";
        assert_eq!(split_text(t, &[0.3]), vec!["あいう", "えおかきくけこ"]);
        assert_eq!(split_text("", &[0.5]), vec!["", ""]);
    }
}
