//! Test-only failpoints: named places in the lifecycle where a test can make berthd die (as if killed -9) or
//! stall, to prove that recovery and cancellation leave nothing behind.
//!
//! Always compiled in, inert unless berthd's environment names them:
//! `BERTH_FAILPOINT=run_pod.after_pin` (abort there) or `BERTH_FAILPOINT=a=sleep(1500),b=abort`.
//! The variable is read once. Not the `fail` crate: its points are compiled out unless a cargo feature is on,
//! which would need a second berthd build for the tests; a daemon that must die at a point needs only this.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

/// The variable naming the active failpoints.
pub const ENV: &str = "BERTH_FAILPOINT";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// `std::process::abort()`: no destructor, no flush, no reply — the nearest thing to kill -9 from inside.
    Abort,
    Sleep(Duration),
}

fn parse(spec: &str) -> HashMap<String, Action> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .filter_map(|item| {
            let (name, action) = item.split_once('=').unwrap_or((item, "abort"));
            let action = match action.trim() {
                "abort" => Action::Abort,
                a => {
                    let ms = a.strip_prefix("sleep(")?.strip_suffix(')')?.parse().ok()?;
                    Action::Sleep(Duration::from_millis(ms))
                }
            };
            Some((name.trim().to_string(), action))
        })
        .collect()
}

fn active() -> &'static HashMap<String, Action> {
    static POINTS: OnceLock<HashMap<String, Action>> = OnceLock::new();
    POINTS.get_or_init(|| {
        let points = std::env::var(ENV).map(|s| parse(&s)).unwrap_or_default();
        if !points.is_empty() {
            tracing::warn!(?points, "test failpoints are active");
        }
        points
    })
}

/// Reads the environment now, so a bad or surprising setting shows in the log at start-up.
pub fn init() {
    active();
}

/// Passes the failpoint `name`: does nothing unless it is active.
pub async fn hit(name: &str) {
    match active().get(name) {
        None => {}
        Some(Action::Abort) => {
            tracing::error!(failpoint = name, "failpoint: aborting");
            std::process::abort();
        }
        Some(Action::Sleep(d)) => {
            tracing::warn!(failpoint = name, "failpoint: sleeping {d:?}");
            tokio::time::sleep(*d).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_names_points_and_actions() {
        let p = parse("a, b=sleep(20),c=abort,d=bogus,,");
        assert_eq!(p.get("a"), Some(&Action::Abort));
        assert_eq!(p.get("b"), Some(&Action::Sleep(Duration::from_millis(20))));
        assert_eq!(p.get("c"), Some(&Action::Abort));
        assert_eq!(p.get("d"), None);
        assert_eq!(p.len(), 3);
    }
}
