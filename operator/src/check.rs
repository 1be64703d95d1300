//! `syncrelay-operator check`: what the chart's `helm test` hook runs inside the cluster. It passes
//! when the operator answers ready at its probe URL and the API server serves both custom resources
//! (a list of each succeeds in the given namespace); otherwise it names what failed. It only reads.

use std::time::Duration;

use kube::api::{Api, ListParams};

use crate::crd::{SyncChain, SyncNode};

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("operator not ready at {url}: {reason}")]
    NotReady { url: String, reason: String },
    #[error("the API server does not serve {kind}: {source}")]
    NotServed {
        kind: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("no Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// Runs both checks; each success is printed, the first failure is returned.
pub async fn check(ready_url: &str, namespace: &str) -> Result<(), CheckError> {
    let not_ready = |reason: String| CheckError::NotReady {
        url: ready_url.to_string(),
        reason,
    };
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| not_ready(e.to_string()))?
        .get(ready_url)
        .send()
        .await
        .map_err(|e| not_ready(e.to_string()))?;
    if !response.status().is_success() {
        return Err(not_ready(format!("HTTP {}", response.status())));
    }
    println!("operator ready at {ready_url}");

    let client = kube::Client::try_default().await?;
    let one = ListParams::default().limit(1);
    Api::<SyncChain>::namespaced(client.clone(), namespace)
        .list(&one)
        .await
        .map_err(|source| CheckError::NotServed {
            kind: "syncchains.syncrelay.io",
            source,
        })?;
    Api::<SyncNode>::namespaced(client, namespace)
        .list(&one)
        .await
        .map_err(|source| CheckError::NotServed {
            kind: "syncnodes.syncrelay.io",
            source,
        })?;
    println!("syncchains.syncrelay.io and syncnodes.syncrelay.io served");
    Ok(())
}
