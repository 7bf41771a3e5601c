//! Phi-accrual failure detector (Hayashibara, Défago, Yared and Katayama,
//! "The φ Accrual Failure Detector", SRDS 2004).
//!
//! The detector keeps a window of the intervals between heartbeat arrivals
//! of one member and models them as a normal distribution. Its output phi is
//! `-log10(P(a heartbeat arrives later than now))` given the time since the
//! last arrival. So phi = 8 means the silence has odds of about 1 in 10^8
//! under the observed distribution. The normal tail comes from the logistic
//! approximation of its CDF, `1 / (1 + exp(-y (1.5976 + 0.070566 y^2)))`,
//! computed in log space so phi stays finite and monotonic in the elapsed
//! time however long the silence.
//!
//! The detector is pure: the caller passes the time in milliseconds from any
//! monotonic clock, and the same clock must be used for every call.
//!
//! Before real samples exist, the window starts with two intervals whose
//! mean is `first_interval_ms` and whose standard deviation is a quarter of
//! it. The standard deviation used is never below `min_std_dev_ms`, so
//! perfectly regular heartbeats do not make the detector hair-triggered.
//!
//! An interval longer than the time at which phi would have crossed the
//! threshold is an outage, not a sample of normal jitter: it is recorded
//! clamped to that time. The member is available again at its first
//! heartbeat. One outage then widens the distribution only a little, so the
//! next failure is still found within seconds. A member whose heartbeats
//! really do slow down still widens it, step by step.

use std::collections::VecDeque;
use std::f64::consts::LN_10;

/// Settings of a [`PhiDetector`].
#[derive(Clone, Debug, PartialEq)]
pub struct DetectorConfig {
    /// Phi at or above which the member is reported unavailable.
    pub threshold: f64,
    /// Maximum number of recent intervals kept (at least 1 is used).
    pub window: usize,
    /// Lower bound of the standard deviation, in milliseconds.
    pub min_std_dev_ms: f64,
    /// Pause added to the mean interval, in milliseconds, for expected
    /// stalls such as garbage collection in the sender.
    pub acceptable_pause_ms: f64,
    /// Assumed mean interval before any real sample, in milliseconds.
    pub first_interval_ms: f64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            threshold: 8.0,
            window: 100,
            min_std_dev_ms: 250.0,
            acceptable_pause_ms: 0.0,
            first_interval_ms: 1000.0,
        }
    }
}

/// Phi-accrual failure detector of one member.
#[derive(Clone, Debug)]
pub struct PhiDetector {
    config: DetectorConfig,
    /// Recent intervals between arrivals, in milliseconds, oldest first.
    intervals: VecDeque<f64>,
    last_heartbeat_ms: Option<u64>,
}

impl PhiDetector {
    /// Creates a detector that has seen no heartbeat yet.
    pub fn new(config: DetectorConfig) -> Self {
        PhiDetector {
            intervals: VecDeque::with_capacity(config.window.clamp(2, 1024)),
            config,
            last_heartbeat_ms: None,
        }
    }

    /// Records a heartbeat arrival (a member's heartbeat counter advanced).
    ///
    /// An arrival earlier than the previous one (a clock that went back) is
    /// recorded as an interval of zero.
    pub fn heartbeat(&mut self, now_ms: u64) {
        match self.last_heartbeat_ms {
            None => {
                let mean = self.config.first_interval_ms;
                let std_dev = mean / 4.0;
                self.record(mean - std_dev);
                self.record(mean + std_dev);
            }
            Some(last) => {
                let interval = now_ms.saturating_sub(last) as f64;
                let limit = self.suspicion_delay_ms();
                self.record(interval.min(limit));
            }
        }
        self.last_heartbeat_ms = Some(now_ms);
    }

