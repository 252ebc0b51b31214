//! The Prometheus text exposition format, version 0.0.4: a parser that borrows from the
//! page and a writer that re-emits what the parser read.
//!
//! The collector reads etcd's `/metrics` page and pushes part of it to a Pushgateway, which
//! parses it with Prometheus' Go `expfmt` text parser; so this parser accepts and rejects
//! what `expfmt` does, and groups samples the same way: families are looked up by name
//! across the whole page, a sample joins the family of its own name or, for `_sum` and
//! `_count` of a summary or histogram and `_bucket` of a histogram, the family of the base
//! name; any other sample starts an untyped family of its own name. Families left without
//! samples are dropped, as `expfmt` drops them.
//!
//! Deliberately more lenient than `expfmt`: CRLF line ends, and blanks after a value, a
//! timestamp or a type. Deliberately stricter: a metric name must not be quoted (quoted
//! UTF-8 names are not part of 0.0.4), and a repeated `le`/`quantile` label is an error.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};

/// The type a `# TYPE` line declares; `Untyped` also for families without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

impl MetricKind {
    const ALL: [Self; 5] = [
        Self::Counter,
        Self::Gauge,
        Self::Histogram,
        Self::Summary,
        Self::Untyped,
    ];

    /// The spelling in a `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
            Self::Summary => "summary",
            Self::Untyped => "untyped",
        }
    }

    /// `expfmt` upper-cases the token before the lookup, so any case is accepted.
    fn from_token(token: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str().eq_ignore_ascii_case(token))
    }
}

/// One metric family: its HELP, its TYPE and its samples in page order.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricFamily<'a> {
    pub name: &'a str,
    /// Unescaped; owned only when the page escaped something.
    pub help: Option<Cow<'a, str>>,
    pub kind: MetricKind,
    pub samples: Vec<Sample<'a>>,
}

/// One sample line. `name` carries the suffix (`_bucket`, `_sum`, `_count`) if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    pub labels: Labels<'a>,
    pub value: f64,
    pub timestamp_ms: Option<i64>,
}

impl Sample<'_> {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name)
    }
}

/// A sample's labels in page order, `le` and `quantile` included. Parsing allocates
/// nothing for them (a vector per sample was a third of the parse time of etcd's page):
/// they stay a view of the page's text, checked by `parse` and read on demand, unless
/// the page escaped a value.
#[derive(Clone, Default)]
pub struct Labels<'a> {
    repr: LabelsRepr<'a>,
}

#[derive(Clone)]
enum LabelsRepr<'a> {
    /// A label set without escapes: the text after `{`, up to and including `}`; empty
    /// for a sample without labels.
    Text(&'a str),
    /// A label set with an escaped value, unescaped.
    Unescaped(Vec<(&'a str, String)>),
}

impl Default for LabelsRepr<'_> {
    fn default() -> Self {
        Self::Text("")
    }
}

impl Labels<'_> {
    /// Names and unescaped values.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let (mut reader, unescaped) = match &self.repr {
            LabelsRepr::Text(text) => (LabelReader { rest: text }, [].iter()),
            LabelsRepr::Unescaped(labels) => (LabelReader { rest: "" }, labels.iter()),
        };
        // `parse` checked the text and found no escape, so reading it can neither fail
        // nor need to unescape; stop if it did.
        let text = std::iter::from_fn(move || match reader.next("").ok()?? {
            (name, Cow::Borrowed(value)) => Some((name, value)),
            (_, Cow::Owned(_)) => None,
        });
        text.chain(unescaped.map(|(name, value)| (*name, value.as_str())))
    }

    /// The value of label `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(label, _)| *label == name)
            .map(|(_, value)| value)
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

/// Equal when the same names have the same values in the same order, however the page
/// spaced or escaped them.
impl PartialEq for Labels<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl std::fmt::Debug for Labels<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Where and why a page is not valid exposition text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based.
    pub line: usize,
    pub message: String,
}

/// Parses a whole page into its families, in the order each family first appears.
pub fn parse(text: &str) -> Result<Vec<MetricFamily<'_>>, ParseError> {
    let mut parser = Parser::default();
    for (index, line) in text.split('\n').enumerate() {
        parser
            .line(
                line.strip_suffix('\r')
                    .map_or(line, |l| l.trim_end_matches('\r')),
            )
            .map_err(|message| ParseError {
                line: index.saturating_add(1),
                message,
            })?;
    }
    Ok(parser.finish())
}

/// Appends `families` as exposition text: HELP (if any) and TYPE for each family, then its
/// samples, with HELP and label values escaped and values that parse back to the same
/// `f64`. Timestamps are written only when `timestamps` is true.
///
/// `parse` of the output gives the families back, unless a family named like another's
/// `_sum`/`_count`/`_bucket` comes after that histogram or summary (only a page that
/// declared the TYPE after such a sample yields that order).
pub fn write(families: &[MetricFamily<'_>], out: &mut String, timestamps: bool) {
    for family in families {
        if let Some(help) = &family.help {
            out.push_str("# HELP ");
            out.push_str(family.name);
            out.push(' ');
            push_escaped(out, help, false);
            out.push('\n');
        }
        out.push_str("# TYPE ");
        out.push_str(family.name);
        out.push(' ');
        out.push_str(family.kind.as_str());
        out.push('\n');
        for sample in &family.samples {
            out.push_str(sample.name);
            let mut separator = '{';
            for (name, value) in sample.labels.iter() {
                out.push(separator);
                separator = ',';
                out.push_str(name);
                out.push_str("=\"");
                push_escaped(out, value, true);
                out.push('"');
            }
            if separator == ',' {
                out.push('}');
            }
            out.push(' ');
            push_value(out, sample.value);
            if let (true, Some(timestamp)) = (timestamps, sample.timestamp_ms) {
                // Writing to a String cannot fail.
                let _ = write!(out, " {timestamp}");
            }
            out.push('\n');
        }
    }
}

/// Whether a family's type is still open to a `# TYPE` line (`expfmt` fixes it as
/// untyped at the first sample).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TypeState {
    Open,
    Declared,
    FromSamples,
}

