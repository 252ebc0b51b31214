//! Property tests of the exposition parser and writer: random valid pages parse to what
//! generated them and survive `parse(write(parse(x)))`; any input at all, including
//! mutations of the real etcd page, parses or fails with a line inside the page, and never
//! panics; the collector's filter (`filter_page`, what is pushed) on the same inputs
//! never panics, and what it keeps is bounded by the page and parses back.
//!
//! 512 cases each by default (seconds); `PROPTEST_CASES` sets the count
//! (`ci/fuzz-long.sh` runs a million).

use std::sync::OnceLock;

use dr_collector::allowlist::Allowlist;
use dr_collector::collect::{PageError, filter_page};
use dr_collector::exposition::{MetricFamily, MetricKind, parse, write};
use proptest::prelude::*;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../fixtures/etcd-3.4.23-metrics.txt"
);

fn fixture() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        std::fs::read_to_string(FIXTURE).unwrap_or_else(|err| panic!("{FIXTURE}: {err}"))
    })
}

#[derive(Debug, Clone)]
struct ModelSample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
    /// How the value is spelled on the page.
    form: u8,
    timestamp_ms: Option<i64>,
}

#[derive(Debug, Clone)]
struct ModelFamily {
    name: String,
    help: Option<String>,
    kind: MetricKind,
    /// Untyped families may leave out their TYPE line.
    declare_type: bool,
    samples: Vec<ModelSample>,
}

/// Layout choices that must not change what the page means.
#[derive(Debug, Clone)]
struct Style {
    crlf: bool,
    blank: &'static str,
    trailing_blanks: bool,
    spaced_labels: bool,
    comments: bool,
    final_newline: bool,
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        (-1000i64..1000).prop_map(|i| i as f64),
    ]
}

fn label_value() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 \\\\\"\n\r\t{}=,#é☃]{0,8}"
}

fn labels() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(("[a-zA-Z_][a-zA-Z0-9_]{0,8}", label_value()), 0..4).prop_map(|pairs| {
        let mut labels: Vec<(String, String)> = Vec::new();
        for (name, value) in pairs {
            let reserved = ["__name__", "le", "quantile"].contains(&name.as_str());
            if !reserved && labels.iter().all(|(seen, _)| *seen != name) {
                labels.push((name, value));
            }
        }
        labels
    })
}

fn sample_parts() -> impl Strategy<Value = (f64, u8, Option<i64>)> {
    (value(), 0u8..4, any::<Option<i64>>())
}

fn sample(name: &str, labels: Vec<(String, String)>, parts: (f64, u8, Option<i64>)) -> ModelSample {
    let (value, form, timestamp_ms) = parts;
    ModelSample {
        name: name.to_owned(),
        labels,
        value,
        form,
        timestamp_ms,
    }
}

/// Samples for a family of `kind` named `name`: buckets, `_sum` and `_count` per label set
/// for histograms, quantiles, `_sum` and `_count` for summaries, plain samples otherwise.
fn samples(name: String, kind: MetricKind) -> BoxedStrategy<Vec<ModelSample>> {
    match kind {
        MetricKind::Histogram | MetricKind::Summary => {
            let group = (
                labels(),
                prop::collection::vec((-1e6f64..1e6, sample_parts()), 0..4),
                sample_parts(),
                sample_parts(),
                sample_parts(),
            );
            prop::collection::vec(group, 1..3)
                .prop_map(move |groups| {
                    let histogram = kind == MetricKind::Histogram;
                    let (special, series) = if histogram {
                        ("le", format!("{name}_bucket"))
                    } else {
                        ("quantile", name.clone())
                    };
                    let mut samples = Vec::new();
                    for (labels, mut points, inf, sum, count) in groups {
                        points.sort_by(|a, b| a.0.total_cmp(&b.0));
                        let mut bounds: Vec<_> = points
                            .into_iter()
                            .map(|(b, p)| (b.to_string(), p))
                            .collect();
                        if histogram {
                            bounds.push(("+Inf".to_owned(), inf));
                        }
                        for (bound, parts) in bounds {
                            let mut with_bound = labels.clone();
                            with_bound.push((special.to_owned(), bound));
                            samples.push(sample(&series, with_bound, parts));
                        }
                        samples.push(sample(&format!("{name}_sum"), labels.clone(), sum));
                        samples.push(sample(&format!("{name}_count"), labels, count));
                    }
                    samples
                })
                .boxed()
        }
        _ => prop::collection::vec((labels(), sample_parts()), 1..5)
            .prop_map(move |plain| {
                plain
                    .into_iter()
                    .map(|(labels, parts)| sample(&name, labels, parts))
                    .collect()
            })
            .boxed(),
    }
}

