//! Embeds every `migrations/NNNN_name.sql` file, in name order, as `MIGRATIONS` (see
//! `src/db/mod.rs`): adding a migration is adding a file.

use std::fmt::Write as _;

fn main() {
    let dir = std::path::Path::new("migrations");
    println!("cargo:rerun-if-changed=migrations");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".sql"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut out = String::from("/// Embedded migrations: (version, name, SQL).\npub const MIGRATIONS: &[(i32, &str, &str)] = &[\n");
    for f in files {
        let stem = f.trim_end_matches(".sql");
        let (num, name) = stem.split_once('_').unwrap_or((stem, ""));
        let Ok(version) = num.parse::<i32>() else {
            panic!("migration file {f} must be named NNNN_name.sql");
        };
        let path = std::fs::canonicalize(dir.join(&f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        let _ = writeln!(
            out,
            "    ({version}, {name:?}, include_str!({:?})),",
            path.display().to_string()
        );
    }
    out.push_str("];\n");
    let dest = std::path::Path::new(&std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into()))
        .join("migrations.rs");
    std::fs::write(dest, out).unwrap_or_else(|e| panic!("writing migrations.rs: {e}"));
}
