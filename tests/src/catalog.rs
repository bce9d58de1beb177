//! Reading a coordinator's catalog file the way an operator would: which managed tables it lists,
//! where their files are, and which writes its journal still holds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One managed table of a catalog file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedTable {
    /// The table directory.
    pub dir: PathBuf,
    /// The data files, relative to `dir` (partition directories included).
    pub files: Vec<String>,
}

/// The managed tables of the catalog file at `path`, by name.
pub fn managed_tables(path: &Path) -> BTreeMap<String, ManagedTable> {
    let catalog = read(path);
    let mut tables = BTreeMap::new();
    for table in catalog
        .get("tables")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
    {
        if table.get("managed").and_then(toml::Value::as_bool) != Some(true) {
            continue;
        }
        let text = |key: &str| {
            table
                .get(key)
                .and_then(toml::Value::as_str)
                .unwrap_or_else(|| panic!("a managed table without {key}: {table}"))
                .to_string()
        };
        let files = table
            .get("files")
            .and_then(toml::Value::as_array)
            .into_iter()
            .flatten()
            .map(|f| match f {
                toml::Value::String(path) => path.clone(),
                entry => entry
                    .get("path")
                    .and_then(toml::Value::as_str)
                    .unwrap_or_else(|| panic!("a file entry without a path: {entry}"))
                    .to_string(),
            })
            .collect();
        tables.insert(
            text("name"),
            ManagedTable {
                dir: PathBuf::from(text("url")),
                files,
            },
        );
    }
    tables
}

/// The ids of the writes the catalog's journal holds.
pub fn pending_writes(path: &Path) -> Vec<String> {
    read(path)
        .get("pending_writes")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|w| w.get("id").and_then(toml::Value::as_str).map(String::from))
        .collect()
}

/// Every regular file under `dir`, relative to it, sorted (none if it does not exist).
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(relative) = path.strip_prefix(dir) {
                found.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    found.sort();
    found
}

/// The catalog file as TOML; a file not written yet (a coordinator that has created nothing)
/// reads as empty.
fn read(path: &Path) -> toml::Value {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => panic!("reading {}: {e}", path.display()),
    };
    toml::from_str(&text).unwrap_or_else(|e| panic!("{} is not TOML: {e}", path.display()))
}
