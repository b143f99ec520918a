//! An example dynamic plugin: a `network` plugin named `example-null` that gives pods no addresses.
//!
//! It exists to prove and test the dynamic-plugin ABI (see `berth_core::dylib`): berthd loads it with
//! `plugins.load = ["…/libberth_example_plugin.so"]`, lists it in `Status` verbose info, and can select it with
//! `plugins.network = "example-null"`. It is also the template for writing a real one.
#![allow(unsafe_code)] // the C-ABI boundary: every unsafe block below is commented.

use std::ffi::c_void;
use std::sync::Mutex;

use berth_core::dylib::{ABI_VERSION_C, Bytes, Envelope, EnvelopeError, LogRecord, OwnedBuf, PluginDescriptor, Vtable};
use berth_core::plugin::Readiness;
use berth_core::plugin::network::{PodNetwork, PodNetworkStatus};
use serde_json::Value;

/// One instance: remembers the pods it was asked to set up.
struct NullNetwork {
    greeting: String,
    pods: Mutex<Vec<String>>,
}

impl NullNetwork {
    fn call(&self, method: &str, request: &[u8]) -> Envelope {
        let parsed = |req: &[u8]| serde_json::from_slice::<PodNetwork>(req);
        let mut env = Envelope::default();
        let result: Result<Value, EnvelopeError> = match method {
            "readiness" => Ok(serde_json::to_value(Readiness {
                ready: true,
                reason: String::new(),
                message: self.greeting.clone(),
            })
            .unwrap_or(Value::Null)),
            "setup" => parsed(request).map_err(|e| bad(format!("setup: {e}"))).map(|pod| {
                env.logs
                    .push(log("info", format!("setup of pod {} (no addresses)", pod.pod_id)));
                self.pods.lock().unwrap_or_else(|p| p.into_inner()).push(pod.pod_id);
                serde_json::to_value(PodNetworkStatus::default()).unwrap_or(Value::Null)
            }),
            "teardown" => parsed(request).map_err(|e| bad(format!("teardown: {e}"))).map(|pod| {
                self.pods
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|p| *p != pod.pod_id);
                Value::Null
            }),
            "update_pod_cidr" | "reconcile" => Ok(Value::Null),
            other => Err(EnvelopeError {
                code: "unsupported".into(),
                message: format!("unknown method {other:?}"),
            }),
        };
        match result {
            Ok(v) => env.result = Some(v),
            Err(e) => env.error = Some(e),
        }
        env
    }
}

fn bad(message: String) -> EnvelopeError {
    EnvelopeError {
        code: "invalid_argument".into(),
        message,
    }
}

fn log(level: &str, message: String) -> LogRecord {
    LogRecord {
        level: level.into(),
        message,
    }
}

/// Writes an envelope to the host's out-parameter.
///
/// # Safety
/// `out` must be null or valid for a write of one `OwnedBuf`.
unsafe fn put(out: *mut OwnedBuf, env: &Envelope) {
    if out.is_null() {
        return;
    }
    let bytes = serde_json::to_vec(env).unwrap_or_else(|_| b"{}".to_vec());
    // SAFETY: non-null and valid for writes per this function's contract (the host passes `&mut out`).
    unsafe { out.write(OwnedBuf::from_vec(bytes)) };
}

unsafe extern "C" fn init(config: Bytes, out: *mut OwnedBuf) -> *mut c_void {
    // SAFETY: the host passes a slice that lives for the duration of this call.
    let config = unsafe { config.as_slice() };
    let config: Value = serde_json::from_slice(config).unwrap_or(Value::Null);
    let greeting = config
        .get("greeting")
        .and_then(Value::as_str)
        .unwrap_or("example-null network plugin ready")
        .to_string();
    let env = Envelope {
        logs: vec![log("info", format!("example-null initialised: {greeting}"))],
        ..Default::default()
    };
    // SAFETY: `out` comes from the host as a valid out-parameter.
    unsafe { put(out, &env) };
    Box::into_raw(Box::new(NullNetwork {
        greeting,
        pods: Mutex::new(Vec::new()),
    }))
    .cast()
}

unsafe extern "C" fn call(instance: *mut c_void, method: Bytes, request: Bytes, out: *mut OwnedBuf) {
    // SAFETY: `instance` came from `init` and the host keeps it alive until `destroy`; slices live for the call.
    let (this, method, request) = unsafe { (&*instance.cast::<NullNetwork>(), method.as_slice(), request.as_slice()) };
    let env = this.call(&String::from_utf8_lossy(method), request);
    // SAFETY: `out` comes from the host as a valid out-parameter.
    unsafe { put(out, &env) };
}

unsafe extern "C" fn free_buf(buf: OwnedBuf) {
    // SAFETY: every buffer the host gives back was made by `put` (OwnedBuf::from_vec) in this library.
    drop(unsafe { buf.into_vec() });
}

unsafe extern "C" fn destroy(instance: *mut c_void) {
    if !instance.is_null() {
        // SAFETY: made by Box::into_raw in `init`; the host destroys each instance once.
        drop(unsafe { Box::from_raw(instance.cast::<NullNetwork>()) });
    }
}

static DESCRIPTOR: PluginDescriptor = PluginDescriptor {
    abi_version: ABI_VERSION_C.as_ptr(),
    kind: c"network".as_ptr(),
    name: c"example-null".as_ptr(),
    vtable: Vtable {
        init,
        call,
        free_buf,
        destroy,
    },
};

/// The one exported symbol (`berth_core::dylib::DESCRIPTOR_SYMBOL`).
#[unsafe(no_mangle)]
pub extern "C" fn berth_plugin_descriptor() -> *const PluginDescriptor {
    &DESCRIPTOR
}
