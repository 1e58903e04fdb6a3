//! The spec checks and the plans they make.

use super::*;
use oci_spec::runtime::Process;

fn policy() -> PlanPolicy {
    PlanPolicy {
        bind_source_dirs: vec!["/run/moat/shared".into()],
        namespace_dirs: vec!["/run/moat/sandbox/ns".into()],
    }
}

fn spec(extra: &str) -> Spec {
    let base = r#"{"ociVersion":"1.0.2","process":{"args":["/bin/sh","-c","true"],"cwd":"/","user":{"uid":1000,"gid":1000,"additionalGids":[5]},
            "env":["PATH=/bin"],"noNewPrivileges":true,"oomScoreAdj":100,
            "capabilities":{"bounding":["CAP_KILL","CAP_CHOWN"],"effective":["CAP_KILL"]},
            "rlimits":[{"type":"RLIMIT_NOFILE","soft":1024,"hard":2048}]}"#;
    serde_json::from_str(&format!("{base}{extra}}}")).unwrap()
}

#[test]
fn translates_a_typical_spec() {
    let s = spec(
        r#","root":{"path":"rootfs","readonly":true},"hostname":"web",
            "mounts":[{"destination":"/proc","type":"proc","source":"proc"},
                      {"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","strictatime","mode=755","size=65536k"]},
                      {"destination":"/etc/hosts","type":"bind","source":"/run/moat/shared/hosts","options":["rbind","ro","rprivate"]}],
            "linux":{"namespaces":[{"type":"pid"},{"type":"uts"},{"type":"mount"},{"type":"ipc","path":"/run/moat/sandbox/ns/ipc"}],
                     "maskedPaths":["/proc/kcore"],"readonlyPaths":["/proc/sys"],"sysctl":{"net.ipv4.ping_group_range":"0 0"},
                     "devices":[{"path":"/dev/fuse","type":"c","major":10,"minor":229}]}"#,
    );
    let p = container_plan(&s, Path::new("/r"), &policy()).unwrap();
    assert!(p.readonly_root);
    assert_eq!(p.hostname.as_deref(), Some("web"));
    assert_eq!(
        p.namespaces.create,
        vec![NsKind::Mount, NsKind::Pid, NsKind::Uts]
    );
    assert_eq!(
        p.namespaces.join,
        vec![(NsKind::Ipc, PathBuf::from("/run/moat/sandbox/ns/ipc"))]
    );
    assert_eq!(p.mounts.len(), 3);
    assert_eq!(p.mounts[1].data, "mode=755,size=65536k");
    assert_eq!(
        p.mounts[1].flags,
        (MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME).bits()
    );
    assert!(p.mounts[2].is_bind());
    assert_eq!(p.mounts[2].fstype, None);
    assert_eq!(
        p.mounts[2].flags,
        (MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY).bits()
    );
    assert_eq!(
        p.mounts[2].propagation,
        (MsFlags::MS_PRIVATE | MsFlags::MS_REC).bits()
    );
    assert_eq!(
        p.sysctls,
        vec![("net/ipv4/ping_group_range".into(), "0 0".into())]
    );
    assert_eq!(p.devices[0].kind, 'c');
    assert_eq!(p.process.uid, 1000);
    assert_eq!(p.process.additional_gids, vec![5]);
    assert_eq!(p.process.caps.bounding, vec!["CAP_CHOWN", "CAP_KILL"]);
    assert_eq!(p.process.caps.effective, vec!["CAP_KILL"]);
    assert!(p.process.no_new_privileges);
    assert_eq!(p.process.rlimits, vec![(libc::RLIMIT_NOFILE, 1024, 2048)]);
    assert_eq!(p.process.oom_score_adj, Some(100));
}

