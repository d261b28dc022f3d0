//! `cargo xtask layers`: the one-way rule inside `sdk-ext`, checked from the module paths its
//! files name.
//!
//! Every file is a module (`lib.rs` the root, `x/mod.rs` the module `x`). A file imports the
//! modules its paths name: `crate::...`, `super::...`, `self::...` and the child modules it
//! declares (`mod x;` then `x::...`), in `use` items and inline alike; a name `lib.rs`
//! re-exports (`crate::Result`) counts as the module it comes from. Comments and string literals
//! are skipped.
//!
//! The layers: `extension/` on top (may import anything); the features side by side below it
//! (`features/<name>/` or `features/<name>.rs`: may import the bottom layer and their own
//! feature only); the bottom layer (every other module: imports only the bottom layer). The
//! check also fails on any import cycle between files.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

/// The source directory the rule applies to.
pub const SDK_EXT_SRC: &str = "crates/sdk-ext/src";

/// A module path: `[]` is the crate root, `["features", "state"]` is `features/state/mod.rs`.
type ModPath = Vec<String>;

/// Where a module sits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Layer {
    /// Value types and the shared context.
    Bottom,
    /// `features/mod.rs`: only declares the features.
    FeatureList,
    /// One feature, by name.
    Feature(String),
    /// The extension, and the crate root.
    Top,
}

impl Layer {
    fn of(path: &[String]) -> Self {
        match path {
            [] => Self::Top,
            [first, ..] if first == "extension" => Self::Top,
            [first] if first == "features" => Self::FeatureList,
            [first, feature, ..] if first == "features" => Self::Feature(feature.clone()),
            _ => Self::Bottom,
        }
    }

    /// Whether a module of this layer may import a module of `other`.
    fn may_import(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Top, _) => true,
            (_, Self::Bottom) => true,
            (Self::Feature(a), Self::Feature(b)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bottom => f.write_str("bottom layer"),
            Self::FeatureList => f.write_str("feature list"),
            Self::Feature(name) => write!(f, "feature `{name}`"),
            Self::Top => f.write_str("top layer"),
        }
    }
}

/// The import graph of one crate's source directory.
#[derive(Debug, Default)]
pub struct Graph {
    /// Each module's file, relative to the source directory.
    files: BTreeMap<ModPath, PathBuf>,
    /// Module to the modules it imports.
    imports: BTreeMap<ModPath, BTreeSet<ModPath>>,
}

impl Graph {
    /// Reads every `.rs` file under `src`.
    pub fn read(src: &Path) -> Result<Self> {
        let mut sources = BTreeMap::new();
        collect(src, src, &mut sources)?;
        Ok(Self::from_sources(&sources))
    }

    /// The graph of `sources` (file path relative to the source directory, and its text).
    fn from_sources(sources: &BTreeMap<PathBuf, String>) -> Self {
        let mut graph = Self::default();
        let mut texts = BTreeMap::new();
        for (file, text) in sources {
            let path = module_path(file);
            graph.files.insert(path.clone(), file.clone());
            texts.insert(path, strip(text));
        }
        let known: BTreeSet<ModPath> = graph.files.keys().cloned().collect();
        let reexports =
            texts.get(&Vec::new()).map(|root| reexports(root, &known)).unwrap_or_default();
        for (path, text) in &texts {
            let mut targets = BTreeSet::new();
            for full in named_paths(path, text) {
                if let Some(target) = resolve(&full, &known, &reexports)
                    && target != *path
                    && !target.is_empty()
                {
                    targets.insert(target);
                }
            }
            graph.imports.insert(path.clone(), targets);
        }
        graph
    }

    fn file(&self, path: &ModPath) -> String {
        self.files.get(path).map(|f| f.display().to_string()).unwrap_or_else(|| path.join("::"))
    }

    /// Imports that break the layer rule, as readable lines.
    pub fn violations(&self) -> Vec<String> {
        let mut found = Vec::new();
        for (from, targets) in &self.imports {
            let layer = Layer::of(from);
            for to in targets {
                let other = Layer::of(to);
                if !layer.may_import(&other) {
                    found.push(format!(
                        "{} ({layer}) imports {} ({other})",
                        self.file(from),
                        self.file(to)
                    ));
                }
            }
        }
        found
    }

