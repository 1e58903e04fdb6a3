//! moat-vmm: the virtual machine monitor of one pod sandbox.