fn family(index: usize) -> impl Strategy<Value = ModelFamily> {
    let kind = prop::sample::select(vec![
        MetricKind::Counter,
        MetricKind::Gauge,
        MetricKind::Histogram,
        MetricKind::Summary,
        MetricKind::Untyped,
    ]);
    (
        "[a-zA-Z_:][a-zA-Z0-9_:]{0,12}",
        kind,
        prop::option::of("[a-zA-Z0-9 \\\\\"\n\t{}=,#é]{0,20}"),
        any::<bool>(),
    )
        .prop_flat_map(move |(stem, kind, help, declare_type)| {
            // The index keeps names unique, and a name ending in a digit is never another
            // family's `_sum`, `_count` or `_bucket`.
            let name = format!("{stem}_{index}");
            samples(name.clone(), kind).prop_map(move |samples| ModelFamily {
                name: name.clone(),
                // HELP text never starts with a blank: the parser skips those.
                help: help.as_ref().map(|help| format!("h{help}")),
                kind,
                declare_type: declare_type || kind != MetricKind::Untyped,
                samples,
            })
        })
}

fn page() -> impl Strategy<Value = (Vec<ModelFamily>, Style)> {
    let families = (0usize..6).prop_flat_map(|n| (0..n).map(family).collect::<Vec<_>>());
    let style = (
        any::<bool>(),
        prop::sample::select(vec![" ", "\t", "  \t"]),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(crlf, blank, trailing_blanks, spaced_labels, comments, final_newline)| Style {
                crlf,
                blank,
                trailing_blanks,
                spaced_labels,
                comments,
                final_newline,
            },
        );
    (families, style)
}

/// The page's own escaping, written independently of the writer under test.
fn escape(text: &str, quote: bool) -> String {
    let mut out = String::new();
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

fn spell(value: f64, form: u8) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value == f64::INFINITY {
        ["+Inf", "Inf", "+inf", "+Inf"][usize::from(form)].to_owned()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        match form {
            0 => format!("{value}"),
            1 => format!("{value:e}"),
            2 => format!("{value:E}"),
            _ => format!("{value:?}"),
        }
    }
}

fn render(families: &[ModelFamily], style: &Style) -> String {
    let blank = style.blank;
    let mut lines: Vec<String> = Vec::new();
    let trail = if style.trailing_blanks { blank } else { "" };
    for family in families {
        if style.comments {
            lines.push(format!("# family {}: TYPE and HELP follow", family.name));
            lines.push(String::new());
        }
        if let Some(help) = &family.help {
            lines.push(format!(
                "# HELP{blank}{}{blank}{}",
                family.name,
                escape(help, false)
            ));
        }
        if family.declare_type {
            lines.push(format!(
                "#{blank}TYPE {} {}{trail}",
                family.name,
                family.kind.as_str()
            ));
        }
        for sample in &family.samples {
            let mut line = sample.name.clone();
            if !sample.labels.is_empty() || style.spaced_labels {
                let (open, eq, comma) = if style.spaced_labels {
                    ("{ ", " = ", " , ")
                } else {
                    ("{", "=", ",")
                };
                let pairs: Vec<_> = sample
                    .labels
                    .iter()
                    .map(|(name, value)| format!("{name}{eq}\"{}\"", escape(value, true)))
                    .collect();
                line.push_str(open);
                line.push_str(&pairs.join(comma));
                line.push('}');
            }
            line.push_str(blank);
            line.push_str(&spell(sample.value, sample.form));
            if let Some(timestamp) = sample.timestamp_ms {
                line.push_str(blank);
                line.push_str(&timestamp.to_string());
            }
            line.push_str(trail);
            lines.push(line);
        }
    }
    let end = if style.crlf { "\r\n" } else { "\n" };
    let mut text = lines.join(end);
    if style.final_newline && !text.is_empty() {
        text.push_str(end);
    }
    text
}

