//! `export`: the model's feature queries over a time range, at the model's step, as a
//! training CSV for one instance. This is how an operator records training data from a
//! real cluster with exactly the queries serving will run.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use anyhow::{Context, bail};

use crate::model::features::DEFRAG_MASK;
use crate::model::model_dir::ModelMeta;
use crate::prometheus::PromClient;

/// Prometheus refuses more than 11,000 points per series in one range query.
const MAX_POINTS_PER_QUERY: f64 = 10_000.0;

/// What an export produced.
#[derive(Debug)]
pub struct Exported {
    pub csv: String,
    pub instance: String,
    pub rows: usize,
    /// Steps left out because some feature had no value there.
    pub skipped_steps: usize,
}

/// Queries `[start, end]` in chunks and writes `timestamp,<features>,defrag_inflight,label`
/// (label 0: label incidents yourself, or train without labels). With several instances
/// in the answers, `instance` must pick one.
pub async fn export(
    client: &PromClient,
    meta: &ModelMeta,
    start: f64,
    end: f64,
    instance: Option<&str>,
) -> anyhow::Result<Exported> {
    if end <= start {
        bail!("--end ({end}) must be after --start ({start})");
    }
    let step = meta.step_seconds;
    let mut specs = meta.features.clone();
    specs.extend(meta.mask.clone());
    // Per query: timestamp (in ms, exact on the step grid) -> value, per instance.
    let mut columns: Vec<BTreeMap<String, BTreeMap<i64, f64>>> = vec![BTreeMap::new(); specs.len()];
    let mut chunk_start = (start / step).ceil() * step;
    while chunk_start <= end {
        let chunk_end = (chunk_start + (MAX_POINTS_PER_QUERY - 1.0) * step).min(end);
        for (spec, column) in specs.iter().zip(columns.iter_mut()) {
            let series = client
                .query_range(&spec.query, chunk_start, chunk_end, step)
                .await
                .with_context(|| format!("exporting feature `{}`", spec.name))?;
            for s in &series {
                let entry = column.entry(s.instance().to_string()).or_default();
                for &(t, v) in &s.points {
                    entry.insert((t * 1000.0).round() as i64, v);
                }
            }
        }
        chunk_start = chunk_end + step;
    }
    let found: BTreeSet<&String> = columns[..meta.features.len()]
        .iter()
        .flat_map(|c| c.keys())
        .collect();
    let chosen = match instance {
        Some(wanted) => {
            if !found.iter().any(|i| *i == wanted) {
                bail!(
                    "Prometheus has no data for instance {wanted} in that range (it has: {})",
                    join(&found)
                );
            }
            wanted.to_string()
        }
        None => match found.iter().next() {
            Some(only) if found.len() == 1 => (*only).clone(),
            Some(_) => bail!(
                "the range has several instances ({}); choose one with --instance",
                join(&found)
            ),
            None => bail!(
                "Prometheus returned no data for the model's queries in that range; first query: {}",
                meta.features[0].query
            ),
        },
    };
    let empty = BTreeMap::new();
    let per_feature: Vec<&BTreeMap<i64, f64>> = columns
        .iter()
        .map(|c| c.get(&chosen).unwrap_or(&empty))
        .collect();
    let (feature_cols, mask_col) = per_feature.split_at(meta.features.len());
    let stamps: BTreeSet<i64> = feature_cols
        .iter()
        .flat_map(|c| c.keys().copied())
        .collect();
    let names: Vec<&str> = meta.features.iter().map(|f| f.name.as_str()).collect();
    let mut csv = format!("timestamp,{},{DEFRAG_MASK},label\n", names.join(","));
    let (mut rows, mut skipped) = (0, 0);
    for t in stamps {
        let values: Option<Vec<f64>> = meta
            .features
            .iter()
            .zip(feature_cols)
            .map(|(spec, c)| spec.reading(c.get(&t).copied()))
            .collect();
        let Some(values) = values else {
            skipped += 1;
            continue;
        };
        let masked = mask_col
            .first()
            .and_then(|c| c.get(&t))
            .is_some_and(|v| *v > 0.0);
        let _ = write!(csv, "{}", t as f64 / 1000.0);
        for v in values {
            let _ = write!(csv, ",{v}");
        }
        let _ = writeln!(csv, ",{},0", u8::from(masked));
        rows += 1;
    }
    Ok(Exported {
        csv,
        instance: chosen,
        rows,
        skipped_steps: skipped,
    })
}

fn join(instances: &BTreeSet<&String>) -> String {
    instances
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
