//! The requests the CRI Exec, Attach and PortForward RPCs turn into URLs, and their validation (kubelet's
//! rules: a container id, at least one stream, no stderr with a tty).

/// A CRI `ExecRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecRequest {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// A CRI `AttachRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttachRequest {
    pub container_id: String,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// The container was created with `stdin_once` and no tty: the runtime closes its stdin when this attach's
    /// stdin ends, and the session then lasts until the container's output ends. Otherwise the end of the
    /// client's stdin detaches the session and leaves the container as it is (kubelet's and containerd's rule).
    pub stdin_once: bool,
}

/// A CRI `PortForwardRequest`. `ports` may be empty: SPDY clients name the port per stream; WebSocket
/// clients name them in the URL's `port` query parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortForwardRequest {
    pub pod_id: String,
    pub ports: Vec<i32>,
}

/// Why a request gets no URL. All map to gRPC `InvalidArgument`, except `TooManyPending`
/// (`ResourceExhausted`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("missing required container_id")]
    MissingContainerId,
    #[error("missing required pod_sandbox_id")]
    MissingPodId,
    #[error("cmd must not be empty")]
    EmptyCommand,
    #[error("tty and stderr cannot both be true")]
    TtyWithStderr,
    #[error("one of stdin, stdout, or stderr must be set")]
    NoStreams,
    #[error("invalid port {0}: must be between 1 and 65535")]
    InvalidPort(i32),
    #[error("too many pending streaming requests ({0}); try again later")]
    TooManyPending(usize),
}

fn check_streams(container_id: &str, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> Result<(), RequestError> {
    if container_id.is_empty() {
        return Err(RequestError::MissingContainerId);
    }
    if tty && stderr {
        return Err(RequestError::TtyWithStderr);
    }
    if !stdin && !stdout && !stderr {
        return Err(RequestError::NoStreams);
    }
    Ok(())
}

impl ExecRequest {
    pub fn validate(&self) -> Result<(), RequestError> {
        check_streams(&self.container_id, self.tty, self.stdin, self.stdout, self.stderr)?;
        if self.cmd.is_empty() {
            return Err(RequestError::EmptyCommand);
        }
        Ok(())
    }
}

impl AttachRequest {
    pub fn validate(&self) -> Result<(), RequestError> {
        check_streams(&self.container_id, self.tty, self.stdin, self.stdout, self.stderr)
    }
}

impl PortForwardRequest {
    pub fn validate(&self) -> Result<(), RequestError> {
        if self.pod_id.is_empty() {
            return Err(RequestError::MissingPodId);
        }
        if let Some(&bad) = self.ports.iter().find(|&&p| !(1..=65535).contains(&p)) {
            return Err(RequestError::InvalidPort(bad));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> ExecRequest {
        ExecRequest {
            container_id: "c1".into(),
            cmd: vec!["sh".into()],
            stdout: true,
            ..Default::default()
        }
    }

    #[test]
    fn exec_rules_follow_the_kubelet() {
        assert_eq!(exec().validate(), Ok(()));
        let e = |f: fn(&mut ExecRequest)| {
            let mut r = exec();
            f(&mut r);
            r.validate().unwrap_err()
        };
        assert_eq!(e(|r| r.container_id.clear()), RequestError::MissingContainerId);
        assert_eq!(e(|r| r.cmd.clear()), RequestError::EmptyCommand);
        assert_eq!(
            e(|r| {
                r.tty = true;
                r.stderr = true
            }),
            RequestError::TtyWithStderr
        );
        assert_eq!(e(|r| r.stdout = false), RequestError::NoStreams);
    }

    #[test]
    fn attach_and_port_forward_rules() {
        let a = AttachRequest {
            container_id: "c".into(),
            stdin: true,
            ..Default::default()
        };
        assert_eq!(a.validate(), Ok(()));
        assert_eq!(
            AttachRequest {
                stdin: false,
                ..a.clone()
            }
            .validate(),
            Err(RequestError::NoStreams)
        );
        let p = PortForwardRequest {
            pod_id: "p".into(),
            ports: vec![80, 65535],
        };
        assert_eq!(p.validate(), Ok(()));
        assert_eq!(
            PortForwardRequest {
                ports: vec![0],
                ..p.clone()
            }
            .validate(),
            Err(RequestError::InvalidPort(0))
        );
        assert_eq!(
            PortForwardRequest {
                pod_id: String::new(),
                ..p
            }
            .validate(),
            Err(RequestError::MissingPodId)
        );
    }
}
