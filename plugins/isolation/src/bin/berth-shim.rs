//! berth-shim: the per-pod monitor. All of it lives in `berth_isolation::shim`.

fn main() {
    std::process::exit(berth_isolation::shim::main());
}
