//! An in-process fake guest agent for unit tests of the pod and container
//! code: it serves the real agent API (tonic, over an in-memory duplex
//! stream) and plays processes by a small script instead of running them,
//! recording every call it gets.

use super::pool::{Dialer, Dialing};
use crate::pod::{SandboxRecord, SandboxState};
use crate::vm::{VmHandle, VmPaths};
use moat_proto::agent::agent_client::AgentClient;
use moat_proto::agent::agent_server::{Agent, AgentServer};
use moat_proto::agent::*;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tonic::transport::{Endpoint, Server, Uri};
use tonic::{Request, Response, Status};

type R<T> = Result<Response<T>, Status>;

/// How the fake's processes behave.
#[derive(Debug, Default, Clone)]
pub struct Script {
    /// The container's init process ignores SIGTERM (as a shell as PID 1
    /// does); SIGKILL always ends it.
    pub ignores_sigterm: bool,
    /// This many WaitProcess calls for a container's init never answer
    /// (a wait whose channel broke silently); later ones do.
    pub stuck_waits: usize,
}

/// One fake process: its output and, once it ended, how.
struct Proc {
    output: Vec<u8>,
    exit: watch::Sender<Option<WaitProcessResponse>>,
}

impl Proc {
    fn new(output: Vec<u8>) -> Self {
        Self {
            output,
            exit: watch::channel(None).0,
        }
    }

    fn end(&self, exit_code: i32, signal: i32) {
        self.exit.send_if_modified(|e| {
            if e.is_some() {
                return false;
            }
            *e = Some(WaitProcessResponse {
                exit_code,
                signal,
                oom_killed: false,
            });
            true
        });
    }
}

/// The fake agent's state.
#[derive(Default)]
pub struct FakeAgent {
    script: Script,
    /// Processes by (container id, exec id; "" for init).
    procs: Mutex<HashMap<(String, String), Arc<Proc>>>,
    /// Calls received, as "Method container_id [detail]".
    calls: Mutex<Vec<String>>,
    stuck_waits: Mutex<usize>,
    /// ContainerStats never answers while set.
    silent_stats: std::sync::atomic::AtomicBool,
}

impl FakeAgent {
    /// A fake agent following `script`.
    pub fn new(script: Script) -> Arc<Self> {
        Arc::new(Self {
            stuck_waits: Mutex::new(script.stuck_waits),
            script,
            ..Self::default()
        })
    }

    /// Makes ContainerStats answer (a guest that claims 1 TiB of memory and
    /// 64 CPUs' worth of time a second) or never answer.
    pub fn set_silent_stats(&self, silent: bool) {
        self.silent_stats
            .store(silent, std::sync::atomic::Ordering::Relaxed);
    }

    /// The calls received so far.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn record(&self, call: String) {
        if let Ok(mut c) = self.calls.lock() {
            c.push(call);
        }
    }

    fn proc(&self, container: &str, exec: &str) -> Result<Arc<Proc>, Status> {
        self.procs
            .lock()
            .map_err(|_| Status::internal("poisoned"))?
            .get(&(container.to_string(), exec.to_string()))
            .cloned()
            .ok_or_else(|| Status::not_found(format!("no process {container}/{exec}")))
    }

    /// A container the guest has created (as CreateContainer would).
    pub fn has_container(&self, id: &str) {
        let _ = self.add(id, "", Proc::new(Vec::new()));
    }

    fn add(&self, container: &str, exec: &str, p: Proc) -> Result<(), Status> {
        self.procs
            .lock()
            .map_err(|_| Status::internal("poisoned"))?
            .insert((container.to_string(), exec.to_string()), Arc::new(p));
        Ok(())
    }
}

/// Dials the fake: each dial is a new in-memory connection served by it.
pub struct FakeDialer(pub Arc<FakeAgent>);

