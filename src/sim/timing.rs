//! The simulator's timing model: how long a simulated server takes at each step, how fast its
//! disk writes, how slow its BMC answers and how often things fail. `fast` (all zero) rehearses
//! Kiln's own overheads; `realistic` is a typical 1U server on a 10G provisioning network.

use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    /// Power-on to the firmware's first DHCPDISCOVER (POST).
    pub post: Duration,
    /// Kernel and ramdisk fetched to the agent's first call (kernel boot, udhcpc).
    pub ramdisk_boot: Duration,
    /// Reset to the OS's Docker Engine answering (firmware + OS boot).
    pub os_boot: Duration,
    /// The simulated disk's write speed, bytes/s; `None`: as fast as the agent writes.
    pub disk_bytes_per_sec: Option<f64>,
    /// Added to every BMC request.
    pub bmc_latency: Duration,
    /// Probability that a BMC request fails (HTTP 500 / IPMI error), that a network boot
    /// attempt times out in DHCP (the firmware retries), each in 0..1.
    pub bmc_failure_rate: f64,
    pub boot_failure_rate: f64,
    /// Docker: a healthcheck turns healthy this long after start; a pull takes this long.
    pub health_delay: Duration,
    pub pull: Duration,
}

impl Timing {
    pub fn fast() -> Timing {
        Timing {
            post: Duration::ZERO,
            ramdisk_boot: Duration::ZERO,
            os_boot: Duration::ZERO,
            disk_bytes_per_sec: None,
            bmc_latency: Duration::ZERO,
            bmc_failure_rate: 0.0,
            boot_failure_rate: 0.0,
            health_delay: Duration::ZERO,
            pull: Duration::ZERO,
        }
    }

    pub fn realistic() -> Timing {
        Timing {
            post: Duration::from_secs(45),
            ramdisk_boot: Duration::from_secs(15),
            os_boot: Duration::from_secs(60),
            disk_bytes_per_sec: Some(400e6),
            bmc_latency: Duration::from_millis(300),
            bmc_failure_rate: 0.01,
            boot_failure_rate: 0.02,
            health_delay: Duration::from_secs(5),
            pull: Duration::from_secs(3),
        }
    }

    /// `fast` or `realistic`.
    pub fn preset(name: &str) -> Option<Timing> {
        match name {
            "fast" | "zero" => Some(Timing::fast()),
            "realistic" => Some(Timing::realistic()),
            _ => None,
        }
    }

    /// Scales every delay by `factor` (rates unchanged): `realistic` at 0.1 keeps the shape of a
    /// real rack in a tenth of the time.
    pub fn scaled(&self, factor: f64) -> Timing {
        let scale = |d: Duration| d.mul_f64(factor.max(0.0));
        Timing {
            post: scale(self.post),
            ramdisk_boot: scale(self.ramdisk_boot),
            os_boot: scale(self.os_boot),
            disk_bytes_per_sec: self.disk_bytes_per_sec.map(|r| r / factor.max(1e-6)),
            bmc_latency: scale(self.bmc_latency),
            health_delay: scale(self.health_delay),
            pull: scale(self.pull),
            ..self.clone()
        }
    }

    /// Whether an event of probability `rate` happens this time.
    pub fn happens(rate: f64) -> bool {
        rate > 0.0 && rand::random::<f64>() < rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_scaling() {
        assert_eq!(Timing::preset("fast"), Some(Timing::fast()));
        assert_eq!(Timing::preset("slow"), None);
        let tenth = Timing::realistic().scaled(0.1);
        assert_eq!(tenth.post, Duration::from_millis(4500));
        assert_eq!(tenth.disk_bytes_per_sec, Some(4e9));
        assert_eq!(tenth.bmc_failure_rate, 0.01);
    }

    #[test]
    fn zero_rates_never_happen_and_one_always_does() {
        assert!((0..1000).all(|_| !Timing::happens(0.0)));
        assert!((0..1000).all(|_| Timing::happens(1.0)));
    }
}
