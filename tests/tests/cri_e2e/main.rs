//! CRI end-to-end: gRPC to a real moatd with real microVMs (in the test
//! node here), a real registry on 127.0.0.1 and real CNI plugins.
//!
//! Needs `make artifacts` and release builds of moatd and moat-vmm.

use moat_proto::cri::*;
use moat_tests::moatd::{tokio_runtime, vmm_pids, Moatd};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tonic::Code;

mod lifecycle;
mod restart;

const TIMEOUT: Duration = Duration::from_secs(900);

/// The shared pod fixture with `labels` and without a log directory.
fn pod_config(name: &str, labels: &[(&str, &str)]) -> PodSandboxConfig {
    let mut config = moat_tests::cri::pod_config(name, std::path::Path::new(""));
    config.log_directory = String::new();
    config.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    config
}

fn run_req(config: PodSandboxConfig, handler: &str) -> RunPodSandboxRequest {
    RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: handler.into(),
    }
}

fn image(name: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: name.into(),
        ..Default::default()
    })
}

/// Runtime info and images need no VM: they run on any host.
#[test]
fn runtime_info_and_image_service() {
    tokio_runtime().block_on(async {
        let m = Moatd::start("").expect("moatd");
        let mut rt = m.runtime().await.unwrap();
        let mut img = m.images().await.unwrap();

        let v = rt
            .version(VersionRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (v.runtime_name.as_str(), v.runtime_api_version.as_str()),
            ("moat", "v1")
        );
        let s = rt
            .status(StatusRequest { verbose: true })
            .await
            .unwrap()
            .into_inner();
        let conds: HashMap<_, _> = s
            .status
            .unwrap()
            .conditions
            .into_iter()
            .map(|c| (c.r#type, c.status))
            .collect();
        assert_eq!(conds.get("RuntimeReady"), Some(&true));
        assert_eq!(conds.get("NetworkReady"), Some(&true));
        assert!(s.runtime_handlers.iter().any(|h| h.name == "microvm"));
        let rc = rt
            .runtime_config(RuntimeConfigRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            rc.linux.unwrap().cgroup_driver,
            CgroupDriver::Systemd as i32
        );
        rt.update_runtime_config(UpdateRuntimeConfigRequest::default())
            .await
            .unwrap();
        // cAdvisor-style metrics: described up front; no pods, no values.
        let descriptors = rt
            .list_metric_descriptors(ListMetricDescriptorsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .descriptors;
        assert!(descriptors
            .iter()
            .any(|d| d.name == "container_cpu_usage_seconds_total"
                && d.label_keys.contains(&"pod".to_string())));
        assert!(rt
            .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .pod_metrics
            .is_empty());
        // Exec, Attach and PortForward name what is missing.
        let e = rt.exec(ExecRequest::default()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("container_id"), "{e:?}");
        let e = rt.attach(AttachRequest::default()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let e = rt
            .port_forward(PortForwardRequest::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("pod_sandbox_id"), "{e:?}");

        // Images: pull, list, status (verbose), fs info, remove.
        let busybox = m.registry.busybox();
        let r = img
            .pull_image(PullImageRequest {
                image: image(&busybox),
                ..Default::default()
            })
            .await
            .unwrap();
        let id = r.into_inner().image_ref;
        assert!(id.starts_with("sha256:"));
        let list = img
            .list_images(ListImagesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .images;
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].repo_tags, vec![busybox.clone()]);
        assert_eq!(list[0].uid.as_ref().map(|u| u.value), Some(0));
        let st = img
            .image_status(ImageStatusRequest {
                image: image(&busybox),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(st.image.as_ref().map(|i| i.id.as_str()), Some(id.as_str()));
        assert!(st.info["info"].contains("blockImage"));
        let st = img
            .image_status(ImageStatusRequest {
                image: image(&id),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(st.image.is_some(), "lookup by id");
        let fs = img
            .image_fs_info(ImageFsInfoRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(fs.image_filesystems[0].used_bytes.as_ref().unwrap().value > 0);
        img.remove_image(RemoveImageRequest {
            image: image(&busybox),
        })
        .await
        .unwrap();
        let st = img
            .image_status(ImageStatusRequest {
                image: image(&busybox),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(st.image.is_none(), "removed image still reported");
        img.remove_image(RemoveImageRequest {
            image: image(&busybox),
        })
        .await
        .expect("removing twice succeeds");

        // Image errors name what is wrong.
        let e = img
            .pull_image(PullImageRequest {
                image: image("Bad Ref!"),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let e = img
            .pull_image(PullImageRequest {
                image: image(""),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("image"), "{e:?}");
        let e = img
            .pull_image(PullImageRequest {
                image: image("127.0.0.1:1/moat/busybox:latest"),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "unreachable registry: {e:?}");
        let missing = format!("{}/moat/missing:latest", m.registry.addr);
        let e = img
            .pull_image(PullImageRequest {
                image: image(&missing),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(e.message().contains("moat/missing"), "{e:?}");
    });
}

/// moatd config for one more runtime handler booting `kernel` and
/// `initramfs` with the built moat-vmm.
fn handler_toml(name: &str, kernel: &std::path::Path, initramfs: &std::path::Path) -> String {
    format!(
        "[runtime_handlers.{name}]\nkernel = {kernel:?}\ninitramfs = {initramfs:?}\nvmm = {:?}\n",
        moat_tests::artifacts::binary("moat-vmm").unwrap()
    )
}

/// After a RunPodSandbox that failed: no sandbox listed, no VMM, netns or
/// VM directory left behind.
async fn assert_failed_pod_left_nothing(
    rt: &mut runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    m: &Moatd,
    vmms_before: &[u32],
) {
    let pods = moat_tests::cri::list_pods(rt).await;
    assert!(pods.is_empty(), "failed sandbox still listed: {pods:?}");
    assert_eq!(vmm_pids(), vmms_before, "a VMM leaked");
    assert!(
        Moatd::entries(&m.run_dir().join("netns")).is_empty(),
        "netns leaked"
    );
    let leftovers: Vec<_> = Moatd::entries(&m.run_dir())
        .into_iter()
        .filter(|e| e != "netns")
        .collect();
    assert!(leftovers.is_empty(), "VM dirs leaked: {leftovers:?}");
}

/// Sandbox requests that are wrong, or whose VM cannot boot, fail cleanly
/// and leave nothing behind. The VMM fails before KVM is touched, so this
/// runs on any host.
#[test]
fn bad_sandbox_requests_and_a_vm_that_cannot_boot() {
    tokio_runtime().block_on(async {
        // A handler whose "kernel" is not an ELF file: moat-vmm exits at once.
        let bogus = std::env::temp_dir().join(format!("moat-not-a-kernel-{}", std::process::id()));
        std::fs::write(&bogus, b"not a kernel").unwrap();
        let extra = handler_toml(
            "broken",
            &bogus,
            &moat_tests::artifacts::initramfs().unwrap(),
        );
        let m = Moatd::start(&extra).expect("moatd");
        let mut rt = m.runtime().await.unwrap();

        let e = rt
            .run_pod_sandbox(run_req(pod_config("x", &[]), "nosuch"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().contains("runtime_handler") && e.message().contains("nosuch"),
            "{e:?}"
        );
        let e = rt
            .run_pod_sandbox(RunPodSandboxRequest::default())
            .await
            .unwrap_err();
        assert!(
            e.code() == Code::InvalidArgument && e.message().contains("config"),
            "{e:?}"
        );
        let mut no_uid = pod_config("x", &[]);
        no_uid.metadata.as_mut().unwrap().uid.clear();
        let e = rt.run_pod_sandbox(run_req(no_uid, "")).await.unwrap_err();
        assert!(e.message().contains("config.metadata.uid"), "{e:?}");
        // hostNetwork: refused, naming the field, and nothing is made.
        let mut host_net = pod_config("hostnet", &[]);
        host_net.linux = Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let e = rt.run_pod_sandbox(run_req(host_net, "")).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(
            e.message().contains(
                "config.linux.security_context.namespace_options.network: NODE (hostNetwork)"
            ),
            "{e:?}"
        );
        // A privileged pod: refused in a microVM unless its handler allows
        // privileges over the guest.
        let mut privileged = pod_config("priv", &[]);
        privileged.linux = Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                privileged: true,
                ..Default::default()
            }),
            ..Default::default()
        });
        let e = rt
            .run_pod_sandbox(run_req(privileged, ""))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(
            e.message()
                .contains("config.linux.security_context.privileged: a container in a microVM pod"),
            "{e:?}"
        );
        assert!(moat_tests::cri::list_pods(&mut rt).await.is_empty());

        let e = rt
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: "f00".into(),
                verbose: false,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        // CRI: StopPodSandbox is idempotent; nothing left to stop is OK.
        rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: "f00".into(),
        })
        .await
        .unwrap();
        rt.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: "f00".into(),
        })
        .await
        .expect("removing an unknown id succeeds");
        let e = rt
            .remove_pod_sandbox(RemovePodSandboxRequest::default())
            .await
            .unwrap_err();
        assert!(e.message().contains("pod_sandbox_id"));
        let e = rt
            .container_status(ContainerStatusRequest {
                container_id: "nope".into(),
                verbose: false,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        let e = rt
            .checkpoint_container(CheckpointContainerRequest::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unimplemented);

        let before = vmm_pids();
        let e = rt
            .run_pod_sandbox(run_req(pod_config("broken", &[]), "broken"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Internal);
        assert!(
            e.message()
                .contains("pod VM stopped before its agent answered"),
            "{e:?}"
        );
        assert_failed_pod_left_nothing(&mut rt, &m, &before).await;
        assert!(
            !m.log().contains("booting a new one"),
            "a VMM that cannot start was started again:\n{}",
            m.log()
        );
        let _ = std::fs::remove_file(&bogus);
    });
}

moat_tests::vm_test!(
    a_guest_that_resets_while_booting_gets_one_fresh_vm,
    TIMEOUT,
    lifecycle::boot_crash_body
);

moat_tests::vm_test!(
    pod_sandbox_lifecycle_in_microvms,
    TIMEOUT,
    lifecycle::pod_lifecycle_body
);

moat_tests::vm_test!(
    running_pods_survive_a_moatd_restart,
    TIMEOUT,
    restart::restart_body
);
