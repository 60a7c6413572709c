//! ptxas' verbose report (`--ptxas-options=-v`), per kernel.

use std::fmt;

/// Resources of one kernel as ptxas reported them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelResources {
    /// Entry point.
    pub name: String,
    /// Registers per thread.
    pub registers: u32,
    /// Static shared memory in bytes.
    pub smem_bytes: u32,
    /// Stack frame in bytes.
    pub stack_bytes: u32,
    /// Spill stores in bytes.
    pub spill_stores: u32,
    /// Spill loads in bytes.
    pub spill_loads: u32,
}

impl fmt::Display for KernelResources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<18} {:>3} regs {:>6} B smem {:>4} B stack {:>4} B spill st {:>4} B spill ld",
            self.name, self.registers, self.smem_bytes, self.stack_bytes, self.spill_stores, self.spill_loads
        )
    }
}

/// Parses lines such as
/// `ptxas info    : Compiling entry function 'hga_attend' for 'sm_90'`,
/// `ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads`,
/// `ptxas info    : Used 40 registers, used 1 barriers, 4352 bytes smem, 872 bytes cmem[0]`.
pub(super) fn parse(log: &str) -> Vec<KernelResources> {
    let mut out: Vec<KernelResources> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            out.push(KernelResources { name, ..Default::default() });
            continue;
        }
        let Some(cur) = out.last_mut() else { continue };
        for part in line.split([',', ':']) {
            let words: Vec<&str> = part.split_whitespace().collect();
            let num = |i: usize| words.get(i).and_then(|w| w.parse::<u32>().ok());
            match words.as_slice() {
                ["Used", _, "registers", ..] => cur.registers = num(1).unwrap_or(0),
                [_, "bytes", "smem", ..] => cur.smem_bytes = num(0).unwrap_or(0),
                [.., _, "bytes", "stack", "frame"] => cur.stack_bytes = words[words.len() - 4].parse().unwrap_or(0),
                [_, "bytes", "spill", "stores", ..] => cur.spill_stores = num(0).unwrap_or(0),
                [_, "bytes", "spill", "loads", ..] => cur.spill_loads = num(0).unwrap_or(0),
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ptxas_report() {
        let log = "ptxas info    : 0 bytes gmem\n\
            ptxas info    : Compiling entry function 'hga_attend' for 'sm_90'\n\
            ptxas info    : Function properties for hga_attend\n\
            ptxas         .     8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
            ptxas info    : Used 40 registers, used 1 barriers, 4352 bytes smem, 872 bytes cmem[0]\n\
            ptxas info    : Compiling entry function 'hga_merge' for 'sm_90'\n\
            ptxas info    : Used 12 registers, used 0 barriers, 872 bytes cmem[0]\n";
        let r = parse(log);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            KernelResources {
                name: "hga_attend".into(),
                registers: 40,
                smem_bytes: 4352,
                stack_bytes: 8,
                spill_stores: 4,
                spill_loads: 12
            }
        );
        assert_eq!(r[1].registers, 12);
        assert_eq!(r[1].smem_bytes, 0);
    }
}
