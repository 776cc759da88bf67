//! Helpers shared by the integration tests (the heavy lifting is in primus-testkit).

use primus_client::{Client, ClusterSettings, ReadConsistency};
use primus_testkit::coordinator::CoordinatorGroup;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Register `name` through `client`; Ok(true) when acknowledged.
pub async fn register(client: &Client, name: &str) -> anyhow::Result<u64> {
    let r = client
        .register_cluster(name, &["127.0.0.1:3306".to_string()], ClusterSettings::default())
        .await?;
    Ok(r.log_index)
}

/// The cluster names node `id` holds in its own state machine (stale read, no leader needed).
pub async fn local_clusters(group: &CoordinatorGroup, id: u64) -> anyhow::Result<BTreeSet<String>> {
    let c = group.client_for(&[id], Duration::from_secs(2))?;
    let r = c.list_clusters(ReadConsistency::Stale).await?;
    Ok(r.clusters.into_iter().map(|c| c.name).collect())
}

/// Wait until node `id`'s local state contains every name in `want`.
pub async fn wait_has_all(
    group: &CoordinatorGroup,
    id: u64,
    want: &BTreeSet<String>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let have = local_clusters(group, id).await.unwrap_or_default();
        let missing: Vec<&String> = want.difference(&have).collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "node {id} is missing {} acknowledged clusters after {timeout:?}, e.g. {:?}\n--- node log ---\n{}",
                missing.len(),
                missing.iter().take(5).collect::<Vec<_>>(),
                group.node(id).log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