    /// The import cycles (strongly connected groups of two or more files), as file lists.
    pub fn cycles(&self) -> Vec<Vec<String>> {
        let nodes: Vec<&ModPath> = self.imports.keys().collect();
        let index: BTreeMap<&ModPath, usize> =
            nodes.iter().enumerate().map(|(i, p)| (*p, i)).collect();
        let edges: Vec<Vec<usize>> = nodes
            .iter()
            .map(|p| self.imports[*p].iter().filter_map(|t| index.get(t).copied()).collect())
            .collect();
        strongly_connected(&edges)
            .into_iter()
            .filter(|group| group.len() > 1)
            .map(|group| group.into_iter().map(|i| self.file(nodes[i])).collect())
            .collect()
    }

    /// Every import, as `from -> to` lines.
    pub fn edges(&self) -> Vec<String> {
        self.imports
            .iter()
            .flat_map(|(from, targets)| {
                targets.iter().map(move |to| format!("{} -> {}", self.file(from), self.file(to)))
            })
            .collect()
    }

    /// How many imports there are.
    pub fn edge_count(&self) -> usize {
        self.imports.values().map(BTreeSet::len).sum()
    }
}

fn collect(src: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect(src, &path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path)?;
            out.insert(path.strip_prefix(src)?.to_path_buf(), text);
        }
    }
    Ok(())
}

/// The module a file defines.
fn module_path(file: &Path) -> ModPath {
    let mut parts: Vec<String> =
        file.with_extension("").iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
        parts.pop();
    }
    parts
}

/// The text without comments, string literals and character literals (each replaced by a
/// space), so that only code is searched for paths.
fn strip(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let at = |i: usize, s: &str| s.chars().enumerate().all(|(k, c)| chars.get(i + k) == Some(&c));
    while i < chars.len() {
        if at(i, "//") {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if at(i, "/*") {
            i += 2;
            while i < chars.len() && !at(i, "*/") {
                i += 1;
            }
            i += 2;
            out.push(' ');
        } else if chars[i] == 'r' && (at(i + 1, "\"") || at(i + 1, "#\"") || at(i + 1, "##\"")) {
            let hashes = chars[i + 1..].iter().take_while(|c| **c == '#').count();
            let close: String =
                std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
            i += 2 + hashes;
            while i < chars.len() && !at(i, &close) {
                i += 1;
            }
            i += close.len();
            out.push(' ');
        } else if chars[i] == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(' ');
        } else if chars[i] == '\''
            && (at(i + 2, "'") || (at(i + 1, "\\") && chars.get(i + 3) == Some(&'\'')))
        {
            i += if at(i + 1, "\\") { 4 } else { 3 };
            out.push(' ');
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The child modules a file declares (`mod x;`, `pub(crate) mod x;`).
fn declared_children(text: &str) -> BTreeSet<String> {
    let mut children = BTreeSet::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(pos) = words.iter().position(|w| *w == "mod")
            && let Some(name) = words.get(pos + 1).and_then(|w| w.strip_suffix(';'))
        {
            children.insert(name.to_owned());
        }
    }
    children
}

/// Every module-relative path a file names, made absolute (a list of segments from the root).
fn named_paths(file_path: &ModPath, text: &str) -> Vec<Vec<String>> {
    let children = declared_children(text);
    let chars: Vec<char> = text.chars().collect();
    let mut found = Vec::new();
    // Inline modules (`mod tests { ... }`) open, with the brace depth inside each.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let mut pending_inline: Option<String> = None;
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '{' => {
                depth += 1;
                if let Some(name) = pending_inline.take() {
                    inline.push((name, depth));
                }
            }
            '}' => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            ';' => pending_inline = None,
            _ => {}
        }
        let path: ModPath =
            [file_path.clone(), inline.iter().map(|(n, _)| n.clone()).collect()].concat();
        let starts_token = i == 0 || !(is_ident(chars[i - 1]) || chars[i - 1] == ':');
        if !starts_token || !is_ident(chars[i]) {
            i += 1;
            continue;
        }
        let end = i + chars[i..].iter().take_while(|c| is_ident(**c)).count();
        let word: String = chars[i..end].iter().collect();
        if word == "mod" {
            let rest: String = chars[end..].iter().take(100).collect();
            let name: String = rest.trim_start().chars().take_while(|c| is_ident(*c)).collect();
            pending_inline = Some(name);
        }
        let followed = chars.get(end) == Some(&':') && chars.get(end + 1) == Some(&':');
        if !followed {
            i = end;
            continue;
        }
        let path = &path;
        let base: Option<ModPath> = match word.as_str() {
            "crate" => Some(Vec::new()),
            "self" => Some(path.clone()),
            "super" => {
                // `super::super::...`
                let mut base = path.clone();
                base.pop();
                let mut j = end + 2;
                while chars[j..].starts_with(&['s', 'u', 'p', 'e', 'r', ':', ':']) {
                    base.pop();
                    j += 7;
                }
                let (trees, _) = parse_tree(&chars, j);
                found.extend(trees.into_iter().map(|t| [base.clone(), t].concat()));
                i = j;
                continue;
            }
            child if inline.is_empty() && children.contains(child) => {
                let (trees, next) = parse_tree(&chars, end + 2);
                let base = [path.clone(), vec![child.to_owned()]].concat();
                found.extend(trees.into_iter().map(|t| [base.clone(), t].concat()));
                i = next;
                continue;
            }
            _ => None,
        };
        match base {
            Some(base) => {
                let (trees, next) = parse_tree(&chars, end + 2);
                found.extend(trees.into_iter().map(|t| [base.clone(), t].concat()));
                i = next;
            }
            None => i = end,
        }
    }
    found
}

