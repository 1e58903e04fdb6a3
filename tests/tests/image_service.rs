//! moatd's image store against a real registry on 127.0.0.1 holding the
//! project's two-layer busybox image (the second layer deletes a file).

use moat_tests::registry::Registry;
use moatd::image::pull::PullAuth;
use moatd::image::{ImageError, ImageService};
use moatd::store::Store;
use std::path::Path;

fn extract(block: &Path, dest: &Path) {
    let out = std::process::Command::new("fsck.erofs")
        .arg(format!("--extract={}", dest.display()))
        .arg(block)
        .output()
        .expect("fsck.erofs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_resolve_remove_against_a_real_registry() {
    let registry = Registry::start().expect("registry");
    let state = tempfile::tempdir().unwrap();
    let svc = ImageService::open(state.path(), Store::open(state.path()).unwrap(), vec![]).unwrap();
    let image = registry.busybox();

    let rec = svc.pull(&image, &PullAuth::default()).await.expect("pull");
    assert!(rec.id.starts_with("sha256:"), "{}", rec.id);
    assert_eq!(rec.layers.len(), 2);
    assert_eq!(rec.repo_tags, vec![image.clone()]);
    assert!(rec.repo_digests[0].starts_with(&format!("{}/moat/busybox@sha256:", registry.addr)));
    assert_eq!(rec.config_json()["config"]["Cmd"][0], "sh");

    // The block image is the layers applied in order, whiteout included.
    let root = state.path().join("extracted");
    extract(&rec.block_image, &root);
    assert_eq!(
        std::fs::read_to_string(root.join("etc/moat-release")).unwrap(),
        "moat test image\n"
    );
    assert!(
        !root.join("etc/deleted-by-layer-2").exists(),
        "whiteout not applied"
    );
    assert!(root.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );

    // Resolution by tag, id, bare hex and digest reference.
    for name in [
        image.clone(),
        rec.id.clone(),
        rec.id[7..].to_string(),
        rec.repo_digests[0].clone(),
    ] {
        assert_eq!(
            svc.resolve(&name).unwrap().map(|r| r.id),
            Some(rec.id.clone()),
            "{name}"
        );
    }
    assert!(svc
        .resolve("docker.io/library/nothing:here")
        .unwrap()
        .is_none());

    // A second pull reuses everything.
    let again = svc.pull(&image, &PullAuth::default()).await.unwrap();
    assert_eq!(again, rec);
    assert_eq!(svc.list().unwrap().len(), 1);
    assert!(svc.fs_usage().0 >= rec.block_size);

    // Records survive a restart of the store.
    drop(svc);
    let svc = ImageService::open(state.path(), Store::open(state.path()).unwrap(), vec![]).unwrap();
    assert_eq!(svc.list().unwrap(), vec![rec.clone()]);

    assert!(svc.remove(&image).unwrap());
    assert!(!rec.block_image.exists());
    assert!(svc.list().unwrap().is_empty());
    assert!(
        !svc.remove(&image).unwrap(),
        "removing an unknown image succeeds with false"
    );
    let blobs = std::fs::read_dir(state.path().join("images/blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0, "layer blobs leaked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_errors_are_clear() {
    let registry = Registry::start().expect("registry");
    let state = tempfile::tempdir().unwrap();
    let svc = ImageService::open(state.path(), Store::open(state.path()).unwrap(), vec![]).unwrap();
    let auth = PullAuth::default();

    let e = svc.pull("Not A Ref", &auth).await.unwrap_err();
    assert!(matches!(e, ImageError::BadReference(_)), "{e}");

    let e = svc
        .pull(&format!("{}/moat/missing:latest", registry.addr), &auth)
        .await
        .unwrap_err();
    assert!(matches!(e, ImageError::Pull(_)), "{e}");
    assert!(e.to_string().contains("moat/missing"), "{e}");

    // Nothing listens on port 1.
    let e = svc
        .pull("127.0.0.1:1/moat/busybox:latest", &auth)
        .await
        .unwrap_err();
    assert!(matches!(e, ImageError::Pull(_)), "{e}");
    assert!(svc.list().unwrap().is_empty());
    let tmp = std::fs::read_dir(state.path().join("images/tmp"))
        .unwrap()
        .count();
    assert_eq!(tmp, 0, "failed pulls left files behind");
}

/// A loopback port nothing listens on (bound once, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes `<dir>/<registry>/hosts.toml`.
fn hosts_toml(dir: &Path, registry: &str, text: &str) {
    std::fs::create_dir_all(dir.join(registry)).unwrap();
    std::fs::write(dir.join(registry).join("hosts.toml"), text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_go_through_mirrors_from_hosts_toml() {
    let registry = Registry::start().expect("registry");
    let state = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let svc = ImageService::open(state.path(), Store::open(state.path()).unwrap(), vec![])
        .unwrap()
        .with_registry_config_dir(certs.path());
    let auth = PullAuth::default();

    // The image's own registry is down; the first mirror is down too; the
    // second mirror is the real registry.
    let (down_registry, down_mirror) = (closed_port(), closed_port());
    let upstream = format!("127.0.0.1:{down_registry}");
    hosts_toml(
        certs.path(),
        &upstream,
        &format!(
            "[host.\"http://127.0.0.1:{down_mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n\
             [host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            registry.addr
        ),
    );
    let image = format!("{upstream}/moat/busybox:latest");
    let rec = svc
        .pull(&image, &auth)
        .await
        .expect("pull through the mirror");
    assert_eq!(rec.layers.len(), 2);
    assert_eq!(
        rec.repo_tags,
        vec![image.clone()],
        "recorded under the name given"
    );
    assert!(
        rec.repo_digests[0].starts_with(&format!("{upstream}/moat/busybox@sha256:")),
        "{:?}",
        rec.repo_digests
    );
    assert_eq!(
        svc.resolve(&image).unwrap().map(|r| r.id),
        Some(rec.id.clone())
    );
    let digest_ref = rec.repo_digests[0].clone();
    assert!(svc.remove(&image).unwrap());

    // A mirror without the resolve capability may not turn the tag into a
    // digest: with the server down the tag cannot be pulled...
    hosts_toml(
        certs.path(),
        &upstream,
        &format!(
            "[host.\"http://{}\"]\n  capabilities = [\"pull\"]\n",
            registry.addr
        ),
    );
    let e = svc.pull(&image, &auth).await.unwrap_err();
    assert!(matches!(e, ImageError::Pull(_)), "{e}");
    assert!(e.to_string().contains(&upstream), "{e}");
    assert!(
        !e.to_string().contains(&registry.addr),
        "the pull-only mirror was asked to resolve: {e}"
    );
    // ...but the digest can, from the same (edited, re-read) file.
    let rec2 = svc.pull(&digest_ref, &auth).await.expect("pull by digest");
    assert_eq!(rec2.id, rec.id);
    assert!(svc.remove(&digest_ref).unwrap());

    // No host answers: the error names every host tried, in order.
    let other_mirror = closed_port();
    hosts_toml(
        certs.path(),
        &upstream,
        &format!(
            "[host.\"http://127.0.0.1:{down_mirror}\"]\n[host.\"http://127.0.0.1:{other_mirror}\"]\n"
        ),
    );
    let e = svc.pull(&image, &auth).await.unwrap_err();
    assert!(matches!(e, ImageError::Pull(_)), "{e}");
    let msg = e.to_string();
    eprintln!("every host down: {msg}");
    let positions: Vec<usize> = [
        format!("mirror http://127.0.0.1:{down_mirror}"),
        format!("mirror http://127.0.0.1:{other_mirror}"),
        format!("server http://{upstream}"),
    ]
    .iter()
    .map(|h| {
        msg.find(h.as_str())
            .unwrap_or_else(|| panic!("{h} missing in {msg}"))
    })
    .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{msg}");
    assert!(msg.contains("every registry host failed"), "{msg}");

    // A malformed file fails the pull with its path and key, and the fix
    // takes effect at the next pull without reopening the service.
    hosts_toml(
        certs.path(),
        &upstream,
        &format!(
            "[host.\"http://{}\"]\n  capabilites = [\"pull\"]\n",
            registry.addr
        ),
    );
    let e = svc.pull(&image, &auth).await.unwrap_err().to_string();
    eprintln!("malformed hosts.toml: {e}");
    assert!(e.contains("hosts.toml") && e.contains("capabilites"), "{e}");
    hosts_toml(
        certs.path(),
        &upstream,
        &format!("[host.\"http://{}\"]\n", registry.addr),
    );
    svc.pull(&image, &auth)
        .await
        .expect("pull after fixing hosts.toml");

    assert!(svc.remove(&image).unwrap());
    let tmp = std::fs::read_dir(state.path().join("images/tmp"))
        .unwrap()
        .count();
    assert_eq!(tmp, 0, "failed pulls left files behind");
}

/// Runs openssl with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`ca.crt`) and a certificate for 127.0.0.1 it signed
/// (`server.crt`, `server.key`) in `dir`.
fn make_ca_and_server_cert(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=moat test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_mirror_is_verified_with_the_ca_from_hosts_toml() {
    let pki = tempfile::tempdir().unwrap();
    make_ca_and_server_cert(pki.path());
    let registry = Registry::start_tls(
        &pki.path().join("server.crt"),
        &pki.path().join("server.key"),
    )
    .expect("TLS registry");
    let state = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let svc = ImageService::open(state.path(), Store::open(state.path()).unwrap(), vec![])
        .unwrap()
        .with_registry_config_dir(certs.path());
    let auth = PullAuth::default();
    let upstream = format!("127.0.0.1:{}", closed_port());
    let image = format!("{upstream}/moat/busybox:latest");
    // The CA sits beside hosts.toml and is named relative to it.
    std::fs::create_dir_all(certs.path().join(&upstream)).unwrap();
    std::fs::copy(
        pki.path().join("ca.crt"),
        certs.path().join(&upstream).join("mirror-ca.crt"),
    )
    .unwrap();

    // Without the CA the mirror's certificate is rejected.
    hosts_toml(
        certs.path(),
        &upstream,
        &format!("[host.\"https://{}\"]\n", registry.addr),
    );
    let e = svc.pull(&image, &auth).await.unwrap_err().to_string();
    eprintln!("TLS mirror without its CA: {e}");
    assert!(e.contains("certificate"), "{e}");
    assert!(
        e.contains(&format!("mirror https://{}", registry.addr)),
        "{e}"
    );
    assert!(svc.list().unwrap().is_empty());

    // With it, the pull is served by the mirror over verified TLS.
    hosts_toml(
        certs.path(),
        &upstream,
        &format!(
            "[host.\"https://{}\"]\n  ca = \"mirror-ca.crt\"\n",
            registry.addr
        ),
    );
    let rec = svc.pull(&image, &auth).await.expect("pull over TLS");
    assert_eq!(rec.repo_tags, vec![image.clone()]);
    assert!(svc.remove(&image).unwrap());

    // skip_verify accepts the certificate without the CA.
    hosts_toml(
        certs.path(),
        &upstream,
        &format!(
            "[host.\"https://{}\"]\n  skip_verify = true\n",
            registry.addr
        ),
    );
    svc.pull(&image, &auth)
        .await
        .expect("pull with skip_verify");
    assert!(svc.remove(&image).unwrap());
}

/// A client certificate (`client.cert`, `client.key`) in `dir`, signed by
/// the CA [`make_ca_and_server_cert`] made there.
fn make_client_cert(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "client.key",
            "-out",
            "client.csr",
            "-subj",
            "/CN=moat node",
        ],
    );
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "client.cert",
            "-days",
            "2",
            "-extfile",
            "client.ext",
        ],
    );
}

/// A registry that demands a client certificate (Debian's docker-registry
/// with `clientcas`) is pulled from with the `client` pair hosts.toml
/// names; without it the pull fails and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_demanding_a_client_certificate_gets_the_one_from_hosts_toml() {
    let pki = tempfile::tempdir().unwrap();
    let p = pki.path();
    make_ca_and_server_cert(p);
    make_client_cert(p);
    let push = tempfile::tempdir().unwrap();
    std::fs::copy(p.join("client.cert"), push.path().join("client.cert")).unwrap();
    std::fs::copy(p.join("client.key"), push.path().join("client.key")).unwrap();
    let registry = Registry::start_mtls(
        &p.join("server.crt"),
        &p.join("server.key"),
        &p.join("ca.crt"),
        push.path(),
    )
    .expect("registry demanding client certificates");
    let state = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let svc = ImageService::open(state.path(), Store::open(state.path()).unwrap(), vec![])
        .unwrap()
        .with_registry_config_dir(certs.path());
    let image = registry.busybox();
    let dir = certs.path().join(&registry.addr);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["ca.crt", "client.cert", "client.key"] {
        std::fs::copy(p.join(f), dir.join(f)).unwrap();
    }
    let server = format!("server = \"https://{}\"\nca = \"ca.crt\"\n", registry.addr);

    // The server's CA alone: the registry refuses the connection.
    hosts_toml(certs.path(), &registry.addr, &server);
    let e = svc
        .pull(&image, &PullAuth::default())
        .await
        .unwrap_err()
        .to_string();
    eprintln!("no client certificate: {e}");
    assert!(e.contains(&format!("https://{}", registry.addr)), "{e}");
    assert!(svc.list().unwrap().is_empty());

    // With the pair, the pull is served.
    hosts_toml(
        certs.path(),
        &registry.addr,
        &format!("{server}client = [[\"client.cert\", \"client.key\"]]\n"),
    );
    let rec = svc
        .pull(&image, &PullAuth::default())
        .await
        .expect("pull with the client certificate");
    assert_eq!(rec.repo_tags, vec![image.clone()]);
    assert!(svc.remove(&image).unwrap());

    // One file holding key and certificate, as containerd also reads it.
    let mut both = std::fs::read(p.join("client.key")).unwrap();
    both.extend(std::fs::read(p.join("client.cert")).unwrap());
    std::fs::write(dir.join("node.pem"), both).unwrap();
    hosts_toml(
        certs.path(),
        &registry.addr,
        &format!("{server}client = \"node.pem\"\n"),
    );
    svc.pull(&image, &PullAuth::default())
        .await
        .expect("pull with a combined PEM");
}

/// A registry that demands a password (docker-registry with htpasswd,
/// answering with a Basic challenge) is pulled from with the CRI
/// AuthConfig's credentials; none or wrong ones fail with the 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_demanding_a_password_gets_the_pulls_credentials() {
    let registry = Registry::start_with_password("moat", "s3cret").expect("registry");
    let state = tempfile::tempdir().unwrap();
    let svc = ImageService::open(state.path(), Store::open(state.path()).unwrap(), vec![]).unwrap();
    let image = registry.busybox();
    let e = svc
        .pull(&image, &PullAuth::default())
        .await
        .unwrap_err()
        .to_string();
    eprintln!("no credentials: {e}");
    assert!(e.contains("401") && e.contains("no credentials"), "{e}");
    let wrong = PullAuth {
        username: "moat".into(),
        password: "guess".into(),
        ..Default::default()
    };
    let e = svc.pull(&image, &wrong).await.unwrap_err().to_string();
    eprintln!("wrong password: {e}");
    assert!(e.contains("401"), "{e}");
    assert!(svc.list().unwrap().is_empty());
    let right = PullAuth {
        username: "moat".into(),
        password: "s3cret".into(),
        ..Default::default()
    };
    let rec = svc
        .pull(&image, &right)
        .await
        .expect("pull with the password");
    assert_eq!(rec.layers.len(), 2);
}
