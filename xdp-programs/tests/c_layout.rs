//! The `#[repr(C)]` types of `abi.rs` against the C structs *as compiled*:
//! sizes and member offsets are read from the BTF that clang put into the
//! program object (the same object the loader embeds), not from our own
//! constants. Complements the `_Static_assert`s in the C file, which check
//! the C structs against `abi_consts.rs`.

use std::collections::HashMap;
use std::mem::{offset_of, size_of};

use xdp_programs::abi::{Config, PolicyKey, PolicyValue, RateBucket, SourceKey};
use xdp_programs::loader::PROGRAM_OBJECT;

/// A struct as BTF describes it: size and (member name -> byte offset).
#[derive(Debug)]
struct CStruct {
    size: usize,
    members: HashMap<String, usize>,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The `.BTF` section of a little-endian ELF64 object.
fn btf_section(elf: &[u8]) -> &[u8] {
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!((elf[4], elf[5]), (2, 1), "ELF64 little-endian");
    let shoff = u64_at(elf, 0x28) as usize;
    let shentsize = u16_at(elf, 0x3a) as usize;
    let shnum = u16_at(elf, 0x3c) as usize;
    let shstrndx = u16_at(elf, 0x3e) as usize;
    let section = |i: usize| {
        let h = shoff + i * shentsize;
        (
            u32_at(elf, h),
            u64_at(elf, h + 0x18) as usize,
            u64_at(elf, h + 0x20) as usize,
        )
    };
    let (_, strtab_off, _) = section(shstrndx);
    for i in 0..shnum {
        let (name, off, size) = section(i);
        let name_at = strtab_off + name as usize;
        let end = elf[name_at..]
            .iter()
            .position(|&c| c == 0)
            .expect("terminated");
        if &elf[name_at..name_at + end] == b".BTF" {
            return &elf[off..off + size];
        }
    }
    panic!("no .BTF section: is the object built with -g?");
}

/// Every named STRUCT in the BTF blob.
fn btf_structs(btf: &[u8]) -> HashMap<String, CStruct> {
    assert_eq!(u16_at(btf, 0), 0xeb9f, "BTF magic");
    let hdr_len = u32_at(btf, 4) as usize;
    let (type_off, type_len) = (u32_at(btf, 8) as usize, u32_at(btf, 12) as usize);
    let str_off = u32_at(btf, 16) as usize;
    let types = &btf[hdr_len + type_off..hdr_len + type_off + type_len];
    let strings = &btf[hdr_len + str_off..];
    let name = |off: u32| {
        let s = &strings[off as usize..];
        let end = s.iter().position(|&c| c == 0).expect("terminated");
        String::from_utf8_lossy(&s[..end]).into_owned()
    };
    let mut out = HashMap::new();
    let mut at = 0;
    while at < types.len() {
        let (name_off, info, size) = (
            u32_at(types, at),
            u32_at(types, at + 4),
            u32_at(types, at + 8),
        );
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        let kind_flag = info >> 31 == 1;
        at += 12;
        let extra = match kind {
            1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
            3 => 12,                      // ARRAY
            4 | 5 | 15 | 19 => vlen * 12, // STRUCT, UNION, DATASEC, ENUM64
            6 | 13 => vlen * 8,           // ENUM, FUNC_PROTO
            2 | 7..=12 | 16 | 18 => 0,    // PTR, FWD, TYPEDEF, qualifiers, FUNC, FLOAT, TYPE_TAG
            other => panic!("unknown BTF kind {other}"),
        };
        if kind == 4 && name_off != 0 {
            let mut members = HashMap::new();
            for m in 0..vlen {
                let base = at + m * 12;
                let bits = u32_at(types, base + 8);
                let bit_offset = if kind_flag { bits & 0x00ff_ffff } else { bits };
                assert_eq!(bit_offset % 8, 0, "no bitfields in map types");
                members.insert(name(u32_at(types, base)), (bit_offset / 8) as usize);
            }
            out.insert(
                name(name_off),
                CStruct {
                    size: size as usize,
                    members,
                },
            );
        }
        at += extra;
    }
    out
}

fn structs() -> HashMap<String, CStruct> {
    btf_structs(btf_section(PROGRAM_OBJECT))
}

fn check(
    structs: &HashMap<String, CStruct>,
    c_name: &str,
    rust_size: usize,
    fields: &[(&str, usize)],
) {
    let c = structs
        .get(c_name)
        .unwrap_or_else(|| panic!("struct {c_name} not in the object's BTF"));
    assert_eq!(c.size, rust_size, "size of struct {c_name}");
    assert_eq!(
        c.members.len(),
        fields.len(),
        "member count of struct {c_name}: {:?}",
        c.members
    );
    for (field, rust_offset) in fields {
        assert_eq!(
            c.members.get(*field),
            Some(rust_offset),
            "offset of {c_name}.{field}"
        );
    }
}

#[test]
fn config_matches_compiled_c() {
    check(
        &structs(),
        "ms_config",
        size_of::<Config>(),
        &[
            ("data_port", offset_of!(Config, data_port)),
            ("reserved", offset_of!(Config, reserved)),
            ("flags", offset_of!(Config, flags)),
        ],
    );
}

#[test]
fn policy_types_match_compiled_c() {
    let s = structs();
    check(
        &s,
        "ms_policy_key",
        size_of::<PolicyKey>(),
        &[
            ("addr", offset_of!(PolicyKey, addr)),
            ("stream_id", offset_of!(PolicyKey, stream_id)),
        ],
    );
    check(
        &s,
        "ms_policy_value",
        size_of::<PolicyValue>(),
        &[
            ("action", offset_of!(PolicyValue, action)),
            ("reserved", offset_of!(PolicyValue, reserved)),
        ],
    );
}

#[test]
fn rate_types_match_compiled_c() {
    let s = structs();
    check(
        &s,
        "ms_source_key",
        size_of::<SourceKey>(),
        &[("addr", offset_of!(SourceKey, addr))],
    );
    check(
        &s,
        "ms_rate_bucket",
        size_of::<RateBucket>(),
        &[
            ("rate_per_sec", offset_of!(RateBucket, rate_per_sec)),
            ("burst", offset_of!(RateBucket, burst)),
            ("tokens", offset_of!(RateBucket, tokens)),
            ("last_ns", offset_of!(RateBucket, last_ns)),
        ],
    );
}
