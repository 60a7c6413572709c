//! Errors from hga-dsl's parser, several per declaration, together with the rule violations of what
//! parsed.

hga_macros::variants! {
    /// Unknown field and section, wrong type, unknown enum value; then rule violations.
    MIXED {
        [model]
        q_heads = 30
        kv_heads = 4
        head_dim = 128
        rope_theta = 1e6
        rope_styel = "neox"
        [routing]
        chunk = "64"
        score = "best"
        [kernel]
        threads = 100
        [bogus]
        x = 1
    }

    /// Required fields missing or unusable; the other sections are still checked.
    MISSING {
        [model]
        kv_heads = 4
        head_dim = 128.0
        rope_theta = 1e6
        [kernel]
        split_k = 0
    }

    NO_MODEL {
        [routing]
        top_chunks = 0
    }

    OUT_OF_RANGE {
        [model]
        q_heads = -32
        kv_heads = 5000000000
        head_dim = 128
        rope_theta = 1e6
        rope_scaling = { type = "llama3", factor = 8.0 }
    }

    TWICE {
        model = preset("qwen3-8b")
        [model]
        q_heads = 32
        [routing]
        chunk = 32
        chunk = 64
    }

    UNKNOWN_PRESET { model = preset("qwen9-1t") }
}

fn main() {}
