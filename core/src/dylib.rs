//! Dynamic plugins: `cdylib` `.so` files loaded with libloading behind a checked C ABI.
//!
//! Rust has no stable ABI, and a cdylib carries its own copies of tokio's and tracing's statics, so the
//! interface is synchronous C: the `.so` exports one function, [`DESCRIPTOR_SYMBOL`], returning a
//! `#[repr(C)]` [`PluginDescriptor`] with the ABI string, kind, name and a vtable. Calls carry JSON; the
//! host runs them on blocking threads and re-emits the log records a call returns. A library is never
//! unloaded (its code may be running), so every loaded plugin lives as long as the process.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_void};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::plugin::network::{Network, PodNetwork, PodNetworkStatus};
use crate::plugin::{PluginError, PluginKind, PluginResult, Readiness};

/// The ABI this berth speaks. A plugin built against another is refused.
pub const ABI_VERSION: &str = concat!("berth-plugin-abi/1 berth-core/", env!("CARGO_PKG_VERSION"));
/// The same string, NUL-terminated, for plugins to put in their descriptor.
pub const ABI_VERSION_C: &CStr = match CStr::from_bytes_with_nul(
    concat!("berth-plugin-abi/1 berth-core/", env!("CARGO_PKG_VERSION"), "\0").as_bytes(),
) {
    Ok(s) => s,
    Err(_) => panic!("ABI string has an interior NUL"),
};
/// The one symbol a plugin exports: `extern "C" fn() -> *const PluginDescriptor`.
pub const DESCRIPTOR_SYMBOL: &str = "berth_plugin_descriptor";

/// A borrowed byte string passed into the plugin.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Bytes {
    pub ptr: *const u8,
    pub len: usize,
}

impl Bytes {
    pub fn from_slice(s: &[u8]) -> Bytes {
        Bytes {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }

    /// # Safety
    /// `ptr` must point to `len` readable bytes that outlive the returned slice.
    pub unsafe fn as_slice<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            return &[];
        }
        // SAFETY: guaranteed by the caller, per this function's contract.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// A byte buffer allocated by the plugin and handed to the host, which gives it back through `free_buf`
/// (each side frees only what its own allocator made).
#[repr(C)]
pub struct OwnedBuf {
    pub ptr: *mut u8,
    pub len: usize,
    pub cap: usize,
}

impl OwnedBuf {
    pub const EMPTY: OwnedBuf = OwnedBuf {
        ptr: std::ptr::null_mut(),
        len: 0,
        cap: 0,
    };

    /// Plugin side: hands a Vec over to the host.
    pub fn from_vec(v: Vec<u8>) -> OwnedBuf {
        let mut v = std::mem::ManuallyDrop::new(v);
        OwnedBuf {
            ptr: v.as_mut_ptr(),
            len: v.len(),
            cap: v.capacity(),
        }
    }

