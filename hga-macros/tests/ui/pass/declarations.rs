//! Declarations in every accepted form compile and are usable as constants.

use hga_dsl::macro_support::DeclaredVariant;

hga_macros::variants! {
    /// A preset by alias, case-insensitive, with tuned kernels.
    pub QWEN3_30B {
        model = preset("Qwen3-30B-A3B")
        [kernel]
        threads = 256
        split_k = 8
    }

    /// Written out, partial rotary, f16, min/max scoring.
    pub(crate) CUSTOM {
        [model]
        q_heads = 16
        kv_heads = 16
        head_dim = 64
        rope_theta = 10000.0
        rotary_dim = 32
        dtype = "f16"
        [routing]
        score = "minmax"
        top_chunks = 4
        top_groups = 8
    };

    #[allow(dead_code)]
    UNUSED { model = preset("tiny-code") }
}

const ALL: &[DeclaredVariant] = &[QWEN3_30B, CUSTOM];

fn main() {
    for v in ALL {
        assert_eq!(v.spec().content_hash(), v.hash());
        assert!(!v.cuda_source().is_empty());
    }
    assert_eq!(CUSTOM.spec().model().rotary_dim, Some(32));
}
