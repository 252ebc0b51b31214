//! The keys the drill seeds before the incident and checks after the repair: a restore
//! from a snapshot taken after seeding must bring back every one of them.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use etcd_client::{Client, GetOptions, Txn, TxnOp};
use ring::digest::{SHA256, digest};

const PREFIX: &str = "/drill/seed/";
/// etcd's default --max-txn-ops is 128.
const PER_TXN: usize = 100;

pub struct Seeded {
    pub count: usize,
    pub sha256: String,
}

fn expected(count: usize) -> BTreeMap<String, Vec<u8>> {
    (0..count)
        .map(|i| {
            let key = format!("{PREFIX}{i:05}");
            let value = format!("seed {i} ").repeat(24).into_bytes();
            (key, value)
        })
        .collect()
}

fn checksum(kvs: &BTreeMap<String, Vec<u8>>) -> String {
    let mut all = Vec::new();
    for (k, v) in kvs {
        all.extend_from_slice(k.as_bytes());
        all.push(0);
        all.extend_from_slice(v);
        all.push(0);
    }
    digest(&SHA256, &all)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub async fn connect(endpoints: &[String]) -> Result<Client> {
    dr_common::etcd::connect(
        endpoints,
        None,
        Duration::from_secs(3),
        Duration::from_secs(3),
    )
    .await
    .context("connecting to etcd")
}

pub async fn seed(client: &mut Client, count: usize) -> Result<Seeded> {
    let kvs = expected(count);
    let items: Vec<_> = kvs.iter().collect();
    for chunk in items.chunks(PER_TXN) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|(k, v)| TxnOp::put(k.as_str(), v.as_slice(), None))
            .collect();
        client
            .txn(Txn::new().and_then(ops))
            .await
            .context("seeding keys")?;
    }
    Ok(Seeded {
        count,
        sha256: checksum(&kvs),
    })
}

/// What is there now: (keys checked, keys lost or changed, checksum of what was read).
pub async fn verify(client: &mut Client, seeded: &Seeded) -> Result<(usize, usize, String)> {
    let want = expected(seeded.count);
    let got = client
        .get(PREFIX, Some(GetOptions::new().with_prefix()))
        .await
        .context("reading the seeded keys")?;
    let mut have = BTreeMap::new();
    for kv in got.kvs() {
        have.insert(
            String::from_utf8_lossy(kv.key()).into_owned(),
            kv.value().to_vec(),
        );
    }
    let lost = want
        .iter()
        .filter(|(k, v)| have.get(*k) != Some(*v))
        .count();
    Ok((want.len(), lost, checksum(&have)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_changes_with_any_value() {
        let a = expected(3);
        let mut b = a.clone();
        assert_eq!(checksum(&a), checksum(&b));
        if let Some(v) = b.get_mut("/drill/seed/00001") {
            v[0] ^= 1;
        }
        assert_ne!(checksum(&a), checksum(&b));
        assert_eq!(a.len(), 3);
        assert!(a.values().all(|v| v.len() > 100));
    }
}
