//! CRI through clients moat did not write, against a real moatd (no VM
//! needed): Python grpcio with its own default `:authority` for a Unix
//! socket, and raw HTTP/2 requests (hyper-h2) whose `:authority` is the
//! socket's path or empty — what grpc-go in crictl 1.26, older kubelets and
//! grpc-java send. h2 alone answers those with RST_STREAM PROTOCOL_ERROR;
//! moatd's authority shim (`moatd::cri::authority`) lets them through.
//!
//! Needs python3 with venv (scripts/install-deps.sh) and PyPI for the first
//! run of scripts/python-cri-env.sh; `make artifacts` and a release moatd.

use moat_tests::moatd::Moatd;
use moat_tests::python::{cri_client, grpc_calls};
use serde_json::{json, Value};

fn ok<'a>(results: &'a [Value], call: &str) -> &'a Value {
    let r = results
        .iter()
        .find(|r| r["call"] == call)
        .unwrap_or_else(|| panic!("no result for {call}: {results:#?}"));
    assert_eq!(r["ok"], true, "{call}: {r}");
    &r["response"]
}

#[test]
fn grpcio_with_its_default_authority() {
    let m = Moatd::start("").expect("moatd");
    let busybox = m.registry.busybox();
    let calls = [
        "RuntimeService/Version".to_string(),
        r#"RuntimeService/Status={"verbose": true}"#.to_string(),
        "RuntimeService/ListPodSandbox".to_string(),
        format!(
            "ImageService/PullImage={}",
            json!({"image": {"image": busybox}})
        ),
        "ImageService/ListImages".to_string(),
        format!(
            "ImageService/ImageStatus={}",
            json!({"image": {"image": busybox}})
        ),
    ];
    let run = grpc_calls(&m.socket, None, &calls).expect("cri_client.py");
    assert!(run.success, "{run:#?}\nmoatd log:\n{}", m.log());
    let r = &run.results;
    let v = ok(r, "RuntimeService/Version");
    assert_eq!(v["runtime_name"], "moat");
    assert_eq!(v["runtime_api_version"], "v1");
    let s = ok(r, "RuntimeService/Status");
    let conds = s["status"]["conditions"].as_array().expect("conditions");
    for want in ["RuntimeReady", "NetworkReady"] {
        assert!(
            conds
                .iter()
                .any(|c| c["type"] == want && c["status"] == true),
            "{want} in {s}"
        );
    }
    assert!(s["runtime_handlers"]
        .as_array()
        .is_some_and(|h| h.iter().any(|h| h["name"] == "microvm")));
    // No pods: protobuf's JSON leaves the empty list out.
    assert_eq!(ok(r, "RuntimeService/ListPodSandbox").get("items"), None);
    let pulled = ok(r, "ImageService/PullImage")["image_ref"]
        .as_str()
        .expect("image_ref")
        .to_string();
    assert!(pulled.starts_with("sha256:"), "{pulled}");
    let images = ok(r, "ImageService/ListImages")["images"]
        .as_array()
        .expect("images")
        .clone();
    assert!(
        images.iter().any(|i| i["id"] == pulled.as_str()
            && i["repo_tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| *t == busybox.as_str()))),
        "{pulled} tagged {busybox} in {images:#?}"
    );
    assert_eq!(
        ok(r, "ImageService/ImageStatus")["image"]["id"],
        pulled.as_str()
    );

    // grpcio told to use the socket's path as authority, as grpc-go 1.26 does.
    let path = m.socket.to_string_lossy().into_owned();
    let run = grpc_calls(&m.socket, Some(&path), &calls[..1]).expect("cri_client.py");
    assert!(run.success, "{run:#?}");
    assert_eq!(
        ok(&run.results, "RuntimeService/Version")["runtime_name"],
        "moat"
    );
    // An RPC error still comes back as one (not as a broken connection).
    let run = grpc_calls(
        &m.socket,
        None,
        &[r#"RuntimeService/PodSandboxStatus={"pod_sandbox_id": "nope"}"#.to_string()],
    )
    .expect("cri_client.py");
    assert!(!run.success);
    assert_eq!(run.results[0]["code"], "NOT_FOUND", "{run:#?}");
}

#[test]
fn raw_http2_with_path_and_empty_authority() {
    let m = Moatd::start("").expect("moatd");
    let socket = m.socket.to_string_lossy().into_owned();
    let proto = moat_tests::python::cri_proto().expect("CRI proto");
    let proto = proto.to_string_lossy().into_owned();
    for authority in [
        socket.as_str(),
        "",
        "localhost",
        "unix:///run/moat/moat.sock",
    ] {
        let run = cri_client(&[
            "raw-version",
            "--socket",
            &socket,
            "--authority",
            authority,
            "--proto",
            &proto,
            "--requests",
            "2",
        ])
        .expect("cri_client.py");
        assert!(
            run.success,
            "authority {authority:?}: {run:#?}\nmoatd log:\n{}",
            m.log()
        );
        assert_eq!(run.results.len(), 2, "{run:#?}");
        for r in &run.results {
            assert_eq!(r["status"], 200, "{r}");
            assert_eq!(r["grpc_status"], "0", "{r}");
            assert!(r["message_len"].as_u64().is_some_and(|n| n > 0), "{r}");
            assert_eq!(r["response"]["runtime_name"], "moat", "{r}");
            assert_eq!(r["reset"], Value::Null, "{r}");
        }
    }
}

/// grpcio with its default authority drives a pod in a microVM: RunPodSandbox,
/// CreateContainer, StartContainer, ExecSync, then stop and remove.
fn grpcio_pod_body() {
    let m = Moatd::start("").expect("moatd");
    let busybox = m.registry.busybox();
    let call = |calls: &[String]| {
        let run = grpc_calls(&m.socket, None, calls).expect("cri_client.py");
        assert!(run.success, "{run:#?}\nmoatd log:\n{}", m.log());
        run.results
    };
    let logs = m.dir.path().join("pods/py");
    let r = call(&[
        format!(
            "ImageService/PullImage={}",
            json!({"image": {"image": busybox}})
        ),
        format!(
            "RuntimeService/RunPodSandbox={}",
            json!({"config": {
                "metadata": {"name": "py", "uid": "uid-py", "namespace": "default"},
                "hostname": "py", "log_directory": logs}})
        ),
    ]);
    let pod = ok(&r, "RuntimeService/RunPodSandbox")["pod_sandbox_id"]
        .as_str()
        .expect("pod_sandbox_id")
        .to_string();
    let r = call(&[format!(
        "RuntimeService/CreateContainer={}",
        json!({"pod_sandbox_id": pod, "config": {
            "metadata": {"name": "c"}, "image": {"image": busybox},
            "command": ["sleep", "3600"], "log_path": "c/0.log"}})
    )]);
    let id = ok(&r, "RuntimeService/CreateContainer")["container_id"]
        .as_str()
        .expect("container_id")
        .to_string();
    let r = call(&[
        format!(
            "RuntimeService/StartContainer={}",
            json!({"container_id": id})
        ),
        format!(
            "RuntimeService/ExecSync={}",
            json!({"container_id": id, "cmd": ["sh", "-c", "echo from-$(hostname)"], "timeout": 60})
        ),
        format!(
            "RuntimeService/StopPodSandbox={}",
            json!({"pod_sandbox_id": pod})
        ),
        format!(
            "RuntimeService/RemovePodSandbox={}",
            json!({"pod_sandbox_id": pod})
        ),
    ]);
    let e = ok(&r, "RuntimeService/ExecSync");
    assert_eq!(e["exit_code"].as_i64().unwrap_or(0), 0, "{e}");
    // bytes fields come back base64-encoded in the JSON.
    let stdout = e["stdout"].as_str().expect("stdout");
    assert_eq!(stdout, "ZnJvbS1weQo=", "stdout is not \"from-py\\n\": {e}");
}

moat_tests::vm_test!(
    grpcio_drives_a_pod_in_a_microvm,
    std::time::Duration::from_secs(900),
    grpcio_pod_body
);
