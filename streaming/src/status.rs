//! The final message on the error stream, exactly as the kubelet writes it: a JSON `metav1.Status` for
//! protocol v4 and later (Success, or Failure with reason NonZeroExitCode and an ExitCode cause that
//! client-go turns into the exit code), plain text before v4 (nothing on success).

use serde::Serialize;

/// How a session ended, for the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    /// The command exited with a non-zero code.
    ExitCode {
        code: i32,
        cmd: Vec<String>,
    },
    /// Anything else that went wrong, already phrased for the user.
    Internal(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StatusFormat {
    /// remotecommand v4, v5 (SPDY and WebSocket).
    Json,
    /// remotecommand v1 to v3.
    Text,
}

#[derive(Serialize)]
struct Status<'a> {
    metadata: Empty,
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct Details<'a> {
    causes: Vec<Cause<'a>>,
}

#[derive(Serialize)]
struct Cause<'a> {
    /// `StatusCause.Type` is serialized as "reason".
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    message: String,
}

/// Go's `%v` of a `[]string`.
fn go_list(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

impl Outcome {
    fn message(&self) -> Option<String> {
        match self {
            Outcome::Success => None,
            Outcome::ExitCode { code, cmd } => Some(format!(
                "command terminated with non-zero exit code: error executing command {}, exit code {code}",
                go_list(cmd)
            )),
            Outcome::Internal(message) => Some(format!("Internal error occurred: {message}")),
        }
    }

    /// The bytes to write on the error stream, if any.
    pub(crate) fn encode(&self, format: StatusFormat) -> Option<Vec<u8>> {
        if format == StatusFormat::Text {
            return self.message().map(String::into_bytes);
        }
        let status = match self {
            Outcome::Success => Status {
                metadata: Empty {},
                status: "Success",
                message: None,
                reason: None,
                details: None,
                code: None,
            },
            Outcome::ExitCode { code, .. } => Status {
                metadata: Empty {},
                status: "Failure",
                message: self.message(),
                reason: Some("NonZeroExitCode"),
                details: Some(Details {
                    causes: vec![Cause {
                        reason: Some("ExitCode"),
                        message: code.to_string(),
                    }],
                }),
                code: None,
            },
            Outcome::Internal(message) => Status {
                metadata: Empty {},
                status: "Failure",
                message: self.message(),
                reason: Some("InternalError"),
                details: Some(Details {
                    causes: vec![Cause {
                        reason: None,
                        message: message.clone(),
                    }],
                }),
                code: Some(500),
            },
        };
        Some(serde_json::to_vec(&status).expect("a Status always serializes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(o: &Outcome) -> String {
        String::from_utf8(o.encode(StatusFormat::Json).unwrap()).unwrap()
    }

    #[test]
    fn success_is_what_the_kubelet_writes() {
        assert_eq!(json(&Outcome::Success), r#"{"metadata":{},"status":"Success"}"#);
        assert_eq!(Outcome::Success.encode(StatusFormat::Text), None);
    }

    #[test]
    fn non_zero_exit_carries_the_code_as_a_cause() {
        let o = Outcome::ExitCode {
            code: 7,
            cmd: vec!["sh".into(), "-c".into(), "exit 7".into()],
        };
        assert_eq!(
            json(&o),
            concat!(
                r#"{"metadata":{},"status":"Failure","#,
                r#""message":"command terminated with non-zero exit code: error executing command [sh -c exit 7], exit code 7","#,
                r#""reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"7"}]}}"#
            )
        );
        assert!(
            String::from_utf8(o.encode(StatusFormat::Text).unwrap())
                .unwrap()
                .contains("exit code 7")
        );
    }

    #[test]
    fn internal_errors_look_like_apierrors_new_internal_error() {
        assert_eq!(
            json(&Outcome::Internal("boom".into())),
            concat!(
                r#"{"metadata":{},"status":"Failure","message":"Internal error occurred: boom","#,
                r#""reason":"InternalError","details":{"causes":[{"message":"boom"}]},"code":500}"#
            )
        );
    }
}
