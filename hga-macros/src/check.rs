//! Turns a declaration into a [`ValidSpec`] through `hga-dsl`'s parser and validator, or into every
//! error found, each at the tokens it is about.
//!
//! The TOML parser stops at its first error, so after each one the offending item is left out (or a
//! missing required field is given a stand-in) and the text parsed again. Fields so repaired are
//! "tainted": rule violations that name them would be about the stand-in, not what was written, and
//! are not reported.

use crate::render::{join, render, Index, Owner, Rendered, Repairs};
use crate::syntax::Declaration;
use hga_dsl::macro_support::{parse_spec, ParseProblem};
use hga_dsl::{presets, ValidSpec, Violation};
use proc_macro2::TokenStream;
use quote::ToTokens;

/// The validated spec, or all errors of the declaration.
pub fn check(decl: &Declaration) -> Result<ValidSpec, Vec<syn::Error>> {
    let mut errors = decl.errors.clone();
    // After a shape error the rest of the body is unknown: "missing field" errors would be noise.
    if decl.truncated {
        return Err(errors);
    }
    let index = Index::new(&decl.items, &mut errors);
    let mut state = State { index: &index, decl, repairs: Repairs::default(), tainted: Vec::new(), errors };
    state.tainted.extend(index.invalid.iter().map(|id| index.pairs[id].path.clone()));
    let mut parsed = None;
    // Each round removes or fills one item, so the rounds are bounded by the items plus the fills.
    for _ in 0..index.pairs.len() + index.headers.len() + 8 {
        let rendered = render(&decl.items, &index, &state.repairs);
        match parse_spec(&rendered.text) {
            Ok(spec) => {
                parsed = Some(spec);
                break;
            }
            Err(problem) => {
                if !state.recover(&problem, &rendered) {
                    break;
                }
            }
        }
    }
    if let Some(spec) = parsed {
        match spec.validate() {
            Ok(valid) if state.errors.is_empty() => return Ok(valid),
            Ok(_) => {}
            Err(e) => {
                for v in e.violations() {
                    state.violation(v);
                }
                if state.errors.is_empty() {
                    // Only reachable if every violation named a repaired field, which has its own error;
                    // kept so an invalid spec can never pass silently.
                    state.errors.push(syn::Error::new(decl.name.span(), e.to_string()));
                }
            }
        }
    }
    // In source order (the parser meets fields in its own order); stable where lines are unknown.
    let mut errors = state.errors;
    errors.sort_by_key(|e| {
        let at = e.span().start();
        (at.line, at.column)
    });
    Err(errors)
}

struct State<'a> {
    index: &'a Index,
    decl: &'a Declaration,
    repairs: Repairs,
    tainted: Vec<String>,
    errors: Vec<syn::Error>,
}

