//! The guard every BMC call goes through: a timeout per attempt, retries with exponential backoff
//! for transient failures, one call at a time per BMC with a minimum interval between calls, and a
//! circuit breaker that marks a BMC unreachable after repeated failures so callers fail fast
//! (with the last plain reason) instead of queueing behind a dead BMC.

use super::{Bmc, BmcError, BootDevice, BootSetting, PowerAction, PowerState};
use futures::future::BoxFuture;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardPolicy {
    /// Limit on one attempt (a driver's own polling for a power change is one attempt).
    pub timeout: Duration,
    /// Attempts per call for transient failures (timeouts, refused, protocol errors).
    pub attempts: u32,
    /// First backoff; doubles after each failed attempt.
    pub backoff: Duration,
    /// Minimum time between the start of two calls to the same BMC (some BMCs fall over when
    /// hammered).
    pub min_interval: Duration,
    /// Consecutive failed calls that open the circuit.
    pub breaker_threshold: u32,
    /// How long an open circuit fails fast before one call may try again.
    pub breaker_cooldown: Duration,
}

impl Default for GuardPolicy {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(90),
            attempts: 3,
            backoff: Duration::from_millis(500),
            min_interval: Duration::from_millis(0),
            breaker_threshold: 3,
            breaker_cooldown: Duration::from_secs(60),
        }
    }
}

#[derive(Default)]
struct GuardState {
    last_start: Option<Instant>,
    consecutive_failures: u32,
    open_until: Option<Instant>,
    last_error: Option<BmcError>,
}

/// Wraps a driver. Holding the state lock for the whole call is what serialises calls per BMC.
pub struct GuardedBmc {
    inner: Box<dyn Bmc>,
    policy: GuardPolicy,
    state: Mutex<GuardState>,
}

/// Failures worth another attempt; wrong credentials or unsupported features never get better
/// (and retrying a wrong password can lock a BMC account).
pub fn is_transient(error: &BmcError) -> bool {
    matches!(
        error,
        BmcError::Timeout(_) | BmcError::Refused | BmcError::Unreachable(_) | BmcError::Protocol(_)
    )
}

impl GuardedBmc {
    pub fn new(inner: Box<dyn Bmc>, policy: GuardPolicy) -> Self {
        Self {
            inner,
            policy,
            state: Mutex::new(GuardState::default()),
        }
    }

    /// The reason the circuit is open, if it is.
    pub async fn unreachable_reason(&self) -> Option<BmcError> {
        let state = self.state.lock().await;
        match state.open_until {
            Some(until) if Instant::now() < until => state.last_error.clone(),
            _ => None,
        }
    }