struct Entry<'a> {
    family: MetricFamily<'a>,
    state: TypeState,
}

#[derive(Default)]
struct Parser<'a> {
    entries: Vec<Entry<'a>>,
    by_name: HashMap<&'a str, usize, BuildHasherDefault<FxHasher>>,
    /// The last sample name and its family: consecutive samples mostly share a name
    /// (histogram buckets, label variants), which saves scanning the name and the map
    /// lookups.
    last_sample: Option<(&'a str, usize)>,
    /// The family of the last HELP, TYPE or sample line, where most lines belong, and
    /// whether any family's name ends in `_sum`, `_count` or `_bucket`: together they let
    /// most lookups skip hashing.
    current: Option<usize>,
    suffixed_names: bool,
    /// The label names of the sample being read, to find duplicates without allocating.
    seen: Vec<&'a str>,
}

impl<'a> Parser<'a> {
    fn line(&mut self, line: &'a str) -> Result<(), String> {
        let line = skip_blanks(line);
        if let Some(comment) = line.strip_prefix('#') {
            self.comment(comment)
        } else if line.is_empty() {
            Ok(())
        } else {
            self.sample(line)
        }
    }

    /// The text after `#`: HELP and TYPE lines; anything else is a comment.
    fn comment(&mut self, text: &'a str) -> Result<(), String> {
        let (keyword, rest) = split_while(skip_blanks(text), |b| !is_blank(b));
        let is_help = match keyword {
            "HELP" => true,
            "TYPE" => false,
            _ => return Ok(()),
        };
        let rest = skip_blanks(rest);
        // Like `expfmt`, a HELP or TYPE line that stops before its text is ignored.
        if rest.is_empty() {
            return Ok(());
        }
        let (name, rest) = metric_name(rest);
        if name.is_empty() || !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
            return Err("invalid metric name in comment".into());
        }
        let body = skip_blanks(rest);
        if body.is_empty() {
            return Ok(());
        }
        // A TYPE can change which family a sample name falls into.
        self.last_sample = None;
        let index = self.family_index(name);
        let entry = entry_mut(&mut self.entries, index)?;
        if is_help {
            if entry.family.help.is_some() {
                return Err(format!(
                    "second HELP line for metric name {:?}",
                    entry.family.name
                ));
            }
            entry.family.help = Some(unescape_help(body)?);
            return Ok(());
        }
        match entry.state {
            TypeState::Open => {}
            TypeState::Declared => {
                return Err(format!(
                    "second TYPE line for metric name {:?}",
                    entry.family.name
                ));
            }
            TypeState::FromSamples => {
                return Err(format!(
                    "TYPE line for metric name {:?} after its samples",
                    entry.family.name
                ));
            }
        }
        let token = body.trim_end_matches([' ', '\t']);
        entry.family.kind = MetricKind::from_token(token)
            .ok_or_else(|| format!("unknown metric type {token:?}"))?;
        entry.state = TypeState::Declared;
        Ok(())
    }

    fn sample(&mut self, line: &'a str) -> Result<(), String> {
        let repeated = self
            .last_sample
            .and_then(|(last, index)| Some((same_name(line, last)?, index)));
        let (name, rest, index) = match repeated {
            Some(((name, rest), index)) => (name, rest, index),
            None => {
                let (name, rest) = metric_name(line);
                if name.is_empty() {
                    return Err(format!(
                        "expected a metric name, found {:?}",
                        rest.chars().next().unwrap_or(' ')
                    ));
                }
                let index = self.family_index(name);
                self.last_sample = Some((name, index));
                (name, rest, index)
            }
        };
        let entry = entry_mut(&mut self.entries, index)?;
        // As in `expfmt`, anything after the name that is not a label set is the value,
        // even without a blank in between.
        let mut rest = skip_blanks(rest);
        let mut labels = Labels::default();
        if let Some(inside) = rest.strip_prefix('{') {
            let family = &entry.family;
            let (after, escaped) = check_labels(inside, family.name, family.kind, &mut self.seen)?;
            let set = inside
                .get(..inside.len().saturating_sub(after.len()))
                .unwrap_or(inside);
            labels.repr = if escaped {
                let mut reader = LabelReader { rest: set };
                let unescaped = std::iter::from_fn(|| reader.next("").ok().flatten());
                LabelsRepr::Unescaped(
                    unescaped
                        .map(|(name, value)| (name, value.into_owned()))
                        .collect(),
                )
            } else {
                LabelsRepr::Text(set)
            };
            rest = skip_blanks(after);
        }
        let (token, rest) = split_while(rest, |b| !is_blank(b));
        let value =
            parse_float(token).ok_or_else(|| format!("expected float as value, got {token:?}"))?;
        let rest = skip_blanks(rest);
        let timestamp_ms = if rest.is_empty() {
            None
        } else {
            let (token, rest) = split_while(rest, |b| !is_blank(b));
            let timestamp = token
                .parse::<i64>()
                .map_err(|_| format!("expected integer as timestamp, got {token:?}"))?;
            let rest = skip_blanks(rest);
            if !rest.is_empty() {
                return Err(format!("spurious string after timestamp: {rest:?}"));
            }
            Some(timestamp)
        };
        if entry.state == TypeState::Open {
            entry.state = TypeState::FromSamples;
        }
        entry.family.samples.push(Sample {
            name,
            labels,
            value,
            timestamp_ms,
        });
        Ok(())
    }

    /// The family `name` belongs to, created (untyped, open) if there is none; the same
    /// lookup as `expfmt`'s `setOrCreateCurrentMF`.
    fn family_index(&mut self, name: &'a str) -> usize {
        let index = self.lookup(name).unwrap_or_else(|| self.create(name));
        self.current = Some(index);
        index
    }

    fn create(&mut self, name: &'a str) -> usize {
        let index = self.entries.len();
        self.entries.push(Entry {
            family: MetricFamily {
                name,
                help: None,
                kind: MetricKind::Untyped,
                samples: Vec::new(),
            },
            state: TypeState::Open,
        });
        self.by_name.insert(name, index);
        self.suffixed_names |= split_suffix(name).is_some();
        index
    }

    fn lookup(&self, name: &str) -> Option<usize> {
        let current = self
            .current
            .and_then(|index| Some((index, self.entries.get(index)?)));
        if let Some((index, entry)) = current {
            if entry.family.name == name {
                return Some(index);
            }
            // With no family named like `x_sum`, the exact lookup below would miss.
            let base_is_current = split_suffix(name).is_some_and(|(base, kinds)| {
                base == entry.family.name && kinds.contains(&entry.family.kind)
            });
            if base_is_current && !self.suffixed_names {
                return Some(index);
            }
        }
        if let Some(&index) = self.by_name.get(name) {
            return Some(index);
        }
        let (base, kinds) = split_suffix(name)?;
        let index = *self.by_name.get(base)?;
        let entry = self.entries.get(index)?;
        kinds.contains(&entry.family.kind).then_some(index)
    }

    fn finish(self) -> Vec<MetricFamily<'a>> {
        self.entries
            .into_iter()
            .map(|entry| entry.family)
            .filter(|family| !family.samples.is_empty())
            .collect()
    }
}

