//! v1 `freezer`: frozen while its processes are being killed, so none can fork a new one in between.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::file::{read_opt, write};

/// Freezes and waits (up to a second) for `FROZEN`; a cgroup that will not freeze is killed unfrozen.
pub fn freeze(dir: &Path) -> Result<bool> {
    write(dir, "freezer.state", "FROZEN")?;
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        if read_opt(dir, "freezer.state")?.as_deref() == Some("FROZEN") {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(false)
}

pub fn thaw(dir: &Path) -> Result<()> {
    write(dir, "freezer.state", "THAWED")
}
