//! Tests of registry host configuration: `hosts.toml` parsing, host URLs,
//! directory lookup, certificates and durations.

use super::*;
use std::path::Path;

const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

fn parse(text: &str, dir: &Path) -> Result<Vec<RegistryHost>, HostsError> {
    parse_hosts_file(
        text,
        dir,
        &dir.join("hosts.toml"),
        "docker.io",
        Scheme::Https,
    )
}

fn urls(hosts: &[RegistryHost]) -> Vec<String> {
    hosts.iter().map(|h| h.url()).collect()
}

#[test]
fn containerd_simple_example() {
    let d = tempfile::tempdir().unwrap();
    let hosts = parse(
        "server = \"https://docker.io\"\n\n[host.\"https://registry-1.docker.io\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        d.path(),
    )
    .unwrap();
    assert_eq!(
        urls(&hosts),
        ["https://registry-1.docker.io", "https://docker.io"]
    );
    assert_eq!(hosts[0].role, Role::Mirror);
    assert_eq!(
        hosts[0].capabilities,
        Capabilities {
            pull: true,
            resolve: true,
            push: false
        }
    );
    assert_eq!(hosts[1].role, Role::Server);
    assert_eq!(hosts[1].capabilities, Capabilities::ALL);
}

#[test]
fn containerd_local_mirror_example_keeps_file_order_and_reads_ca() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("docker-mirror.crt"), format!("{CA}{CA}")).unwrap();
    let hosts = parse(
        r#"
server = "https://registry-1.docker.io"    # Exclude this to not use upstream

[host."https://public-mirror.example.com"]
  capabilities = ["pull"]                  # Requires less trust, won't resolve tag to digest from this host
[host."https://docker-mirror.internal"]
  capabilities = ["pull", "resolve"]
  ca = "docker-mirror.crt"
[host."http://a-plain.example:5000"]
  skip_verify = true
  dial_timeout = "1.5s"
"#,
        d.path(),
    )
    .unwrap();
    assert_eq!(
        urls(&hosts),
        [
            "https://public-mirror.example.com",
            "https://docker-mirror.internal",
            "http://a-plain.example:5000",
            "https://registry-1.docker.io"
        ]
    );
    assert!(hosts[0].capabilities.pull && !hosts[0].capabilities.resolve);
    assert_eq!(hosts[1].ca.len(), 2, "a bundle is split per certificate");
    assert_eq!(hosts[1].ca[0].0, d.path().join("docker-mirror.crt"));
    assert_eq!(hosts[2].scheme, Scheme::Http);
    assert!(hosts[2].skip_verify);
    assert_eq!(hosts[2].dial_timeout, Some(Duration::from_millis(1500)));
    assert!(!hosts[0].skip_verify);
}

#[test]
fn reverse_alphabetical_order_is_kept() {
    let d = tempfile::tempdir().unwrap();
    let hosts = parse(
        "[host.\"https://z.example\"]\n[host.\"https://a.example\"]\n[host.\"https://m.example\"]\ncapabilities = [\"pull\"]\n",
        d.path(),
    )
    .unwrap();
    assert_eq!(
        urls(&hosts),
        [
            "https://z.example",
            "https://a.example",
            "https://m.example",
            "https://docker.io"
        ]
    );
}

#[test]
fn server_defaults_to_the_registry_and_top_level_settings_apply_to_it() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("ca.pem"), CA).unwrap();
    let ca = d.path().join("ca.pem");
    let hosts = parse_hosts_file(
        &format!("ca = [{:?}]\nskip_verify = false\ncapabilities = [\"pull\"]\n[host.\"mirror.example:5000/some/path/\"]\n", ca.display()),
        d.path(),
        &d.path().join("hosts.toml"),
        "127.0.0.1:5000",
        Scheme::Http,
    )
    .unwrap();
    assert_eq!(hosts[0].url(), "https://mirror.example:5000/some/path");
    assert_eq!(hosts[0].registry(), "mirror.example:5000/some/path");
    assert_eq!(hosts[1].url(), "http://127.0.0.1:5000");
    assert_eq!(hosts[1].ca.len(), 1);
    assert!(hosts[1].capabilities.pull && !hosts[1].capabilities.resolve);
}

#[test]
fn host_urls_follow_containerd() {
    let ok = |u: &str, o: bool| parse_host_url(u, o).unwrap();
    assert_eq!(
        ok("https://m.example", false),
        (Scheme::Https, "m.example".into(), "".into())
    );
    assert_eq!(
        ok("m.example:443", false),
        (Scheme::Https, "m.example:443".into(), "".into())
    );
    assert_eq!(
        ok("http://m/v2", false),
        (Scheme::Http, "m".into(), "".into())
    );
    assert_eq!(
        ok("https://m/us//", false),
        (Scheme::Https, "m".into(), "/us".into())
    );
    assert_eq!(
        ok("https://non-compliant-mirror.registry/v2/upstream/v2", true),
        (
            Scheme::Https,
            "non-compliant-mirror.registry".into(),
            "/v2/upstream".into()
        )
    );
    // containerd's own override_path example has an API root moatd's
    // client cannot address: refused, not silently rewritten.
    let e = parse_host_url("https://non-compliant-mirror.registry/v2/upstream", true).unwrap_err();
    assert!(e.contains("override_path"), "{e}");
    assert!(parse_host_url("ftp://m", false).is_err());
    assert!(parse_host_url("https://", false).is_err());
    assert!(parse_host_url("https://u@m", false).is_err());
}

