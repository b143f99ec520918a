//! The tonic service implementations: thin dispatch to one module per RPC (group). Each handler takes only
//! the handles it uses. RPCs not built yet answer UNIMPLEMENTED with their name.

use std::pin::Pin;
use std::sync::Arc;

use berth_core::registry::Plugins;
use berth_core::{Config, Lifecycle};
use tonic::{Request, Response, Status};

use crate::api::image_service_server::ImageService;
use crate::api::runtime_service_server::RuntimeService;
use crate::api::*;

/// What the CRI handlers share. Handlers receive the pieces they need, not this whole struct.
pub struct Services {
    pub config: Arc<Config>,
    pub plugins: Plugins,
    pub lifecycle: Lifecycle,
    pub images: berth_images::ImageStore,
    pub streaming: Arc<berth_streaming::StreamingServer>,
    /// RunPodSandbox and CreateContainer calls, run to completion even when their client leaves.
    pub creates: Arc<crate::detached::DetachedCreates>,
}

/// Wraps a handler result for tonic.
fn reply<T>(r: crate::error::CriResult<T>) -> Result<Response<T>, Status> {
    r.map(Response::new).map_err(Status::from)
}

/// Runs a handler in its own task, so that a client that leaves (deadline, dropped connection: tonic drops the
/// handler's future) does not stop a state change half-way; the change finishes and is recorded.
async fn to_completion<T, F>(s: &Arc<Services>, handler: impl FnOnce(Arc<Services>) -> F) -> Result<Response<T>, Status>
where
    T: Send + 'static,
    F: std::future::Future<Output = crate::error::CriResult<T>> + Send + 'static,
{
    let task = tokio::spawn(handler(s.clone()));
    reply(
        task.await
            .unwrap_or_else(|e| Err(crate::error::CriError::Internal(format!("the call's task failed: {e}")))),
    )
}

#[derive(Clone)]
pub struct Runtime(pub Arc<Services>);

#[derive(Clone)]
pub struct Images(pub Arc<Services>);

type Stream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

fn unimplemented<T>(service: &str, rpc: &str) -> Result<T, Status> {
    Err(Status::unimplemented(format!(
        "{service}/{rpc} is not implemented by berth yet"
    )))
}

/// Emits a service impl: the RPCs written out in the body, plus those not built yet, each of which answers
/// UNIMPLEMENTED naming itself. (One macro emits the whole impl so that `async_trait` sees every method.)
macro_rules! cri_service {
    (impl $trait:ident for $ty:ty { $($body:tt)* }
     not_yet $service:literal { $($method:ident($req:ty) -> $resp:ty = $rpc:literal;)* }) => {
        #[tonic::async_trait]
        impl $trait for $ty {
            $($body)*
            $(
                async fn $method(&self, _req: Request<$req>) -> Result<Response<$resp>, Status> {
                    unimplemented($service, $rpc)
                }
            )*
        }
    };
}

