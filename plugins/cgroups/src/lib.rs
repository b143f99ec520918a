//! The cgroupfs resources plugin: cgroup v1 and v2 managers, stats and OOM events.