#[test]
fn bad_files_name_the_file_and_key() {
    let d = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str)] = &[
        ("server = 5", "server", "string"),
        (
            "[host.\"https://m\"]\ncapabilities = [\"pull\", \"fetch\"]",
            "host.\"https://m\".capabilities",
            "fetch",
        ),
        (
            "[host.\"https://m\"]\ncapabilities = \"pull\"",
            "host.\"https://m\".capabilities",
            "list",
        ),
        (
            "[host.\"https://m\"]\nskip_verfy = true",
            "host.\"https://m\".skip_verfy",
            "unknown key",
        ),
        ("skip_verify = \"yes\"", "skip_verify", "true or false"),
        (
            "[host.\"https://m\"]\nca = \"missing.pem\"",
            "host.\"https://m\".ca",
            "missing.pem",
        ),
        (
            "[host.\"https://m\"]\nca = [1]",
            "host.\"https://m\".ca",
            "list of paths",
        ),
        (
            "[host.\"https://m\"]\nclient = [[\"/c.cert\", \"/c.key\"]]",
            "host.\"https://m\".client",
            "reading /c.cert",
        ),
        (
            "[host.\"https://m\"]\nclient = [\"a.pem\", \"b.pem\"]",
            "host.\"https://m\".client",
            "2 client certificates listed",
        ),
        (
            "[host.\"https://m\"]\nclient = 1",
            "host.\"https://m\".client",
            "must be a path",
        ),
        (
            "[host.\"https://m\".header]\n\"x custom\" = \"v\"",
            "host.\"https://m\".header",
            "not a valid header name",
        ),
        (
            "[host.\"https://m\".header]\nx-custom = 5",
            "host.\"https://m\".header",
            "string or a list of strings",
        ),
        ("header = \"x\"", "header", "must be a table"),
        (
            "[host.\"https://m\"]\ndial_timeout = \"soon\"",
            "host.\"https://m\".dial_timeout",
            "soon",
        ),
        ("[host.\"ftp://m\"]", "host.\"ftp://m\"", "scheme"),
        (
            "[host.\"http://m\"]\n[host.\"http://m\".host.\"http://n\"]",
            "host.\"http://m\".host",
            "nested",
        ),
        ("mirrors = []", "mirrors", "unknown key"),
        (
            "server = \"https://m\"\nserver = \"https://n\"",
            "",
            "invalid TOML",
        ),
        ("proxy = \"my-proxy:8080\"", "proxy", "URL"),
    ];
    for (text, key, what) in cases {
        let e = parse(text, d.path()).unwrap_err();
        assert_eq!(e.key, *key, "{text}: {e}");
        let msg = e.to_string();
        assert!(msg.contains("hosts.toml"), "{msg}");
        assert!(msg.contains(what), "{text}: {msg}");
    }
    std::fs::write(d.path().join("not-a-cert.pem"), "hello").unwrap();
    let e = parse("ca = \"not-a-cert.pem\"", d.path()).unwrap_err();
    assert!(e.to_string().contains("no PEM certificate"), "{e}");
}