impl Dialer for FakeDialer {
    fn dial<'a>(&'a self, _sb: &'a SandboxRecord, call_limit: Option<Duration>) -> Dialing<'a> {
        let agent = self.0.clone();
        Box::pin(async move {
            let mut endpoint = Endpoint::try_from("http://fake.agent")?;
            if let Some(t) = call_limit {
                endpoint = endpoint.timeout(t);
            }
            let channel = endpoint
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let agent = agent.clone();
                    async move {
                        let (client, server) = tokio::io::duplex(1 << 16);
                        tokio::spawn(
                            Server::builder()
                                .add_service(AgentServer::from_arc(agent))
                                .serve_with_incoming(tokio_stream::once(Ok::<_, std::io::Error>(
                                    server,
                                ))),
                        );
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(client))
                    }
                }))
                .await?;
            Ok(AgentClient::new(channel))
        })
    }
}

/// Answers Unimplemented for the methods the fake does not play.
macro_rules! unplayed {
    ($($name:ident($req:ty) -> $resp:ty;)*) => {
        // Written as `#[tonic::async_trait]` expands an async method (the
        // attribute does not see methods a macro makes).
        $(fn $name<'life0, 'async_trait>(
            &'life0 self,
            _r: Request<$req>,
        ) -> Pin<Box<dyn std::future::Future<Output = R<$resp>> + Send + 'async_trait>>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async {
                Err(Status::unimplemented(concat!("fake agent: ", stringify!($name))))
            })
        })*
    };
}

type OutputChunks = Pin<Box<dyn futures_util::Stream<Item = Result<OutputChunk, Status>> + Send>>;
type ForwardChunks =
    Pin<Box<dyn futures_util::Stream<Item = Result<PortForwardOutput, Status>> + Send>>;

/// The pod port where the fake's echo server listens; every other refuses.
pub const ECHO_PORT: u32 = 7;

#[tonic::async_trait]
impl Agent for FakeAgent {
    unplayed! {
        ping(PingRequest) -> PingResponse;
        guest_details(GuestDetailsRequest) -> GuestDetailsResponse;
        shutdown(ShutdownRequest) -> ShutdownResponse;
        health_check(HealthCheckRequest) -> HealthCheckResponse;
        configure_network(ConfigureNetworkRequest) -> ConfigureNetworkResponse;
        set_time(SetTimeRequest) -> SetTimeResponse;
        add_entropy(AddEntropyRequest) -> AddEntropyResponse;
        guest_stats(GuestStatsRequest) -> GuestStatsResponse;
        create_sandbox(CreateSandboxRequest) -> CreateSandboxResponse;
        destroy_sandbox(DestroySandboxRequest) -> DestroySandboxResponse;
        list_containers(ListContainersRequest) -> ListContainersResponse;
        list_processes(ListProcessesRequest) -> ListProcessesResponse;
        write_stdin(WriteStdinRequest) -> WriteStdinResponse;
        close_stdin(CloseStdinRequest) -> CloseStdinResponse;
        resize_tty(ResizeTtyRequest) -> ResizeTtyResponse;
    }

    async fn create_container(
        &self,
        r: Request<CreateContainerRequest>,
    ) -> R<CreateContainerResponse> {
        let r = r.into_inner();
        self.record(format!("CreateContainer {}", r.container_id));
        self.add(&r.container_id, "", Proc::new(Vec::new()))?;
        Ok(Response::new(CreateContainerResponse::default()))
    }

    async fn start_container(
        &self,
        r: Request<StartContainerRequest>,
    ) -> R<StartContainerResponse> {
        let r = r.into_inner();
        self.record(format!("StartContainer {}", r.container_id));
        self.proc(&r.container_id, "")?;
        Ok(Response::new(StartContainerResponse {}))
    }

    async fn remove_container(
        &self,
        r: Request<RemoveContainerRequest>,
    ) -> R<RemoveContainerResponse> {
        let r = r.into_inner();
        self.record(format!("RemoveContainer {}", r.container_id));
        let mut procs = self
            .procs
            .lock()
            .map_err(|_| Status::internal("poisoned"))?;
        procs.retain(|(c, _), p| {
            if c == &r.container_id {
                p.end(137, libc::SIGKILL);
            }
            c != &r.container_id
        });
        Ok(Response::new(RemoveContainerResponse {}))
    }

