//! Renders a declaration's items to the TOML form, remembering which tokens wrote which bytes, so an
//! error the TOML parser reports at a byte range can be reported at the tokens.

use crate::syntax::{Item, Pair, Value};
use proc_macro2::TokenStream;
use std::collections::{HashMap, HashSet};
use std::ops::Range;

/// Who wrote a piece of the text: the document itself, a `[section]` header, or a pair (by id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Owner {
    /// The whole document (nothing the user wrote).
    Root,
    /// The header with this id.
    Header(usize),
    /// The pair with this id.
    Pair(usize),
}

/// What the renderer knows about a pair, independent of any rendering.
pub struct PairInfo {
    /// Full dotted path, e.g. `model.rope_scaling.factor`.
    pub path: String,
    /// The tokens of the value.
    pub value_tokens: TokenStream,
    /// The TOML text of a `model = preset("..")` value.
    pub preset_text: Option<String>,
}

/// The pairs and headers of one declaration by id and by path.
#[derive(Default)]
pub struct Index {
    /// Pairs by id.
    pub pairs: HashMap<usize, PairInfo>,
    /// Headers by id: (path, tokens).
    pub headers: HashMap<usize, (String, TokenStream)>,
    /// Ids of pairs whose value is unusable (its error is already reported).
    pub invalid: HashSet<usize>,
}

impl Index {
    /// Indexes `items`, resolving presets; a preset that does not resolve is reported into `errors`.
    pub fn new(items: &[Item], errors: &mut Vec<syn::Error>) -> Index {
        let mut index = Index::default();
        let mut table = String::new();
        for item in items {
            match item {
                Item::Header(h) => {
                    table = h.keys.join(".");
                    index.headers.insert(h.id, (table.clone(), h.tokens.clone()));
                }
                Item::Pair(p) => index.add_pair(&table, p, errors),
            }
        }
        index
    }

    fn add_pair(&mut self, table: &str, p: &Pair, errors: &mut Vec<syn::Error>) {
        let path = join(table, &p.keys.join("."));
        let mut preset_text = None;
        match &p.value {
            Value::Invalid { .. } => {
                self.invalid.insert(p.id);
            }
            Value::Table { pairs, .. } => {
                for inner in pairs {
                    self.add_pair(&path, inner, errors);
                }
            }
            Value::Preset { name, tokens } => {
                if path != "model" {
                    errors.push(syn::Error::new_spanned(
                        tokens,
                        format!(
                            "`preset(..)` names a whole model: write it as `model = preset(..)`, not `{path} = ..`"
                        ),
                    ));
                    self.invalid.insert(p.id);
                } else {
                    match hga_dsl::macro_support::preset_model_inline(&name.value()) {
                        Ok(text) => preset_text = Some(text),
                        Err(e) => {
                            errors.push(syn::Error::new_spanned(name, e.to_string()));
                            self.invalid.insert(p.id);
                        }
                    }
                }
            }
            Value::Scalar { .. } | Value::Array { .. } => {}
        }
        self.pairs.insert(p.id, PairInfo { path, value_tokens: p.value.tokens().clone(), preset_text });
    }

    /// The dotted path of what `owner` names (`""` for the root).
    pub fn path_of(&self, owner: Owner) -> &str {
        match owner {
            Owner::Root => "",
            Owner::Header(id) => self.headers.get(&id).map_or("", |h| h.0.as_str()),
            Owner::Pair(id) => self.pairs.get(&id).map_or("", |p| p.path.as_str()),
        }
    }
}

/// `table.key`, or `key` at the root.
pub fn join(table: &str, key: &str) -> String {
    if table.is_empty() {
        key.to_string()
    } else {
        format!("{table}.{key}")
    }
}

/// Edits applied while rendering, so one parse error does not hide the next: items left out, and
/// stand-in values for required fields whose writing was left out or missing.
#[derive(Default)]
pub struct Repairs {
    /// Headers (with their pairs) and pairs left out.
    pub skip: HashSet<usize>,
    /// `key = value` text added inside the table `Owner` writes.
    pub fills: Vec<(Owner, String, String)>,
}

/// A piece of the rendered text and the tokens that wrote it.
pub struct Frag {
    /// Bytes of the text.
    pub range: Range<usize>,
    /// Tokens to point at.
    pub tokens: TokenStream,
    /// Who wrote it.
    pub owner: Owner,
}

/// The TOML text of a declaration and where each piece came from.
pub struct Rendered {
    /// The TOML form.
    pub text: String,
    /// Pieces of `text` written by tokens.
    pub frags: Vec<Frag>,
}

