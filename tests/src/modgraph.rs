//! The module graph of a crate, read from its source files, and the cycles
//! in it.
//!
//! A module depends on another when its code names it: `use crate::a::b`,
//! `crate::a::f()`, `super::x`, `self::child::y`, or a child module by its
//! bare name. `mod` declarations are not dependencies, and neither is the
//! crate root, which only declares modules and re-exports their items.
//! Comments, string literals and `#[cfg(test)]` modules inline in a file are
//! not read, so a file's own tests may `use super::*` freely.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A crate's modules (`a::b`, from `src/a/b.rs` or `src/a/b/mod.rs`) and the
/// modules each one's code names.
#[derive(Debug, Default)]
pub struct ModGraph {
    /// Module path to the modules it depends on.
    pub edges: BTreeMap<String, BTreeSet<String>>,
}

impl ModGraph {
    /// Reads every `.rs` file under `src` (a crate's `src/` folder).
    pub fn read(src: &Path) -> std::io::Result<ModGraph> {
        let mut files = Vec::new();
        collect(src, &mut files)?;
        let mut sources = BTreeMap::new();
        for file in files {
            let rel = file.strip_prefix(src).unwrap_or(&file);
            let Some(module) = module_of(rel) else {
                continue;
            };
            sources.insert(module, std::fs::read_to_string(&file)?);
        }
        Ok(ModGraph::from_sources(&sources))
    }

    /// The graph of modules given as module path → source text; the crate
    /// root is `""`.
    pub fn from_sources(sources: &BTreeMap<String, String>) -> ModGraph {
        let modules: BTreeSet<&str> = sources.keys().map(String::as_str).collect();
        let mut edges = BTreeMap::new();
        for (module, text) in sources {
            if module.is_empty() {
                continue; // the crate root: declarations and re-exports
            }
            let code = strip(text);
            let mut deps = BTreeSet::new();
            for path in paths(&code) {
                if let Some(target) = resolve(module, &path, &modules)
                    && target != *module
                    && !target.is_empty()
                {
                    deps.insert(target);
                }
            }
            edges.insert(module.clone(), deps);
        }
        ModGraph { edges }
    }