    async fn update_container(
        &self,
        r: Request<UpdateContainerRequest>,
    ) -> R<UpdateContainerResponse> {
        let r = r.into_inner();
        self.record(format!(
            "UpdateContainer {} {}",
            r.container_id,
            String::from_utf8_lossy(&r.resources)
        ));
        self.proc(&r.container_id, "")?;
        Ok(Response::new(UpdateContainerResponse {}))
    }

    /// Plays the command in `process.args`: `echo WORDS` prints them and
    /// exits 0, `exit N` exits N, a program under `/nope` does not exist,
    /// anything else runs until killed.
    async fn exec_process(&self, r: Request<ExecProcessRequest>) -> R<ExecProcessResponse> {
        let r = r.into_inner();
        let process: serde_json::Value = serde_json::from_slice(&r.process)
            .map_err(|e| Status::invalid_argument(format!("process: {e}")))?;
        let args: Vec<String> = process["args"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        self.record(format!("ExecProcess {} {}", r.container_id, args.join(" ")));
        self.proc(&r.container_id, "")?;
        if args.first().is_some_and(|a| a.starts_with("/nope")) {
            return Err(Status::failed_precondition(format!(
                "exec failed: exec {}: ENOENT: No such file or directory",
                args[0]
            )));
        }
        let (output, exit) = match args.first().map(String::as_str) {
            Some("echo") => (format!("{}\n", args[1..].join(" ")).into_bytes(), Some(0)),
            Some("exit") => (
                Vec::new(),
                Some(args.get(1).and_then(|n| n.parse().ok()).unwrap_or(1)),
            ),
            _ => (Vec::new(), None),
        };
        let p = Proc::new(output);
        if let Some(code) = exit {
            p.end(code, 0);
        }
        self.add(&r.container_id, &r.exec_id, p)?;
        Ok(Response::new(ExecProcessResponse { pid: 42 }))
    }

    async fn signal_process(&self, r: Request<SignalProcessRequest>) -> R<SignalProcessResponse> {
        let r = r.into_inner();
        self.record(format!(
            "SignalProcess {} {} all={}",
            r.container_id, r.signal, r.all
        ));
        let p = self.proc(&r.container_id, &r.exec_id)?;
        let signal = r.signal as i32;
        if signal == libc::SIGKILL || (signal == libc::SIGTERM && !self.script.ignores_sigterm) {
            p.end(128 + signal, signal);
        }
        Ok(Response::new(SignalProcessResponse {}))
    }

    async fn wait_process(&self, r: Request<WaitProcessRequest>) -> R<WaitProcessResponse> {
        let r = r.into_inner();
        let p = self.proc(&r.container_id, &r.exec_id)?;
        let stuck = r.exec_id.is_empty()
            && self
                .stuck_waits
                .lock()
                .map(|mut n| {
                    let stuck = *n > 0;
                    *n = n.saturating_sub(1);
                    stuck
                })
                .unwrap_or(false);
        if stuck {
            std::future::pending::<()>().await;
        }
        let mut rx = p.exit.subscribe();
        let exit = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Status::internal("process vanished"))?
            .unwrap_or_default();
        Ok(Response::new(exit))
    }

    type ReadOutputStream = OutputChunks;

    /// Stdout carries the process's output; both streams end when it does.
    async fn read_output(&self, r: Request<ReadOutputRequest>) -> R<OutputChunks> {
        let r = r.into_inner();
        let p = self.proc(&r.container_id, &r.exec_id)?;
        let data = if r.stream == OutputStream::Stdout as i32 {
            p.output.clone()
        } else {
            Vec::new()
        };
        let mut rx = p.exit.subscribe();
        let ended = async move {
            let _ = rx.wait_for(Option::is_some).await;
        };
        let chunks =
            futures_util::stream::iter((!data.is_empty()).then_some(Ok(OutputChunk { data })));
        use futures_util::StreamExt;
        Ok(Response::new(Box::pin(chunks.chain(
            futures_util::stream::once(ended).filter_map(|()| async { None }),
        ))))
    }

