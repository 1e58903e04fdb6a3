//! The CRI `RuntimeService` trait, dispatching each RPC to the module that
//! holds it.

use crate::cri::{container, detached, metrics, runtime_info, sandbox, stats, streaming, Daemon};
use moat_proto::cri::runtime_service_server::RuntimeService;
use moat_proto::cri::*;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The CRI runtime service.
pub struct CriRuntime {
    d: Arc<Daemon>,
}

impl CriRuntime {
    /// Serves `daemon`.
    pub fn new(daemon: Arc<Daemon>) -> Self {
        Self { d: daemon }
    }
}

type Rpc<T> = Result<Response<T>, Status>;

fn ok<T>(v: T) -> Rpc<T> {
    Ok(Response::new(v))
}

#[tonic::async_trait]
impl RuntimeService for CriRuntime {
    async fn version(&self, _req: Request<VersionRequest>) -> Rpc<VersionResponse> {
        ok(runtime_info::version())
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<RunPodSandboxRequest>,
    ) -> Rpc<RunPodSandboxResponse> {
        let d = self.d.clone();
        ok(detached(async move { sandbox::run(&d, req.into_inner()).await }).await?)
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<StopPodSandboxRequest>,
    ) -> Rpc<StopPodSandboxResponse> {
        let d = self.d.clone();
        ok(detached(async move { sandbox::stop(&d, req.into_inner()).await }).await?)
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<RemovePodSandboxRequest>,
    ) -> Rpc<RemovePodSandboxResponse> {
        let d = self.d.clone();
        ok(detached(async move { sandbox::remove(&d, req.into_inner()).await }).await?)
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<PodSandboxStatusRequest>,
    ) -> Rpc<PodSandboxStatusResponse> {
        ok(sandbox::status(&self.d, req.into_inner())?)
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<ListPodSandboxRequest>,
    ) -> Rpc<ListPodSandboxResponse> {
        ok(sandbox::list(&self.d, req.into_inner())?)
    }

    async fn create_container(
        &self,
        req: Request<CreateContainerRequest>,
    ) -> Rpc<CreateContainerResponse> {
        let d = self.d.clone();
        ok(detached(async move { container::create(&d, req.into_inner()).await }).await?)
    }

    async fn start_container(
        &self,
        req: Request<StartContainerRequest>,
    ) -> Rpc<StartContainerResponse> {
        let d = self.d.clone();
        ok(detached(async move { container::start(&d, req.into_inner()).await }).await?)
    }

    async fn stop_container(
        &self,
        req: Request<StopContainerRequest>,
    ) -> Rpc<StopContainerResponse> {
        let d = self.d.clone();
        ok(detached(async move { container::stop(&d, req.into_inner()).await }).await?)
    }

    async fn remove_container(
        &self,
        req: Request<RemoveContainerRequest>,
    ) -> Rpc<RemoveContainerResponse> {
        let d = self.d.clone();
        ok(detached(async move { container::remove(&d, req.into_inner()).await }).await?)
    }

    async fn list_containers(
        &self,
        req: Request<ListContainersRequest>,
    ) -> Rpc<ListContainersResponse> {
        ok(container::list(&self.d, req.into_inner())?)
    }

    async fn container_status(
        &self,
        req: Request<ContainerStatusRequest>,
    ) -> Rpc<ContainerStatusResponse> {
        ok(container::status(&self.d, req.into_inner())?)
    }

    async fn update_container_resources(
        &self,
        req: Request<UpdateContainerResourcesRequest>,
    ) -> Rpc<UpdateContainerResourcesResponse> {
        let d = self.d.clone();
        ok(detached(async move { container::update(&d, req.into_inner()).await }).await?)
    }

    async fn reopen_container_log(
        &self,
        req: Request<ReopenContainerLogRequest>,
    ) -> Rpc<ReopenContainerLogResponse> {
        ok(container::reopen_log(&self.d, req.into_inner())?)
    }

    async fn exec_sync(&self, req: Request<ExecSyncRequest>) -> Rpc<ExecSyncResponse> {
        ok(container::exec_sync(&self.d, req.into_inner()).await?)
    }

    async fn exec(&self, req: Request<ExecRequest>) -> Rpc<ExecResponse> {
        ok(streaming::exec(&self.d, req.into_inner())?)
    }

    async fn attach(&self, req: Request<AttachRequest>) -> Rpc<AttachResponse> {
        ok(streaming::attach(&self.d, req.into_inner())?)
    }

    async fn port_forward(&self, req: Request<PortForwardRequest>) -> Rpc<PortForwardResponse> {
        ok(streaming::port_forward(&self.d, req.into_inner())?)
    }

    async fn container_stats(
        &self,
        req: Request<ContainerStatsRequest>,
    ) -> Rpc<ContainerStatsResponse> {
        ok(container::stats(&self.d, req.into_inner()).await?)
    }

    async fn list_container_stats(
        &self,
        req: Request<ListContainerStatsRequest>,
    ) -> Rpc<ListContainerStatsResponse> {
        ok(container::list_stats(&self.d, req.into_inner()).await?)
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<PodSandboxStatsRequest>,
    ) -> Rpc<PodSandboxStatsResponse> {
        ok(stats::pod_sandbox_stats(&self.d, req.into_inner()).await?)
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<ListPodSandboxStatsRequest>,
    ) -> Rpc<ListPodSandboxStatsResponse> {
        ok(stats::list_pod_sandbox_stats(&self.d, req.into_inner()).await?)
    }

    async fn update_runtime_config(
        &self,
        req: Request<UpdateRuntimeConfigRequest>,
    ) -> Rpc<UpdateRuntimeConfigResponse> {
        let cidr = req
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr);
        tracing::info!(pod_cidr = ?cidr, "runtime config update from kubelet");
        if let Some(cidr) = cidr {
            self.d
                .pods
                .set_pod_cidr(&cidr)
                .map_err(crate::cri::status_from_pod_error)?;
        }
        ok(UpdateRuntimeConfigResponse {})
    }

    async fn status(&self, req: Request<StatusRequest>) -> Rpc<StatusResponse> {
        ok(runtime_info::status(&self.d, req.into_inner().verbose))
    }

    async fn checkpoint_container(
        &self,
        _req: Request<CheckpointContainerRequest>,
    ) -> Rpc<CheckpointContainerResponse> {
        Err(Status::unimplemented(
            "CheckpointContainer: checkpointing is not supported by moat",
        ))
    }

    type GetContainerEventsStream = Pin<
        Box<
            dyn tokio_stream::Stream<Item = Result<ContainerEventResponse, Status>>
                + Send
                + 'static,
        >,
    >;

    async fn get_container_events(
        &self,
        _req: Request<GetEventsRequest>,
    ) -> Rpc<Self::GetContainerEventsStream> {
        use tokio_stream::StreamExt;
        let rx = self.d.events.subscribe();
        let stream =
            tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|r| r.ok().map(Ok));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_metric_descriptors(
        &self,
        _req: Request<ListMetricDescriptorsRequest>,
    ) -> Rpc<ListMetricDescriptorsResponse> {
        ok(ListMetricDescriptorsResponse {
            descriptors: metrics::descriptors(),
        })
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _req: Request<ListPodSandboxMetricsRequest>,
    ) -> Rpc<ListPodSandboxMetricsResponse> {
        metrics::list_pod_sandbox_metrics(&self.d)
            .await
            .map(Response::new)
    }

    async fn runtime_config(
        &self,
        _req: Request<RuntimeConfigRequest>,
    ) -> Rpc<RuntimeConfigResponse> {
        ok(runtime_info::runtime_config(&self.d))
    }
}