/// The Fx hash of rustc: SipHash was a tenth of the parse time. Names come from the
/// scraped etcd, not from an adversary, so resisting hash flooding buys nothing here.
#[derive(Default)]
struct FxHasher {
    hash: u64,
}

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            self.add(u64::from_le_bytes(word.try_into().unwrap_or_default()));
        }
        for &byte in words.remainder() {
            self.add(u64::from(byte));
        }
    }

    fn finish(&self) -> u64 {
        // The table indexes by the low bits, which a multiply leaves poorly mixed.
        self.hash.rotate_left(26)
    }
}

/// Indexes come from `Parser::family_index`, so this never fails; no panic if it did.
fn entry_mut<'e, 'a>(
    entries: &'e mut [Entry<'a>],
    index: usize,
) -> Result<&'e mut Entry<'a>, String> {
    entries
        .get_mut(index)
        .ok_or_else(|| format!("internal error: no family at index {index}"))
}

/// A name's base and the kinds of family the base may name, if it ends in `_count` or
/// `_sum` (summaries and histograms) or `_bucket` (histograms).
fn split_suffix(name: &str) -> Option<(&str, &'static [MetricKind])> {
    if let Some(base) = name
        .strip_suffix("_count")
        .or_else(|| name.strip_suffix("_sum"))
    {
        Some((base, &[MetricKind::Summary, MetricKind::Histogram]))
    } else {
        name.strip_suffix("_bucket")
            .map(|base| (base, &[MetricKind::Histogram][..]))
    }
}

/// Checks a label set; `text` starts after the `{`. Returns the text after the `}` and
/// whether a value was escaped.
fn check_labels<'a>(
    text: &'a str,
    metric: &str,
    kind: MetricKind,
    seen: &mut Vec<&'a str>,
) -> Result<(&'a str, bool), String> {
    // `le` and `quantile` must be numbers in the families that give them meaning.
    let numeric = match kind {
        MetricKind::Histogram => "le",
        MetricKind::Summary => "quantile",
        _ => "",
    };
    seen.clear();
    let mut escaped = false;
    let mut reader = LabelReader { rest: text };
    while let Some((name, value)) = reader.next(metric)? {
        escaped |= matches!(value, Cow::Owned(_));
        if seen.contains(&name) {
            return Err(format!(
                "duplicate label name {name:?} for metric {metric:?}"
            ));
        }
        if name == numeric && parse_float(&value).is_none() {
            return Err(format!(
                "expected float as value for '{numeric}' label, got {value:?}"
            ));
        }
        seen.push(name);
    }
    Ok((reader.rest, escaped))
}

/// Reads a label set one label at a time, from after `{` to after `}`; the grammar both
/// for checking a page and for reading the labels of a checked one.
struct LabelReader<'a> {
    rest: &'a str,
}

impl<'a> LabelReader<'a> {
    /// The next label, or `None` once past the `}`. `metric` only names the metric in
    /// errors. (An empty `Labels` ends here with an error, which its reading ignores.)
    fn next(&mut self, metric: &str) -> Result<Option<(&'a str, Cow<'a, str>)>, String> {
        let text = skip_blanks(self.rest);
        if text.is_empty() {
            return Err(format!(
                "label set of metric {metric:?} is not closed by '}}'"
            ));
        }
        if let Some(after) = text.strip_prefix('}') {
            self.rest = after;
            return Ok(None);
        }
        let (name, rest) = label_name(text);
        if name.is_empty() {
            return Err(format!("invalid label name for metric {metric:?}"));
        }
        let Some(rest) = skip_blanks(rest).strip_prefix('=') else {
            return Err(format!("expected '=' after label name {name:?}"));
        };
        if name == "__name__" {
            return Err("label name \"__name__\" is reserved".into());
        }
        let Some(rest) = skip_blanks(rest).strip_prefix('"') else {
            return Err(format!(
                "expected '\"' at start of the value of label {name:?}"
            ));
        };
        let (value, rest) = label_value(rest, name)?;
        let rest = skip_blanks(rest);
        if let Some(after) = rest.strip_prefix(',') {
            self.rest = after;
        } else if rest.starts_with('}') {
            self.rest = rest;
        } else {
            return Err(format!(
                "expected ',' or '}}' after the value of label {name:?}"
            ));
        }
        Ok(Some((name, value)))
    }
}

