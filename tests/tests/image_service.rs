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
