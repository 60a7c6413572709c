//! Reads the macro input: declarations `attrs vis NAME { body }`, and each body as TOML-shaped items
//! (`[section]` headers and `key = value` pairs) that keep their tokens for error spans.
//!
//! Only the shape is checked here (what is a key, a value, a header); what the keys mean is left to
//! `hga-dsl`'s parser, so that there is one grammar.

use proc_macro2::{Delimiter, Ident, Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::parse::{Parse, ParseStream};
use syn::{Attribute, Lit, Visibility};

/// All declarations of one macro invocation.
pub struct Declarations(pub Vec<Declaration>);

/// One `attrs vis NAME { body }`.
pub struct Declaration {
    /// Outer attributes, doc comments included; copied onto the constant.
    pub attrs: Vec<Attribute>,
    /// Visibility of the constant.
    pub vis: Visibility,
    /// Name of the constant.
    pub name: Ident,
    /// The body's items, in order.
    pub items: Vec<Item>,
    /// Shape errors found in the body.
    pub errors: Vec<syn::Error>,
    /// A shape error stopped the reading: the items are only those before it.
    pub truncated: bool,
}

/// A `[section]` header or a `key = value` pair.
pub enum Item {
    /// `[a.b]`.
    Header(Header),
    /// `a.b = value`.
    Pair(Pair),
}

/// A `[section]` header.
pub struct Header {
    /// Identifies the header across renderings.
    pub id: usize,
    /// The dotted name's segments.
    pub keys: Vec<String>,
    /// The bracketed group.
    pub tokens: TokenStream,
}

/// A `key = value` pair, at any depth.
pub struct Pair {
    /// Identifies the pair across renderings.
    pub id: usize,
    /// The dotted key's segments.
    pub keys: Vec<String>,
    /// The key's tokens.
    pub key_tokens: TokenStream,
    /// The value.
    pub value: Value,
}

/// A value as written.
pub enum Value {
    /// A number, string or boolean, already in TOML spelling.
    Scalar { text: String, tokens: TokenStream },
    /// `[a, b]`.
    Array { items: Vec<Value>, tokens: TokenStream },
    /// `{ k = v, ... }`.
    Table { pairs: Vec<Pair>, tokens: TokenStream },
    /// `preset("name")`.
    Preset { name: syn::LitStr, tokens: TokenStream },
    /// Not a value; the error is already reported.
    Invalid { tokens: TokenStream },
}

impl Value {
    /// The tokens that wrote the value.
    pub fn tokens(&self) -> &TokenStream {
        match self {
            Value::Scalar { tokens, .. }
            | Value::Array { tokens, .. }
            | Value::Table { tokens, .. }
            | Value::Preset { tokens, .. }
            | Value::Invalid { tokens } => tokens,
        }
    }
}

impl Parse for Declarations {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut out = Vec::new();
        while !input.is_empty() {
            let attrs = input.call(Attribute::parse_outer)?;
            let vis: Visibility = input.parse()?;
            let name: Ident = input
                .parse()
                .map_err(|e| syn::Error::new(e.span(), "expected the variant's name, as in `pub QWEN3_8B { ... }`"))?;
            let content;
            syn::braced!(content in input);
            let body: TokenStream = content.parse()?;
            let mut reader = Reader::new(body, 0);
            let items = reader.items();
            let _ = input.parse::<Option<syn::Token![;]>>()?;
            out.push(Declaration { attrs, vis, name, items, errors: reader.errors, truncated: reader.truncated });
        }
        Ok(Declarations(out))
    }
}

/// A cursor over a body's token trees.
struct Reader {
    tokens: Vec<TokenTree>,
    pos: usize,
    next_id: usize,
    errors: Vec<syn::Error>,
    /// Set when a shape error stopped the reading: what follows it is unknown.
    truncated: bool,
}

const VALUE_HELP: &str =
    "expected a value: a number, a \"string\", true or false, an array `[..]`, an inline table `{ k = v, .. }` \
     or `preset(\"name\")`";

impl Reader {
    fn new(stream: TokenStream, next_id: usize) -> Self {
        Reader { tokens: stream.into_iter().collect(), pos: 0, next_id, errors: Vec::new(), truncated: false }
    }

    fn peek(&self) -> Option<&TokenTree> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<TokenTree> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn id(&mut self) -> usize {
        self.next_id += 1;
        self.next_id
    }

    fn at_punct(&self, c: char) -> bool {
        matches!(self.peek(), Some(TokenTree::Punct(p)) if p.as_char() == c)
    }