cri_service! {
impl RuntimeService for Runtime {
    async fn version(&self, req: Request<VersionRequest>) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(crate::version::handle(req.into_inner())))
    }

    async fn status(&self, req: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let s = &self.0;
        Ok(Response::new(crate::status::handle(req.into_inner(), &s.plugins, &s.config).await))
    }

    async fn runtime_config(
        &self,
        req: Request<RuntimeConfigRequest>,
    ) -> Result<Response<RuntimeConfigResponse>, Status> {
        Ok(Response::new(crate::runtime_config::handle(req.into_inner(), &self.0.plugins)))
    }

    async fn run_pod_sandbox(&self, req: Request<RunPodSandboxRequest>) -> Result<Response<RunPodSandboxResponse>, Status> {
        let req = req.into_inner();
        let key = crate::sandbox_run::request_key(&req);
        let s = self.0.clone();
        let exists = |id: &str| s.lifecycle.get_pod(id).is_ok();
        let work = {
            let s = self.0.clone();
            async move {
                let r = crate::sandbox_run::handle(&s.lifecycle, req).await;
                r.map(|r| r.pod_sandbox_id).map_err(Status::from)
            }
        };
        let pod_sandbox_id = self.0.creates.run(key, exists, work).await?;
        Ok(Response::new(RunPodSandboxResponse { pod_sandbox_id }))
    }

    async fn stop_pod_sandbox(&self, req: Request<StopPodSandboxRequest>) -> Result<Response<StopPodSandboxResponse>, Status> {
        let req = req.into_inner();
        to_completion(&self.0, |s| async move { crate::sandbox_stop::stop(&s.lifecycle, req).await }).await
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<RemovePodSandboxRequest>,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        let req = req.into_inner();
        to_completion(&self.0, |s| async move { crate::sandbox_stop::remove(&s.lifecycle, req).await }).await
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<PodSandboxStatusRequest>,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        reply(crate::sandbox_status::status(&self.0.lifecycle, req.into_inner()).await)
    }

    async fn list_pod_sandbox(&self, req: Request<ListPodSandboxRequest>) -> Result<Response<ListPodSandboxResponse>, Status> {
        reply(crate::sandbox_status::list(&self.0.lifecycle, req.into_inner()))
    }

    async fn create_container(
        &self,
        req: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        let req = req.into_inner();
        let key = crate::container_create::request_key(&req);
        let s = self.0.clone();
        let exists = |id: &str| s.lifecycle.get_container(id).is_ok();
        let work = {
            let s = self.0.clone();
            async move {
                let r = crate::container_create::handle(&s.lifecycle, &s.images, req).await;
                r.map(|r| r.container_id).map_err(Status::from)
            }
        };
        let container_id = self.0.creates.run(key, exists, work).await?;
        Ok(Response::new(CreateContainerResponse { container_id }))
    }

    async fn start_container(&self, req: Request<StartContainerRequest>) -> Result<Response<StartContainerResponse>, Status> {
        let req = req.into_inner();
        to_completion(&self.0, |s| async move { crate::container_lifecycle::start(&s.lifecycle, req).await }).await
    }

    async fn stop_container(&self, req: Request<StopContainerRequest>) -> Result<Response<StopContainerResponse>, Status> {
        let req = req.into_inner();
        to_completion(&self.0, |s| async move { crate::container_lifecycle::stop(&s.lifecycle, req).await }).await
    }

    async fn remove_container(
        &self,
        req: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        let req = req.into_inner();
        to_completion(&self.0, |s| async move { crate::container_lifecycle::remove(&s.lifecycle, req).await }).await
    }

    async fn list_containers(&self, req: Request<ListContainersRequest>) -> Result<Response<ListContainersResponse>, Status> {
        reply(crate::container_status::list(&self.0.lifecycle, req.into_inner()))
    }

    async fn container_status(
        &self,
        req: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        reply(crate::container_status::status(&self.0.lifecycle, req.into_inner()).await)
    }

    async fn update_container_resources(
        &self,
        req: Request<UpdateContainerResourcesRequest>,
    ) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
        reply(crate::container_update::update_resources(&self.0.lifecycle, req.into_inner()).await)
    }

    async fn reopen_container_log(
        &self,
        req: Request<ReopenContainerLogRequest>,
    ) -> Result<Response<ReopenContainerLogResponse>, Status> {
        reply(crate::container_update::reopen_log(&self.0.lifecycle, req.into_inner()).await)
    }

    async fn exec_sync(&self, req: Request<ExecSyncRequest>) -> Result<Response<ExecSyncResponse>, Status> {
        reply(crate::exec_sync::handle(&self.0.lifecycle, req.into_inner()).await)
    }

    async fn exec(&self, req: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        reply(crate::streaming::exec(&self.0.lifecycle, &self.0.streaming, req.into_inner()))
    }

    async fn attach(&self, req: Request<AttachRequest>) -> Result<Response<AttachResponse>, Status> {
        reply(crate::streaming::attach(&self.0.lifecycle, &self.0.streaming, req.into_inner()))
    }

    async fn port_forward(&self, req: Request<PortForwardRequest>) -> Result<Response<PortForwardResponse>, Status> {
        reply(crate::streaming::port_forward(&self.0.lifecycle, &self.0.streaming, req.into_inner()))
    }

    async fn container_stats(&self, req: Request<ContainerStatsRequest>) -> Result<Response<ContainerStatsResponse>, Status> {
        reply(crate::stats::container(&self.0.lifecycle, req.into_inner()).await)
    }

    async fn list_container_stats(
        &self,
        req: Request<ListContainerStatsRequest>,
    ) -> Result<Response<ListContainerStatsResponse>, Status> {
        reply(crate::stats::list_containers(&self.0.lifecycle, req.into_inner()).await)
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<PodSandboxStatsRequest>,
    ) -> Result<Response<PodSandboxStatsResponse>, Status> {
        reply(crate::stats::pod(&self.0.lifecycle, req.into_inner()).await)
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<ListPodSandboxStatsRequest>,
    ) -> Result<Response<ListPodSandboxStatsResponse>, Status> {
        reply(crate::stats::list_pods(&self.0.lifecycle, req.into_inner()).await)
    }

    async fn update_runtime_config(
        &self,
        req: Request<UpdateRuntimeConfigRequest>,
    ) -> Result<Response<UpdateRuntimeConfigResponse>, Status> {
        reply(crate::runtime_update::update_runtime_config(&self.0.lifecycle, req.into_inner()).await)
    }

    async fn list_metric_descriptors(
        &self,
        req: Request<ListMetricDescriptorsRequest>,
    ) -> Result<Response<ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(crate::runtime_update::metric_descriptors(req.into_inner())))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        req: Request<ListPodSandboxMetricsRequest>,
    ) -> Result<Response<ListPodSandboxMetricsResponse>, Status> {
        Ok(Response::new(crate::runtime_update::pod_sandbox_metrics(req.into_inner())))
    }

    async fn get_container_events(
        &self,
        _req: Request<GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        Ok(Response::new(crate::container_events::stream(self.0.lifecycle.clone())))
    }

    type StreamPodSandboxesStream = Stream<StreamPodSandboxesResponse>;
    type StreamContainersStream = Stream<StreamContainersResponse>;
    type StreamContainerStatsStream = Stream<StreamContainerStatsResponse>;
    type StreamPodSandboxStatsStream = Stream<StreamPodSandboxStatsResponse>;
    type GetContainerEventsStream = Stream<ContainerEventResponse>;
    type StreamPodSandboxMetricsStream = Stream<StreamPodSandboxMetricsResponse>;
}
not_yet "RuntimeService" {
        checkpoint_container(CheckpointContainerRequest) -> CheckpointContainerResponse = "CheckpointContainer";
        update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest) -> UpdatePodSandboxResourcesResponse = "UpdatePodSandboxResources";
        stream_pod_sandboxes(StreamPodSandboxesRequest) -> Self::StreamPodSandboxesStream = "StreamPodSandboxes";
        stream_containers(StreamContainersRequest) -> Self::StreamContainersStream = "StreamContainers";
        stream_container_stats(StreamContainerStatsRequest) -> Self::StreamContainerStatsStream = "StreamContainerStats";
        stream_pod_sandbox_stats(StreamPodSandboxStatsRequest) -> Self::StreamPodSandboxStatsStream = "StreamPodSandboxStats";
        stream_pod_sandbox_metrics(StreamPodSandboxMetricsRequest) -> Self::StreamPodSandboxMetricsStream = "StreamPodSandboxMetrics";
}
}