    /// Suspicion level; f64::INFINITY when no heartbeat was ever recorded.
    pub fn phi(&self, now_ms: u64) -> f64 {
        match self.last_heartbeat_ms {
            None => f64::INFINITY,
            Some(last) => self.phi_after(now_ms.saturating_sub(last) as f64),
        }
    }

    /// True while phi is below the threshold.
    pub fn is_available(&self, now_ms: u64) -> bool {
        self.phi(now_ms) < self.config.threshold
    }

    /// Time of the last recorded heartbeat, if any.
    pub fn last_heartbeat_ms(&self) -> Option<u64> {
        self.last_heartbeat_ms
    }

    /// Returns the settings this detector runs with.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    fn record(&mut self, interval_ms: f64) {
        self.intervals.push_back(interval_ms.max(0.0));
        while self.intervals.len() > self.config.window.max(1) {
            self.intervals.pop_front();
        }
    }

    /// Mean (with the acceptable pause) and clamped standard deviation of
    /// the window, in milliseconds.
    fn distribution(&self) -> (f64, f64) {
        let count = self.intervals.len().max(1) as f64;
        let mean = self.intervals.iter().sum::<f64>() / count;
        let variance = self
            .intervals
            .iter()
            .map(|interval| (interval - mean).powi(2))
            .sum::<f64>()
            / count;
        let std_dev = variance.sqrt().max(self.config.min_std_dev_ms);
        (mean + self.config.acceptable_pause_ms, std_dev)
    }

    /// Phi after `elapsed_ms` of silence.
    fn phi_after(&self, elapsed_ms: f64) -> f64 {
        let (mean, std_dev) = self.distribution();
        let y = (elapsed_ms - mean) / std_dev;
        // P(later) = 1 / (1 + exp(z)), so phi = ln(1 + exp(z)) / ln(10),
        // written as a softplus that neither overflows nor underflows.
        let z = y * (1.5976 + 0.070566 * y * y);
        let softplus = z.max(0.0) + (-z.abs()).exp().ln_1p();
        softplus / LN_10
    }

    /// Silence, in milliseconds, after which phi reaches the threshold
    /// (found by bisection because phi is monotonic in the silence).
    fn suspicion_delay_ms(&self) -> f64 {
        let (mean, std_dev) = self.distribution();
        let mut low = 0.0_f64;
        let mut high = mean + 100.0 * std_dev;
        if self.phi_after(high) < self.config.threshold {
            return high;
        }
        for _ in 0..64 {
            let middle = (low + high) / 2.0;
            if self.phi_after(middle) < self.config.threshold {
                low = middle;
            } else {
                high = middle;
            }
        }
        high
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic intervals uniform in 300..=2000 ms (xorshift64).
    fn irregular_intervals(seed: u64, count: usize) -> Vec<u64> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..count)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                300 + state % 1701
            })
            .collect()
    }

    /// Feeds heartbeats at the given intervals starting at time 0 and
    /// returns the detector and the time of the last heartbeat.
    fn feed(intervals: &[u64]) -> (PhiDetector, u64) {
        let mut detector = PhiDetector::new(DetectorConfig::default());
        let mut now = 0;
        detector.heartbeat(now);
        for interval in intervals {
            now += interval;
            detector.heartbeat(now);
        }
        (detector, now)
    }

    /// First time, in 10 ms steps after `since`, at which the detector
    /// reports the member unavailable (bounded at 60 s).
    fn detection_delay(detector: &PhiDetector, since: u64) -> u64 {
        (0..=6000)
            .map(|step| step * 10)
            .find(|&delay| !detector.is_available(since + delay))
            .unwrap_or(u64::MAX)
    }

    #[test]
    fn phi_is_infinite_before_any_heartbeat() {
        let detector = PhiDetector::new(DetectorConfig::default());
        assert_eq!(detector.phi(0), f64::INFINITY);
        assert_eq!(detector.phi(123_456), f64::INFINITY);
        assert!(!detector.is_available(0));
        assert_eq!(detector.last_heartbeat_ms(), None);
    }

    #[test]
    fn first_heartbeat_uses_bootstrap_interval() {
        let (detector, last) = feed(&[]);
        assert_eq!(detector.last_heartbeat_ms(), Some(last));
        assert!(detector.is_available(last + 1000));
        let delay = detection_delay(&detector, last);
        assert!((2000..=4000).contains(&delay), "delay {delay} ms");
    }

    #[test]
    fn regular_heartbeats_keep_phi_low() {
        let mut detector = PhiDetector::new(DetectorConfig::default());
        for second in 0..120 {
            let now = second * 1000;
            if second > 0 {
                assert!(
                    detector.phi(now) < 1.0,
                    "phi {} at {now}",
                    detector.phi(now)
                );
            }
            detector.heartbeat(now);
            assert!(detector.phi(now) < 0.1);
        }
    }

    #[test]
    fn regular_silence_crosses_threshold() {
        let (detector, last) = feed(&[1000; 100]);
        let delay = detection_delay(&detector, last);
        assert!((2000..=4000).contains(&delay), "delay {delay} ms");
    }

    #[test]
    fn irregular_silence_crosses_threshold() {
        for seed in 1..=20 {
            let intervals = irregular_intervals(seed, 200);
            let (detector, last) = feed(&intervals);
            let delay = detection_delay(&detector, last);
            assert!(
                (3000..=6000).contains(&delay),
                "seed {seed}: delay {delay} ms"
            );
        }
    }

    #[test]
    fn irregular_heartbeats_raise_no_false_suspicion() {
        for seed in 1..=20 {
            let mut detector = PhiDetector::new(DetectorConfig::default());
            let mut now = 0;
            detector.heartbeat(now);
            for interval in irregular_intervals(seed, 300) {
                now += interval;
                assert!(
                    detector.is_available(now),
                    "seed {seed}: phi {} just before the heartbeat at {now}",
                    detector.phi(now)
                );
                detector.heartbeat(now);
            }
        }
    }

    #[test]
    fn phi_grows_with_silence() {
        let (detector, last) = feed(&irregular_intervals(7, 100));
        let mut previous = detector.phi(last);
        for step in 1..=10_000 {
            let phi = detector.phi(last + step * 10);
            assert!(
                phi >= previous,
                "phi fell from {previous} to {phi} at step {step}"
            );
            assert!(phi.is_finite(), "phi is not finite at step {step}");
            previous = phi;
        }
        assert!(previous > 100.0, "phi after 100 s is only {previous}");
    }

    #[test]
    fn heartbeat_after_outage_restores_availability() {
        let (mut detector, last) = feed(&[1000; 50]);
        let returned = last + 30_000;
        assert!(!detector.is_available(returned));

        detector.heartbeat(returned);
        assert!(detector.is_available(returned));
        assert_eq!(detector.last_heartbeat_ms(), Some(returned));

        // The outage does not blind the detector to the next failure.
        let mut now = returned;
        for _ in 0..5 {
            now += 1000;
            detector.heartbeat(now);
        }
        let delay = detection_delay(&detector, now);
        assert!(delay <= 6000, "second failure found after {delay} ms");
    }

    #[test]
    fn acceptable_pause_delays_suspicion() {
        let relaxed = DetectorConfig {
            acceptable_pause_ms: 3000.0,
            ..DetectorConfig::default()
        };
        let mut detector = PhiDetector::new(relaxed);
        for second in 0..20 {
            detector.heartbeat(second * 1000);
        }
        assert!(detector.is_available(19_000 + 4000));
        assert!(!detector.is_available(19_000 + 8000));
    }

    #[test]
    fn clock_going_back_does_not_panic() {
        let mut detector = PhiDetector::new(DetectorConfig::default());
        detector.heartbeat(5000);
        detector.heartbeat(1000);
        assert!(detector.is_available(1000));
        assert!(detector.phi(0) < 1.0);
    }
}