/// Parses a use tree (or an inline path) at `i`: `a::b`, `{a, b::{c, d}}`, `*`. Returns its
/// paths and where it ends.
fn parse_tree(chars: &[char], mut i: usize) -> (Vec<Vec<String>>, usize) {
    while chars.get(i).is_some_and(|c| c.is_whitespace()) {
        i += 1;
    }
    match chars.get(i) {
        Some('{') => {
            let mut paths = Vec::new();
            i += 1;
            loop {
                let (trees, next) = parse_tree(chars, i);
                paths.extend(trees);
                i = next;
                while chars.get(i).is_some_and(|c| c.is_whitespace() || *c == ',') {
                    i += 1;
                }
                match chars.get(i) {
                    Some('}') => return (paths, i + 1),
                    None => return (paths, i),
                    _ if next == i && !chars.get(i).copied().is_some_and(is_ident) => {
                        // Not a tree after all: stop rather than loop.
                        return (paths, i + 1);
                    }
                    _ => {}
                }
            }
        }
        Some(c) if is_ident(*c) => {
            let end = i + chars[i..].iter().take_while(|c| is_ident(**c)).count();
            let word: String = chars[i..end].iter().collect();
            if chars.get(end) == Some(&':') && chars.get(end + 1) == Some(&':') {
                let (trees, next) = parse_tree(chars, end + 2);
                let trees = if trees.is_empty() { vec![Vec::new()] } else { trees };
                (trees.into_iter().map(|t| [vec![word.clone()], t].concat()).collect(), next)
            } else {
                (vec![vec![word]], end)
            }
        }
        Some('*') => (vec![Vec::new()], i + 1),
        _ => (Vec::new(), i),
    }
}

/// The names the crate root re-exports from its own modules, with the module each comes from.
fn reexports(root: &str, known: &BTreeSet<ModPath>) -> BTreeMap<String, ModPath> {
    let mut names = BTreeMap::new();
    let chars: Vec<char> = root.chars().collect();
    let text: String = chars.iter().collect();
    for (start, _) in text.match_indices("pub use ") {
        let (trees, _) = parse_tree(&chars, start + "pub use ".len());
        for tree in trees {
            let Some(name) = tree.last() else { continue };
            if let Some(module) = longest_known_prefix(&tree, known)
                && !module.is_empty()
            {
                names.insert(name.clone(), module);
            }
        }
    }
    names
}

fn longest_known_prefix(full: &[String], known: &BTreeSet<ModPath>) -> Option<ModPath> {
    (0..=full.len()).rev().map(|n| full[..n].to_vec()).find(|prefix| known.contains(prefix))
}

/// The module a path names: its longest prefix that is a module, or, for a name the root
/// re-exports, that name's module.
fn resolve(
    full: &[String],
    known: &BTreeSet<ModPath>,
    reexports: &BTreeMap<String, ModPath>,
) -> Option<ModPath> {
    let module = longest_known_prefix(full, known)?;
    if module.is_empty()
        && let Some(first) = full.first()
    {
        return reexports.get(first).cloned();
    }
    Some(module)
}

/// Tarjan's strongly connected components.
fn strongly_connected(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct State<'a> {
        edges: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        groups: Vec<Vec<usize>>,
    }
    fn visit(s: &mut State<'_>, v: usize) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in &s.edges[v] {
            match s.index[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(index) if s.on_stack[w] => s.low[v] = s.low[v].min(index),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut group = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                group.push(w);
                if w == v {
                    break;
                }
            }
            s.groups.push(group);
        }
    }
    let n = edges.len();
    let mut state = State {
        edges,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        groups: Vec::new(),
    };
    for v in 0..n {
        if state.index[v].is_none() {
            visit(&mut state, v);
        }
    }
    state.groups
}