cri_service! {
impl ImageService for Images {
    type StreamImagesStream = Stream<StreamImagesResponse>;

    async fn list_images(&self, req: Request<ListImagesRequest>) -> Result<Response<ListImagesResponse>, Status> {
        reply(crate::image_service::list(&self.0.images, req.into_inner()))
    }

    async fn image_status(&self, req: Request<ImageStatusRequest>) -> Result<Response<ImageStatusResponse>, Status> {
        reply(crate::image_service::status(&self.0.images, req.into_inner()))
    }

    async fn pull_image(&self, req: Request<PullImageRequest>) -> Result<Response<PullImageResponse>, Status> {
        reply(crate::image_service::pull(&self.0.images, req.into_inner()).await)
    }

    async fn remove_image(&self, req: Request<RemoveImageRequest>) -> Result<Response<RemoveImageResponse>, Status> {
        reply(crate::image_service::remove(&self.0.images, req.into_inner()).await)
    }

    async fn image_fs_info(&self, req: Request<ImageFsInfoRequest>) -> Result<Response<ImageFsInfoResponse>, Status> {
        reply(crate::image_service::fs_info(&self.0.images, req.into_inner()).await)
    }
}
not_yet "ImageService" {
        stream_images(StreamImagesRequest) -> Self::StreamImagesStream = "StreamImages";
}
}
