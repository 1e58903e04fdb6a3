//! Test-only crash points. With `MOATD_CRASH_AT=<point>` in its
//! environment, moatd kills itself with SIGKILL when it reaches that point,
//! so the end-to-end tests can check that a restart cleans up after a crash
//! at each step of RunPodSandbox, CreateContainer and RemoveContainer.
//! Without the variable a point costs one comparison.

use std::sync::OnceLock;

/// The environment variable naming the point to crash at.
pub const ENV: &str = "MOATD_CRASH_AT";

/// Every point, in the order the operations reach them (for the tests).
pub const POINTS: &[&str] = &[
    RUN_POD_RECORDED,
    RUN_POD_NETNS,
    RUN_POD_CNI,
    RUN_POD_TAP,
    RUN_POD_VMM,
    RUN_POD_AGENT,
    CREATE_CONTAINER_ATTACHED,
    CREATE_CONTAINER_IN_GUEST,
    REMOVE_CONTAINER_IN_GUEST,
    REMOVE_CONTAINER_DETACHED,
];

/// RunPodSandbox: the Creating record is saved.
pub const RUN_POD_RECORDED: &str = "run_pod:recorded";
/// RunPodSandbox: the network namespace exists.
pub const RUN_POD_NETNS: &str = "run_pod:netns";
/// RunPodSandbox: CNI ADD returned (an IP is allocated), not yet recorded.
pub const RUN_POD_CNI: &str = "run_pod:cni";
/// RunPodSandbox: the TAP exists in the pod namespace.
pub const RUN_POD_TAP: &str = "run_pod:tap";
/// RunPodSandbox: moat-vmm runs, its pid not yet recorded.
pub const RUN_POD_VMM: &str = "run_pod:vmm";
/// RunPodSandbox: the agent set the pod up; the record still says Creating.
pub const RUN_POD_AGENT: &str = "run_pod:agent";
/// CreateContainer: the image is attached to a slot; no record yet.
pub const CREATE_CONTAINER_ATTACHED: &str = "create_container:attached";
/// CreateContainer: the guest created the container; no record yet.
pub const CREATE_CONTAINER_IN_GUEST: &str = "create_container:in_guest";
/// RemoveContainer: the guest removed the container; slot and record remain.
pub const REMOVE_CONTAINER_IN_GUEST: &str = "remove_container:in_guest";
/// RemoveContainer: the slot is detached; the record remains.
pub const REMOVE_CONTAINER_DETACHED: &str = "remove_container:detached";

/// Kills moatd here if `MOATD_CRASH_AT` names `point`.
pub fn here(point: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    if AT.get_or_init(|| std::env::var(ENV).ok()).as_deref() == Some(point) {
        tracing::error!(point, "{ENV}: crashing here");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