    /// Every cycle, each as the modules on it in order, smallest first.
    /// Empty when the graph is acyclic.
    pub fn cycles(&self) -> Vec<Vec<String>> {
        // Tarjan's strongly connected components; a component of more than
        // one module, or a module naming itself, is a cycle.
        struct Walk<'a> {
            graph: &'a ModGraph,
            index: BTreeMap<&'a str, usize>,
            low: BTreeMap<&'a str, usize>,
            stack: Vec<&'a str>,
            on_stack: BTreeSet<&'a str>,
            next: usize,
            found: Vec<Vec<String>>,
        }
        impl<'a> Walk<'a> {
            fn visit(&mut self, v: &'a str) {
                self.index.insert(v, self.next);
                self.low.insert(v, self.next);
                self.next += 1;
                self.stack.push(v);
                self.on_stack.insert(v);
                let graph = self.graph;
                for w in graph.edges.get(v).into_iter().flatten() {
                    let w = w.as_str();
                    if !self.index.contains_key(w) {
                        self.visit(w);
                        let lw = self.low[w];
                        let lv = self.low[v];
                        self.low.insert(v, lv.min(lw));
                    } else if self.on_stack.contains(w) {
                        let iw = self.index[w];
                        let lv = self.low[v];
                        self.low.insert(v, lv.min(iw));
                    }
                }
                if self.low[v] == self.index[v] {
                    let mut component = Vec::new();
                    while let Some(w) = self.stack.pop() {
                        self.on_stack.remove(w);
                        component.push(w.to_string());
                        if w == v {
                            break;
                        }
                    }
                    if component.len() > 1 {
                        component.sort();
                        self.found.push(component);
                    }
                }
            }
        }
        let mut walk = Walk {
            graph: self,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on_stack: BTreeSet::new(),
            next: 0,
            found: Vec::new(),
        };
        for v in self.edges.keys() {
            if !walk.index.contains_key(v.as_str()) {
                walk.visit(v);
            }
        }
        walk.found.sort();
        walk.found
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// `a/b.rs` and `a/b/mod.rs` are `a::b`; `lib.rs` is the root; `main.rs`
/// and `bin/` are binaries, not modules of the library.
fn module_of(rel: &Path) -> Option<String> {
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let (last, dirs) = parts.split_last()?;
    if dirs.first().is_some_and(|d| d == "bin") || (dirs.is_empty() && last == "main.rs") {
        return None;
    }
    let stem = last.strip_suffix(".rs")?;
    let mut segments: Vec<&str> = dirs.iter().map(String::as_str).collect();
    if stem != "mod" && !(dirs.is_empty() && stem == "lib") {
        segments.push(stem);
    }
    Some(segments.join("::"))
}

/// The source without comments, string and char literals, and inline
/// `#[cfg(test)]` modules.
fn strip(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            i += rest.find("*/").map_or(rest.len(), |e| e + 2);
        } else if rest.starts_with("r#\"") || rest.starts_with("r\"") {
            let hashes = rest[1..].chars().take_while(|c| *c == '#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            let body = 2 + hashes;
            i += rest[body..]
                .find(&close)
                .map_or(rest.len(), |e| body + e + close.len());
            out.push_str("\"\"");
        } else if bytes[i] == b'"' {
            let mut j = i + 1;
            while j < bytes.len() && bytes[j] != b'"' {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            i = (j + 1).min(bytes.len());
            out.push_str("\"\"");
        } else if rest.starts_with("#[cfg(test)]") {
            // Skip the item that follows: up to its matching closing brace,
            // or its semicolon (`mod tests;` is a file of its own).
            let mut depth = 0usize;
            let mut j = i;
            while j < bytes.len() {
                match bytes[j] {
                    b'{' => depth += 1,
                    b'}' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            j += 1;
                            break;
                        }
                    }
                    b';' if depth == 0 => {
                        j += 1;
                        break;
                    }
                    _ => {}
                }
                j += 1;
            }
            i = j;
        } else if bytes[i] == b'\''
            && i + 2 < bytes.len()
            && (bytes[i + 2] == b'\'' || bytes[i + 1] == b'\\')
        {
            // A char literal such as 'a' or '\n' (not a lifetime).
            let end = rest[1..].find('\'').map_or(rest.len(), |e| e + 2);
            i += end;
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Every path in the code that starts with `crate`, `super`, `self` or a
/// plain identifier followed by `::`, with `use` groups expanded
/// (`use crate::a::{b, c::d}` gives `crate::a::b` and `crate::a::c::d`).
fn paths(code: &str) -> Vec<Vec<String>> {
    let tokens = tokenize(code);
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let starts_path = is_ident(&tokens[i])
            && tokens.get(i + 1).is_some_and(|t| t == "::")
            && (i == 0 || tokens[i - 1] != "::");
        if starts_path {
            let mut prefix = Vec::new();
            i = read_path(&tokens, i, &mut prefix, &mut out);
        } else {
            i += 1;
        }
    }
    out
}

/// Reads a path (and any `{…}` group) from `tokens[i]`; returns where it ends.
fn read_path(
    tokens: &[String],
    mut i: usize,
    prefix: &mut Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    let depth = prefix.len();
    loop {
        match tokens.get(i).map(String::as_str) {
            Some("{") => {
                i += 1;
                loop {
                    match tokens.get(i).map(String::as_str) {
                        Some("}") | None => {
                            i += 1;
                            break;
                        }
                        Some(",") => i += 1,
                        Some(_) => i = read_path(tokens, i, prefix, out),
                    }
                }
                prefix.truncate(depth);
                return i;
            }
            Some(t) if is_ident(t) => {
                prefix.push(t.to_string());
                i += 1;
                if tokens.get(i).is_some_and(|t| t == "::") {
                    i += 1;
                    continue;
                }
                out.push(prefix.clone());
                prefix.truncate(depth);
                return i;
            }
            _ => {
                if prefix.len() > depth {
                    out.push(prefix.clone());
                }
                prefix.truncate(depth);
                return i;
            }
        }
    }
}

fn is_ident(t: &str) -> bool {
    t.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

fn tokenize(code: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(chars[start..i].iter().collect());
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            tokens.push("::".into());
            i += 2;
        } else if c.is_whitespace() {
            i += 1;
        } else {
            tokens.push(c.to_string());
            i += 1;
        }
    }
    tokens
}

