//! The boot benchmark's `/init`: a 200-byte static x86-64 executable that
//! powers the guest off the moment the kernel starts it.
//!
//! It does what moat-agent does on poweroff, and nothing else: it asks for
//! access to the VMM's exit port (`ioperm`), writes the poweroff value there,
//! and resets the guest (`reboot(RB_AUTOBOOT)`, through the i8042 under
//! moat-vmm, a triple fault under QEMU's microvm with `reboot=t`). If the
//! reset fails it exits, which panics the kernel: a broken image ends the VM
//! with a reset status instead of hanging it.
//!
//! The instructions are written out as bytes because the workspace has no
//! assembler, and a Rust or C program would make this image megabytes, not
//! bytes: the benchmark wants the kernel's own boot time, not an init's.

/// Where the single loadable segment starts (the file is mapped from offset 0).
const LOAD_ADDR: u64 = 0x40_0000;
/// ELF header size (64-bit).
const EHDR_SIZE: u16 = 64;
/// Program header size (64-bit).
const PHDR_SIZE: u16 = 56;

const SYS_IOPERM: u32 = 173;
const SYS_REBOOT: u32 = 169;
const SYS_EXIT: u32 = 60;
const REBOOT_MAGIC1: u32 = 0xfee1_dead;
const REBOOT_MAGIC2: u32 = 0x2812_1969;
const REBOOT_CMD_RESTART: u32 = 0x0123_4567;

/// Machine code: ioperm(port, 1, 1); outb(value, port); reboot(RESTART); exit(0).
fn code(port: u16, value: u8) -> Vec<u8> {
    // `mov r32, imm32` is one opcode byte (0xb8 + register) and the value.
    const EAX: u8 = 0xb8;
    const EDX: u8 = 0xba;
    const ESI: u8 = 0xbe;
    const EDI: u8 = 0xbf;
    let mut c = Vec::new();
    let mov = |c: &mut Vec<u8>, reg: u8, v: u32| {
        c.push(reg);
        c.extend_from_slice(&v.to_le_bytes());
    };
    let syscall = |c: &mut Vec<u8>| c.extend_from_slice(&[0x0f, 0x05]);

    mov(&mut c, EAX, SYS_IOPERM);
    mov(&mut c, EDI, u32::from(port));
    mov(&mut c, ESI, 1);
    mov(&mut c, EDX, 1);
    syscall(&mut c);
    mov(&mut c, EDX, u32::from(port));
    c.extend_from_slice(&[0xb0, value]); // mov al, value
    c.push(0xee); // out dx, al
    mov(&mut c, EAX, SYS_REBOOT);
    mov(&mut c, EDI, REBOOT_MAGIC1);
    mov(&mut c, ESI, REBOOT_MAGIC2);
    mov(&mut c, EDX, REBOOT_CMD_RESTART);
    syscall(&mut c);
    mov(&mut c, EAX, SYS_EXIT);
    c.extend_from_slice(&[0x31, 0xff]); // xor edi, edi
    syscall(&mut c);
    c
}

/// The static ELF64 executable: header, one read+execute `PT_LOAD`
/// segment covering the whole file, then the code.
pub fn elf(port: u16, value: u8) -> Vec<u8> {
    let code = code(port, value);
    let code_off = u64::from(EHDR_SIZE + PHDR_SIZE);
    let total = code_off + code.len() as u64;
    let mut e = Vec::with_capacity(total as usize);
    // e_ident: magic, 64-bit, little-endian, version 1, System V ABI.
    e.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    e.extend_from_slice(&[0; 8]);
    e.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    e.extend_from_slice(&0x3eu16.to_le_bytes()); // e_machine: x86-64
    e.extend_from_slice(&1u32.to_le_bytes()); // e_version
    e.extend_from_slice(&(LOAD_ADDR + code_off).to_le_bytes()); // e_entry
    e.extend_from_slice(&u64::from(EHDR_SIZE).to_le_bytes()); // e_phoff
    e.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    e.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    e.extend_from_slice(&EHDR_SIZE.to_le_bytes());
    e.extend_from_slice(&PHDR_SIZE.to_le_bytes());
    e.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    e.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    e.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    e.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
                                              // Program header: PT_LOAD, R+X, whole file at LOAD_ADDR.
    e.extend_from_slice(&1u32.to_le_bytes()); // p_type
    e.extend_from_slice(&5u32.to_le_bytes()); // p_flags: R | X
    e.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    e.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_vaddr
    e.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_paddr
    e.extend_from_slice(&total.to_le_bytes()); // p_filesz
    e.extend_from_slice(&total.to_le_bytes()); // p_memsz
    e.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    e.extend_from_slice(&code);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn header_points_at_code_inside_the_segment() {
        let e = elf(0x510, 0);
        assert!(e.starts_with(b"\x7fELF\x02\x01"));
        assert!(e.len() < 256, "{} bytes", e.len());
        let entry = u64_at(&e, 24);
        let phoff = u64_at(&e, 32) as usize;
        assert_eq!(phoff, 64);
        assert_eq!(u64_at(&e, phoff + 16), LOAD_ADDR);
        let filesz = u64_at(&e, phoff + 32);
        assert_eq!(filesz, e.len() as u64);
        let entry_off = (entry - LOAD_ADDR) as usize;
        assert_eq!(entry_off, 120);
        // The entry is `mov eax, SYS_IOPERM`.
        assert_eq!(&e[entry_off..entry_off + 5], &[0xb8, 173, 0, 0, 0]);
    }

    #[test]
    fn code_writes_the_given_port_and_value_before_reboot() {
        let c = code(0x510, 0x7);
        // mov edx, 0x510; mov al, 7; out dx, al
        let out = [0xba, 0x10, 0x05, 0, 0, 0xb0, 0x07, 0xee];
        let at = c.windows(out.len()).position(|w| w == out).unwrap();
        let reboot = c
            .windows(5)
            .position(|w| w == [0xb8, SYS_REBOOT as u8, 0, 0, 0])
            .unwrap();
        assert!(at < reboot);
        assert!(c.ends_with(&[0x31, 0xff, 0x0f, 0x05]));
    }
}