#[test]
fn rejects_bad_fields_naming_them() {
    let cases = [
        (
            r#","mounts":[{"destination":"/x","type":"bind","source":"/etc"}]"#,
            "mounts[0].source",
        ),
        (
            r#","mounts":[{"destination":"/x","type":"bind","source":"/run/moat/shared/../../etc"}]"#,
            "mounts[0].source",
        ),
        (
            r#","mounts":[{"destination":"rel","type":"tmpfs"}]"#,
            "mounts[0].destination",
        ),
        (
            r#","mounts":[{"destination":"/x","type":"nfs"}]"#,
            "mounts[0].type",
        ),
        (r#","hostname":"h""#, "hostname"),
        (
            r#","linux":{"namespaces":[{"type":"user"}]}"#,
            "linux.namespaces[0].type",
        ),
        (
            r#","linux":{"namespaces":[{"type":"network","path":"/etc/passwd"}]}"#,
            "linux.namespaces[0].path",
        ),
        (
            r#","linux":{"namespaces":[{"type":"pid"},{"type":"pid"}]}"#,
            "linux.namespaces[1]",
        ),
        (
            r#","linux":{"sysctl":{"../../x":"1"}}"#,
            "linux.sysctl[\"../../x\"]",
        ),
        (
            r#","linux":{"devices":[{"path":"/etc/x","type":"c","major":1,"minor":1}]}"#,
            "linux.devices[0].path",
        ),
        (
            r#","linux":{"rootfsPropagation":"weird"}"#,
            "linux.rootfsPropagation",
        ),
    ];
    for (extra, field) in cases {
        let e = container_plan(&spec(extra), Path::new("/r"), &policy()).unwrap_err();
        assert_eq!(e.field, field, "{extra}: {e}");
    }
    let no_args: Process =
        serde_json::from_str(r#"{"cwd":"/","user":{"uid":0,"gid":0},"args":[]}"#).unwrap();
    assert_eq!(
        process_plan(&no_args, "process").unwrap_err().field,
        "process.args"
    );
    let bad_env: Process = serde_json::from_str(
        r#"{"cwd":"/","user":{"uid":0,"gid":0},"args":["x"],"env":["NOEQUALS"]}"#,
    )
    .unwrap();
    assert_eq!(
        process_plan(&bad_env, "process").unwrap_err().field,
        "process.env[0]"
    );
    let bad_rl: Process = serde_json::from_str(r#"{"cwd":"/","user":{"uid":0,"gid":0},"args":["x"],"rlimits":[{"type":"RLIMIT_NOFILE","soft":5,"hard":1}]}"#).unwrap();
    assert_eq!(
        process_plan(&bad_rl, "process").unwrap_err().field,
        "process.rlimits[0]"
    );
    assert!(parse_spec(b"{not json").is_err());
}

#[test]
fn exec_inherits_the_containers_restrictions() {
    let s = spec(
        r#","linux":{"seccomp":{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}}"#,
    );
    let plan = container_plan(&s, Path::new("/r"), &policy()).unwrap();
    let proc_plan = with_seccomp(plan.process, &s).unwrap();
    let d = ExecDefaults::from_container(&proc_plan);
    let bare: Process =
        serde_json::from_str(r#"{"cwd":"/","user":{"uid":0,"gid":0},"args":["sh"]}"#).unwrap();
    let e = exec_plan(&bare, &d).unwrap();
    assert_eq!(e.caps, proc_plan.caps);
    assert!(e.seccomp.is_some());
    assert!(e.no_new_privileges);
    let own: Process = serde_json::from_str(
            r#"{"cwd":"/","user":{"uid":0,"gid":0},"args":["sh"],"capabilities":{"bounding":["CAP_KILL"]}}"#,
        )
        .unwrap();
    assert_eq!(exec_plan(&own, &d).unwrap().caps.bounding, vec!["CAP_KILL"]);
}

#[test]
fn mount_option_parsing() {
    let (f, p, d) = parse_mount_options(&[
        "ro".into(),
        "rw".into(),
        "nodev".into(),
        "rslave".into(),
        "size=1m".into(),
    ]);
    assert_eq!(f, MsFlags::MS_NODEV.bits());
    assert_eq!(p, (MsFlags::MS_SLAVE | MsFlags::MS_REC).bits());
    assert_eq!(d, "size=1m");
}