    /// Plugin side, in `free_buf`: takes a buffer made by `from_vec` back.
    ///
    /// # Safety
    /// `self` must come from [`OwnedBuf::from_vec`] in the same library and not have been freed.
    pub unsafe fn into_vec(self) -> Vec<u8> {
        if self.ptr.is_null() {
            return Vec::new();
        }
        // SAFETY: ptr/len/cap come from a ManuallyDrop'd Vec of this allocator, per the contract.
        unsafe { Vec::from_raw_parts(self.ptr, self.len, self.cap) }
    }
}

/// The calls a plugin offers. Every function must be safe to call from any thread.
#[repr(C)]
pub struct Vtable {
    /// Creates an instance from a JSON config. On failure returns null and puts a JSON error envelope in
    /// `out`.
    pub init: unsafe extern "C" fn(config: Bytes, out: *mut OwnedBuf) -> *mut c_void,
    /// Runs `method` with a JSON request and puts a JSON envelope in `out` (see [`Envelope`]).
    pub call: unsafe extern "C" fn(instance: *mut c_void, method: Bytes, request: Bytes, out: *mut OwnedBuf),
    /// Frees a buffer the plugin put in an `out`.
    pub free_buf: unsafe extern "C" fn(buf: OwnedBuf),
    /// Destroys an instance.
    pub destroy: unsafe extern "C" fn(instance: *mut c_void),
}

#[repr(C)]
pub struct PluginDescriptor {
    /// NUL-terminated; must equal [`ABI_VERSION`].
    pub abi_version: *const c_char,
    /// NUL-terminated kind: `network`, …
    pub kind: *const c_char,
    /// NUL-terminated plugin name, as config selects it.
    pub name: *const c_char,
    pub vtable: Vtable,
}

// SAFETY: a descriptor is immutable static data plus function pointers; plugins promise (ABI contract)
// that every vtable function may be called from any thread.
unsafe impl Sync for PluginDescriptor {}

/// The JSON a call returns: `result` or `error`, plus log records.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<EnvelopeError>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<LogRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct EnvelopeError {
    /// `invalid_argument`, `not_found`, `already_exists`, `failed_precondition`, `unsupported`, `internal`.
    pub code: String,
    pub message: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LogRecord {
    /// `error`, `warn`, `info`, `debug`, `trace`.
    pub level: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DylibError {
    #[error("plugin {path}: no such file")]
    Missing { path: PathBuf },
    #[error("plugin {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("plugin {path}: not an ELF shared object")]
    NotElf { path: PathBuf },
    #[error("plugin {path}: cannot load: {message}")]
    Open { path: PathBuf, message: String },
    #[error("plugin {path}: does not export `{symbol}`, so it is not a berth plugin")]
    MissingSymbol { path: PathBuf, symbol: &'static str },
    #[error("plugin {path}: built for ABI `{found}`, this berthd speaks `{expected}`")]
    AbiMismatch {
        path: PathBuf,
        found: String,
        expected: &'static str,
    },
    #[error("plugin {path}: bad descriptor: {message}")]
    Descriptor { path: PathBuf, message: String },
    #[error("plugin {path}: dynamic {kind} plugins are not supported yet (only network)")]
    UnsupportedKind { path: PathBuf, kind: String },
    #[error("plugin {path}: {message}")]
    Registry { path: PathBuf, message: String },
}

/// A loaded library and its descriptor. Never unloaded.
pub struct LoadedPlugin {
    path: PathBuf,
    abi: String,
    kind: PluginKind,
    name: String,
    descriptor: &'static PluginDescriptor,
    _library: libloading::Library,
}

type DescriptorFn = unsafe extern "C" fn() -> *const PluginDescriptor;

/// Reads a NUL-terminated string from the descriptor.
///
/// # Safety
/// `p` must be null or point to a NUL-terminated string valid for the library's lifetime.
unsafe fn c_string(p: *const c_char, path: &Path, what: &str) -> Result<String, DylibError> {
    if p.is_null() {
        return Err(DylibError::Descriptor {
            path: path.to_path_buf(),
            message: format!("{what} is null"),
        });
    }
    // SAFETY: non-null and NUL-terminated per the ABI contract stated above.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().map(str::to_string).map_err(|_| DylibError::Descriptor {
        path: path.to_path_buf(),
        message: format!("{what} is not UTF-8"),
    })
}

impl LoadedPlugin {
    pub fn load(path: &Path) -> Result<LoadedPlugin, DylibError> {
        let mut magic = [0u8; 4];
        {
            use std::io::Read;
            let mut f = std::fs::File::open(path).map_err(|source| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    DylibError::Missing {
                        path: path.to_path_buf(),
                    }
                } else {
                    DylibError::Read {
                        path: path.to_path_buf(),
                        source,
                    }
                }
            })?;
            if f.read_exact(&mut magic).is_err() || magic != *b"\x7fELF" {
                return Err(DylibError::NotElf {
                    path: path.to_path_buf(),
                });
            }
        }
        // SAFETY: loading runs the library's initialisers. Plugins are configured by the node's operator, who
        // vouches for them as for berthd itself; the ABI check below happens before any other call.
        let library = unsafe { libloading::Library::new(path) }.map_err(|e| DylibError::Open {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        // SAFETY: the symbol's type is fixed by the ABI; a library exporting the name with another type is
        // a broken plugin, as with any C plugin interface.
        let get: libloading::Symbol<'_, DescriptorFn> =
            unsafe { library.get(DESCRIPTOR_SYMBOL.as_bytes()) }.map_err(|_| DylibError::MissingSymbol {
                path: path.to_path_buf(),
                symbol: DESCRIPTOR_SYMBOL,
            })?;
        // SAFETY: calling the exported descriptor function, which takes nothing and returns a pointer to
        // static data in the library (kept loaded for the rest of the process).
        let ptr = unsafe { get() };
        if ptr.is_null() {
            return Err(DylibError::Descriptor {
                path: path.to_path_buf(),
                message: "descriptor is null".into(),
            });
        }
        // SAFETY: non-null pointer to static data of a library that is never unloaded.
        let descriptor: &'static PluginDescriptor = unsafe { &*ptr };
        // Only the ABI string is read before the ABI is known to match: its layout is the one thing every
        // ABI version must keep.
        // SAFETY: per the ABI, a NUL-terminated static string.
        let abi = unsafe { c_string(descriptor.abi_version, path, "abi_version")? };
        if abi != ABI_VERSION {
            return Err(DylibError::AbiMismatch {
                path: path.to_path_buf(),
                found: abi,
                expected: ABI_VERSION,
            });
        }
        // SAFETY: as above, static NUL-terminated strings of a matching-ABI descriptor.
        let kind_s = unsafe { c_string(descriptor.kind, path, "kind")? };
        // SAFETY: as above.
        let name = unsafe { c_string(descriptor.name, path, "name")? };
        let kind = PluginKind::parse(&kind_s).ok_or_else(|| DylibError::Descriptor {
            path: path.to_path_buf(),
            message: format!("unknown kind {kind_s:?}"),
        })?;
        if name.is_empty() {
            return Err(DylibError::Descriptor {
                path: path.to_path_buf(),
                message: "empty name".into(),
            });
        }
        Ok(LoadedPlugin {
            path: path.to_path_buf(),
            abi,
            kind,
            name,
            descriptor,
            _library: library,
        })
    }

    pub fn kind(&self) -> PluginKind {
        self.kind
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn abi(&self) -> &str {
        &self.abi
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn take_envelope(&self, out: OwnedBuf) -> PluginResult<Envelope> {
        let bytes = if out.ptr.is_null() {
            Vec::new()
        } else {
            // SAFETY: the plugin filled `out` with `len` initialised bytes (ABI contract); we copy them
            // before handing the buffer back to the plugin's own allocator.
            let copy = unsafe { std::slice::from_raw_parts(out.ptr, out.len) }.to_vec();
            // SAFETY: returning the plugin's buffer to the plugin, exactly once.
            unsafe { (self.descriptor.vtable.free_buf)(out) };
            copy
        };
        let env: Envelope = serde_json::from_slice(&bytes)
            .map_err(|e| PluginError::Internal(format!("plugin {}: invalid response: {e}", self.name)))?;
        for log in &env.logs {
            let (p, m) = (&self.name, &log.message);
            match log.level.as_str() {
                "error" => tracing::error!(plugin = %p, "{m}"),
                "warn" => tracing::warn!(plugin = %p, "{m}"),
                "debug" => tracing::debug!(plugin = %p, "{m}"),
                "trace" => tracing::trace!(plugin = %p, "{m}"),
                _ => tracing::info!(plugin = %p, "{m}"),
            }
        }
        Ok(env)
    }

    fn instantiate(&self, config: &Value) -> PluginResult<Instance> {
        let cfg = serde_json::to_vec(config).map_err(|e| PluginError::Internal(e.to_string()))?;
        let mut out = OwnedBuf::EMPTY;
        // SAFETY: `cfg` outlives the call; `out` is a valid place for the plugin to write its envelope.
        let handle = unsafe { (self.descriptor.vtable.init)(Bytes::from_slice(&cfg), &mut out) };
        let env = self.take_envelope(out)?;
        if handle.is_null() {
            return Err(envelope_error(&self.name, env.error));
        }
        Ok(Instance(handle))
    }
}

fn envelope_error(plugin: &str, e: Option<EnvelopeError>) -> PluginError {
    let Some(e) = e else {
        return PluginError::Internal(format!("plugin {plugin}: failed without saying why"));
    };
    let m = format!("plugin {plugin}: {}", e.message);
    match e.code.as_str() {
        "invalid_argument" => PluginError::InvalidArgument(m),
        "not_found" => PluginError::NotFound(m),
        "already_exists" => PluginError::AlreadyExists(m),
        "failed_precondition" => PluginError::FailedPrecondition(m),
        "unsupported" => PluginError::Unsupported(m),
        _ => PluginError::Internal(m),
    }
}

/// A plugin instance handle.
struct Instance(*mut c_void);
// SAFETY: the ABI requires plugin instances to be usable from any thread.
unsafe impl Send for Instance {}
// SAFETY: as above; the plugin synchronises internally.
unsafe impl Sync for Instance {}

/// A live instance of a dynamic plugin, callable from async code.
pub struct DylibInstance {
    plugin: Arc<LoadedPlugin>,
    instance: Instance,
}

impl DylibInstance {
    pub fn new(plugin: Arc<LoadedPlugin>, config: &toml::Table) -> PluginResult<DylibInstance> {
        let config = serde_json::to_value(config).map_err(|e| PluginError::Internal(e.to_string()))?;
        let instance = plugin.instantiate(&config)?;
        Ok(DylibInstance { plugin, instance })
    }

    /// Calls `method` on a blocking thread (the plugin may block; it has its own runtime statics).
    pub async fn call<Req: Serialize, Resp: for<'de> Deserialize<'de>>(
        self: &Arc<Self>,
        method: &'static str,
        request: &Req,
    ) -> PluginResult<Resp> {
        let req = serde_json::to_vec(request).map_err(|e| PluginError::Internal(e.to_string()))?;
        let this = self.clone();
        let env = tokio::task::spawn_blocking(move || {
            let mut out = OwnedBuf::EMPTY;
            // SAFETY: the instance is alive (we hold `this`), buffers outlive the call, `out` is writable.
            unsafe {
                (this.plugin.descriptor.vtable.call)(
                    this.instance.0,
                    Bytes::from_slice(method.as_bytes()),
                    Bytes::from_slice(&req),
                    &mut out,
                )
            };
            this.plugin.take_envelope(out)
        })
        .await
        .map_err(|e| PluginError::Internal(format!("plugin call {method} panicked: {e}")))??;
        if env.error.is_some() {
            return Err(envelope_error(&self.plugin.name, env.error));
        }
        serde_json::from_value(env.result.unwrap_or(Value::Null))
            .map_err(|e| PluginError::Internal(format!("plugin {}: bad {method} result: {e}", self.plugin.name)))
    }
}

impl Drop for DylibInstance {
    fn drop(&mut self) {
        // SAFETY: the instance came from this plugin's `init` and is destroyed exactly once.
        unsafe { (self.plugin.descriptor.vtable.destroy)(self.instance.0) };
    }
}

/// A dynamic plugin serving the [`Network`] trait. Methods: `readiness`, `setup`, `teardown`,
/// `update_pod_cidr`, `reconcile`, with the trait's argument and result types as JSON.
pub struct DylibNetwork(Arc<DylibInstance>);

impl DylibNetwork {
    pub fn new(plugin: Arc<LoadedPlugin>, config: &toml::Table) -> PluginResult<DylibNetwork> {
        Ok(DylibNetwork(Arc::new(DylibInstance::new(plugin, config)?)))
    }
}

#[async_trait]
impl Network for DylibNetwork {
    async fn readiness(&self) -> Readiness {
        self.0
            .call("readiness", &())
            .await
            .unwrap_or_else(|e| Readiness::not_ready("NetworkPluginError", e.to_string()))
    }

    async fn setup(&self, pod: &PodNetwork) -> PluginResult<PodNetworkStatus> {
        self.0.call("setup", pod).await
    }

    async fn teardown(&self, pod: &PodNetwork) -> PluginResult<()> {
        self.0.call("teardown", pod).await
    }

    async fn update_pod_cidr(&self, cidr: &str) -> PluginResult<()> {
        self.0.call("update_pod_cidr", &cidr).await
    }

    async fn reconcile(&self, live_pods: &[String]) -> PluginResult<()> {
        self.0.call("reconcile", &live_pods).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_says_so() {
        let e = LoadedPlugin::load(Path::new("/nonexistent/libx.so")).err().unwrap();
        assert!(matches!(e, DylibError::Missing { .. }), "{e}");
        assert!(e.to_string().contains("no such file"));
    }

    #[test]
    fn a_non_elf_file_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("libtext.so");
        std::fs::write(&p, "#!/bin/sh\necho not a library\n").unwrap();
        let e = LoadedPlugin::load(&p).err().unwrap();
        assert!(matches!(e, DylibError::NotElf { .. }), "{e}");
    }

    #[test]
    fn a_library_without_the_symbol_is_not_a_plugin() {
        // libm is on every glibc system and loading it is harmless.
        let libm = ["/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
            .expect("libm present");
        let e = LoadedPlugin::load(libm).err().unwrap();
        assert!(matches!(e, DylibError::MissingSymbol { .. }), "{e}");
        assert!(e.to_string().contains(DESCRIPTOR_SYMBOL));
    }

    #[test]
    fn the_abi_string_names_core_version() {
        assert!(ABI_VERSION.starts_with("berth-plugin-abi/1 berth-core/"));
        assert_eq!(ABI_VERSION_C.to_str().unwrap(), ABI_VERSION);
    }
}
