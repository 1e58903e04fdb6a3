//! moat's test support: the probe that decides where VM tests run, the
//! test node (a software-emulated Linux with working KVM, for hosts whose
//! KVM cannot boot an ordinary guest), and the build artefacts tests use.

pub mod artifacts;
pub mod cri;
pub mod moatd;
pub mod node;
pub mod probe;
pub mod python;
pub mod registry;
pub mod stress;
pub mod vm;
pub mod websocket;