impl State<'_> {
    fn error(&mut self, tokens: Option<&TokenStream>, message: String) {
        let e = match tokens {
            Some(t) if !t.is_empty() => syn::Error::new_spanned(t, message),
            _ => syn::Error::new(self.decl.name.span(), message),
        };
        self.errors.push(e);
    }

    fn is_tainted(&self, text: &str) -> bool {
        self.tainted.iter().any(|t| mentions(text, t))
    }

    /// Reports `problem` and repairs the text so the next parse goes past it; `false` to stop.
    fn recover(&mut self, problem: &ParseProblem, rendered: &Rendered) -> bool {
        let frag = rendered.locate(problem.span.as_ref());
        let owner = frag.map_or(Owner::Root, |f| f.owner);
        let tokens = frag.map(|f| f.tokens.clone());
        let path = self.index.path_of(owner).to_string();
        if let Some(field) = missing_field(&problem.message) {
            let full = join(&path, field);
            if !self.is_tainted(&full) {
                let hint =
                    if full == "model" { ": write `model = preset(\"name\")` or a `[model]` section" } else { "" };
                self.error(tokens.as_ref(), format!("missing field `{full}`{hint}"));
                self.tainted.push(full.clone());
            }
            if let Some(value) = stand_in(&full) {
                self.repairs.fills.push((owner, field.to_string(), value));
                return true;
            }
            return self.leave_out(owner, path);
        }
        if owner == Owner::Root {
            self.error(None, problem.message.clone());
            return false;
        }
        if problem.message.starts_with("duplicate key") {
            self.error(tokens.as_ref(), format!("duplicate key `{path}`: each field is written once"));
            // The first writing stays, so the field is not tainted.
            self.repairs.skip.insert(id_of(owner));
            return true;
        }
        let message = match problem.message.strip_prefix("unknown field `").and_then(|m| m.split_once('`')) {
            // Name the field by its full path: `rope_styel` alone does not say which section it is in.
            Some((_, rest)) => format!("unknown field `{path}`{rest}"),
            None => format!("{path}: {}", problem.message),
        };
        self.error(tokens.as_ref(), message);
        self.leave_out(owner, path)
    }

    /// Leaves out what `owner` wrote and taints its path.
    fn leave_out(&mut self, owner: Owner, path: String) -> bool {
        if owner == Owner::Root {
            return false;
        }
        self.repairs.skip.insert(id_of(owner));
        self.tainted.push(path);
        true
    }

    /// Reports a rule violation at the value that broke it, or the nearest thing written.
    fn violation(&mut self, v: &Violation) {
        if self.is_tainted(&v.field) || self.is_tainted(&v.rule) {
            return;
        }
        let message = v.to_string();
        let pairs = &self.index.pairs;
        // The field itself, or the preset that wrote it.
        let mut prefix = v.field.as_str();
        let mut table = None;
        loop {
            if let Some(p) = pairs.values().find(|p| p.path == prefix) {
                if prefix == v.field || p.preset_text.is_some() {
                    let t = p.value_tokens.clone();
                    return self.error(Some(&t), message);
                }
                table = table.or(Some(p.value_tokens.clone()));
            }
            match prefix.rfind('.') {
                Some(i) => prefix = &prefix[..i],
                None => break,
            }
        }
        // Not written: its default broke a rule together with something written; point at that, else at
        // the table or section it would be in.
        let note = format!("{message} (`{}` is not written here: that is its default)", v.field);
        let mut mentioned: Vec<_> = pairs.iter().filter(|(_, p)| mentions(&v.rule, &p.path)).collect();
        mentioned.sort_by_key(|(id, _)| **id);
        if let Some((_, p)) = mentioned.first() {
            let t = p.value_tokens.clone();
            return self.error(Some(&t), note);
        }
        let section = v.field.split('.').next().unwrap_or("");
        let header = self.index.headers.values().find(|h| h.0 == section).map(|h| h.1.to_token_stream());
        self.error(table.or(header).as_ref(), note);
    }
}

fn id_of(owner: Owner) -> usize {
    match owner {
        Owner::Header(id) | Owner::Pair(id) => id,
        Owner::Root => unreachable!("the root is never left out"),
    }
}

/// The field of a serde "missing field `x`" message.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

/// Whether `text` names the dotted `path` or a field under it, as a whole word.
fn mentions(text: &str, path: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(path).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + path.len()..].chars().next();
        !before.is_some_and(|c| word(c) || c == '.') && !after.is_some_and(word)
    })
}

