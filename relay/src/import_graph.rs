//! The import graph of `relay/src` reads top-down (`main → server → root → session → fanout →
//! sink → core/config`) and has no cycle: no file imports, directly or through others, a file
//! that imports it. This test parses every file's `crate::`, `super::` and `self::` paths (in
//! `use` lines and inline), follows re-exports (`pub use` in a `mod.rs`) to the file that
//! defines the item, and fails naming the cycle or the upward import.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Layers, top to bottom: a file may import only files of its own layer or below.
const LAYERS: &[&[&str]] = &[
    &["server"],
    &["root"],
    &["session"],
    &["fanout"],
    &["sink"],
    &["core"],
];

type Module = Vec<String>;

struct Crate {
    /// Module path → file (relative to `src`).
    files: BTreeMap<Module, String>,
    /// Re-exports: (module, name) → the path it names.
    aliases: HashMap<(Module, String), Module>,
    /// File → the paths it uses (absolute module paths, item last).
    uses: BTreeMap<String, Vec<Module>>,
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn module_of(rel: &str) -> Module {
    let rel = rel.trim_end_matches(".rs");
    let mut parts: Vec<String> = rel.split('/').map(str::to_string).collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
        parts.pop();
    }
    parts
}

/// Source without comments and string literals (so paths in docs or strings do not count).
fn code_only(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            // a char literal like '"'
            i += 3;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Expands a path starting at `s` (just after `crate::`/`super::`/`self::`) into every path it
/// names: `a::b::{c, d::{e, f}}` → `a::b::c`, `a::b::d::e`, `a::b::d::f`.
fn expand(s: &str, prefix: Module, out: &mut Vec<Module>) {
    let mut path = prefix;
    let mut rest = s;
    loop {
        rest = rest.trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        expand_item(&group[start..i], &path, out);
                        return;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand_item(&group[start..i], &path, out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            return;
        }
        let end = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
        if end == 0 {
            out.push(path);
            return;
        }
        path.push(rest[..end].to_string());
        rest = &rest[end..];
        match rest.strip_prefix("::") {
            Some(r) => rest = r,
            None => {
                out.push(path);
                return;
            }
        }
    }
}

fn expand_item(item: &str, path: &Module, out: &mut Vec<Module>) {
    let item = item.trim();
    if item.is_empty() {
        return;
    }
    if item == "self" || item.starts_with("self ") {
        out.push(path.clone());
        return;
    }
    expand(item, path.clone(), out);
}

/// The absolute paths named in `code` of module `module`.
fn paths_in(code: &str, module: &Module) -> Vec<Module> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < code.len() {
        let rest = &code[i..];
        let prev_ident =
            code[..i].chars().next_back().is_some_and(is_ident) || code[..i].ends_with("::");
        let base = if prev_ident {
            None
        } else if let Some(r) = rest.strip_prefix("crate::") {
            Some((r, Module::new(), 7))
        } else if rest.starts_with("super::") {
            // One up from the file's module per `super`.
            let mut m = module.clone();
            let mut r = rest;
            let mut n = 0;
            while let Some(x) = r.strip_prefix("super::") {
                r = x;
                n += 7;
                m.pop();
            }
            Some((r, m, n))
        } else {
            rest.strip_prefix("self::").map(|r| (r, module.clone(), 6))
        };
        match base {
            Some((r, prefix, skip)) => {
                expand(r, prefix, &mut out);
                i += skip;
            }
            None => i += rest.chars().next().map_or(1, char::len_utf8),
        }
    }
    out
}

/// `pub use` / `pub(crate) use` re-exports of a module file: (name, target path).
fn reexports(code: &str, module: &Module) -> Vec<(String, Module)> {
    let mut out = Vec::new();
    for stmt in code.split(';') {
        let s = stmt.trim();
        let body = ["pub use ", "pub(crate) use ", "pub(super) use "]
            .iter()
            .find_map(|p| s.strip_prefix(p));
        let Some(body) = body else { continue };
        let body = body.trim();
        // Relative to this module unless it says crate/super/self.
        let mut targets = paths_in(body, module);
        if targets.is_empty() {
            let mut local = Vec::new();
            expand(body, module.clone(), &mut local);
            targets = local;
        }
        for t in targets {
            if let Some(name) = t.last() {
                out.push((name.clone(), t.clone()));
            }
        }
    }
    out
}