impl Rendered {
    /// The piece an error at `span` points at: the smallest one containing it, else the first one
    /// overlapping it; `None` for the document as a whole (no span, or an empty one, as the parser
    /// gives for a field missing at the top level).
    pub fn locate(&self, span: Option<&Range<usize>>) -> Option<&Frag> {
        let s = span.filter(|s| !s.is_empty())?;
        let containing = self.frags.iter().filter(|f| f.range.start <= s.start && s.end <= f.range.end);
        containing
            .min_by_key(|f| f.range.len())
            .or_else(|| self.frags.iter().find(|f| f.range.start < s.end && s.start < f.range.end))
    }
}

/// Renders `items` with `repairs` applied.
pub fn render(items: &[Item], index: &Index, repairs: &Repairs) -> Rendered {
    let mut r = Renderer { out: Rendered { text: String::new(), frags: Vec::new() }, index, repairs };
    r.fills(Owner::Root, "\n");
    let mut skipping = false;
    for item in items {
        match item {
            Item::Header(h) => {
                skipping = repairs.skip.contains(&h.id);
                if !skipping {
                    let start = r.out.text.len();
                    r.out.text.push('[');
                    r.keys(&h.keys);
                    r.out.text.push(']');
                    r.frag(start, &h.tokens, Owner::Header(h.id));
                    r.out.text.push('\n');
                    r.fills(Owner::Header(h.id), "\n");
                }
            }
            Item::Pair(p) if !skipping && r.keeps(p) => {
                r.pair(p);
                r.out.text.push('\n');
            }
            Item::Pair(_) => {}
        }
    }
    r.out
}

struct Renderer<'a> {
    out: Rendered,
    index: &'a Index,
    repairs: &'a Repairs,
}

impl Renderer<'_> {
    fn keeps(&self, p: &Pair) -> bool {
        !self.repairs.skip.contains(&p.id) && !self.index.invalid.contains(&p.id)
    }

    fn frag(&mut self, start: usize, tokens: &TokenStream, owner: Owner) {
        self.out.frags.push(Frag { range: start..self.out.text.len(), tokens: tokens.clone(), owner });
    }

    /// Stand-in `key = value` pairs for `owner`'s table, each followed by `sep`.
    fn fills(&mut self, owner: Owner, sep: &str) {
        for (o, key, value) in &self.repairs.fills {
            if *o == owner {
                self.out.text.push_str(&format!("{key} = {value}{sep}"));
            }
        }
    }

    fn keys(&mut self, keys: &[String]) {
        for (i, k) in keys.iter().enumerate() {
            if i > 0 {
                self.out.text.push('.');
            }
            if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                self.out.text.push_str(k);
            } else {
                self.out.text.push_str(&format!("{k:?}"));
            }
        }
    }

    fn pair(&mut self, p: &Pair) {
        let start = self.out.text.len();
        self.keys(&p.keys);
        self.frag(start, &p.key_tokens, Owner::Pair(p.id));
        self.out.text.push_str(" = ");
        self.value(&p.value, p.id);
    }

    fn value(&mut self, v: &Value, id: usize) {
        let start = self.out.text.len();
        match v {
            Value::Scalar { text, .. } => self.out.text.push_str(text),
            Value::Preset { .. } => {
                let text = self.index.pairs.get(&id).and_then(|p| p.preset_text.as_deref()).unwrap_or("{}");
                self.out.text.push_str(text);
            }
            Value::Array { items, .. } => {
                self.out.text.push('[');
                let mut first = true;
                for item in items.iter().filter(|i| !matches!(i, Value::Invalid { .. })) {
                    if !first {
                        self.out.text.push_str(", ");
                    }
                    first = false;
                    self.value(item, id);
                }
                self.out.text.push(']');
            }
            Value::Table { pairs, .. } => {
                self.out.text.push_str("{ ");
                let mut first = true;
                let kept: Vec<&Pair> = pairs.iter().filter(|p| self.keeps(p)).collect();
                for p in kept {
                    if !first {
                        self.out.text.push_str(", ");
                    }
                    first = false;
                    self.pair(p);
                }
                if !first && self.repairs.fills.iter().any(|f| f.0 == Owner::Pair(id)) {
                    self.out.text.push_str(", ");
                }
                self.fills_inline(id);
                self.out.text.push_str(" }");
            }
            Value::Invalid { .. } => {}
        }
        self.frag(start, v.tokens(), Owner::Pair(id));
    }

    fn fills_inline(&mut self, id: usize) {
        let fills: Vec<String> = self
            .repairs
            .fills
            .iter()
            .filter(|f| f.0 == Owner::Pair(id))
            .map(|(_, k, v)| format!("{k} = {v}"))
            .collect();
        self.out.text.push_str(&fills.join(", "));
    }
}