/// `cargo xtask layers [--graph] [DIR]`: checks the rule on `DIR` (default: sdk-ext's sources);
/// `--graph` also prints every import.
pub fn run(root: &Path, args: &[&str]) -> Result<()> {
    let graph_wanted = args.contains(&"--graph");
    let dir = args.iter().find(|a| !a.starts_with("--")).map(PathBuf::from);
    let dir = dir.unwrap_or_else(|| root.join(SDK_EXT_SRC));
    let graph = Graph::read(&dir)?;
    if graph_wanted {
        for edge in graph.edges() {
            println!("{edge}");
        }
    }
    let violations = graph.violations();
    let cycles = graph.cycles();
    println!(
        "{}: {} files, {} imports, {} against the layers, {} import cycles",
        dir.display(),
        graph.files.len(),
        graph.edge_count(),
        violations.len(),
        cycles.len()
    );
    for violation in &violations {
        println!("  layer rule broken: {violation}");
    }
    for cycle in &cycles {
        println!("  import cycle: {}", cycle.join(" <-> "));
    }
    if !violations.is_empty() || !cycles.is_empty() {
        bail!("the layer rule does not hold in {}", dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(files: &[(&str, &str)]) -> Graph {
        let sources = files.iter().map(|(f, t)| (PathBuf::from(f), (*t).to_owned())).collect();
        Graph::from_sources(&sources)
    }

    const LIB: &str = "mod context;\nmod features;\nmod extension;\n\
                       pub use context::Value;\npub use features::a::Thing;\n";

    #[test]
    fn the_layers_as_built_pass() {
        let graph = graph(&[
            ("lib.rs", LIB),
            ("context/mod.rs", "mod handle;\npub(crate) use handle::Context;"),
            ("context/handle.rs", "use crate::error::Error;"),
            ("error.rs", "pub struct Error;"),
            ("features/mod.rs", "pub(crate) mod a;\npub(crate) mod b;"),
            ("features/a/mod.rs", "mod inner;\nuse crate::{context::Context, Value};"),
            ("features/a/inner.rs", "use super::Thing; // crate::features::b::X in a comment"),
            ("features/b.rs", "fn f() { let s = \"crate::features::a\"; crate::context::go(); }"),
            ("extension/mod.rs", "use crate::features::{a::Thing, b};\nmod x;\nfn f() { x::go() }"),
            ("extension/x.rs", "use crate::context::Context;"),
        ]);
        assert_eq!(graph.violations(), Vec::<String>::new());
        assert_eq!(graph.cycles(), Vec::<Vec<String>>::new());
        assert!(graph.edges().contains(&"features/a/inner.rs -> features/a/mod.rs".to_owned()));
        assert!(graph.edges().contains(&"extension/mod.rs -> extension/x.rs".to_owned()));
        assert!(graph.edges().contains(&"features/b.rs -> context/mod.rs".to_owned()));
    }

    #[test]
    fn a_feature_importing_another_fails() {
        let graph = graph(&[
            ("lib.rs", LIB),
            ("context/mod.rs", ""),
            ("features/mod.rs", "pub(crate) mod a;\npub(crate) mod b;"),
            ("features/a/mod.rs", ""),
            ("features/b.rs", "fn f() { crate::features::a::go(); }"),
            ("extension/mod.rs", ""),
        ]);
        assert_eq!(
            graph.violations(),
            ["features/b.rs (feature `b`) imports features/a/mod.rs (feature `a`)"]
        );
    }

    #[test]
    fn the_bottom_layer_importing_up_fails_also_through_a_reexport() {
        let graph = graph(&[
            ("lib.rs", LIB),
            ("context/mod.rs", "use crate::{Thing, extension::Top};"),
            ("features/mod.rs", "pub(crate) mod a;"),
            ("features/a/mod.rs", ""),
            ("extension/mod.rs", ""),
        ]);
        let violations = graph.violations();
        assert_eq!(violations.len(), 2, "{violations:?}");
        assert!(violations[0].contains("imports extension/mod.rs (top layer)"), "{violations:?}");
        assert!(
            violations[1].contains("imports features/a/mod.rs (feature `a`)"),
            "{violations:?}"
        );
    }

    #[test]
    fn a_cycle_between_parent_and_child_is_found() {
        let graph = graph(&[
            ("lib.rs", "mod context;"),
            ("context/mod.rs", "mod handle;\npub(crate) use handle::Context;\npub struct Shared;"),
            ("context/handle.rs", "use super::Shared;"),
        ]);
        assert_eq!(graph.cycles().len(), 1);
        assert_eq!(graph.cycles()[0].len(), 2);
    }
}
