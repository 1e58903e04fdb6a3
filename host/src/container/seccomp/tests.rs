//! Tests of the seccomp profile choice, `RuntimeDefault` and `Localhost`
//! profiles.

use super::*;
use moat_proto::cri::SecurityProfile;

fn sc(seccomp: Option<SecurityProfile>, path: &str) -> LinuxContainerSecurityContext {
    #[allow(deprecated)]
    LinuxContainerSecurityContext {
        seccomp,
        seccomp_profile_path: path.into(),
        ..Default::default()
    }
}

fn names(p: &LinuxSeccomp) -> Vec<String> {
    p.syscalls()
        .iter()
        .flatten()
        .filter(|s| s.args().as_ref().is_none_or(|a| a.is_empty()))
        .filter(|s| s.action() == oci_spec::runtime::LinuxSeccompAction::ScmpActAllow)
        .flat_map(|s| s.names().clone())
        .collect()
}

#[test]
fn choice_follows_cri() {
    use SeccompChoice::*;
    let prof = |t: ProfileType, r: &str| {
        Some(SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r.into(),
        })
    };
    assert_eq!(choice(None).unwrap(), Unconfined);
    assert_eq!(choice(Some(&sc(None, ""))).unwrap(), Unconfined);
    assert_eq!(choice(Some(&sc(None, "unconfined"))).unwrap(), Unconfined);
    assert_eq!(
        choice(Some(&sc(None, "runtime/default"))).unwrap(),
        RuntimeDefault
    );
    assert_eq!(
        choice(Some(&sc(None, "docker/default"))).unwrap(),
        RuntimeDefault
    );
    assert_eq!(
        choice(Some(&sc(None, "localhost//etc/p.json"))).unwrap(),
        Localhost("/etc/p.json".into())
    );
    let e = choice(Some(&sc(None, "localhost/rel.json"))).unwrap_err();
    assert!(e.0.contains("seccomp_profile_path"), "{e}");
    let e = choice(Some(&sc(None, "bogus"))).unwrap_err();
    assert!(e.0.contains("seccomp_profile_path"), "{e}");
    // The SecurityProfile wins over the string.
    let s = sc(prof(ProfileType::RuntimeDefault, ""), "unconfined");
    assert_eq!(choice(Some(&s)).unwrap(), RuntimeDefault);
    let s = sc(prof(ProfileType::Unconfined, ""), "runtime/default");
    assert_eq!(choice(Some(&s)).unwrap(), Unconfined);
    let s = sc(prof(ProfileType::Localhost, "/p.json"), "");
    assert_eq!(choice(Some(&s)).unwrap(), Localhost("/p.json".into()));
    let s = sc(prof(ProfileType::Localhost, "p.json"), "");
    assert!(choice(Some(&s)).unwrap_err().0.contains("localhost_ref"));
    let mut s = sc(prof(ProfileType::RuntimeDefault, ""), "");
    s.privileged = true;
    assert_eq!(choice(Some(&s)).unwrap(), Unconfined);
}

#[test]
fn runtime_default_is_an_allow_list_gated_by_capabilities() {
    let plain = profile(&SeccompChoice::RuntimeDefault, &["CAP_CHOWN".into()], None)
        .unwrap()
        .unwrap();
    assert_eq!(
        plain.default_action(),
        oci_spec::runtime::LinuxSeccompAction::ScmpActErrno
    );
    let allowed = names(&plain);
    assert!(allowed.contains(&"read".to_string()));
    for denied in [
        "mount", "unshare", "setns", "ptrace", "keyctl", "add_key", "reboot",
    ] {
        assert!(!allowed.contains(&denied.to_string()), "{denied}");
    }
    let admin = profile(
        &SeccompChoice::RuntimeDefault,
        &["CAP_SYS_ADMIN".into()],
        None,
    )
    .unwrap()
    .unwrap();
    let allowed = names(&admin);
    assert!(allowed.contains(&"mount".to_string()));
    assert!(allowed.contains(&"unshare".to_string()));
    // clone3 answers ENOSYS without CAP_SYS_ADMIN only.
    let clone3 = |p: &LinuxSeccomp| {
        p.syscalls()
            .iter()
            .flatten()
            .any(|s| s.names().contains(&"clone3".to_string()) && s.errno_ret() == Some(38))
    };
    assert!(clone3(&plain) && !clone3(&admin));
}

#[test]
fn localhost_profiles_in_docker_format_resolve_includes() {
    let text = r#"{
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
        "syscalls": [
            {"names": ["sethostname", "chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"name": "mkdir", "action": "SCMP_ACT_ERRNO", "comment": "old form"},
            {"names": ["chown"], "action": "SCMP_ACT_ERRNO", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["rmdir"], "action": "SCMP_ACT_ERRNO", "excludes": {"arches": ["amd64"]}},
            {"names": ["rename"], "action": "SCMP_ACT_ERRNO", "includes": {"minKernel": "9.0"}}
        ]}"#;
    let c = SeccompChoice::Localhost("/p.json".into());
    let p = profile(&c, &["CAP_CHOWN".into()], Some(text))
        .unwrap()
        .unwrap();
    let all: Vec<String> = p
        .syscalls()
        .iter()
        .flatten()
        .flat_map(|s| s.names().clone())
        .collect();
    assert_eq!(all, ["sethostname", "chmod", "mkdir"]);
    let e = profile(
        &c,
        &[],
        Some(r#"{"defaultAction":"SCMP_ACT_ALLOW","bogus":1}"#),
    )
    .unwrap_err();
    assert!(e.0.contains("/p.json") && e.0.contains("bogus"), "{e}");
    let e = profile(&c, &[], Some(r#"{"defaultAction":"SCMP_ACT_NOPE"}"#)).unwrap_err();
    assert!(e.0.contains("/p.json"), "{e}");
}
