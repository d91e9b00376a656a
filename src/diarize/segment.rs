//! From block labels to speaker turns: filling, smoothing of short flips, speaker changes inside a
//! transcript segment, and splitting a segment's text at the change.

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

/// How a transcript segment's blocks divide between the speakers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub lo: usize,
    pub hi: usize,
    pub label: u8,
}

/// Tuning of [`split_segment`].
#[derive(Debug, Clone, Copy)]
pub struct SplitRule {
    /// Each side of a change needs at least this many labelled blocks.
    pub min_side: usize,
    /// Each side's majority label must hold at least this share of its blocks when the change
    /// falls in a pause ...
    pub min_purity: f32,
    /// ... and this share when it falls inside continuous speech.
    pub strict_purity: f32,
}

/// The speakers of the blocks `lo..hi` of one transcript segment: one piece with the majority
/// label, or several when the labels change (recursively, best change point first).
/// `at_pause[k]`: a cut before block `k` falls in a pause of the speech map.
pub fn split_segment(
    labels: &[Option<u8>],
    at_pause: &[bool],
    lo: usize,
    hi: usize,
    rule: SplitRule,
) -> Vec<Piece> {
    let count = |a: usize, b: usize| -> [usize; 2] {
        let mut c = [0usize; 2];
        for l in labels[a..b].iter().flatten() {
            c[*l as usize] += 1;
        }
        c
    };
    let total = count(lo, hi);
    if total[0] + total[1] == 0 {
        return Vec::new();
    }
    let majority = u8::from(total[1] > total[0]);
    let whole = vec![Piece {
        lo,
        hi,
        label: majority,
    }];
    let no_split = total[0].max(total[1]);
    // prefix[k] = label counts of blocks lo..lo+k
    let mut prefix = vec![[0usize; 2]; hi - lo + 1];
    for k in lo..hi {
        let mut c = prefix[k - lo];
        if let Some(l) = labels[k] {
            c[l as usize] += 1;
        }
        prefix[k - lo + 1] = c;
    }
    // a part a..b (relative) that is mostly `l`: its count of `l`, if long and pure enough
    let n = hi - lo;
    // (a cut inside speech, not at a pause, must be clearer: a pure side)
    let purity = |k: usize| {
        if at_pause[lo + k] {
            rule.min_purity
        } else {
            rule.strict_purity
        }
    };
    let part = |a: usize, b: usize, l: u8| -> Option<usize> {
        let c = [prefix[b][0] - prefix[a][0], prefix[b][1] - prefix[a][1]];
        let (len, mine) = (c[0] + c[1], c[l as usize]);
        // only cuts inside the segment count, not its own edges
        let need_at = |k: usize| if k == 0 || k == n { 0.0 } else { purity(k) };
        let need = need_at(a).max(need_at(b));
        (len >= rule.min_side && mine as f32 >= need * len as f32).then_some(mine)
    };
    // one change: (score, cut)
    let mut single: Option<(usize, usize)> = None;
    for k in 1..n {
        for (a, b) in [(0u8, 1u8), (1, 0)] {
            if let (Some(x), Some(y)) = (part(0, k, a), part(k, n, b))
                && single.is_none_or(|(s, _)| x + y > s)
            {
                single = Some((x + y, k));
            }
        }
    }
    // two changes (A B A), when one cannot explain the labels; bounded cost
    let mut double: Option<(usize, usize, usize)> = None;
    if n <= 600 {
        for i in 1..n {
            for k in i + 1..n {
                for (a, b) in [(0u8, 1u8), (1, 0)] {
                    if let (Some(x), Some(y), Some(z)) =
                        (part(0, i, a), part(i, k, b), part(k, n, a))
                        && double.is_none_or(|(s, ..)| x + y + z > s)
                    {
                        double = Some((x + y + z, i, k));
                    }
                }
            }
        }
    }
    let gain = rule.min_side / 2;
    let single_score = single.map_or(no_split, |s| s.0);
    let cuts: Vec<usize> = match (single, double) {
        (_, Some((d, i, k))) if d >= single_score + gain && d >= no_split + gain => {
            vec![lo + i, lo + k]
        }
        (Some((s, k)), _) if s >= no_split + gain => vec![lo + k],
        _ => return whole,
    };
    let mut out = Vec::new();
    let mut a = lo;
    for c in cuts.into_iter().chain(std::iter::once(hi)) {
        out.extend(split_segment(labels, at_pause, a, c, rule));
        a = c;
    }
    // neighbours with the same label (possible after recursion) join
    let mut merged: Vec<Piece> = Vec::new();
    for p in out {
        match merged.last_mut() {
            Some(m) if m.label == p.label => m.hi = p.hi,
            _ => merged.push(p),
        }
    }
    merged
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
    fn a_merged_segment_splits_at_the_change() {
        let rule = SplitRule {
            min_side: 4,
            min_purity: 0.7,
            strict_purity: 0.7,
        };
        let l = labels("aaaaaaaaabaaaaaaabbbbbbbb");
        let p = split_segment(&l, &vec![false; l.len() + 1], 0, l.len(), rule);
        assert_eq!(
            p,
            vec![
                Piece {
                    lo: 0,
                    hi: 17,
                    label: 0
                },
                Piece {
                    lo: 17,
                    hi: 25,
                    label: 1
                }
            ]
        );
        // a few stray blocks are no change
        let l = labels("aaaaaaabbaaaaaaaaaba");
        assert_eq!(
            split_segment(&l, &vec![false; l.len() + 1], 0, l.len(), rule).len(),
            1
        );
        // inside continuous speech a change needs purer sides than at a pause
        let strict = SplitRule {
            strict_purity: 0.95,
            ..rule
        };
        let l = labels("aaaaaaaaabaaaaaaabbbbbbbb");
        let mut pause = vec![false; l.len() + 1];
        assert_eq!(split_segment(&l, &pause, 0, l.len(), strict).len(), 1);
        pause[17] = true;
        assert_eq!(split_segment(&l, &pause, 0, l.len(), strict).len(), 2);
        // three speakers' lines in one segment
        let l = labels("aaaaaabbbbbbbaaaaaa");
        let labels_of: Vec<u8> = split_segment(&l, &vec![false; l.len() + 1], 0, l.len(), rule)
            .iter()
            .map(|p| p.label)
            .collect();
        assert_eq!(labels_of, vec![0, 1, 0]);
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