/// The module a path in `module` names, if it names one of this crate's.
fn resolve(module: &str, path: &[String], modules: &BTreeSet<&str>) -> Option<String> {
    let here: Vec<&str> = module.split("::").filter(|s| !s.is_empty()).collect();
    let (mut base, rest): (Vec<&str>, &[String]) = match path.first().map(String::as_str)? {
        "crate" => (Vec::new(), &path[1..]),
        "self" => (here.clone(), &path[1..]),
        "super" => {
            let mut base = here.clone();
            let mut rest = path;
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
            (base, rest)
        }
        first => {
            // A bare name: a child module of this one, or nothing of ours.
            let child = format!("{module}::{first}");
            if !modules.contains(child.as_str()) {
                return None;
            }
            (here.clone(), path)
        }
    };
    // The longest prefix that is a module; the rest are items in it.
    let mut found = if base.is_empty() {
        String::new()
    } else {
        base.join("::")
    };
    for segment in rest {
        base.push(segment);
        let candidate = base.join("::");
        if modules.contains(candidate.as_str()) {
            found = candidate;
        } else {
            break;
        }
    }
    Some(found)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn graph(files: &[(&str, &str)]) -> ModGraph {
        let sources = files
            .iter()
            .map(|(m, s)| (m.to_string(), s.to_string()))
            .collect();
        ModGraph::from_sources(&sources)
    }

    #[test]
    fn a_use_cycle_is_found_and_a_chain_is_not() {
        let g = graph(&[
            ("", "pub mod a; pub mod b; pub mod c; pub use a::X;"),
            ("a", "use crate::b::{Y, other::Z};\n pub struct X;"),
            ("b", "use super::c::W; pub struct Y;"),
            ("c", "pub fn w() { crate::a::X; }"),
        ]);
        assert_eq!(g.cycles(), vec![vec!["a", "b", "c"]]);
        let g = graph(&[
            ("a", "use crate::b::Y;"),
            ("b", "// use crate::a::X;\nconst S: &str = \"crate::a::X\";"),
        ]);
        assert!(g.cycles().is_empty(), "{:?}", g.edges);
    }

    #[test]
    fn a_parent_and_its_child_files_count_and_inline_tests_do_not() {
        let g = graph(&[
            ("server", "mod auth; fn f() { auth::check(); }"),
            ("server::auth", "use super::Config;"),
        ]);
        assert_eq!(g.cycles(), vec![vec!["server", "server::auth"]]);
        let g = graph(&[
            ("server", "mod auth; fn f() { auth::check(); }"),
            (
                "server::auth",
                "pub fn check() {}\n#[cfg(test)]\nmod tests { use super::super::Config; }",
            ),
        ]);
        assert!(g.cycles().is_empty(), "{:?}", g.edges);
    }

    #[test]
    fn files_map_to_modules() {
        assert_eq!(module_of(Path::new("lib.rs")).unwrap(), "");
        assert_eq!(module_of(Path::new("a.rs")).unwrap(), "a");
        assert_eq!(module_of(Path::new("a/mod.rs")).unwrap(), "a");
        assert_eq!(module_of(Path::new("a/b.rs")).unwrap(), "a::b");
        assert_eq!(module_of(Path::new("main.rs")), None);
    }
}
