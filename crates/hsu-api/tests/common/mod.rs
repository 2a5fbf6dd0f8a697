//! Helpers shared by the API's integration tests.

use std::future::Future;
use std::time::Duration;

/// How long any awaited condition may take (generous: CI has two noisy cores).
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Polls `check` every 25 ms until it gives a value, failing the test after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
