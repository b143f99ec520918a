//! ExecSync: runs a command in a running container; the timeout kills it (DeadlineExceeded); output is
//! capped at 16 MiB like kubelet's limit.

use std::time::Duration;

use berth_core::Lifecycle;
use berth_core::plugin::isolation::ExecSpec;

use crate::api::{ExecSyncRequest, ExecSyncResponse};
use crate::error::{CriError, CriResult};

/// kubelet's cap on ExecSync output (`MaxContainerLogSize`-like 16 MiB).
pub const MAX_EXEC_OUTPUT: usize = 16 << 20;

pub async fn handle(lifecycle: &Lifecycle, req: ExecSyncRequest) -> CriResult<ExecSyncResponse> {
    if req.cmd.is_empty() {
        return Err(CriError::InvalidArgument("cmd must not be empty".into()));
    }
    if req.timeout < 0 {
        return Err(CriError::InvalidArgument("timeout must not be negative".into()));
    }
    let c = lifecycle.find_container(&req.container_id)?;
    let timeout = (req.timeout > 0).then(|| Duration::from_secs(req.timeout as u64));
    let spec = ExecSpec {
        args: req.cmd,
        tty: false,
        stdin: false,
        stdout: true,
        stderr: true,
    };
    let out = lifecycle.exec_sync(&c.id, &spec, timeout, MAX_EXEC_OUTPUT).await?;
    if out.timed_out {
        return Err(CriError::DeadlineExceeded(format!(
            "command {:?} timed out after {}s",
            spec.args, req.timeout
        )));
    }
    Ok(ExecSyncResponse {
        stdout: out.stdout,
        stderr: out.stderr,
        exit_code: out.exit_code,
    })
}
