//! A one-line summary of a vCPU's register state, logged when the guest
//! dies in a way only its registers can explain (triple fault, failed
//! entry, KVM internal error).

use kvm_bindings::{kvm_regs, kvm_sregs, kvm_vcpu_events};
use kvm_ioctls::VcpuFd;

/// Reads the vCPU's registers and formats them with [`format_state`]; a
/// register set KVM will not give is named as unreadable.
pub fn describe(vcpu: &VcpuFd) -> String {
    let regs = vcpu.get_regs();
    let sregs = vcpu.get_sregs();
    let events = vcpu.get_vcpu_events().ok();
    match (regs, sregs) {
        (Ok(r), Ok(s)) => format_state(&r, &s, events.as_ref()),
        (r, s) => format!(
            "registers unreadable (regs: {}, sregs: {})",
            r.err().map_or("ok".to_string(), |e| e.to_string()),
            s.err().map_or("ok".to_string(), |e| e.to_string())
        ),
    }
}

/// Formats the registers that locate a fault: instruction and stack
/// pointers, flags, control registers, EFER, code segment, descriptor
/// tables, and a pending or injected exception.
pub fn format_state(r: &kvm_regs, s: &kvm_sregs, ev: Option<&kvm_vcpu_events>) -> String {
    let mut out = format!(
        "rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} \
         cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x}(base {:#x}, l={}) \
         ss={:#x} tr={:#x} gdt={:#x}/{:#x} idt={:#x}/{:#x}",
        r.rip,
        r.rsp,
        r.rflags,
        r.rax,
        r.rbx,
        r.rcx,
        r.rdx,
        s.cr0,
        s.cr2,
        s.cr3,
        s.cr4,
        s.efer,
        s.cs.selector,
        s.cs.base,
        s.cs.l,
        s.ss.selector,
        s.tr.selector,
        s.gdt.base,
        s.gdt.limit,
        s.idt.base,
        s.idt.limit,
    );
    if let Some(ev) = ev {
        let x = &ev.exception;
        if x.injected != 0 || x.pending != 0 {
            out.push_str(&format!(
                " exception={} (error code {:#x}, {})",
                x.nr,
                ev.exception.error_code,
                if x.injected != 0 {
                    "injected"
                } else {
                    "pending"
                }
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_fault_location_and_exception() {
        let r = kvm_regs {
            rip: 0xffff_ffff_8100_0000,
            rsp: 0x8ff0,
            ..Default::default()
        };
        let mut s = kvm_sregs {
            cr2: 0xdead_b000,
            cr3: 0x9000,
            ..Default::default()
        };
        s.idt.base = 0x1234;
        s.idt.limit = 0xfff;
        let mut ev = kvm_vcpu_events::default();
        ev.exception.injected = 1;
        ev.exception.nr = 14;
        ev.exception.error_code = 2;
        let out = format_state(&r, &s, Some(&ev));
        assert!(out.contains("rip=0xffffffff81000000"), "{out}");
        assert!(out.contains("cr2=0xdeadb000"), "{out}");
        assert!(out.contains("idt=0x1234/0xfff"), "{out}");
        assert!(
            out.contains("exception=14 (error code 0x2, injected)"),
            "{out}"
        );
        let quiet = format_state(&r, &s, Some(&kvm_vcpu_events::default()));
        assert!(!quiet.contains("exception"), "{quiet}");
    }
}