fn same_value(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// Equality with NaN equal to NaN.
fn same(a: &[MetricFamily<'_>], b: &[MetricFamily<'_>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(a, b)| {
            a.name == b.name
                && a.help == b.help
                && a.kind == b.kind
                && a.samples.len() == b.samples.len()
                && a.samples.iter().zip(&b.samples).all(|(a, b)| {
                    a.name == b.name
                        && a.labels == b.labels
                        && a.timestamp_ms == b.timestamp_ms
                        && same_value(a.value, b.value)
                })
        })
}

fn matches_model(parsed: &[MetricFamily<'_>], model: &[ModelFamily]) -> Result<(), String> {
    if parsed.len() != model.len() {
        return Err(format!(
            "{} families, expected {}",
            parsed.len(),
            model.len()
        ));
    }
    for (got, want) in parsed.iter().zip(model) {
        let help_ok = got.help.as_deref() == want.help.as_deref();
        if got.name != want.name || got.kind != want.kind || !help_ok {
            return Err(format!("family {got:?}, expected {want:?}"));
        }
        if got.samples.len() != want.samples.len() {
            return Err(format!("{}: {} samples", want.name, got.samples.len()));
        }
        for (got, want) in got.samples.iter().zip(&want.samples) {
            let labels_ok = got.labels.len() == want.labels.len()
                && got
                    .labels
                    .iter()
                    .zip(&want.labels)
                    .all(|((gn, gv), (wn, wv))| gn == wn && gv == wv);
            if got.name != want.name
                || !labels_ok
                || !same_value(got.value, want.value)
                || got.timestamp_ms != want.timestamp_ms
            {
                return Err(format!("sample {got:?}, expected {want:?}"));
            }
        }
    }
    Ok(())
}

/// Parse never panics, and a failure points at a line of the page. What parses survives
/// `parse(write(..))`, except in the one case `write` documents (a family named like a
/// histogram's or summary's `_bucket`/`_sum`/`_count`, written after it): then the
/// collector's filter, which would push it all, must refuse the page.
fn check_any(text: &str) -> Result<(), TestCaseError> {
    match parse(text) {
        Ok(families) => {
            let mut out = String::new();
            write(&families, &mut out, true);
            let survives = parse(&out).is_ok_and(|again| same(&families, &again));
            if !survives {
                let everything = &allowlists()[1];
                prop_assert!(
                    filter_page(text, everything).is_err(),
                    "the round trip changed the page and the filter let it through:\n{out}"
                );
            }
        }
        Err(err) => {
            let lines = text.lines().count();
            prop_assert!((1..=lines).contains(&err.line), "{err} outside 1..={lines}");
            prop_assert!(!err.message.is_empty());
        }
    }
    Ok(())
}

/// `PROPTEST_CASES` if set (the long run), else a count that runs in seconds.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(512)
}

/// The defaults, and everything (so that all of a page goes through the writer).
fn allowlists() -> &'static [Allowlist; 2] {
    static LISTS: OnceLock<[Allowlist; 2]> = OnceLock::new();
    LISTS.get_or_init(|| {
        [
            Allowlist::new(&[]).unwrap_or_else(|err| panic!("{err}")),
            Allowlist::new(&[".*".to_owned()]).unwrap_or_else(|err| panic!("{err}")),
        ]
    })
}

/// The filter never panics; a refusal is one line; what it keeps is at most a fixed
/// multiple of the page (a TYPE line per family, values spelled out: `9e15` becomes
/// `9000000000000000`) and parses back to as many families and samples.
fn check_filter(text: &str) -> Result<(), TestCaseError> {
    for allowlist in allowlists() {
        match filter_page(text, allowlist) {
            Ok(filtered) => {
                let bound = 8 * text.len() + 64;
                prop_assert!(
                    filtered.text.len() <= bound,
                    "{} bytes out of {} in",
                    filtered.text.len(),
                    text.len()
                );
                let again = parse(&filtered.text).map_err(|err| {
                    TestCaseError::fail(format!(
                        "pushed text does not parse: {err}\n{}",
                        filtered.text
                    ))
                })?;
                prop_assert_eq!(again.len(), filtered.pushed.families);
                let samples: usize = again.iter().map(|f| f.samples.len()).sum();
                prop_assert_eq!(samples, filtered.pushed.samples);
            }
            Err(err) => {
                let line = err.to_string();
                prop_assert!(!line.is_empty() && !line.contains('\n'), "{line:?}");
                if let PageError::DuplicateSeries(series) = &err {
                    prop_assert!(series.chars().count() <= 203, "{series:?}");
                }
            }
        }
    }
    Ok(())
}

/// A run of whole lines of the real page: `start` picks the first, at most `len` lines.
/// (A window, not the whole 146 KB page, keeps a case cheap enough for a million runs
/// and the edits dense.)
fn window(start: prop::sample::Index, len: usize) -> Vec<&'static str> {
    let lines: Vec<&str> = fixture().lines().collect();
    let first = start.index(lines.len());
    lines.into_iter().skip(first).take(len).collect()
}