fn load() -> Crate {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    rs_files(&src, &mut all);
    let mut files = BTreeMap::new();
    let mut codes = Vec::new();
    for p in all {
        let rel = p
            .strip_prefix(&src)
            .map(|r| r.to_string_lossy().replace('\\', "/"))
            .unwrap_or_default();
        // Binaries are the top (they import the library by name); this test is not code.
        if rel == "main.rs" || rel.starts_with("bin/") || rel == "import_graph.rs" {
            continue;
        }
        let code = code_only(&std::fs::read_to_string(&p).unwrap_or_default());
        // Test modules may import anything.
        let code = match code.find("#[cfg(test)]") {
            Some(i) => code[..i].to_string(),
            None => code,
        };
        let module = module_of(&rel);
        files.insert(module.clone(), rel.clone());
        codes.push((rel, module, code));
    }
    let mut aliases = HashMap::new();
    let mut uses = BTreeMap::new();
    for (rel, module, code) in codes {
        let is_mod = rel.ends_with("mod.rs") || rel == "lib.rs";
        if is_mod {
            for (name, target) in reexports(&code, &module) {
                if target.last() != Some(&"self".to_string()) {
                    aliases.insert((module.clone(), name), target);
                }
            }
        }
        // A re-export is a facade, not a dependency of the file that holds it, unless the
        // file uses the name itself.
        let uses_name = |name: &str| {
            code.match_indices(name)
                .filter(|(i, _)| {
                    let before = code[..*i].chars().next_back();
                    let after = code[i + name.len()..].chars().next();
                    !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
                })
                .count()
                > 1
        };
        let reexported = reexports(&code, &module);
        let facade: BTreeSet<&Module> = reexported
            .iter()
            .filter(|(name, _)| !uses_name(name))
            .map(|(_, t)| t)
            .collect();
        let mut found = paths_in(&code, &module);
        found.retain(|p| !facade.contains(p));
        found.extend(
            reexported
                .iter()
                .filter(|(name, _)| uses_name(name))
                .map(|(_, t)| t.clone()),
        );
        uses.insert(rel, found);
    }
    Crate {
        files,
        aliases,
        uses,
    }
}

impl Crate {
    /// The file that defines what `path` names.
    fn resolve(&self, path: &Module) -> Option<String> {
        let mut path = path.clone();
        for _ in 0..8 {
            let n = (0..=path.len())
                .rev()
                .find(|&n| self.files.contains_key(&path[..n]))?;
            let module = path[..n].to_vec();
            if let Some(item) = path.get(n) {
                if let Some(target) = self.aliases.get(&(module.clone(), item.clone())) {
                    let mut next = target.clone();
                    next.extend_from_slice(&path[n + 1..]);
                    if next != path {
                        path = next;
                        continue;
                    }
                }
            }
            return self.files.get(&module).cloned();
        }
        None
    }

    fn edges(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (file, paths) in &self.uses {
            let e = g.entry(file.clone()).or_default();
            for p in paths {
                if let Some(to) = self.resolve(p) {
                    if &to != file && to != "lib.rs" {
                        e.insert(to);
                    }
                }
            }
        }
        g
    }
}

/// Every group of files that import each other (strongly connected components of two or
/// more files, or a file importing itself), each listed with one cycle through it.
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: HashMap<&'a str, usize>,
        low: HashMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, n: &'a str) {
            let i = self.index.len();
            self.index.insert(n, i);
            self.low.insert(n, i);
            self.stack.push(n);
            self.on_stack.insert(n);
            for m in self.g.get(n).into_iter().flatten() {
                let m = m.as_str();
                if !self.index.contains_key(m) {
                    self.visit(m);
                    let l = self.low[m].min(self.low[n]);
                    self.low.insert(n, l);
                } else if self.on_stack.contains(m) {
                    let l = self.index[m].min(self.low[n]);
                    self.low.insert(n, l);
                }
            }
            if self.low[n] == self.index[n] {
                let mut scc = Vec::new();
                while let Some(m) = self.stack.pop() {
                    self.on_stack.remove(m);
                    scc.push(m.to_string());
                    if m == n {
                        break;
                    }
                }
                if scc.len() > 1 {
                    scc.sort();
                    self.out.push(scc);
                }
            }
        }
    }
    let mut t = Tarjan {
        g,
        index: HashMap::new(),
        low: HashMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for n in g.keys() {
        if !t.index.contains_key(n.as_str()) {
            t.visit(n);
        }
    }
    t.out
}

fn layer(file: &str) -> Option<usize> {
    let top = file.split('/').next()?.trim_end_matches(".rs");
    LAYERS.iter().position(|l| l.contains(&top))
}

#[test]
fn no_file_imports_a_file_that_imports_it() {
    let g = load().edges();
    assert!(g.len() > 20, "parsed too few files: {g:?}");
    let found = cycles(&g);
    assert!(
        found.is_empty(),
        "files in relay/src that import each other (each group is a cycle): {found:#?}"
    );
}

#[test]
fn imports_go_top_down() {
    let g = load().edges();
    let mut up = Vec::new();
    for (from, tos) in &g {
        let Some(lf) = layer(from) else { continue };
        for to in tos {
            if layer(to).is_some_and(|lt| lt < lf) {
                up.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(up.is_empty(), "upward imports: {up:#?}");
}

#[test]
fn the_checker_sees_cycles_and_re_exports() {
    let mut g = BTreeMap::new();
    g.insert("a.rs".to_string(), BTreeSet::from(["b.rs".to_string()]));
    g.insert("b.rs".to_string(), BTreeSet::from(["a.rs".to_string()]));
    assert_eq!(
        cycles(&g),
        vec![vec!["a.rs".to_string(), "b.rs".to_string()]]
    );
    g.insert("b.rs".to_string(), BTreeSet::new());
    assert!(cycles(&g).is_empty());
    let c = load();
    // `crate::sink::SinkBatch` is re-exported by sink/mod.rs and defined in sink/batch.rs.
    assert_eq!(
        c.resolve(&vec!["sink".into(), "SinkBatch".into()])
            .as_deref(),
        Some("sink/batch.rs")
    );
    let mut paths = Vec::new();
    expand("a::{b, c::{d, e}}", Module::new(), &mut paths);
    assert_eq!(paths.len(), 3);
}

#[test]
#[ignore = "prints the graph"]
fn print_graph() {
    for (from, tos) in load().edges() {
        println!("{from}: {tos:?}");
    }
}