/// A valid stand-in for a required field that is missing or was left out, taken from a preset, so
/// the other sections can still be parsed and checked. `None` for fields that have no stand-in.
fn stand_in(path: &str) -> Option<String> {
    let shape = presets::find("qwen3-8b").ok()?.shape;
    match path {
        "model" => hga_dsl::macro_support::preset_model_inline("qwen3-8b").ok(),
        "model.q_heads" => Some(shape.q_heads.to_string()),
        "model.kv_heads" => Some(shape.kv_heads.to_string()),
        "model.head_dim" => Some(shape.head_dim.to_string()),
        "model.rope_theta" => Some(format!("{:?}", shape.rope_theta)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syntax::Declarations;
    use hga_dsl::Spec;
    use rand::rngs::StdRng;
    use rand::seq::IndexedRandom;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeSet;

    fn declaration(body: &str) -> Declaration {
        let tokens: TokenStream = format!("V {{ {body} }}").parse().expect("test body tokenizes");
        syn::parse2::<Declarations>(tokens).expect("test body parses").0.remove(0)
    }

    fn messages(errors: &[syn::Error]) -> BTreeSet<String> {
        errors.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn renders_the_toml_form() {
        let d = declaration(
            r#"model = preset("tiny-code") routing.top_chunks = 8, [kernel] threads = 256;
               [model.rope_scaling] r#type = "linear" factor = -1e0 x = [1, "a", { b = true }]"#,
        );
        let mut errors = Vec::new();
        let index = Index::new(&d.items, &mut errors);
        assert!(errors.is_empty());
        let text = render(&d.items, &index, &Repairs::default()).text;
        let preset = hga_dsl::macro_support::preset_model_inline("tiny-code").unwrap();
        assert_eq!(
            text,
            format!(
                "model = {preset}\nrouting.top_chunks = 8\n[kernel]\nthreads = 256\n[model.rope_scaling]\n\
                 type = \"linear\"\nfactor = -1e0\nx = [1, \"a\", {{ b = true }}]\n"
            )
        );
    }

    #[test]
    fn mentions_whole_paths_only() {
        assert!(mentions("must divide routing.chunk (64)", "routing.chunk"));
        assert!(mentions("model.q_heads", "model"));
        assert!(!mentions("routing.chunks", "routing.chunk"));
        assert!(!mentions("x.model.q_heads", "model"));
        assert!(!mentions("remodel.q_heads", "model"));
    }

    /// The macro accepts exactly what `Spec::validate` accepts, with the same messages, on random
    /// specs that are valid or break any number of rules at once.
    #[test]
    fn agrees_with_the_validator_on_random_specs() {
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        println!("seed {seed}");
        let mut rng = StdRng::seed_from_u64(seed);
        let (mut valid, mut invalid) = (0, 0);
        for _ in 0..300 {
            // The first value of each list makes a valid spec with the others' first values.
            let mut pick =
                |xs: &[&'static str]| if rng.random_bool(0.9) { xs[0] } else { *xs.choose(&mut rng).unwrap() };
            let fields = [
                ("model", "q_heads", pick(&["32", "30", "0", "64"])),
                ("model", "kv_heads", pick(&["8", "4", "0", "300"])),
                ("model", "head_dim", pick(&["128", "64", "100"])),
                ("model", "rope_theta", pick(&["1e6", "10000", "1.0", "5e5"])),
                ("model", "rotary_dim", pick(&["64", "33", "128", "512"])),
                ("model", "rope_style", pick(&["\"neox\"", "\"gptj\""])),
                ("routing", "chunk", pick(&["64", "24", "1", "128"])),
                ("routing", "group", pick(&["16", "24", "0", "32"])),
                ("routing", "keep_first", pick(&["2", "0"])),
                ("routing", "keep_last", pick(&["8", "2000000"])),
                ("routing", "top_chunks", pick(&["16", "0", "1"])),
                ("routing", "top_groups", pick(&["32", "0", "100"])),
                ("routing", "score", pick(&["\"mixed_rope\"", "\"minmax\""])),
                ("kernel", "threads", pick(&["128", "96", "512"])),
                ("kernel", "split_k", pick(&["4", "0", "65"])),
                ("kernel", "tile_tokens", pick(&["64", "8", "16", "128"])),
                ("kernel", "vec_width", pick(&["8", "16", "2"])),
            ];
            let mut toml = String::new();
            let mut body = String::new();
            for section in ["model", "routing", "kernel"] {
                toml.push_str(&format!("[{section}]\n"));
                body.push_str(&format!("[{section}] "));
                for (_, k, v) in fields.iter().filter(|f| f.0 == section) {
                    toml.push_str(&format!("{k} = {v}\n"));
                    body.push_str(&format!("{k} = {v} "));
                }
            }
            let expected = Spec::parse_toml(&toml).expect("the field values all parse").validate();
            match (check(&declaration(&body)), expected) {
                (Ok(got), Ok(want)) => {
                    assert_eq!(got, want, "{body}");
                    valid += 1;
                }
                (Err(got), Err(want)) => {
                    let want: BTreeSet<String> = want.violations().iter().map(|v| v.to_string()).collect();
                    assert_eq!(messages(&got), want, "{body}");
                    invalid += 1;
                }
                (got, want) => panic!("{body}: macro {:?} but validator {:?}", got.map_err(|e| messages(&e)), want),
            }
        }
        println!("{valid} valid, {invalid} invalid");
        assert!(valid > 0 && invalid > 0, "both outcomes are exercised");
    }

    #[test]
    fn a_parse_error_does_not_hide_the_others() {
        let d = declaration(
            r#"[model] q_heads = "32" kv_heads = 8 head_dim = 128 rope_theta = 1e6 extra = 1
               [routing] group = 0 [kernel] threads = 7"#,
        );
        let got = messages(&check(&d).unwrap_err());
        let want: BTreeSet<String> = [
            "model.q_heads: invalid type: string \"32\", expected u32",
            "unknown field `model.extra`, expected one of `q_heads`, `kv_heads`, `head_dim`, `rope_theta`, \
             `rope_style`, `rotary_dim`, `rope_scaling`, `dtype`",
            "routing.group = 0: must be >= 1",
            "kernel.threads = 7: must be one of [64, 128, 256, 512]",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn repairs_inside_an_inline_model_table() {
        let d = declaration(
            r#"model = { kv_heads = 4, head_dim = true, rope_theta = 1e6, rope_scaling = { type = "linear" } }
               routing = { chunk = 40 }"#,
        );
        let got = messages(&check(&d).unwrap_err());
        let want: BTreeSet<String> = [
            "missing field `model.q_heads`",
            "model.head_dim: invalid type: boolean `true`, expected u32",
            "missing field `model.rope_scaling.factor`",
            "routing.group = 16: must divide routing.chunk (40) (`routing.group` is not written here: that is its \
             default)",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        assert_eq!(got, want);
    }
}