    /// Top-level items until the end; stops at the first shape error it cannot step over.
    fn items(&mut self) -> Vec<Item> {
        let mut items = Vec::new();
        while let Some(t) = self.peek().cloned() {
            match t {
                TokenTree::Group(g) if g.delimiter() == Delimiter::Bracket => {
                    self.pos += 1;
                    match header_keys(g.stream()) {
                        Ok(keys) => {
                            let id = self.id();
                            items.push(Item::Header(Header { id, keys, tokens: g.to_token_stream() }))
                        }
                        Err(e) => {
                            self.errors.push(e);
                            self.truncated = true;
                            return items;
                        }
                    }
                }
                _ => match self.pair() {
                    Ok(p) => items.push(Item::Pair(p)),
                    Err(e) => {
                        self.errors.push(e);
                        self.truncated = true;
                        return items;
                    }
                },
            }
            // Separators are optional (a newline separates items in TOML, and tokens have no newlines).
            if self.at_punct(',') || self.at_punct(';') {
                self.pos += 1;
            }
        }
        items
    }

    /// `key = value`; a bad value is recorded and stepped over, a bad key or `=` is not.
    fn pair(&mut self) -> syn::Result<Pair> {
        let start = self.pos;
        let keys = self.key_path()?;
        let key_tokens: TokenStream = self.tokens[start..self.pos].iter().cloned().collect();
        match self.next() {
            Some(TokenTree::Punct(p)) if p.as_char() == '=' => {}
            Some(t) => return Err(syn::Error::new(t.span(), "expected `=` after the key")),
            None => return Err(syn::Error::new_spanned(&key_tokens, "expected `= value` after the key")),
        }
        let id = self.id();
        let value = self.value(&key_tokens);
        Ok(Pair { id, keys, key_tokens, value })
    }

    /// `a.b.c`: identifiers (keywords such as `type` included) or quoted strings, joined by dots.
    fn key_path(&mut self) -> syn::Result<Vec<String>> {
        let mut keys = vec![self.key()?];
        while self.at_punct('.') {
            self.pos += 1;
            keys.push(self.key()?);
        }
        Ok(keys)
    }

    fn key(&mut self) -> syn::Result<String> {
        match self.next() {
            Some(TokenTree::Ident(i)) => Ok(ident_name(&i)),
            Some(TokenTree::Literal(l)) => match Lit::new(l.clone()) {
                Lit::Str(s) if s.suffix().is_empty() => Ok(s.value()),
                _ => Err(syn::Error::new(l.span(), "expected a key: a name or a \"quoted\" name")),
            },
            Some(t) => Err(syn::Error::new(t.span(), "expected `[section]` or `key = value`")),
            None => Err(syn::Error::new(Span::call_site(), "expected a key")),
        }
    }

    /// One value; on error records it and returns [`Value::Invalid`] having consumed one token tree.
    fn value(&mut self, key_tokens: &TokenStream) -> Value {
        let Some(t) = self.next() else {
            self.errors.push(syn::Error::new_spanned(key_tokens, format!("missing value: {VALUE_HELP}")));
            return Value::Invalid { tokens: key_tokens.clone() };
        };
        let tokens = t.to_token_stream();
        let invalid = |me: &mut Self, span_of: &TokenStream, msg: String| {
            me.errors.push(syn::Error::new_spanned(span_of, msg));
            Value::Invalid { tokens: span_of.clone() }
        };
        match t {
            TokenTree::Literal(l) => match literal_text(&l) {
                Ok(text) => Value::Scalar { text, tokens },
                Err(msg) => invalid(self, &tokens, msg),
            },
            TokenTree::Punct(p) if p.as_char() == '-' || p.as_char() == '+' => {
                let sign = p.as_char();
                match self.peek().cloned() {
                    Some(TokenTree::Literal(l)) => {
                        self.pos += 1;
                        let both: TokenStream =
                            [TokenTree::Punct(p), TokenTree::Literal(l.clone())].into_iter().collect();
                        match literal_text(&l) {
                            Ok(text) => Value::Scalar { text: format!("{sign}{text}"), tokens: both },
                            Err(msg) => invalid(self, &both, msg),
                        }
                    }
                    Some(TokenTree::Ident(i)) if i == "inf" || i == "nan" => {
                        self.pos += 1;
                        let both: TokenStream =
                            [TokenTree::Punct(p), TokenTree::Ident(i.clone())].into_iter().collect();
                        Value::Scalar { text: format!("{sign}{i}"), tokens: both }
                    }
                    _ => invalid(self, &tokens, format!("expected a number after `{sign}`")),
                }
            }
            TokenTree::Ident(i) if ["true", "false", "inf", "nan"].contains(&i.to_string().as_str()) => {
                Value::Scalar { text: i.to_string(), tokens }
            }
            TokenTree::Ident(i) if i == "preset" => match self.peek().cloned() {
                Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Parenthesis => {
                    self.pos += 1;
                    let all: TokenStream = [TokenTree::Ident(i), TokenTree::Group(g.clone())].into_iter().collect();
                    match syn::parse2::<syn::LitStr>(g.stream()) {
                        Ok(name) if name.suffix().is_empty() => Value::Preset { name, tokens: all },
                        _ => invalid(self, &all, "expected `preset(\"name\")` with the preset's name in quotes".into()),
                    }
                }
                _ => invalid(self, &tokens, "expected `preset(\"name\")`".into()),
            },
            TokenTree::Ident(i) => {
                invalid(self, &tokens, format!("{VALUE_HELP}; strings are quoted: write `\"{}\"`", ident_name(&i)))
            }
            TokenTree::Group(g) if g.delimiter() == Delimiter::Bracket => {
                let mut inner = self.sub(g.stream());
                let mut items = Vec::new();
                while inner.peek().is_some() {
                    items.push(inner.value(&tokens));
                    if !inner.separator("`,` between array items") {
                        break;
                    }
                }
                let broken = inner.truncated;
                self.take_back(inner);
                if broken {
                    return Value::Invalid { tokens };
                }
                Value::Array { items, tokens }
            }
            TokenTree::Group(g) if g.delimiter() == Delimiter::Brace => {
                let mut inner = self.sub(g.stream());
                let mut pairs = Vec::new();
                while inner.peek().is_some() {
                    match inner.pair() {
                        Ok(p) => pairs.push(p),
                        Err(e) => {
                            inner.errors.push(e);
                            inner.truncated = true;
                            break;
                        }
                    }
                    if !inner.separator("`,` between the pairs of an inline table") {
                        break;
                    }
                }
                let broken = inner.truncated;
                self.take_back(inner);
                if broken {
                    return Value::Invalid { tokens };
                }
                Value::Table { pairs, tokens }
            }
            _ => invalid(self, &tokens, VALUE_HELP.to_string()),
        }
    }

