//! The payment-provider boundary, and `Simulator`: a stand-in provider for
//! local runs, tests and benchmarks. It takes no money anywhere; it is
//! named a simulator in config (`[payments] provider = "simulator"`) and in
//! every payment it handles (`provider: "simulator"`).
//!
//! A provider answers a charge at once (captured or declined) or later
//! (pending, then a callback through `ProviderEvents`). Charges and refunds
//! are idempotent by the payment id, as real providers' idempotency keys are.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

/// What a charge did at the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    /// Money taken; the provider's reference.
    Captured { provider_ref: String },
    /// Declined; why.
    Declined { reason: String },
    /// Not decided yet: a callback follows.
    Pending,
}

/// A provider-side failure (the provider could not be reached or erred):
/// the charge's outcome is unknown until asked again.
#[derive(Debug, Clone, thiserror::Error)]
#[error("payment provider: {0}")]
pub struct ProviderError(pub String);

/// A late answer to a pending charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderEvent {
    pub payment_id: Uuid,
    pub outcome: ChargeOutcome,
}

/// Where a provider sends its callbacks.
pub type ProviderEvents = mpsc::UnboundedSender<ProviderEvent>;

/// A payment provider.
#[async_trait]
pub trait PaymentProvider: Send + Sync + 'static {
    /// The name recorded on payments.
    fn name(&self) -> &'static str;
    /// Charges `amount` for `payment_id`; the same id again answers the
    /// first outcome and never charges twice.
    async fn charge(&self, payment_id: Uuid, amount: i64) -> Result<ChargeOutcome, ProviderError>;
    /// The charge's outcome as the provider sees it now (`Pending` also
    /// for a charge it never saw).
    async fn status(&self, payment_id: Uuid) -> Result<ChargeOutcome, ProviderError>;
    /// Gives the money of a captured charge back; idempotent. Returns the
    /// refund's reference.
    async fn refund(&self, payment_id: Uuid, amount: i64) -> Result<String, ProviderError>;
    /// Abandons a pending charge: it will not capture any more.
    async fn cancel(&self, payment_id: Uuid) -> Result<(), ProviderError>;
}

/// `[payments.simulator]`: how the simulated provider behaves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SimulatorConfig {
    /// Time the simulator takes to answer a charge.
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
    /// Extra random latency, up to this much, per charge.
    #[serde(with = "humantime_serde")]
    pub latency_jitter: Duration,
    /// Share of charges declined, 0.0 to 1.0.
    pub failure_rate: f64,
    /// Share of charges answered pending, then decided by a callback.
    pub pending_rate: f64,
    /// Delay from a pending answer to its callback.
    #[serde(with = "humantime_serde")]
    pub callback_delay: Duration,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            latency: Duration::from_millis(20),
            latency_jitter: Duration::from_millis(30),
            failure_rate: 0.0,
            pending_rate: 0.0,
            callback_delay: Duration::from_secs(2),
        }
    }
}

