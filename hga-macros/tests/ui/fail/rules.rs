//! Violations of hga-dsl's rules, across fields, each at the value that breaks it.

hga_macros::variants! {
    MODEL_RULES {
        [model]
        q_heads = 0
        kv_heads = 300
        head_dim = 100
        rope_theta = 1.0
        rotary_dim = 33
        rope_scaling = { type = "llama3", factor = 0.5, low_freq_factor = 4.0, high_freq_factor = 1.0,
                         original_max_position = 0 }
    }

    ROUTING_RULES {
        model = preset("qwen3-8b")
        [routing]
        chunk = 64
        group = 24
        top_chunks = 0
        keep_last = 2000000
    }

    /// `top_groups` beyond what the selected chunks hold; kernel choices off their lists.
    BUDGET_AND_KERNEL {
        model = preset("llama3.1-8b")
        [routing]
        top_chunks = 2
        top_groups = 9
        [kernel]
        threads = 96
        split_k = 65
        tile_tokens = 8
        vec_width = 16
    }

    /// A default that breaks a rule with a written field: reported at the written one.
    DEFAULT_GROUP {
        model = preset("mistral-7b")
        [routing]
        chunk = 24
        [kernel]
        tile_tokens = 128
    }
}

fn main() {}
