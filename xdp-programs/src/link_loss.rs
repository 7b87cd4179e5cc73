//! A lossy link for tests and chaos drills: the tc program of
//! `src/link_loss.c`, attached to an interface's egress and/or ingress,
//! drops a given share of its IPv4/UDP packets in the kernel (what
//! `tc qdisc add ... netem loss` does, for kernels built without
//! `sch_netem`). The drop decision comes from a per-CPU xorshift64
//! generator seeded here, and drops and passes are counted.
//!
//! The program stays attached while the [`LinkLoss`] lives (TCX bpf_link on
//! kernels >= 6.6, owned by this process; nothing is pinned): dropping it, or
//! the process ending, restores the link.

use aya::maps::{Array, PerCpuArray};
use aya::programs::{tc, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};

/// The compiled tc program.
pub static LINK_LOSS_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/link_loss.o"));

/// Largest loss accepted, in parts per million (a link that drops everything is not lossy).
pub const LOSS_PPM_MAX: u32 = 500_000;

/// Which directions of the interface lose packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossDirection {
    /// Packets this interface sends.
    Egress,
    /// Packets this interface receives (before the IP stack; after XDP).
    Ingress,
    Both,
}

#[derive(Debug, thiserror::Error)]
pub enum LinkLossError {
    #[error("loss of {ppm} ppm is out of range: give 1..={LOSS_PPM_MAX} parts per million")]
    BadLoss { ppm: u32 },
    #[error("interface `{iface}` not found in this network namespace: check `ip link`")]
    UnknownInterface { iface: String },
    #[error("could not load the link-loss tc program (needs CAP_BPF and CAP_NET_ADMIN): {0}")]
    Load(String),
    #[error("could not attach the link-loss program to {iface} {direction:?}: {detail}")]
    Attach {
        iface: String,
        direction: TcAttachType,
        detail: String,
    },
    #[error("could not read or write the link-loss maps: {0}")]
    Map(String),
}

/// Drops `ppm` parts per million of an interface's IPv4/UDP packets while it lives.
pub struct LinkLoss {
    ebpf: Ebpf,
    iface: String,
}

impl LinkLoss {
    /// Attaches to `iface` (in the calling thread's network namespace).
    pub fn attach(
        iface: &str,
        direction: LossDirection,
        ppm: u32,
        seed: u64,
    ) -> Result<Self, LinkLossError> {
        if ppm == 0 || ppm > LOSS_PPM_MAX {
            return Err(LinkLossError::BadLoss { ppm });
        }
        if nix::net::if_::if_nametoindex(iface).is_err() {
            return Err(LinkLossError::UnknownInterface {
                iface: iface.to_string(),
            });
        }
        let mut ebpf = EbpfLoader::new()
            .load(LINK_LOSS_OBJECT)
            .map_err(|e| LinkLossError::Load(e.to_string()))?;
        {
            let map = ebpf
                .map_mut("loss_cfg")
                .ok_or_else(|| LinkLossError::Map("loss_cfg missing in the object".into()))?;
            let mut cfg: Array<_, u64> =
                Array::try_from(map).map_err(|e| LinkLossError::Map(e.to_string()))?;
            // P(drop) = threshold / 2^32 with the generator's upper 32 bits.
            let threshold = (u64::from(ppm) << 32) / 1_000_000;
            cfg.set(0, threshold, 0)
                .and_then(|()| cfg.set(1, seed, 0))
                .map_err(|e| LinkLossError::Map(e.to_string()))?;
        }
        let prog: &mut SchedClassifier = ebpf
            .program_mut("link_loss")
            .ok_or_else(|| LinkLossError::Load("program link_loss missing in the object".into()))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| LinkLossError::Load(e.to_string()))?;
        prog.load()
            .map_err(|e| LinkLossError::Load(e.to_string()))?;
        let types: &[TcAttachType] = match direction {
            LossDirection::Egress => &[TcAttachType::Egress],
            LossDirection::Ingress => &[TcAttachType::Ingress],
            LossDirection::Both => &[TcAttachType::Egress, TcAttachType::Ingress],
        };
        for &t in types {
            if let Err(e) = prog.attach(iface, t) {
                // Kernels before 6.6 attach through netlink and need the clsact qdisc.
                let _ = tc::qdisc_add_clsact(iface);
                prog.attach(iface, t).map_err(|_| LinkLossError::Attach {
                    iface: iface.to_string(),
                    direction: t,
                    detail: e.to_string(),
                })?;
            }
        }
        Ok(Self {
            ebpf,
            iface: iface.to_string(),
        })
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// (dropped, passed) IPv4/UDP packets so far, summed over CPUs and directions.
    pub fn counts(&self) -> Result<(u64, u64), LinkLossError> {
        let map = self
            .ebpf
            .map("loss_counts")
            .ok_or_else(|| LinkLossError::Map("loss_counts missing in the object".into()))?;
        let counts: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|e| LinkLossError::Map(e.to_string()))?;
        let sum = |i: u32| -> Result<u64, LinkLossError> {
            let v = counts
                .get(&i, 0)
                .map_err(|e| LinkLossError::Map(e.to_string()))?;
            Ok(v.iter().sum())
        };
        Ok((sum(0)?, sum(1)?))
    }
}
