//! moat-vmm binary entry point.
fn main() {}