fn mutate(
    start: prop::sample::Index,
    len: usize,
    edits: Vec<(prop::sample::Index, u8, u8)>,
) -> String {
    let mut bytes = window(start, len).join("\n").into_bytes();
    for (at, op, byte) in edits {
        if bytes.is_empty() {
            bytes.push(byte);
            continue;
        }
        let at = at.index(bytes.len());
        match op {
            0 => bytes.insert(at, byte),
            1 => {
                bytes.remove(at);
            }
            _ => bytes[at] = byte,
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn edits() -> impl Strategy<Value = Vec<(prop::sample::Index, u8, u8)>> {
    prop::collection::vec(
        (
            any::<prop::sample::Index>(),
            0u8..3,
            prop::sample::select(b"{}=\",# \n\r\t\\0.eE+-_aZ:\xc3\xff".to_vec()),
        ),
        1..6,
    )
}

/// Whole lines of the real page dropped, repeated or swapped: duplicated families,
/// HELP/TYPE after samples, orphan buckets.
fn line_edits() -> impl Strategy<Value = Vec<(prop::sample::Index, prop::sample::Index, u8)>> {
    prop::collection::vec(
        (
            any::<prop::sample::Index>(),
            any::<prop::sample::Index>(),
            0u8..3,
        ),
        1..8,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn valid_pages_parse_to_their_model_and_round_trip((model, style) in page()) {
        let text = render(&model, &style);
        let parsed = parse(&text).map_err(|err| TestCaseError::fail(format!("{err}\n{text}")))?;
        matches_model(&parsed, &model).map_err(|why| TestCaseError::fail(format!("{why}\n{text}")))?;
        for timestamps in [true, false] {
            let mut out = String::new();
            write(&parsed, &mut out, timestamps);
            let again = parse(&out).map_err(|err| TestCaseError::fail(format!("{err}\n{out}")))?;
            if timestamps {
                prop_assert!(same(&parsed, &again), "{}", out);
            } else {
                prop_assert!(again.iter().flat_map(|f| &f.samples).all(|s| s.timestamp_ms.is_none()));
                let mut stripped = parsed.clone();
                stripped.iter_mut().flat_map(|f| &mut f.samples).for_each(|s| s.timestamp_ms = None);
                prop_assert!(same(&stripped, &again), "{}", out);
            }
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in "(?s).{0,300}") {
        check_any(&text)?;
        check_filter(&text)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        check_any(&text)?;
        check_filter(&text)?;
    }

    #[test]
    fn token_soup_never_panics(tokens in prop::collection::vec(prop::sample::select(vec![
        "# HELP ", "# TYPE ", "#", "a", "a_sum", "a_count", "a_bucket", " histogram", " summary",
        " counter", "{", "}", "le", "quantile", "=", "\"", "\\", "\\n", ",", " ", "\t", "\n", "\r\n",
        "1", "-2.5e3", "NaN", "+Inf", "-Inf", "é", "__name__", "123456789", "9e15", "etcd_server_has_leader",
    ]), 0..60)) {
        let text = tokens.concat();
        check_any(&text)?;
        check_filter(&text)?;
    }

    #[test]
    fn mutated_fixture_never_panics(start in any::<prop::sample::Index>(), len in 1usize..400, edits in edits()) {
        let text = mutate(start, len, edits);
        check_any(&text)?;
        check_filter(&text)?;
    }

    #[test]
    fn fixture_with_lines_moved_never_panics(
        start in any::<prop::sample::Index>(),
        len in 1usize..400,
        edits in line_edits(),
    ) {
        let mut lines = window(start, len);
        for (from, to, op) in edits {
            if lines.is_empty() {
                break;
            }
            let (from, to) = (from.index(lines.len()), to.index(lines.len()));
            match op {
                0 => lines.insert(to, lines[from]),
                1 => { lines.remove(from); }
                _ => lines.swap(from, to),
            }
        }
        let text = lines.join("\n");
        check_any(&text)?;
        check_filter(&text)?;
    }

}

#[test]
fn the_whole_page_and_its_double_pass_the_filter_checks() {
    // The real page goes through as it is; served twice, its families repeat.
    for text in [fixture().to_owned(), fixture().repeat(2)] {
        check_any(&text).unwrap_or_else(|err| panic!("{err}"));
        check_filter(&text).unwrap_or_else(|err| panic!("{err}"));
    }
    let allow = &allowlists()[0];
    assert!(filter_page(fixture(), allow).is_ok());
    assert!(matches!(
        filter_page(&fixture().repeat(2), allow),
        Err(PageError::NotExposition(why)) if why.contains("second HELP line")
    ));
}
