//! Variant keys and content hashes: stable names for a validated spec that do not depend on field
//! order in the source text or on the platform.

use crate::model::RopeScaling;
use crate::spec::ValidSpec;
use sha2::{Digest, Sha256};

/// Version of the canonical form hashed by [`ValidSpec::content_hash`]; bump when it changes.
const CANONICAL_VERSION: &str = "hga-spec-v1";

impl ValidSpec {
    /// A readable key naming every compile-time choice, e.g.
    /// `decode_bf16_q32_kv4_d128_neox128_t1e6_c64_g16_f2_l8_tc16_tg32_mixed_qh_th128_sk4_tt64_v8`.
    pub fn variant_key(&self) -> String {
        let (m, r, k) = (self.model(), self.routing(), self.kernel());
        let rot = m.rotary_dim.unwrap_or(m.head_dim);
        let scaling = match m.rope_scaling {
            None => String::new(),
            Some(RopeScaling::Linear { factor }) => format!("_lin{factor:e}"),
            Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position }) => {
                format!("_l3f{factor:e}lo{low_freq_factor:e}hi{high_freq_factor:e}o{original_max_position}")
            }
        };
        format!(
            "decode_{}_q{}_kv{}_d{}_{}{}_t{:e}{}_c{}_g{}_f{}_l{}_tc{}_tg{}_{}_{}_th{}_sk{}_tt{}_v{}",
            m.dtype.short(),
            m.q_heads,
            m.kv_heads,
            m.head_dim,
            m.rope_style.short(),
            rot,
            m.rope_theta,
            scaling,
            r.chunk,
            r.group,
            r.keep_first,
            r.keep_last,
            r.top_chunks,
            r.top_groups,
            r.score.short(),
            r.sharing.short(),
            k.threads,
            k.split_k,
            k.tile_tokens,
            k.vec_width,
        )
    }

    /// First 16 hex digits of SHA-256 over a canonical form of the normalized spec.
    ///
    /// The canonical form is the JSON of the normalized spec, whose field order is fixed by the type
    /// (not by the input text) and whose floats are printed exactly (shortest round-trip form).
    pub fn content_hash(&self) -> String {
        let json = serde_json::to_string(self.spec()).expect("a validated spec always serializes");
        let digest = Sha256::new().chain_update(CANONICAL_VERSION).chain_update([0u8]).chain_update(json).finalize();
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}
