//! CPU-bound work off the async runtime. [`run`] hands a closure to the rayon pool (one thread per
//! core, shared by the whole process) and awaits its result, so that a request's hashing, signature
//! checks and serialisation can spread over all cores without blocking a tokio worker.

use tokio::sync::oneshot;

/// The closure panicked (the panic message went to stderr through the panic hook).
#[derive(Debug, thiserror::Error)]
#[error("CPU task panicked")]
pub struct Panicked;

/// Runs `work` on the rayon pool; inside it, rayon's parallel iterators use every core.
pub async fn run<T, F>(work: F) -> Result<T, Panicked>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    rayon::spawn(move || {
        // A panic in a rayon job would abort the process: catch it and report it instead. The
        // receiver is gone only when the request was cancelled; nothing to report then.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        let _ = tx.send(outcome);
    });
    match rx.await {
        Ok(Ok(value)) => Ok(value),
        _ => Err(Panicked),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    #[tokio::test]
    async fn runs_parallel_work_and_returns_its_result() {
        let sum = run(|| (1..=1000u64).into_par_iter().sum::<u64>())
            .await
            .unwrap();
        assert_eq!(sum, 500_500);
    }

    #[tokio::test]
    async fn a_panic_is_an_error_not_a_hang() {
        let result = run(|| -> u8 { panic!("boom") }).await;
        assert!(result.is_err());
    }
}
