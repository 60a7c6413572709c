//! Shape errors: what is not a `[section]`, a `key = value` pair or a value. A bad value does not stop
//! the declaration; a bad key or a missing `=` does.

hga_macros::variants! {
    MISSING_EQUALS {
        [model]
        q_heads: 32
    }

    BAD_VALUES {
        [model]
        q_heads = 32u32
        kv_heads = 'a'
        head_dim = 128
        rope_theta = 1e6
        rope_style = neox
        [routing]
        top_chunks = -
    }

    TABLE_ARRAY {
        [[model]]
        q_heads = 32
    }

    BAD_PRESETS {
        model = preset(qwen3_8b)
        [routing]
        model = preset("qwen3-8b")
    }

    BAD_INLINE_TABLE {
        [model]
        q_heads = 32
        kv_heads = 8
        head_dim = 128
        rope_theta = 1e6
        rope_scaling = { type = "linear" factor = 2.0 }
    }
}

fn main() {}
