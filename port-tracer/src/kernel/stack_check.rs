//! A test that the kernel programs fit the BPF stack on every kernel: 512 bytes for a
//! whole call chain, each frame rounded up to 32 bytes as older verifiers (6.1) do. Newer
//! kernels are laxer, so only a check on the object itself catches an overflow early.

use std::collections::HashMap;

use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget, SectionFlags, SymbolKind};

const STACK_LIMIT: u64 = 512;
const FRAME_ROUND: u64 = 32;

struct Func {
    section: object::SectionIndex,
    start: u64,
    size: u64,
    frame: u64,
    callees: Vec<String>,
}

/// Deepest stack use of each function's own frame, and whom it calls.
fn functions(elf: &[u8]) -> HashMap<String, Func> {
    let file = object::File::parse(elf).expect("BPF object parses");
    let mut funcs: HashMap<String, Func> = HashMap::new();
    let mut by_addr: HashMap<(object::SectionIndex, u64), String> = HashMap::new();
    for sym in file.symbols() {
        if sym.kind() != SymbolKind::Text || sym.size() == 0 {
            continue;
        }
        let Some(section) = sym.section_index() else {
            continue;
        };
        let name = sym.name().unwrap().to_string();
        by_addr.insert((section, sym.address()), name.clone());
        funcs.insert(
            name,
            Func {
                section,
                start: sym.address(),
                size: sym.size(),
                frame: 0,
                callees: vec![],
            },
        );
    }
    for section in file.sections() {
        let exec = matches!(section.flags(), SectionFlags::Elf { sh_flags } if sh_flags & 0x4 != 0);
        if !exec {
            continue;
        }
        let data = section.data().unwrap();
        // Calls out of this section are relocated against a function symbol, or against a
        // section symbol with the target's offset (in instructions, less one) in `imm`.
        let relocs: HashMap<u64, (object::SectionIndex, u64, Option<String>)> = section
            .relocations()
            .filter_map(|(off, r)| match r.target() {
                RelocationTarget::Symbol(i) => {
                    let s = file.symbol_by_index(i).ok()?;
                    let name = (s.kind() != SymbolKind::Section)
                        .then(|| s.name().ok().map(String::from))
                        .flatten();
                    Some((off, (s.section_index()?, s.address(), name)))
                }
                _ => None,
            })
            .collect();
        for f in funcs.values_mut().filter(|f| f.section == section.index()) {
            let mut from_fp = [false; 11];
            let mut pc = f.start;
            while pc + 8 <= f.start + f.size {
                let i = &data[pc as usize..pc as usize + 8];
                let (op, dst, src) = (i[0], (i[1] & 0xf) as usize, (i[1] >> 4) as usize);
                let off = i16::from_le_bytes([i[2], i[3]]) as i64;
                let imm = i32::from_le_bytes([i[4], i[5], i[6], i[7]]) as i64;
                let class = op & 7;
                let mut depth = 0i64;
                if (class == 2 || class == 3) && dst == 10 || class == 1 && src == 10 {
                    depth = -off;
                }
                if op == 0xbf && dst < 11 {
                    from_fp[dst] = src == 10; // rX = rY
                } else if op == 0x07 && dst < 11 && from_fp[dst] {
                    depth = -imm; // rX += imm, rX from r10
                } else if dst < 11 && class != 2 && class != 3 && class != 5 {
                    from_fp[dst] = false;
                }
                f.frame = f.frame.max(depth.max(0) as u64);
                if op == 0x85 && src == 1 {
                    let target = match relocs.get(&pc) {
                        Some((_, _, Some(name))) => Some(name.clone()),
                        Some((sec, base, None)) => by_addr
                            .get(&(*sec, (*base as i64 + (imm + 1) * 8) as u64))
                            .cloned(),
                        None => by_addr
                            .get(&(section.index(), (pc as i64 + 8 + imm * 8) as u64))
                            .cloned(),
                    };
                    f.callees
                        .push(target.unwrap_or_else(|| panic!("unresolved call in {}", pc)));
                }
                pc += if op == 0x18 { 16 } else { 8 };
            }
        }
    }
    funcs
}

fn chain_depth(funcs: &HashMap<String, Func>, name: &str, seen: &mut Vec<String>) -> u64 {
    let Some(f) = funcs.get(name) else { return 0 };
    if seen.iter().any(|s| s == name) {
        panic!("recursion through {name}");
    }
    seen.push(name.to_string());
    let own = f.frame.div_ceil(FRAME_ROUND) * FRAME_ROUND;
    let deepest = f
        .callees
        .iter()
        .map(|c| chain_depth(funcs, c, seen))
        .max()
        .unwrap_or(0);
    seen.pop();
    own + deepest
}

#[test]
fn every_program_fits_the_stack_of_older_verifiers() {
    let funcs = functions(super::PROGRAMS);
    let programs: Vec<&String> = funcs
        .iter()
        .filter(|(_, f)| !f.callees.is_empty() || f.frame > 0)
        .map(|(n, _)| n)
        .collect();
    assert!(programs.len() > 20, "found {} functions", programs.len());
    let mut worst = (0, String::new());
    for name in programs {
        let d = chain_depth(&funcs, name, &mut vec![]);
        assert!(
            d <= STACK_LIMIT,
            "{name} needs {d} bytes of stack (limit {STACK_LIMIT})"
        );
        worst = worst.max((d, name.clone()));
    }
    eprintln!("deepest stack: {} bytes in {}", worst.0, worst.1);
}