impl SimulatorConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (name, rate) in [
            ("failure_rate", self.failure_rate),
            ("pending_rate", self.pending_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!(
                    "payments.simulator.{name} must be between 0.0 and 1.0"
                ));
            }
        }
        if self.failure_rate + self.pending_rate > 1.0 {
            return Err(
                "payments.simulator.failure_rate + pending_rate must be at most 1.0".into(),
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SimState {
    Pending,
    Captured,
    Declined,
    Cancelled,
    Refunded,
}

/// The simulated provider. Each charge's fate is drawn once from its
/// payment id (so it is reproducible), then remembered in memory.
pub struct Simulator {
    config: SimulatorConfig,
    charges: Arc<Mutex<HashMap<Uuid, SimState>>>,
    events: ProviderEvents,
}

/// A number in [0, 1) drawn from `id` and `salt`.
fn draw(id: Uuid, salt: u64) -> f64 {
    let mut x = (id.as_u128() as u64) ^ ((id.as_u128() >> 64) as u64) ^ salt;
    // splitmix64 finaliser
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

impl Simulator {
    pub fn new(config: SimulatorConfig, events: ProviderEvents) -> Self {
        Simulator {
            config,
            charges: Arc::new(Mutex::new(HashMap::new())),
            events,
        }
    }

    fn state(&self, id: Uuid) -> Option<SimState> {
        self.charges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .copied()
    }

    fn set(&self, id: Uuid, state: SimState) {
        self.charges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, state);
    }

    /// What a first charge of `id` does, drawn from the id alone: every
    /// simulator (every payment replica) draws the same.
    fn fate(&self, id: Uuid) -> SimState {
        let roll = draw(id, 1);
        if roll < self.config.failure_rate {
            SimState::Declined
        } else if roll < self.config.failure_rate + self.config.pending_rate {
            SimState::Pending
        } else {
            SimState::Captured
        }
    }

    fn outcome(id: Uuid, state: SimState) -> ChargeOutcome {
        match state {
            SimState::Captured | SimState::Refunded => ChargeOutcome::Captured {
                provider_ref: format!("sim_{}", id.simple()),
            },
            SimState::Declined => ChargeOutcome::Declined {
                reason: "declined by the simulator".into(),
            },
            SimState::Cancelled => ChargeOutcome::Declined {
                reason: "cancelled before the provider decided".into(),
            },
            SimState::Pending => ChargeOutcome::Pending,
        }
    }
}

#[async_trait]
impl PaymentProvider for Simulator {
    fn name(&self) -> &'static str {
        "simulator"
    }

    async fn charge(&self, payment_id: Uuid, _amount: i64) -> Result<ChargeOutcome, ProviderError> {
        let jitter = self.config.latency_jitter.mul_f64(draw(payment_id, 3));
        tokio::time::sleep(self.config.latency + jitter).await;
        if let Some(state) = self.state(payment_id) {
            return Ok(Self::outcome(payment_id, state));
        }
        let state = self.fate(payment_id);
        self.set(payment_id, state);
        if state == SimState::Pending {
            let charges = Arc::clone(&self.charges);
            let events = self.events.clone();
            let delay = self.config.callback_delay;
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let decided = {
                    let mut charges = charges.lock().unwrap_or_else(|p| p.into_inner());
                    match charges.get(&payment_id) {
                        // Cancelled meanwhile: nothing to report.
                        Some(SimState::Pending) => {
                            charges.insert(payment_id, SimState::Captured);
                            true
                        }
                        _ => false,
                    }
                };
                if decided {
                    let _ = events.send(ProviderEvent {
                        payment_id,
                        outcome: Simulator::outcome(payment_id, SimState::Captured),
                    });
                }
            });
        }
        Ok(Self::outcome(payment_id, state))
    }

    async fn status(&self, payment_id: Uuid) -> Result<ChargeOutcome, ProviderError> {
        Ok(self
            .state(payment_id)
            .map(|s| Self::outcome(payment_id, s))
            .unwrap_or(ChargeOutcome::Pending))
    }

    async fn refund(&self, payment_id: Uuid, _amount: i64) -> Result<String, ProviderError> {
        tokio::time::sleep(self.config.latency).await;
        // Its memory is this process's: a charge another payment replica's
        // simulator captured (the same draw) is refunded here as one
        // provider shared by the replicas would.
        let known = self
            .state(payment_id)
            .or_else(|| Some(self.fate(payment_id)).filter(|s| *s == SimState::Captured));
        match known {
            Some(SimState::Captured) | Some(SimState::Refunded) => {
                self.set(payment_id, SimState::Refunded);
                Ok(format!("simrefund_{}", payment_id.simple()))
            }
            other => Err(ProviderError(format!(
                "no captured charge to refund ({other:?})"
            ))),
        }
    }

    async fn cancel(&self, payment_id: Uuid) -> Result<(), ProviderError> {
        let mut charges = self.charges.lock().unwrap_or_else(|p| p.into_inner());
        match charges.get(&payment_id) {
            Some(SimState::Pending) | None => {
                charges.insert(payment_id, SimState::Cancelled);
                Ok(())
            }
            Some(SimState::Cancelled) | Some(SimState::Declined) => Ok(()),
            Some(state) => Err(ProviderError(format!(
                "the charge is {state:?} and cannot be cancelled"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_spread_and_reproducible() {
        let ids: Vec<Uuid> = (0..1000).map(|_| Uuid::now_v7()).collect();
        let below: usize = ids.iter().filter(|id| draw(**id, 1) < 0.3).count();
        assert!((200..400).contains(&below), "{below} of 1000 below 0.3");
        assert_eq!(draw(ids[0], 1), draw(ids[0], 1));
    }

    #[tokio::test]
    async fn pending_charges_call_back_and_cancel_stops_them() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let sim = Simulator::new(
            SimulatorConfig {
                latency: Duration::ZERO,
                latency_jitter: Duration::ZERO,
                failure_rate: 0.0,
                pending_rate: 1.0,
                callback_delay: Duration::from_millis(50),
            },
            tx,
        );
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        assert_eq!(sim.charge(a, 100).await.unwrap(), ChargeOutcome::Pending);
        assert_eq!(sim.charge(b, 100).await.unwrap(), ChargeOutcome::Pending);
        sim.cancel(b).await.unwrap();
        let event = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(event.payment_id, a);
        assert!(matches!(event.outcome, ChargeOutcome::Captured { .. }));
        // b was cancelled: no second callback.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), rx.recv())
                .await
                .is_err()
        );
        assert!(sim.refund(a, 100).await.is_ok());
        assert!(sim.refund(b, 100).await.is_err());
    }

    #[tokio::test]
    async fn every_replica_refunds_a_charge_one_of_them_captured() {
        let instant = SimulatorConfig {
            latency: Duration::ZERO,
            latency_jitter: Duration::ZERO,
            ..SimulatorConfig::default()
        };
        let (tx, _rx) = mpsc::unbounded_channel();
        let one = Simulator::new(instant.clone(), tx.clone());
        let other = Simulator::new(instant.clone(), tx.clone());
        let id = Uuid::now_v7();
        assert!(matches!(
            one.charge(id, 100).await.unwrap(),
            ChargeOutcome::Captured { .. }
        ));
        assert!(
            other.refund(id, 100).await.is_ok(),
            "captured by the other replica"
        );
        // A charge every replica draws as declined is refunded by none.
        let declining = SimulatorConfig {
            failure_rate: 1.0,
            ..instant
        };
        let (one, other) = (
            Simulator::new(declining.clone(), tx.clone()),
            Simulator::new(declining, tx),
        );
        assert!(matches!(
            one.charge(id, 100).await.unwrap(),
            ChargeOutcome::Declined { .. }
        ));
        assert!(other.refund(id, 100).await.is_err());
    }
}