#[test]
fn directories_are_looked_up_like_containerd() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    // Nothing configured: the registry itself, http for loopback and
    // insecure registries.
    let h = registry_hosts(Some(r), "127.0.0.1:5000", &[]).unwrap();
    assert_eq!(h.dir, None);
    assert_eq!(urls(&h.hosts), ["http://127.0.0.1:5000"]);
    let h = registry_hosts(Some(r), "reg.example", &["reg.example".into()]).unwrap();
    assert_eq!(urls(&h.hosts), ["http://reg.example"]);
    let h = registry_hosts(None, "reg.example", &[]).unwrap();
    assert_eq!(urls(&h.hosts), ["https://reg.example"]);

    std::fs::create_dir(r.join("_default")).unwrap();
    std::fs::write(
        r.join("_default/hosts.toml"),
        "[host.\"https://default-mirror\"]\n",
    )
    .unwrap();
    let h = registry_hosts(Some(r), "quay.io", &[]).unwrap();
    assert_eq!(h.dir, Some(r.join("_default")));
    assert_eq!(
        urls(&h.hosts),
        ["https://default-mirror", "https://quay.io"]
    );

    std::fs::create_dir(r.join("reg.example:5000")).unwrap();
    std::fs::write(
        r.join("reg.example:5000/hosts.toml"),
        "server = \"http://colon\"\n",
    )
    .unwrap();
    let h = registry_hosts(Some(r), "reg.example:5000", &[]).unwrap();
    assert_eq!(urls(&h.hosts), ["http://colon"]);
    std::fs::create_dir(r.join("reg.example_5000_")).unwrap();
    std::fs::write(
        r.join("reg.example_5000_/hosts.toml"),
        "server = \"http://underscore\"\n",
    )
    .unwrap();
    let h = registry_hosts(Some(r), "reg.example:5000", &[]).unwrap();
    assert_eq!(urls(&h.hosts), ["http://underscore"], "host_port_ first");

    // A directory without hosts.toml: Docker's certificate layout.
    std::fs::create_dir(r.join("private.example")).unwrap();
    std::fs::write(r.join("private.example/ca.crt"), CA).unwrap();
    let h = registry_hosts(Some(r), "private.example", &[]).unwrap();
    assert_eq!(urls(&h.hosts), ["https://private.example"]);
    assert_eq!(h.hosts[0].ca.len(), 1);
    std::fs::write(r.join("private.example/client.cert"), CA).unwrap();
    let e = registry_hosts(Some(r), "private.example", &[]).unwrap_err();
    assert!(e.to_string().contains("client.cert"), "{e}");
    assert!(e.to_string().contains("without its key"), "{e}");
    let (cert, key) = client_cert(r);
    std::fs::copy(&cert, r.join("private.example/client.cert")).unwrap();
    std::fs::copy(&key, r.join("private.example/client.key")).unwrap();
    let h = registry_hosts(Some(r), "private.example", &[]).unwrap();
    let client = h.hosts[0].client.as_ref().expect("Docker's client pair");
    assert_eq!(client.files.1, r.join("private.example/client.key"));

    // A malformed file fails the lookup, naming the file.
    std::fs::write(r.join("_default/hosts.toml"), "[host.\"https://m\"\n").unwrap();
    let e = registry_hosts(Some(r), "quay.io", &[]).unwrap_err();
    assert_eq!(e.file, r.join("_default/hosts.toml"));
}

#[test]
fn go_durations() {
    assert_eq!(parse_go_duration("1s").unwrap(), Duration::from_secs(1));
    assert_eq!(
        parse_go_duration("250ms").unwrap(),
        Duration::from_millis(250)
    );
    assert_eq!(parse_go_duration("1m30s").unwrap(), Duration::from_secs(90));
    assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
    for bad in ["", "1", "s", "1x", "-1s", "1.2.3s"] {
        assert!(parse_go_duration(bad).is_err(), "{bad}");
    }
}

#[test]
fn loopback_registries_use_http() {
    assert!(is_loopback_registry("127.0.0.1:5000"));
    assert!(is_loopback_registry("localhost:5000"));
    assert!(is_loopback_registry("localhost"));
    assert!(!is_loopback_registry("registry.example.com"));
    assert!(!is_loopback_registry("localhost.evil.com:5000"));
}

/// A self-signed client certificate and its key, made by openssl in `dir`.
fn client_cert(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("made-client.crt"), dir.join("made-client.key"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=moat-client", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (scripts/install-deps.sh)");
    assert!(made.status.success(), "{made:?}");
    (cert, key)
}

/// `client` as containerd reads it: a pair, or one file holding both;
/// `header` values, single or listed, for mirrors and the server.
#[test]
fn client_certificates_and_headers_are_read() {
    let d = tempfile::tempdir().unwrap();
    let (cert, key) = client_cert(d.path());
    let mut both = std::fs::read(&key).unwrap();
    both.extend(std::fs::read(&cert).unwrap());
    std::fs::write(d.path().join("both.pem"), both).unwrap();
    let hosts = parse(
        "client = \"both.pem\"\n\
         [header]\n  x-tenant = \"blue\"\n\
         [host.\"https://m\"]\n  client = [[\"made-client.crt\", \"made-client.key\"]]\n\
         [host.\"https://m\".header]\n  x-list = [\"a\", \"b\"]\n",
        d.path(),
    )
    .unwrap();
    let mirror = hosts[0].client.as_ref().unwrap();
    assert_eq!(mirror.files, (cert.clone(), key.clone()));
    assert_eq!(
        hosts[0].headers,
        [("x-list".into(), "a".into()), ("x-list".into(), "b".into())]
    );
    let server = hosts[1].client.as_ref().unwrap();
    assert_eq!(
        server.files,
        (d.path().join("both.pem"), d.path().join("both.pem"))
    );
    assert_eq!(hosts[1].headers, [("x-tenant".into(), "blue".into())]);
    // A certificate alone has no key to sign with.
    let e = parse("client = \"made-client.crt\"", d.path()).unwrap_err();
    assert!(e.to_string().contains("no PEM private key"), "{e}");
}