    /// Claims more than any VM has; or never answers (set_silent_stats).
    async fn container_stats(
        &self,
        r: Request<ContainerStatsRequest>,
    ) -> R<ContainerStatsResponse> {
        self.record(format!("ContainerStats {}", r.get_ref().container_id));
        if self.silent_stats.load(std::sync::atomic::Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
        let now = crate::clock::now_ns();
        Ok(Response::new(ContainerStatsResponse {
            cpu: Some(CpuStats {
                // 64 s of CPU per second of wall time since the epoch.
                usage_ns: u64::try_from(now).unwrap_or(0).saturating_mul(64),
                ..Default::default()
            }),
            memory: Some(MemoryStats {
                usage_bytes: 1 << 40,
                working_set_bytes: 1 << 40,
                ..Default::default()
            }),
            timestamp_ns: now,
            ..Default::default()
        }))
    }

    type PortForwardStream = ForwardChunks;

    /// Port [`ECHO_PORT`] echoes until the caller ends its side; every
    /// other port refuses.
    async fn port_forward(
        &self,
        r: Request<tonic::Streaming<PortForwardInput>>,
    ) -> R<ForwardChunks> {
        use futures_util::StreamExt;
        let mut input = r.into_inner();
        let first = input
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("port: required"))?;
        self.record(format!("PortForward {}", first.port));
        if first.port != ECHO_PORT {
            return Err(Status::unavailable(format!(
                "connecting to localhost:{}: Connection refused (os error 111)",
                first.port
            )));
        }
        let connected = futures_util::stream::once(async { Ok(PortForwardOutput::default()) });
        let echo = futures_util::stream::unfold(input, |mut i| async move {
            match i.message().await {
                Ok(Some(m)) => Some((Ok(PortForwardOutput { data: m.data }), i)),
                _ => None,
            }
        });
        Ok(Response::new(Box::pin(connected.chain(echo))))
    }
}

/// The record of container `id`, created (not yet started) in pod
/// `sandbox_id`, for the fake to play.
pub fn created_record(id: &str, sandbox_id: &str) -> crate::container::ContainerRecord {
    crate::container::ContainerRecord {
        id: id.into(),
        sandbox_id: sandbox_id.into(),
        config: Default::default(),
        image_ref: "img".into(),
        image_id: "sha256:0".into(),
        image_digest: String::new(),
        slot: 1,
        device_slots: Vec::new(),
        spec: Default::default(),
        log_path: None,
        state: crate::container::ContainerState::Created,
        created_at: 1,
        started_at: 0,
        finished_at: 0,
        exit_code: 0,
        reason: String::new(),
        message: String::new(),
        pid: 0,
        resources: None,
    }
}

/// A ready pod whose "VM" is this test process (alive, so the pod counts as
/// running), its files under `dir`; its agent is whatever the pool dials.
pub fn ready_pod(dir: &std::path::Path) -> SandboxRecord {
    let me = std::process::id();
    SandboxRecord {
        vmm_cgroup: None,
        vmm_uid: None,
        id: "p".repeat(64),
        config: Default::default(),
        runtime_handler: "microvm".into(),
        kind: crate::config::HandlerKind::Microvm,
        state: SandboxState::Ready,
        created_at: 0,
        netns: None,
        cni: None,
        ips: Vec::new(),
        vm_paths: VmPaths {
            dir: dir.join("vm"),
        },
        vm: Some(VmHandle {
            pid: me,
            start_ticks: crate::procfs::Stat::of(me).unwrap().start_ticks,
        }),
        fs_daemon: None,
        vcpus: 1,
        memory_mib: 128,
        exit_reason: None,
        guest: Default::default(),
    }
}
