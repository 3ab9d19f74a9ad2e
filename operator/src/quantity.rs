//! Kubernetes resource quantities (`500m`, `2`, `128Mi`, `1e3`) as integer milli-units, and the
//! CPU/memory/pod-count vector placement compares. Pure; fed by Node allocatable and pod requests.

use std::collections::BTreeMap;
use std::ops::{Add, AddAssign};

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Parses a quantity into thousandths of its unit (`"250m"` -> 250, `"1Ki"` -> 1_024_000).
/// Returns `None` for text that is not a Kubernetes quantity.
pub fn milli_units(text: &str) -> Option<i128> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    // Exponent form: 1e3, 1E-3 (only when what follows 'e' is a number).
    let (number, suffix, exp10): (&str, &str, i32) = if let Some(rest) =
        suffix.strip_prefix(['e', 'E'])
        && !rest.is_empty()
        && rest
            .trim_start_matches(['+', '-'])
            .chars()
            .all(|c| c.is_ascii_digit())
    {
        (number, "", rest.parse().ok()?)
    } else {
        (number, suffix, 0)
    };
    let (mult_num, mult_den): (i128, i128) = match suffix {
        "" => (1, 1),
        "m" => (1, 1000),
        "k" => (1_000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        _ => return None,
    };
    let negative = number.starts_with('-');
    let number = number.trim_start_matches(['+', '-']);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    if !int_part
        .chars()
        .chain(frac_part.chars())
        .all(|c| c.is_ascii_digit())
    {
        return None;
    }
    // value = digits / 10^frac_len * 10^exp10 * mult_num / mult_den, in milli-units (x1000).
    let mut digits: i128 = 0;
    for c in int_part.bytes().chain(frac_part.bytes()) {
        digits = digits.checked_mul(10)?.checked_add(i128::from(c - b'0'))?;
    }
    let mut num = digits.checked_mul(mult_num)?.checked_mul(1000)?;
    let mut den =
        mult_den.checked_mul(10i128.checked_pow(u32::try_from(frac_part.len()).ok()?)?)?;
    if exp10 >= 0 {
        num = num.checked_mul(10i128.checked_pow(exp10.unsigned_abs())?)?;
    } else {
        den = den.checked_mul(10i128.checked_pow(exp10.unsigned_abs())?)?;
    }
    // Round up: a request of 0.1m CPU still needs room (the API server rounds up likewise).
    let value = (num + den - 1) / den;
    Some(if negative { -value } else { value })
}

/// The resources placement accounts for, in milli-units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU in millicores.
    pub cpu: i128,
    /// Memory in milli-bytes.
    pub memory: i128,
    /// Number of pods (x1000).
    pub pods: i128,
}

impl Resources {
    /// Reads `cpu`, `memory` and `pods` from a resource list (missing = 0).
    pub fn from_list(list: Option<&BTreeMap<String, Quantity>>) -> Self {
        let get = |key: &str| {
            list.and_then(|l| l.get(key))
                .and_then(|q| milli_units(&q.0))
                .unwrap_or(0)
        };
        Self {
            cpu: get("cpu"),
            memory: get("memory"),
            pods: get("pods"),
        }
    }

    /// Component-wise maximum.
    pub fn max(self, other: Self) -> Self {
        Self {
            cpu: self.cpu.max(other.cpu),
            memory: self.memory.max(other.memory),
            pods: self.pods.max(other.pods),
        }
    }

    /// True when `self` fits into `free` in every dimension.
    pub fn fits_in(self, free: Self) -> bool {
        self.cpu <= free.cpu && self.memory <= free.memory && self.pods <= free.pods
    }

    /// `self - other`, component-wise.
    pub fn minus(self, other: Self) -> Self {
        Self {
            cpu: self.cpu - other.cpu,
            memory: self.memory - other.memory,
            pods: self.pods - other.pods,
        }
    }
}

impl Add for Resources {
    type Output = Self;
    fn add(self, other: Self) -> Self {
        Self {
            cpu: self.cpu + other.cpu,
            memory: self.memory + other.memory,
            pods: self.pods + other.pods,
        }
    }
}

impl AddAssign for Resources {
    fn add_assign(&mut self, other: Self) {
        *self = *self + other;
    }
}

fn container_requests(c: &Container) -> Resources {
    let res = c.resources.as_ref();
    // NB: a container with limits but no requests gets requests = limits from the API server.
    let requests = res.and_then(|r| r.requests.as_ref());
    let limits = res.and_then(|r| r.limits.as_ref());
    let req = Resources::from_list(requests);
    let lim = Resources::from_list(limits);
    Resources {
        cpu: if requests.is_some_and(|r| r.contains_key("cpu")) {
            req.cpu
        } else {
            lim.cpu
        },
        memory: if requests.is_some_and(|r| r.contains_key("memory")) {
            req.memory
        } else {
            lim.memory
        },
        pods: 0,
    }
}

/// Effective requests of a pod as the scheduler computes them: max(sum of containers, largest
/// init container) plus overhead, plus one pod slot.
pub fn pod_requests(spec: &PodSpec) -> Resources {
    let sum = spec
        .containers
        .iter()
        .map(container_requests)
        .fold(Resources::default(), |a, b| a + b);
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(container_requests)
        .fold(Resources::default(), Resources::max);
    let overhead = Resources::from_list(spec.overhead.as_ref());
    sum.max(init)
        + overhead
        + Resources {
            pods: 1000,
            ..Resources::default()
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Quantities in every notation Kubernetes accepts parse to the right milli-units; if this
    /// breaks, placement over- or under-commits nodes.
    #[test]
    fn parses_kubernetes_quantities() {
        let cases = [
            ("250m", Some(250)),
            ("2", Some(2000)),
            ("0.5", Some(500)),
            ("1Ki", Some(1_024_000)),
            ("128Mi", Some(128 * 1024 * 1024 * 1000)),
            ("1G", Some(1_000_000_000_000)),
            ("1e3", Some(1_000_000)),
            ("1.5Gi", Some(1_610_612_736_000)),
            ("110", Some(110_000)),
            ("", None),
            ("abc", None),
            ("12Q", None),
        ];
        for (text, want) in cases {
            assert_eq!(milli_units(text), want, "{text}");
        }
    }

    /// Init containers count as the max, not the sum, and limits stand in for missing requests;
    /// if this breaks, jobs are refused on nodes that have room or packed onto full ones.
    #[test]
    fn pod_requests_follow_scheduler_rules() {
        let spec: PodSpec = serde_json::from_value(serde_json::json!({
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}},
                {"name": "b", "resources": {"limits": {"cpu": "250m"}}}
            ],
            "initContainers": [
                {"name": "i", "resources": {"requests": {"cpu": "2", "memory": "10Mi"}}}
            ]
        }))
        .unwrap();
        let r = pod_requests(&spec);
        assert_eq!(r.cpu, 2000);
        assert_eq!(r.memory, 1024 * 1024 * 1024 * 1000);
        assert_eq!(r.pods, 1000);
    }
}
