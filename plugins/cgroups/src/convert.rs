//! The CRI's v1-shaped values turned into cgroup v2 ones, with the formulas kubelet and runc use
//! (opencontainers/cgroups `ConvertCPUSharesToCgroupV2Value`, `ConvertMemorySwapToCgroupV2Value`; runc's
//! `cpu.max` composition).

use crate::error::{CgroupError, Result};

pub const SHARES_MIN: u64 = 2;
pub const SHARES_MAX: u64 = 262_144;
pub const WEIGHT_MAX: u64 = 10_000;

/// cpu.shares → cpu.weight, the quadratic fit through (2, 1), (1024, 100) and (262144, 10000) that
/// opencontainers/cgroups ≥ 0.0.3 (runc ≥ 1.3.2, crun ≥ 1.23, kubelet for its own pod cgroups) uses since
/// kubernetes#131216: the old linear formula mapped the default 1024 shares to weight 39, not the default 100.
/// 0 means unset and stays 0.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    if shares <= SHARES_MIN {
        return 1;
    }
    if shares >= SHARES_MAX {
        return WEIGHT_MAX;
    }
    let l = (shares as f64).log2();
    let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
    10f64.powf(exponent).ceil() as u64
}

/// The value for v2 `cpu.max` from CRI quota and period (µs), as runc composes it; `None` when both are unset.
/// A quota of -1 (or 0 with a period) means no limit (`max`).
pub fn cpu_max(quota: i64, period: i64) -> Option<String> {
    if quota == 0 && period == 0 {
        return None;
    }
    let mut s = if quota > 0 {
        quota.to_string()
    } else {
        "max".to_string()
    };
    if period > 0 {
        s.push(' ');
        s.push_str(&period.to_string());
    }
    Some(s)
}

/// v2 `memory.swap.max` from the CRI's memory+swap total: `Some(-1)` for max, `Some(n)` for n bytes of swap,
/// `None` when unset.
pub fn swap_max(memory_swap: i64, memory: i64) -> Result<Option<i64>> {
    let invalid = |m: String| Err(CgroupError::invalid("memory_swap_limit_in_bytes", m));
    match (memory_swap, memory) {
        (0, -1) => Ok(Some(-1)),
        (0, _) => Ok(None),
        (-1, _) => Ok(Some(-1)),
        (s, _) if s < -1 => invalid(format!("{s} is negative")),
        (_, 0 | -1) => invalid("a swap limit needs a memory limit".into()),
        (s, m) if s < m => invalid(format!("memory+swap {s} is below the memory limit {m}")),
        (s, m) => Ok(Some(s - m)),
    }
}

/// Limits in bytes: -1 → `max`.
pub fn bytes_or_max(v: i64) -> String {
    if v < 0 { "max".into() } else { v.to_string() }
}

/// CRI hugepage sizes (`2MB`, `1GB`, `64KB`) are the kernel's file-name spelling already; check the shape.
pub fn check_hugepage_size(size: &str) -> Result<()> {
    let digits = size.trim_end_matches(['K', 'M', 'G', 'B']);
    let unit = &size[digits.len()..];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || !matches!(unit, "KB" | "MB" | "GB") {
        return Err(CgroupError::invalid(
            "hugepage_limits",
            format!("page size {size:?} is not like 2MB or 1GB"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // kubelet's own helpers (pkg/kubelet/cm/helpers_linux.go), to check the whole chain kubelet → CRI → file.
    const MIN_QUOTA_PERIOD: i64 = 1000;
    const QUOTA_PERIOD: i64 = 100_000;

    fn milli_cpu_to_shares(milli: i64) -> u64 {
        if milli == 0 {
            return SHARES_MIN;
        }
        let shares = milli * 1024 / 1000;
        (shares.max(SHARES_MIN as i64) as u64).min(SHARES_MAX)
    }

    fn milli_cpu_to_quota(milli: i64, period: i64) -> i64 {
        if milli == 0 {
            return 0;
        }
        (milli * period / 1000).max(MIN_QUOTA_PERIOD)
    }

    #[test]
    fn shares_to_weight_matches_opencontainers_cgroups() {
        // The table of opencontainers/cgroups v0.0.5 utils_test.go.
        for (shares, weight) in [
            (0, 0),
            (1, 1),
            (2, 1),
            (3, 2),
            (1024, 100),
            (262_143, 10_000),
            (262_144, 10_000),
            (262_145, 10_000),
        ] {
            assert_eq!(shares_to_weight(shares), weight, "shares {shares}");
        }
        // Monotonic over the whole range.
        let mut last = 0;
        for s in (2..SHARES_MAX).step_by(97) {
            let w = shares_to_weight(s);
            assert!(w >= last && (1..=WEIGHT_MAX).contains(&w), "shares {s} → {w}");
            last = w;
        }
    }

    #[test]
    fn kubelet_cpu_requests_and_limits_to_v2_files() {
        // 200m request, 200m limit (the 0.2 core of the test plan).
        let shares = milli_cpu_to_shares(200);
        assert_eq!(shares, 204);
        // 10^((log2(204)² + 125·log2(204)) / 612 − 7/34) = 28.7, rounded up.
        assert_eq!(shares_to_weight(shares), 29);
        let quota = milli_cpu_to_quota(200, QUOTA_PERIOD);
        assert_eq!(cpu_max(quota, QUOTA_PERIOD).unwrap(), "20000 100000");
        // 1 core request: weight 100 (the default), 1m limit: the 1 ms minimum quota.
        assert_eq!(shares_to_weight(milli_cpu_to_shares(1000)), 100);
        assert_eq!(
            cpu_max(milli_cpu_to_quota(1, QUOTA_PERIOD), QUOTA_PERIOD).unwrap(),
            "1000 100000"
        );
        // Best effort: 2 shares.
        assert_eq!(shares_to_weight(milli_cpu_to_shares(0)), 1);
    }

    #[test]
    fn cpu_max_follows_runc() {
        assert_eq!(cpu_max(0, 0), None);
        assert_eq!(cpu_max(-1, 100_000).unwrap(), "max 100000");
        assert_eq!(cpu_max(50_000, 0).unwrap(), "50000");
        assert_eq!(cpu_max(0, 50_000).unwrap(), "max 50000");
    }

    #[test]
    fn swap_follows_opencontainers_cgroups() {
        assert_eq!(swap_max(0, 0).unwrap(), None);
        assert_eq!(swap_max(-1, 0).unwrap(), Some(-1));
        assert_eq!(swap_max(-1, -1).unwrap(), Some(-1));
        assert_eq!(swap_max(0, -1).unwrap(), Some(-1));
        assert!(swap_max(-2, 0).is_err());
        assert_eq!(swap_max(-1, 1000).unwrap(), Some(-1));
        assert_eq!(swap_max(1000, 1000).unwrap(), Some(0));
        assert_eq!(swap_max(500, 200).unwrap(), Some(300));
        assert!(swap_max(300, 400).is_err());
        assert!(swap_max(300, 0).is_err());
    }

    #[test]
    fn hugepage_sizes() {
        for ok in ["2MB", "1GB", "64KB"] {
            check_hugepage_size(ok).unwrap();
        }
        for bad in ["2M", "MB", "2mb", "x2MB", "../2MB"] {
            assert!(check_hugepage_size(bad).is_err(), "{bad}");
        }
    }
}
