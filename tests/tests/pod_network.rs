//! Pod networking with real parts: a network namespace, Debian's standard
//! CNI plugins (bridge + host-local), and the TAP joined by tc redirect.

use moatd::network::cni::Attachment;
use moatd::network::{tap, CniNetwork, NetNs};
use std::process::Command;

fn in_netns(ns: &NetNs, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .args(args)
        .output()
        .expect("nsenter");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_bridge_and_tap_redirect_in_a_pod_netns() {
    let dir = tempfile::tempdir().unwrap();
    let suffix = std::process::id() % 10000;
    let bridge = format!("moatbr{suffix}");
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "moat-test",
        "plugins": [{
            "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
            "ipam": {"type": "host-local", "dataDir": dir.path().join("ipam"),
                     "ranges": [[{"subnet": "10.199.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}
        }]
    });
    let conf_dir = dir.path().join("net.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    std::fs::write(conf_dir.join("10-moat.conflist"), conf.to_string()).unwrap();
    let net = CniNetwork::load_dir(
        &conf_dir,
        vec!["/usr/lib/cni".into(), "/opt/cni/bin".into()],
    )
    .unwrap();

    let ns = NetNs::create(&dir.path().join("netns"), "pod1").expect("netns");
    assert!(ns.exists());
    let att = Attachment {
        container_id: "pod1",
        netns: ns.path(),
        ifname: "eth0",
        pod: Some(("web", "default")),
        capability_args: &serde_json::Map::new(),
    };
    let result = net.add(&att).await.expect("CNI ADD");
    let ips = result.ips();
    assert_eq!(ips.len(), 1, "{:?}", result.raw);
    assert!(ips[0].address.starts_with("10.199.0."), "{ips:?}");
    assert_eq!(ips[0].gateway.as_deref(), Some("10.199.0.1"));
    assert!(in_netns(&ns, &["ip", "-br", "addr", "show", "eth0"]).contains(&ips[0].address));

    let info = tap::setup(&ns, "eth0", "tap0").expect("tap");
    let eth0 = in_netns(&ns, &["ip", "-j", "link", "show", "eth0"]);
    assert!(eth0.contains(&info.mac), "guest MAC must be eth0's: {eth0}");
    assert!(in_netns(&ns, &["ip", "-br", "link", "show", "tap0"]).contains("tap0"));
    for dev in ["eth0", "tap0"] {
        let filters = in_netns(&ns, &["tc", "filter", "show", "dev", dev, "ingress"]);
        assert!(
            filters.contains("mirred") && filters.contains("Redirect"),
            "{dev}: {filters}"
        );
    }

    net.del(&att, Some(&result)).await.expect("CNI DEL");
    let leases = std::fs::read_dir(dir.path().join("ipam/moat-test"))
        .unwrap()
        .count();
    // host-local keeps only its lock and last-reserved files after a release.
    assert!(leases <= 2, "IP not released");
    ns.remove().unwrap();
    assert!(!ns.exists() && !ns.path().exists());
    ns.remove().expect("removing twice is fine");
    let _ = Command::new("ip").args(["link", "del", &bridge]).output();
}