/// A quoted label value; `text` starts after the opening quote. Returns the unescaped
/// value and the text after the closing quote.
fn label_value<'a>(text: &'a str, name: &str) -> Result<(Cow<'a, str>, &'a str), String> {
    let unterminated = || format!("value of label {name:?} is not terminated");
    let end = text
        .bytes()
        .position(|b| b == b'"' || b == b'\\')
        .ok_or_else(unterminated)?;
    // The common case: no escapes, so the value is a slice of the page.
    let (value, rest) = text.split_at_checked(end).unwrap_or((text, ""));
    if let Some(after) = rest.strip_prefix('"') {
        return Ok((Cow::Borrowed(value), after));
    }
    let mut value = String::with_capacity(text.len());
    let mut chars = text.char_indices();
    while let Some((index, c)) = chars.next() {
        match c {
            '"' => {
                let after = text.get(index.saturating_add(1)..).unwrap_or("");
                return Ok((Cow::Owned(value), after));
            }
            '\\' => match chars.next() {
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                Some((_, 'n')) => value.push('\n'),
                Some((_, other)) => {
                    return Err(format!(
                        "invalid escape sequence '\\{other}' in the value of label {name:?}"
                    ));
                }
                None => return Err(unterminated()),
            },
            c => value.push(c),
        }
    }
    Err(unterminated())
}

/// HELP text knows `\\` and `\n` (and `\"`, which newer `expfmt` accepts).
fn unescape_help(text: &str) -> Result<Cow<'_, str>, String> {
    if !text.contains('\\') {
        return Ok(Cow::Borrowed(text));
    }
    let mut help = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            help.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => help.push('\\'),
            Some('n') => help.push('\n'),
            Some('"') => help.push('"'),
            Some(other) => return Err(format!("invalid escape sequence '\\{other}' in HELP")),
            None => return Err("HELP text ends in an unfinished escape '\\'".into()),
        }
    }
    Ok(Cow::Owned(help))
}

/// A sample value or an `le`/`quantile` label value.
fn parse_float(token: &str) -> Option<f64> {
    match token {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        // Like Go's strconv.ParseFloat, Rust also takes "inf", "infinity" and "nan" in any
        // case, and neither takes '_' or hex floats.
        _ => token.parse().ok(),
    }
}

/// Values as `expfmt` spells the specials, otherwise the shortest text that parses back to
/// the same `f64`.
fn push_value(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value == f64::INFINITY {
        out.push_str("+Inf");
    } else if value == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let magnitude = value.abs();
        // `Display` never uses an exponent, so 1e300 would take 301 digits.
        // Writing to a String cannot fail.
        let _ = if magnitude != 0.0 && !(1e-5..1e16).contains(&magnitude) {
            write!(out, "{value:e}")
        } else {
            write!(out, "{value}")
        };
    }
}

