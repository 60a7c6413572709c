//! The shipped variants: every preset of `hga_dsl::presets` with the reference routing and the default
//! (untuned) kernel parameters, declared through `hga_macros::variants!` so each is validated when this
//! crate compiles and carries its generated CUDA source.
//!
//! Names follow the preset names (`qwen3-30b` → `QWEN3_30B`, `llama3.1-8b` → `LLAMA3_1_8B`);
//! The tests below check each against its preset. Some presets share an attention layout
//! (`qwen3-8b` and `mistral-7b-v0.3`), and so a key: their kernels are the same.

use hga_macros::variants;

variants! {
    /// Qwen3-30B-A3B (32 query heads, 4 KV heads, θ = 1e6).
    pub QWEN3_30B { model = preset("qwen3-30b") }

    /// Qwen3-30B-A3B-Instruct-2507 (as Qwen3-30B-A3B, θ = 1e7).
    pub QWEN3_30B_2507 { model = preset("qwen3-30b-2507") }

    /// Qwen3-8B (32 query heads, 8 KV heads, θ = 1e6).
    pub QWEN3_8B { model = preset("qwen3-8b") }

    /// Qwen3-32B (64 query heads, 8 KV heads, θ = 1e6).
    pub QWEN3_32B { model = preset("qwen3-32b") }

    /// Llama 3.1 8B (32 query heads, 8 KV heads, θ = 5e5, llama3 RoPE scaling).
    pub LLAMA3_1_8B { model = preset("llama3.1-8b") }

    /// Llama 3.1 70B (64 query heads, 8 KV heads, θ = 5e5, llama3 RoPE scaling).
    pub LLAMA3_1_70B { model = preset("llama3.1-70b") }

    /// Mistral 7B v0.3 (32 query heads, 8 KV heads, θ = 1e6; the layout of Qwen3-8B).
    pub MISTRAL_7B_V0_3 { model = preset("mistral-7b-v0.3") }

    /// The workspace's tiny test model (8 query heads, 2 KV heads, θ = 1e6).
    pub TINY_CODE { model = preset("tiny-code") }
}

#[cfg(test)]
mod tests {
    use crate::{find_by_key, for_spec, SHIPPED};
    use hga_dsl::{codegen, presets, Spec};
    use std::collections::HashSet;

    /// The constant's name for a preset: `llama3.1-8b` → `LLAMA3_1_8B`.
    fn const_name(preset: &str) -> String {
        preset.to_uppercase().replace(['-', '.'], "_")
    }

    #[test]
    fn one_shipped_variant_per_preset_with_its_default_spec() {
        let all = presets::all();
        assert_eq!(SHIPPED.len(), all.len(), "a preset without a shipped variant, or one too many");
        for (preset, shipped) in all.iter().zip(SHIPPED) {
            let by_hand = Spec::new(preset.shape.clone()).validate().unwrap();
            assert_eq!(shipped.name(), const_name(preset.name), "order of SHIPPED");
            assert_eq!(shipped.spec(), &by_hand, "{}", preset.name);
            assert_eq!(shipped.key(), by_hand.variant_key(), "{}", preset.name);
            assert_eq!(shipped.hash(), by_hand.content_hash(), "{}", preset.name);
            assert_eq!(shipped.toml(), by_hand.to_toml(), "{}", preset.name);
            assert_eq!(shipped.cuda_source(), codegen::generate(&by_hand).source, "{}", preset.name);
            assert_eq!(for_spec(&by_hand).map(|v| v.hash()), Some(shipped.hash()));
            assert_eq!(find_by_key(shipped.key()).map(|v| v.key()), Some(shipped.key()));
        }
        let names: HashSet<_> = SHIPPED.iter().map(|v| v.name()).collect();
        assert_eq!(names.len(), SHIPPED.len(), "names are unique");
    }

    #[test]
    fn a_spec_that_is_not_shipped_is_not_found() {
        let preset = presets::find("qwen3-8b").unwrap();
        let other = Spec::new(preset.shape)
            .validate()
            .unwrap()
            .with_kernel(hga_dsl::KernelParams { threads: 256, ..Default::default() });
        assert!(for_spec(&other.unwrap()).is_none());
        assert!(find_by_key("decode_nothing").is_none());
    }
}