    /// A reader over a group's tokens sharing this one's ids.
    fn sub(&self, stream: TokenStream) -> Reader {
        Reader::new(stream, self.next_id)
    }

    fn take_back(&mut self, inner: Reader) {
        self.next_id = inner.next_id;
        self.errors.extend(inner.errors);
    }

    /// Consumes a `,` between items; `false` at the end or (with an error) when something else follows.
    fn separator(&mut self, what: &str) -> bool {
        match self.peek() {
            None => false,
            Some(TokenTree::Punct(p)) if p.as_char() == ',' => {
                self.pos += 1;
                true
            }
            Some(t) => {
                self.errors.push(syn::Error::new(t.span(), format!("expected {what}")));
                self.truncated = true;
                false
            }
        }
    }
}

/// The segments of a `[a.b]` header.
fn header_keys(stream: TokenStream) -> syn::Result<Vec<String>> {
    let mut r = Reader::new(stream, 0);
    if let Some(TokenTree::Group(g)) = r.peek() {
        if g.delimiter() == Delimiter::Bracket {
            return Err(syn::Error::new(g.span(), "arrays of tables (`[[..]]`) are not part of an HGA spec"));
        }
    }
    if r.peek().is_none() {
        return Err(syn::Error::new(Span::call_site(), "expected a section name in `[..]`"));
    }
    let keys = r.key_path()?;
    match r.peek() {
        None => Ok(keys),
        Some(t) => Err(syn::Error::new(t.span(), "expected `]` after the section name")),
    }
}

/// An identifier's name without the `r#` of raw identifiers.
fn ident_name(i: &Ident) -> String {
    let s = i.to_string();
    s.strip_prefix("r#").map(str::to_string).unwrap_or(s)
}

/// A Rust literal in TOML spelling: strings by value, numbers as written (the two languages share
/// `_` separators, `0x`/`0o`/`0b` and exponents; what TOML rejects, its parser reports).
fn literal_text(l: &proc_macro2::Literal) -> Result<String, String> {
    let suffix_error = |s: &str| Err(format!("remove the suffix `{s}`: the spec's parser gives every field its type"));
    match Lit::new(l.clone()) {
        Lit::Str(s) if !s.suffix().is_empty() => suffix_error(s.suffix()),
        Lit::Str(s) => Ok(toml_string(&s.value())),
        Lit::Int(i) if !i.suffix().is_empty() => suffix_error(i.suffix()),
        Lit::Float(f) if !f.suffix().is_empty() => suffix_error(f.suffix()),
        Lit::Int(_) | Lit::Float(_) => Ok(l.to_string()),
        _ => Err(VALUE_HELP.to_string()),
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