    async fn call<T: Send>(
        &self,
        operation: impl for<'a> Fn(&'a dyn Bmc) -> BoxFuture<'a, Result<T, BmcError>> + Send + Sync,
    ) -> Result<T, BmcError> {
        let mut state = self.state.lock().await;
        if let Some(until) = state.open_until
            && Instant::now() < until
        {
            let last = state
                .last_error
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            return Err(BmcError::CircuitOpen(last));
        }
        if let Some(last) = state.last_start {
            let ready = last + self.policy.min_interval;
            if Instant::now() < ready {
                tokio::time::sleep_until(ready).await;
            }
        }
        state.last_start = Some(Instant::now());
        let mut backoff = self.policy.backoff;
        let mut attempt = 1;
        let result = loop {
            let outcome =
                match tokio::time::timeout(self.policy.timeout, operation(self.inner.as_ref()))
                    .await
                {
                    Ok(outcome) => outcome,
                    Err(_) => Err(BmcError::Timeout(self.policy.timeout.as_millis() as u64)),
                };
            match outcome {
                Err(err) if is_transient(&err) && attempt < self.policy.attempts => {
                    tracing::debug!(attempt, error = %err, "BMC call failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
                other => break other,
            }
        };
        match &result {
            Ok(_) => {
                state.consecutive_failures = 0;
                state.open_until = None;
                state.last_error = None;
            }
            Err(err) => {
                state.consecutive_failures += 1;
                state.last_error = Some(err.clone());
                if state.consecutive_failures >= self.policy.breaker_threshold {
                    state.open_until = Some(Instant::now() + self.policy.breaker_cooldown);
                }
            }
        }
        result
    }
}

#[async_trait::async_trait]
impl Bmc for GuardedBmc {
    async fn power_state(&self) -> Result<PowerState, BmcError> {
        self.call(|bmc| bmc.power_state()).await
    }

    async fn power(&self, action: PowerAction) -> Result<(), BmcError> {
        self.call(move |bmc| bmc.power(action)).await
    }

    async fn set_boot_device(
        &self,
        device: BootDevice,
        persistent: bool,
        uefi: bool,
    ) -> Result<(), BmcError> {
        self.call(move |bmc| bmc.set_boot_device(device, persistent, uefi))
            .await
    }

    async fn boot_device(&self) -> Result<BootSetting, BmcError> {
        self.call(|bmc| bmc.boot_device()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex as StdMutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A scripted BMC: each call pops the next result and takes `delay`.
    struct Scripted {
        results: StdMutex<VecDeque<Result<PowerState, BmcError>>>,
        calls: AtomicU32,
        delay: Duration,
    }

    impl Scripted {
        fn new(results: Vec<Result<PowerState, BmcError>>, delay: Duration) -> Self {
            Self {
                results: StdMutex::new(results.into()),
                calls: AtomicU32::new(0),
                delay,
            }
        }
    }

    #[async_trait::async_trait]
    impl Bmc for Scripted {
        async fn power_state(&self) -> Result<PowerState, BmcError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.results
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Ok(PowerState::On))
        }
        async fn power(&self, _: PowerAction) -> Result<(), BmcError> {
            Ok(())
        }
        async fn set_boot_device(&self, _: BootDevice, _: bool, _: bool) -> Result<(), BmcError> {
            Ok(())
        }
        async fn boot_device(&self) -> Result<BootSetting, BmcError> {
            Err(BmcError::Unsupported("reading boot device".into()))
        }
    }

    fn policy() -> GuardPolicy {
        GuardPolicy {
            timeout: Duration::from_secs(2),
            attempts: 3,
            backoff: Duration::from_millis(100),
            min_interval: Duration::from_millis(0),
            breaker_threshold: 2,
            breaker_cooldown: Duration::from_secs(30),
        }
    }

    fn guarded(
        results: Vec<Result<PowerState, BmcError>>,
        delay: Duration,
        policy: GuardPolicy,
    ) -> (GuardedBmc, &'static Scripted) {
        let scripted: &'static Scripted = Box::leak(Box::new(Scripted::new(results, delay)));
        struct Shared(&'static Scripted);
        #[async_trait::async_trait]
        impl Bmc for Shared {
            async fn power_state(&self) -> Result<PowerState, BmcError> {
                self.0.power_state().await
            }
            async fn power(&self, a: PowerAction) -> Result<(), BmcError> {
                self.0.power(a).await
            }
            async fn set_boot_device(
                &self,
                d: BootDevice,
                p: bool,
                u: bool,
            ) -> Result<(), BmcError> {
                self.0.set_boot_device(d, p, u).await
            }
            async fn boot_device(&self) -> Result<BootSetting, BmcError> {
                self.0.boot_device().await
            }
        }
        (
            GuardedBmc::new(Box::new(Shared(scripted)), policy),
            scripted,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_with_backoff() {
        let (bmc, inner) = guarded(
            vec![
                Err(BmcError::Refused),
                Err(BmcError::Timeout(5)),
                Ok(PowerState::Off),
            ],
            Duration::ZERO,
            policy(),
        );
        let start = Instant::now();
        assert_eq!(bmc.power_state().await, Ok(PowerState::Off));
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3);
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(300),
            "100 ms then 200 ms of backoff"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn wrong_credentials_are_not_retried() {
        let (bmc, inner) = guarded(
            vec![Err(BmcError::WrongCredentials)],
            Duration::ZERO,
            policy(),
        );
        assert_eq!(bmc.power_state().await, Err(BmcError::WrongCredentials));
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_bmc_times_out_and_the_circuit_opens_then_recovers() {
        let (bmc, inner) = guarded(
            vec![],
            Duration::from_secs(10),
            GuardPolicy {
                attempts: 1,
                ..policy()
            },
        );
        assert_eq!(bmc.power_state().await, Err(BmcError::Timeout(2000)));
        assert_eq!(bmc.power_state().await, Err(BmcError::Timeout(2000)));
        // Open: fails fast with the last reason, without calling the BMC.
        let calls = inner.calls.load(Ordering::SeqCst);
        let start = Instant::now();
        match bmc.power_state().await {
            Err(BmcError::CircuitOpen(reason)) => {
                assert!(reason.contains("did not answer"), "{reason}")
            }
            other => panic!("expected an open circuit, got {other:?}"),
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(inner.calls.load(Ordering::SeqCst), calls);
        assert!(bmc.unreachable_reason().await.is_some());
        // After the cooldown one call goes through again.
        tokio::time::advance(Duration::from_secs(31)).await;
        let result = bmc.power_state().await;
        assert_eq!(
            result,
            Err(BmcError::Timeout(2000)),
            "still hung, but it was tried"
        );
        assert_eq!(inner.calls.load(Ordering::SeqCst), calls + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn calls_are_serialised_and_spaced() {
        let (bmc, inner) = guarded(
            vec![],
            Duration::from_millis(50),
            GuardPolicy {
                min_interval: Duration::from_millis(500),
                ..policy()
            },
        );
        let bmc = std::sync::Arc::new(bmc);
        let start = Instant::now();
        let (a, b) = tokio::join!(bmc.power_state(), bmc.power_state());
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(550),
            "second call starts 500 ms after the first"
        );
    }
}
