//! Daemon startup and shutdown: directories, store, plugins, the CRI socket, signals.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use berth_core::{Config, EventBus, InitContext, Lifecycle, Registry, Store};
use nix::fcntl::{Flock, FlockArg};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tracing::{error, info, warn};

use crate::api::image_service_server::ImageServiceServer;
use crate::api::runtime_service_server::RuntimeServiceServer;
use crate::service::{Images, Runtime, Services};

/// The bound CRI socket. Holding the lock next to it is what makes the socket ours: a second berthd on the
/// same path fails to take it, and a socket file without a lock holder is stale.
pub struct CriSocket {
    pub path: PathBuf,
    pub listener: UnixListener,
    _lock: Flock<File>,
}

impl CriSocket {
    pub fn bind(path: &Path) -> anyhow::Result<CriSocket> {
        let dir = path.parent().context("the socket path has no parent directory")?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let lock_path = PathBuf::from(format!("{}.lock", path.display()));
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        let lock = match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                bail!(
                    "another berthd is already serving {} (it holds {})",
                    path.display(),
                    lock_path.display()
                )
            }
            Err((_, e)) => bail!("cannot lock {}: {e}", lock_path.display()),
        };
        // We hold the lock, so any socket file left is from a berthd that is gone.
        match std::fs::remove_file(path) {
            Ok(()) => warn!(socket = %path.display(), "removed a stale socket"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!("cannot remove the stale socket {}: {e}", path.display()),
        }
        let listener = UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .with_context(|| format!("cannot chmod {}", path.display()))?;
        Ok(CriSocket {
            path: path.to_path_buf(),
            listener,
            _lock: lock,
        })
    }
}

fn create_private_dir(path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o711))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

/// Opens the store, starts every plugin and recovers what a previous berthd left; what `run` serves.
pub async fn start_services(config: Config) -> anyhow::Result<Arc<Services>> {
    config.validate()?;
    berth_core::failpoint::init();
    create_private_dir(&config.root)?;
    create_private_dir(&config.state)?;
    let store = Store::open(&config.store_path())?;
    let mut registry = Registry::new();
    crate::builtin::register(&mut registry)?;
    for path in &config.plugins.load {
        match registry.load_dynamic(path) {
            Ok(()) => info!(plugin = %path.display(), "loaded dynamic plugin"),
            Err(e) => error!("{e}"),
        }
    }
    let config = Arc::new(config);
    let events = EventBus::default();
    let ctx = InitContext {
        config: config.clone(),
        store: store.clone(),
        events: events.clone(),
    };
    let plugins = registry.build(&ctx)?;
    for p in plugins.inventory.iter().filter(|p| p.selected) {
        info!(kind = %p.kind, name = %p.name, source = %p.source, "plugin selected");
    }
    let images = berth_images::ImageStore::new(
        berth_images::ImageStoreConfig::from_config(&config),
        store.clone(),
        plugins.snapshotter.clone(),
    )
    .context("opening the image store")?;
    let lifecycle = Lifecycle::new(store, plugins.clone(), events, config.clone());
    lifecycle.recover().await.context("recovering the previous state")?;
    // Layers a crash left between their commit and their image's record.
    if let Err(e) = images.gc().await {
        warn!("image garbage collection at start failed: {e}");
    }
    let streaming = berth_streaming::StreamingServer::start(
        &config.streaming,
        Arc::new(crate::streaming::Backend(lifecycle.clone())),
    )
    .await
    .context("starting the streaming server")?;
    info!(url = %streaming.base_url(), "streaming server listening");
    Ok(Arc::new(Services {
        config,
        plugins,
        lifecycle,
        images,
        streaming: Arc::new(streaming),
        creates: Default::default(),
    }))
}

/// `berthd images import FILE`: the store, the configured snapshotter and the image store, without serving.
pub async fn import_images(config: Config, file: &Path) -> anyhow::Result<Vec<berth_core::model::Image>> {
    config.validate()?;
    create_private_dir(&config.root)?;
    let store = Store::open(&config.store_path()).map_err(|e| {
        anyhow::anyhow!(
            "{e} (is a berthd running on {}? stop it first: the store has one writer)",
            config.root.display()
        )
    })?;
    let mut registry = Registry::new();
    crate::builtin::register(&mut registry)?;
    let config = Arc::new(config);
    let ctx = InitContext {
        config: config.clone(),
        store: store.clone(),
        events: EventBus::default(),
    };
    let plugins = registry.build(&ctx)?;
    let images = berth_images::ImageStore::new(
        berth_images::ImageStoreConfig::from_config(&config),
        store,
        plugins.snapshotter.clone(),
    )?;
    Ok(images.import(file).await?)
}

/// How long in-flight calls get to finish after SIGTERM.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs berthd until SIGTERM or SIGINT, then removes the socket.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let socket_path = config.socket_path();
    let max_msg = config.grpc.max_message_bytes;
    // Bind first: a second berthd must fail before it touches the store or plugins.
    let socket = CriSocket::bind(&socket_path)?;
    let services = match start_services(config).await {
        Ok(s) => s,
        Err(e) => {
            // Nobody will serve it: a socket file left here would look like a berthd that crashed.
            let _ = std::fs::remove_file(&socket.path);
            return Err(e);
        }
    };
    info!(socket = %socket.path.display(), version = env!("CARGO_PKG_VERSION"), "berthd serving CRI v1");

    let runtime = RuntimeServiceServer::new(Runtime(services.clone()))
        .max_decoding_message_size(max_msg)
        .max_encoding_message_size(max_msg);
    let images = ImageServiceServer::new(Images(services.clone()))
        .max_decoding_message_size(max_msg)
        .max_encoding_message_size(max_msg);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .trace_fn(|req| tracing::info_span!("cri", rpc = %req.uri().path()))
        .add_service(runtime)
        .add_service(images)
        .serve_with_incoming_shutdown(UnixListenerStream::new(socket.listener), async {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);
    let result = tokio::select! {
        r = &mut server => r,
        () = shutdown_signal() => {
            let _ = stop_tx.send(());
            // Clients such as kubelet keep their connection open forever: let in-flight calls finish, then go.
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(r) => r,
                Err(_) => {
                    info!("client connections still open after {SHUTDOWN_GRACE:?}: closing them");
                    Ok(())
                }
            }
        }
    };
    if let Err(e) = std::fs::remove_file(&socket.path) {
        warn!(socket = %socket.path.display(), "cannot remove the socket: {e}");
    }
    result.context("the gRPC server failed")?;
    info!("berthd stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        error!("cannot install signal handlers; stop berthd with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
}
