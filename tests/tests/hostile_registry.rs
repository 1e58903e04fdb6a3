//! moatd against a hostile registry (`tests/python/hostile_registry.py`, on
//! 127.0.0.1), through its CRI: an oversized manifest, a layer that lies
//! about its size, a decompression bomb and a trickling layer each fail
//! with an error that names the limit, while moatd stays responsive, a pull
//! from the fair registry proceeds, and nothing partial is left; an image
//! with a setuid-root binary and an `etc -> /etc` link is stored with its
//! modes for the guest, out of other users' reach.

use moat_proto::cri::*;
use moat_tests::artifacts::workspace_root;
use moat_tests::cri::try_pull_image;
use moat_tests::moatd::{tokio_runtime, Moatd};
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The hostile registry's process; killed on drop.
struct Hostile {
    child: Child,
    addr: String,
}

impl Hostile {
    fn start() -> Self {
        let mut child = Command::new("python3")
            .arg(workspace_root().join("tests/python/hostile_registry.py"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 tests/python/hostile_registry.py");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().expect("the registry's port");
        Self {
            child,
            addr: format!("127.0.0.1:{port}"),
        }
    }

    fn image(&self, name: &str) -> String {
        format!("{}/hostile/{name}:latest", self.addr)
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v = Moatd::entries(dir);
    v.sort();
    v
}

/// The mode of `path` as the erofs image stores it (extracting drops the
/// setuid bit): dump.erofs names the inode, whose compact or extended
/// form holds `i_mode` at byte 4.
fn erofs_mode(image: &Path, path: &str) -> u32 {
    let out = Command::new("dump.erofs")
        .arg(format!("--path={path}"))
        .arg(image)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let nid: u64 = text
        .split_whitespace()
        .skip_while(|w| *w != "NID:")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no NID in {text}"));
    let data = std::fs::read(image).unwrap();
    let sb = &data[1024..];
    let block_size = 1u64 << sb[12];
    let meta = u64::from(u32::from_le_bytes(sb[40..44].try_into().unwrap()));
    let at = usize::try_from(meta * block_size + nid * 32 + 4).unwrap();
    u32::from(u16::from_le_bytes(data[at..at + 2].try_into().unwrap()))
}

#[test]
fn a_hostile_registry_cannot_hurt_the_node() {
    let hostile = Hostile::start();
    tokio_runtime().block_on(async {
        let mut m =
            Moatd::start("[image_limits]\nmax_unpacked_bytes = 67108864\npull_timeout_secs = 15\n")
                .expect("moatd");
        let images = m.dir.path().join("state/images");

        // A layer trickling one byte a second holds up only its own pull.
        let trickle = {
            let image = hostile.image("trickle");
            let m2 = m.images().await.unwrap();
            tokio::spawn(async move {
                let mut c = m2;
                let started = Instant::now();
                let r = c
                    .pull_image(PullImageRequest {
                        image: Some(ImageSpec {
                            image,
                            ..Default::default()
                        }),
                        auth: None,
                        sandbox_config: None,
                    })
                    .await;
                (r, started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        try_pull_image(&m, &m.registry.busybox())
            .await
            .unwrap_or_else(|e| panic!("the fair pull: {e:?}\n{}", m.log()));
        let mut rt = m.runtime().await.unwrap();
        rt.version(VersionRequest::default()).await.unwrap();
        assert!(
            !trickle.is_finished(),
            "the trickling pull ended before the fair one ({:?})",
            started.elapsed()
        );

        // Each lie is refused, naming the limit or the lie.
        for (name, says) in [
            ("huge-manifest", "image_limits.max_manifest_bytes"),
            (
                "lying-size",
                "more than the 100 bytes its manifest declares",
            ),
            ("bomb", "max_unpacked_bytes"),
        ] {
            let e = try_pull_image(&m, &hostile.image(name)).await.unwrap_err();
            assert!(e.message().contains(says), "{name}: {e:?}");
        }
        let (r, took) = trickle.await.unwrap();
        let e = r.unwrap_err();
        assert!(e.message().contains("pull_timeout_secs"), "{e:?}");
        assert!(took < Duration::from_secs(40), "the deadline held {took:?}");

        // Nothing partial: the one image pulled, its blobs and block image,
        // no temporary files.
        let listed = m
            .images()
            .await
            .unwrap()
            .list_images(ListImagesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .images;
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert!(
            entries(&images.join("tmp")).is_empty(),
            "{:?}",
            entries(&images.join("tmp"))
        );
        assert_eq!(
            entries(&images.join("blocks")).len(),
            1,
            "{:?}",
            entries(&images.join("blocks"))
        );
        // The bomb's layer arrived whole and verified: it is kept for a
        // retry until moatd next starts.
        assert_eq!(entries(&images.join("blobs/sha256")).len(), 3);
        m.restart(false).unwrap();
        assert_eq!(
            entries(&images.join("blobs/sha256")).len(),
            2,
            "busybox's two layers only"
        );

        // The setuid binary keeps its mode in the block image the guest
        // mounts; the link is stored as a link; no other user reaches it.
        let id = try_pull_image(&m, &hostile.image("setuid")).await.unwrap();
        let st = m
            .images()
            .await
            .unwrap()
            .image_status(ImageStatusRequest {
                image: Some(ImageSpec {
                    image: id,
                    ..Default::default()
                }),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(st.image.as_ref().unwrap().username, "daemon");
        let info: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
        let block = info["blockImage"].as_str().unwrap();
        let out = m.dir.path().join("extracted");
        let x = Command::new("fsck.erofs")
            .arg(format!("--extract={}", out.display()))
            .arg(block)
            .output()
            .unwrap();
        assert!(x.status.success(), "{}", String::from_utf8_lossy(&x.stderr));
        assert_eq!(erofs_mode(Path::new(block), "/bin/prog") & 0o7777, 0o4755);
        assert_eq!(
            std::fs::read_link(out.join("etc")).unwrap(),
            Path::new("/etc")
        );
        use std::os::unix::fs::PermissionsExt;
        let images_mode = std::fs::metadata(&images).unwrap().permissions().mode();
        assert_eq!(images_mode & 0o777, 0o700);
        assert!(entries(&images.join("tmp")).is_empty());
    });
}