/// Escapes `\` and newlines, and `"` too when `quote` (label values).
fn push_escaped(out: &mut String, text: &str, quote: bool) {
    let mut rest = text;
    while let Some(end) = rest.find(|c| c == '\\' || c == '\n' || (quote && c == '"')) {
        let (plain, special) = rest.split_at_checked(end).unwrap_or((rest, ""));
        out.push_str(plain);
        let mut chars = special.chars();
        match chars.next() {
            Some('\n') => out.push_str("\\n"),
            Some(c) => {
                out.push('\\');
                out.push(c);
            }
            None => {}
        }
        rest = chars.as_str();
    }
    out.push_str(rest);
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn skip_blanks(text: &str) -> &str {
    // Most calls find no blank; checking one byte first is cheaper than the char matcher.
    match text.as_bytes().first() {
        Some(b' ' | b'\t') => text.trim_start_matches([' ', '\t']),
        _ => text,
    }
}

/// Splits `text` before the first byte that `keep` refuses.
fn split_while(text: &str, keep: impl Fn(u8) -> bool) -> (&str, &str) {
    let end = text.bytes().position(|b| !keep(b)).unwrap_or(text.len());
    // Every predicate here refuses all non-ASCII bytes or accepts all of them, so `end`
    // is a char boundary and the fallback is never taken.
    text.split_at_checked(end).unwrap_or((text, ""))
}

const METRIC_NAME: u8 = 1;
const LABEL_NAME: u8 = 2;

/// Which names each byte may appear in: names are most of a page, and one lookup is
/// cheaper than a chain of range checks.
const NAME_BYTES: [u8; 256] = {
    let mut table = [0; 256];
    let mut byte = 0;
    while byte < table.len() {
        let b = byte as u8;
        if b.is_ascii_alphanumeric() || b == b'_' {
            table[byte] = METRIC_NAME | LABEL_NAME;
        } else if b == b':' {
            table[byte] = METRIC_NAME;
        }
        byte += 1;
    }
    table
};

fn in_name(b: u8, name: u8) -> bool {
    // A u8 always indexes a 256-entry table.
    NAME_BYTES[usize::from(b)] & name != 0
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*` at the start of `text`, and the rest.
fn metric_name(text: &str) -> (&str, &str) {
    match text.bytes().next() {
        Some(b) if !b.is_ascii_digit() => split_while(text, |b| in_name(b, METRIC_NAME)),
        _ => ("", text),
    }
}

/// `[a-zA-Z_][a-zA-Z0-9_]*` at the start of `text`, and the rest.
fn label_name(text: &str) -> (&str, &str) {
    match text.bytes().next() {
        Some(b) if !b.is_ascii_digit() => split_while(text, |b| in_name(b, LABEL_NAME)),
        _ => ("", text),
    }
}

/// `line` split after its metric name if that name is `last`.
fn same_name<'a>(line: &'a str, last: &str) -> Option<(&'a str, &'a str)> {
    let (name, rest) = line.split_at_checked(last.len())?;
    let whole = !rest.bytes().next().is_some_and(|b| in_name(b, METRIC_NAME));
    (whole && name == last).then_some((name, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/etcd-3.4.23-metrics.txt"
    );

    fn fixture() -> String {
        std::fs::read_to_string(FIXTURE).unwrap_or_else(|err| panic!("{FIXTURE}: {err}"))
    }

    fn family<'f, 'a>(families: &'f [MetricFamily<'a>], name: &str) -> &'f MetricFamily<'a> {
        families
            .iter()
            .find(|family| family.name == name)
            .unwrap_or_else(|| panic!("no family {name}"))
    }

    fn error(text: &str) -> ParseError {
        match parse(text) {
            Ok(families) => panic!("{text:?} parsed: {families:?}"),
            Err(err) => err,
        }
    }

    /// Equality with NaN equal to NaN (and -0 distinct from 0, so exact round trips).
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
                            && (a.value.to_bits() == b.value.to_bits()
                                || (a.value.is_nan() && b.value.is_nan()))
                    })
            })
    }

    fn written(families: &[MetricFamily<'_>], timestamps: bool) -> String {
        let mut out = String::new();
        write(families, &mut out, timestamps);
        out
    }

    #[test]
    fn fixture_has_all_families_and_samples() {
        let text = fixture();
        let families = parse(&text).unwrap();
        assert_eq!(families.len(), 123);
        let samples: usize = families.iter().map(|family| family.samples.len()).sum();
        assert_eq!(samples, 1246);
        let count = |kind| families.iter().filter(|f| f.kind == kind).count();
        assert_eq!(count(MetricKind::Counter), 41);
        assert_eq!(count(MetricKind::Gauge), 63);
        assert_eq!(count(MetricKind::Histogram), 18);
        assert_eq!(count(MetricKind::Summary), 1);
        assert_eq!(
            families.first().map(|f| f.name),
            Some("etcd_cluster_version")
        );
        assert_eq!(
            families.last().map(|f| f.name),
            Some("promhttp_metric_handler_requests_total")
        );
        assert!(families.iter().all(|f| f.help.is_some()));
        let handled = family(&families, "grpc_server_handled_total");
        assert_eq!(handled.kind, MetricKind::Counter);
        assert_eq!(handled.samples.len(), 697);
    }

    #[test]
    fn fixture_wal_fsync_histogram() {
        let text = fixture();
        let families = parse(&text).unwrap();
        let fsync = family(&families, "etcd_disk_wal_fsync_duration_seconds");
        assert_eq!(fsync.kind, MetricKind::Histogram);
        assert_eq!(
            fsync.help.as_deref(),
            Some("The latency distributions of fsync called by WAL.")
        );
        let buckets: Vec<_> = fsync
            .samples
            .iter()
            .filter(|s| s.name == "etcd_disk_wal_fsync_duration_seconds_bucket")
            .collect();
        let bounds: Vec<_> = buckets.iter().map(|s| s.label("le").unwrap()).collect();
        assert_eq!(
            bounds,
            [
                "0.001", "0.002", "0.004", "0.008", "0.016", "0.032", "0.064", "0.128", "0.256",
                "0.512", "1.024", "2.048", "4.096", "8.192", "+Inf"
            ]
        );
        let counts: Vec<_> = buckets.iter().map(|s| s.value).collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
        assert_eq!(counts.first(), Some(&182.0));
        let inf = buckets.last().unwrap().value;
        assert_eq!(inf, 213.0);
        let by_name = |name: &str| {
            fsync
                .samples
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.value)
                .unwrap()
        };
        assert_eq!(by_name("etcd_disk_wal_fsync_duration_seconds_count"), inf);
        assert_eq!(
            by_name("etcd_disk_wal_fsync_duration_seconds_sum"),
            0.20443096599999996
        );
        assert_eq!(fsync.samples.len(), 17);
    }

    #[test]
    fn fixture_gauge_and_summary() {
        let text = fixture();
        let families = parse(&text).unwrap();
        let size = family(&families, "etcd_mvcc_db_total_size_in_bytes");
        assert_eq!(size.kind, MetricKind::Gauge);
        assert_eq!(size.samples.len(), 1);
        assert_eq!(size.samples[0].value, 93_528_064.0);
        assert!(size.samples[0].labels.is_empty());
        assert_eq!(
            size.help.as_deref(),
            Some("Total size of the underlying database physically allocated in bytes.")
        );

        let gc = family(&families, "go_gc_duration_seconds");
        assert_eq!(gc.kind, MetricKind::Summary);
        let quantiles: Vec<_> = gc
            .samples
            .iter()
            .filter_map(|s| Some((s.label("quantile")?, s.value)))
            .collect();
        assert_eq!(
            quantiles,
            [
                ("0", 1.8156e-05),
                ("0.25", 4.3656e-05),
                ("0.5", 9.386e-05),
                ("0.75", 0.000143293),
                ("1", 0.004452046)
            ]
        );
        let tail: Vec<_> = gc.samples[5..].iter().map(|s| (s.name, s.value)).collect();
        assert_eq!(
            tail,
            [
                ("go_gc_duration_seconds_sum", 0.011644452),
                ("go_gc_duration_seconds_count", 47.0)
            ]
        );

        let version = family(&families, "etcd_cluster_version");
        assert_eq!(version.samples[0].label("cluster_version"), Some("3.4"));
        assert_eq!(
            version.help.as_deref(),
            Some(
                "Which version is running. 1 for 'cluster_version' label with current cluster version"
            )
        );
    }

    #[test]
    fn fixture_borrows_everything() {
        let text = fixture();
        let families = parse(&text).unwrap();
        for family in &families {
            assert!(
                matches!(family.help, Some(Cow::Borrowed(_))),
                "{}",
                family.name
            );
            for sample in &family.samples {
                assert!(
                    matches!(sample.labels.repr, LabelsRepr::Text(_)),
                    "{sample:?}"
                );
            }
        }
    }

    #[test]
    fn fixture_round_trips() {
        let text = fixture();
        let families = parse(&text).unwrap();
        for timestamps in [false, true] {
            let out = written(&families, timestamps);
            let again = parse(&out).unwrap();
            assert!(same(&families, &again));
            // Re-emitted text is a fixed point.
            assert_eq!(written(&again, timestamps), out);
        }
    }

    #[test]
    fn empty_and_comment_only_pages() {
        for text in [
            "",
            "\n",
            "\n\n  \t\n",
            "# just a comment\n",
            "#\n#HELPER x y\n# other words here\n",
            "# HELP\n# TYPE\n# HELP foo\n# TYPE foo\n# TYPE foo   \n",
            "# HELP foo documented but no samples\n# TYPE foo counter\n",
        ] {
            assert_eq!(parse(text), Ok(vec![]), "{text:?}");
        }
    }

    #[test]
    fn other_comments_are_ignored_between_samples() {
        let families =
            parse("# TYPE a counter\n# a comment, TYPE a gauge\na 1\n  # indented\na{x=\"y\"} 2\n")
                .unwrap();
        assert_eq!(families.len(), 1);
        assert_eq!(families[0].kind, MetricKind::Counter);
        assert_eq!(families[0].samples.len(), 2);
    }

    #[test]
    fn help_escapes() {
        let families =
            parse("# HELP a back\\\\slash new\\nline \\\"quoted\\\" \"raw\" trailing  \na 1\n")
                .unwrap();
        assert_eq!(
            families[0].help.as_deref(),
            Some("back\\slash new\nline \"quoted\" \"raw\" trailing  ")
        );
        assert!(matches!(families[0].help, Some(Cow::Owned(_))));
        let families = parse("#HELP\ta\t\tplain text\na 1\n").unwrap();
        assert!(matches!(
            families[0].help,
            Some(Cow::Borrowed("plain text"))
        ));
    }

    #[test]
    fn label_escapes() {
        let families =
            parse("a{path=\"C:\\\\dir\",q=\"say \\\"hi\\\"\",nl=\"x\\ny\",u=\"é{,}=\"} 1\n")
                .unwrap();
        let sample = &families[0].samples[0];
        assert_eq!(sample.label("path"), Some("C:\\dir"));
        assert_eq!(sample.label("q"), Some("say \"hi\""));
        assert_eq!(sample.label("nl"), Some("x\ny"));
        assert_eq!(sample.label("u"), Some("é{,}="));
        assert!(matches!(sample.labels.repr, LabelsRepr::Unescaped(_)));
        let plain = parse("a{u=\"é{,}=\"} 1\n").unwrap();
        assert!(matches!(
            plain[0].samples[0].labels.repr,
            LabelsRepr::Text(_)
        ));
        assert_eq!(sample.label("missing"), None);
    }

    #[test]
    fn label_set_spacing_and_trailing_comma() {
        let families = parse("a { x = \"1\" , y=\"2\", } 1\na{} 2\na{z=\"\"}3\n").unwrap();
        let samples = &families[0].samples;
        assert_eq!(samples[0].labels.len(), 2);
        assert_eq!(samples[0].label("y"), Some("2"));
        assert!(samples[1].labels.is_empty());
        assert_eq!(samples[2].label("z"), Some(""));
        assert_eq!(samples[2].value, 3.0);
    }

    #[test]
    fn special_and_exponent_values() {
        let text = "a{v=\"1\"} NaN\na{v=\"2\"} +Inf\na{v=\"3\"} -Inf\na{v=\"4\"} Inf\n\
                    a{v=\"5\"} 1.5e3\na{v=\"6\"} -2E-2\na{v=\"7\"} +7\na{v=\"8\"} .5\n\
                    a{v=\"9\"} 9.3528064e+07\na{v=\"10\"} -0\na{v=\"11\"} inf\n";
        let values: Vec<f64> = parse(text).unwrap()[0]
            .samples
            .iter()
            .map(|s| s.value)
            .collect();
        assert!(values[0].is_nan());
        assert_eq!(
            values[1..],
            [
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::INFINITY,
                1500.0,
                -0.02,
                7.0,
                0.5,
                93_528_064.0,
                0.0,
                f64::INFINITY
            ]
        );
        assert!(values[9].is_sign_negative());
    }

    #[test]
    fn timestamps() {
        let text = "a 1 1700000000000\na{x=\"y\"} 2 -5 \na 3\n";
        let families = parse(text).unwrap();
        let stamps: Vec<_> = families[0].samples.iter().map(|s| s.timestamp_ms).collect();
        assert_eq!(stamps, [Some(1_700_000_000_000), Some(-5), None]);
        assert_eq!(
            written(&families, true),
            "# TYPE a untyped\na 1 1700000000000\na{x=\"y\"} 2 -5\na 3\n"
        );
        assert_eq!(
            written(&families, false),
            "# TYPE a untyped\na 1\na{x=\"y\"} 2\na 3\n"
        );
    }

    #[test]
    fn untyped_families() {
        let families = parse(
            "lone 1\n# HELP helped with help only\nhelped 2\n# TYPE declared untyped\ndeclared 3\n",
        )
        .unwrap();
        let kinds: Vec<_> = families.iter().map(|f| (f.name, f.kind)).collect();
        assert_eq!(
            kinds,
            [
                ("lone", MetricKind::Untyped),
                ("helped", MetricKind::Untyped),
                ("declared", MetricKind::Untyped)
            ]
        );
        assert_eq!(families[0].help, None);
        assert_eq!(families[1].help.as_deref(), Some("with help only"));
    }

    #[test]
    fn help_may_follow_samples_and_types_are_case_insensitive() {
        let families = parse("# TYPE a COUNTER \t\na 1\n# HELP a late help\n").unwrap();
        assert_eq!(families[0].kind, MetricKind::Counter);
        assert_eq!(families[0].help.as_deref(), Some("late help"));
    }

    #[test]
    fn summary_groups_quantiles_sum_and_count() {
        let text = "# TYPE rpc summary\nrpc{quantile=\"0.5\",m=\"get\"} 1\nrpc{quantile=\"0.99\",m=\"get\"} 2\n\
                    rpc_sum{m=\"get\"} 10\nrpc_count{m=\"get\"} 4\n# TYPE c counter\nc 1\nc_count 2\nc_sum 3\n";
        let families = parse(text).unwrap();
        let names: Vec<_> = families.iter().map(|f| f.name).collect();
        assert_eq!(names, ["rpc", "c", "c_count", "c_sum"]);
        assert_eq!(families[0].kind, MetricKind::Summary);
        assert_eq!(families[0].samples.len(), 4);
        assert_eq!(families[2].kind, MetricKind::Untyped);
    }

    #[test]
    fn histogram_groups_buckets_sum_and_count() {
        let text = "# TYPE h histogram\nh_bucket{op=\"r\",le=\"1\"} 1\nh_bucket{op=\"r\",le=\"+Inf\"} 2\n\
                    h_sum{op=\"r\"} 3\nh_count{op=\"r\"} 2\nh_bucket{op=\"w\",le=\"1e-3\"} 0\n\
                    h_bucket{op=\"w\",le=\"+Inf\"} 0\nh_sum{op=\"w\"} 0\nh_count{op=\"w\"} 0\n\
                    # TYPE g gauge\ng 0\ng_bucket 1\n";
        let families = parse(text).unwrap();
        assert_eq!(families.len(), 3);
        assert_eq!(families[0].kind, MetricKind::Histogram);
        assert_eq!(families[0].samples.len(), 8);
        // `_bucket` only belongs to histograms.
        assert_eq!(
            (families[2].name, families[2].kind),
            ("g_bucket", MetricKind::Untyped)
        );
    }

    #[test]
    fn exact_names_win_over_suffixes() {
        // As in `expfmt`: a family named `x_sum` takes `x_sum` samples even after `x`
        // becomes a summary; `x_count` still joins the summary.
        let text = "x_sum 1\n# TYPE x summary\nx_sum 2\nx_count 3\nx{quantile=\"0.5\"} 4\n";
        let families = parse(text).unwrap();
        let shape: Vec<_> = families
            .iter()
            .map(|f| (f.name, f.kind, f.samples.len()))
            .collect();
        assert_eq!(
            shape,
            [
                ("x_sum", MetricKind::Untyped, 2),
                ("x", MetricKind::Summary, 2)
            ]
        );
    }

    #[test]
    fn interleaved_samples_join_their_family() {
        // `expfmt` looks families up by name across the page.
        let families = parse("# TYPE a counter\na 1\n# TYPE b gauge\nb 2\na{x=\"1\"} 3\n").unwrap();
        assert_eq!(families.len(), 2);
        assert_eq!(families[0].samples.len(), 2);
        assert_eq!(families[0].samples[1].value, 3.0);
        // Written out, each family is contiguous.
        assert_eq!(
            written(&families, false),
            "# TYPE a counter\na 1\na{x=\"1\"} 3\n# TYPE b gauge\nb 2\n"
        );
    }

    #[test]
    fn tolerates_crlf_blanks_tabs_and_missing_final_newline() {
        let text = "\r\n# HELP a x\r\n# TYPE a gauge\r\n\r\n  a{b=\"c\"}\t 1 \t\r\n\ta 2 42\t\r\n\n   \na 3";
        let families = parse(text).unwrap();
        assert_eq!(families.len(), 1);
        assert_eq!(families[0].help.as_deref(), Some("x"));
        let values: Vec<_> = families[0]
            .samples
            .iter()
            .map(|s| (s.value, s.timestamp_ms))
            .collect();
        assert_eq!(values, [(1.0, None), (2.0, Some(42)), (3.0, None)]);
    }

    #[test]
    fn errors_carry_line_and_reason() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "a 1\n# TYPE a counter\n",
                2,
                "TYPE line for metric name \"a\" after its samples",
            ),
            (
                "# TYPE a counter\n# TYPE a gauge\n",
                2,
                "second TYPE line for metric name \"a\"",
            ),
            (
                "# TYPE h histogram\n# TYPE h_sum gauge\n",
                2,
                "second TYPE line for metric name \"h\"",
            ),
            (
                "# HELP a x\n\n# HELP a y\n",
                3,
                "second HELP line for metric name \"a\"",
            ),
            ("# TYPE a countr\n", 1, "unknown metric type \"countr\""),
            (
                "# TYPE a gauge_histogram\n",
                1,
                "unknown metric type \"gauge_histogram\"",
            ),
            ("# TYPE 1a counter\n", 1, "invalid metric name in comment"),
            ("# HELP a-b text\n", 1, "invalid metric name in comment"),
            ("ok 1\n1a 2\n", 2, "expected a metric name, found '1'"),
            (
                "{__name__=\"a\"} 1\n",
                1,
                "expected a metric name, found '{'",
            ),
            ("a{1x=\"y\"} 1\n", 1, "invalid label name for metric \"a\""),
            ("a{,} 1\n", 1, "invalid label name for metric \"a\""),
            (
                "x 1\n\na{le \"1\"} 1\n",
                3,
                "expected '=' after label name \"le\"",
            ),
            (
                "a{__name__=\"b\"} 1\n",
                1,
                "label name \"__name__\" is reserved",
            ),
            (
                "a{x=\"1\",x=\"2\"} 1\n",
                1,
                "duplicate label name \"x\" for metric \"a\"",
            ),
            (
                "a{x=1} 1\n",
                1,
                "expected '\"' at start of the value of label \"x\"",
            ),
            (
                "a{x=\"\\t\"} 1\n",
                1,
                "invalid escape sequence '\\t' in the value of label \"x\"",
            ),
            (
                "a{x=\"open} 1\n",
                1,
                "value of label \"x\" is not terminated",
            ),
            (
                "a{x=\"1\" y=\"2\"} 1\n",
                1,
                "expected ',' or '}' after the value of label \"x\"",
            ),
            (
                "a{x=\"1\"\n",
                1,
                "expected ',' or '}' after the value of label \"x\"",
            ),
            (
                "a{x=\"1\",\n",
                1,
                "label set of metric \"a\" is not closed by '}'",
            ),
            ("a{\n", 1, "label set of metric \"a\" is not closed by '}'"),
            ("a one\n", 1, "expected float as value, got \"one\""),
            ("a\n", 1, "expected float as value, got \"\""),
            ("a{x=\"1\"}\n", 1, "expected float as value, got \"\""),
            ("a 1_000\n", 1, "expected float as value, got \"1_000\""),
            ("a 0x1p3\n", 1, "expected float as value, got \"0x1p3\""),
            (
                "# TYPE h histogram\nh_bucket{le=\"big\"} 1\n",
                2,
                "expected float as value for 'le' label, got \"big\"",
            ),
            (
                "# TYPE s summary\ns{quantile=\"\"} 1\n",
                2,
                "expected float as value for 'quantile' label, got \"\"",
            ),
            ("a 1 1.5\n", 1, "expected integer as timestamp, got \"1.5\""),
            (
                "a 1 99999999999999999999\n",
                1,
                "expected integer as timestamp, got \"99999999999999999999\"",
            ),
            ("a 1 2 3\n", 1, "spurious string after timestamp: \"3\""),
            (
                "# HELP a bad \\t escape\n",
                1,
                "invalid escape sequence '\\t' in HELP",
            ),
            (
                "# HELP a ends in \\\n",
                1,
                "HELP text ends in an unfinished escape '\\'",
            ),
            (
                "a 1\r\nb 2\r\nc{ 3\r\n",
                3,
                "invalid label name for metric \"c\"",
            ),
        ];
        for &(text, line, message) in cases {
            let err = error(text);
            assert_eq!(
                (err.line, err.message.as_str()),
                (line, message),
                "{text:?}"
            );
        }
    }

    #[test]
    fn le_and_quantile_are_only_numeric_where_they_mean_something() {
        let families = parse("a{le=\"x\",quantile=\"y\"} 1\n").unwrap();
        assert_eq!(families[0].samples[0].label("le"), Some("x"));
    }

    #[test]
    fn error_display_names_the_line() {
        assert_eq!(
            error("a 1\nb{le \"1\"} 2\n").to_string(),
            "line 2: expected '=' after label name \"le\""
        );
    }

    #[test]
    fn writer_output_is_exact() {
        let text = "# HELP h Latency \\\\ of\\nthings.\n# TYPE h histogram\n\
                    h_bucket{path=\"/a\\\"b\\\\c\\nd\",le=\"0.5\"} 1\nh_bucket{path=\"/\",le=\"+Inf\"} 2\n\
                    h_sum{path=\"/\"} 1e-7\nh_count{path=\"/\"} 2\nbig 1e300 7\nneg -Inf\nnan NaN\nfrac 0.25\n";
        let families = parse(text).unwrap();
        assert_eq!(
            written(&families, true),
            "# HELP h Latency \\\\ of\\nthings.\n# TYPE h histogram\n\
             h_bucket{path=\"/a\\\"b\\\\c\\nd\",le=\"0.5\"} 1\nh_bucket{path=\"/\",le=\"+Inf\"} 2\n\
             h_sum{path=\"/\"} 1e-7\nh_count{path=\"/\"} 2\n# TYPE big untyped\nbig 1e300 7\n\
             # TYPE neg untyped\nneg -Inf\n# TYPE nan untyped\nnan NaN\n# TYPE frac untyped\nfrac 0.25\n"
        );
    }

    #[test]
    fn written_values_parse_back_exactly() {
        let values = [
            0.0,
            -0.0,
            1.0,
            -1.5,
            0.1,
            1.0 / 3.0,
            1e-5,
            9.999e-6,
            1e16,
            9_999_999_999_999_998.0,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        for value in values {
            let mut out = String::new();
            push_value(&mut out, value);
            let back = parse_float(&out).unwrap();
            assert_eq!(back.to_bits(), value.to_bits(), "{value} -> {out}");
            assert!(out.len() <= 24, "{out}");
        }
    }

    #[test]
    fn families_without_samples_are_dropped() {
        let families = parse("# TYPE a counter\n# HELP b b\nc 1\n").unwrap();
        let names: Vec<_> = families.iter().map(|f| f.name).collect();
        assert_eq!(names, ["c"]);
    }
}
